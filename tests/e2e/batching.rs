//! Cross-request batching (`[batching]`): concurrent requests share one pass through the
//! stages, each gets its own rows back, and a bad row fails only its own request.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{TestServer, error_message};
use weir::pipeline::manifest::Manifest;

/// A batching pipeline of the test component: a preprocess that spins `busy_ms` (so requests
/// arrive while a batch runs) and a model in `model_mode` for requests holding a negative
/// number (every request with `model_mode = "huge"`, which adds an empty tensor).
fn batching(name: &str, busy_ms: u64, model_mode: &str) -> Manifest {
    let on_request = model_mode != "huge";
    let text = format!(
        "name = \"{name}\"\n\
         [batching]\nmax_batch_size = 16\n\
         [preprocess]\ncomponent = \"faulty-stage@0.1.0\"\npath = \"faulty_stage.wasm\"\n\
         config = {{ mode = \"busy\", ms = {busy_ms} }}\n\
         [model]\ncomponent = \"faulty-stage@0.1.0\"\npath = \"faulty_stage.wasm\"\n\
         config = {{ mode = \"{model_mode}\", on_request = {on_request} }}\n"
    );
    Manifest::parse(&text, Path::new(env!("WEIR_TEST_COMPONENTS"))).expect("batching manifest")
}

/// Request `i`: one row of two numbers only it sends (negated for the bad one).
fn request(i: i64, bad: bool) -> Value {
    let sign = if bad { -1.0 } else { 1.0 };
    let row = [sign * (i as f64 + 1.0), sign * (i as f64 + 1.5)];
    json!({ "id": format!("r{i}"), "inputs": [{ "name": "x", "shape": [1, 2], "datatype": "FP32", "data": row }] })
}

/// Send the first of `requests`, then, while its batch runs, the others at once from one
/// thread each; the answers in the same order.
fn send_behind_one(server: &TestServer, model: &str, requests: &[Value]) -> Vec<(u16, Value)> {
    let path = format!("/v2/models/{model}/infer");
    std::thread::scope(|scope| {
        let lead = scope.spawn(|| server.post_json(&path, &requests[0]));
        std::thread::sleep(Duration::from_millis(30));
        let rest: Vec<_> = (requests[1..].iter())
            .map(|body| scope.spawn(|| server.post_json(&path, body)))
            .collect();
        let sent = std::iter::once(lead).chain(rest);
        sent.map(|h| h.join().unwrap()).collect()
    })
}

fn metrics(server: &TestServer) -> String {
    let url = format!("{}/metrics", server.base);
    reqwest::blocking::get(url).unwrap().text().unwrap()
}

/// The value of the metric line starting with `prefix`.
fn metric(text: &str, prefix: &str) -> f64 {
    let line = (text.lines())
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("/metrics lacks {prefix}:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// The request `fault` names (if any) got its status with a message holding its fragment;
/// every other one got 200 and its own rows back.
fn check_answers(answers: &[(u16, Value)], requests: &[Value], fault: Option<(usize, u16, &str)>) {
    for (i, (got, body)) in answers.iter().enumerate() {
        if let Some((bad, status, fragment)) = fault.filter(|f| f.0 == i) {
            assert_eq!(*got, status, "the bad request {bad}: {body}");
            let message = error_message(body);
            assert!(message.contains(fragment), "{message}");
        } else {
            assert_eq!(*got, 200, "request {i}: {body}");
            assert_eq!(body["outputs"][0]["data"], requests[i]["inputs"][0]["data"]);
        }
    }
}

#[test]
fn concurrent_requests_share_batches_and_each_gets_its_own_rows() {
    let server = TestServer::start(&[batching("echo", 200, "echo")]);
    let requests: Vec<Value> = (0..8).map(|i| request(i, false)).collect();
    let answers = send_behind_one(&server, "echo", &requests);
    check_answers(&answers, &requests, None);
    for (i, (_, body)) in answers.iter().enumerate() {
        assert_eq!(body["id"], json!(format!("r{i}")));
        assert_eq!(body["outputs"][0]["shape"], json!([1, 2]));
    }
    // The first request runs alone; the others arrive during its 200 ms and share a batch.
    let text = metrics(&server);
    let batches = metric(&text, "weir_batch_size_count{pipeline=\"echo\"}");
    assert_eq!(metric(&text, "weir_batch_size_sum{pipeline=\"echo\"}"), 8.0);
    assert!(batches < 8.0, "8 requests ran in {batches} batches");
    let queued = "weir_stage_duration_seconds_count{pipeline=\"echo\",stage=\"queue\"}";
    assert_eq!(metric(&text, queued), 8.0);
}

#[test]
fn a_bad_row_fails_only_its_own_request_in_a_batch() {
    let server = TestServer::start(&[batching("fragile", 200, "panic")]);
    let requests: Vec<Value> = (0..8).map(|i| request(i, i == 5)).collect();
    let answers = send_behind_one(&server, "fragile", &requests);
    let fault = (5, 500, "(faulty-stage@0.1.0) trapped");
    check_answers(&answers, &requests, Some(fault));
    let text = metrics(&server);
    let queued = "weir_stage_duration_seconds_count{pipeline=\"fragile\",stage=\"queue\"}";
    assert_eq!(
        metric(&text, queued),
        8.0,
        "every request went through the batcher"
    );
}

#[test]
fn batching_needs_an_open_first_dimension_in_every_declared_tensor() {
    let text = "name = \"fixed\"\n[batching]\n\
                [[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [1, 4]\n\
                [model]\ncomponent = \"faulty-stage@0.1.0\"\nconfig = { mode = \"echo\" }\n";
    let error = Manifest::parse(text, Path::new(".")).unwrap_err();
    let message = format!("{error:#}");
    assert!(
        message.contains("[batching] merges requests on the first dimension")
            && message.contains("'x' has shape [1, 4]"),
        "{message}"
    );
}

#[test]
fn a_looping_row_costs_its_batch_the_deadline_and_only_it_gets_the_504() {
    let mut manifest = batching("looping", 200, "loop");
    manifest.limits.stage_timeout_ms = 500;
    let server = TestServer::start(&[manifest]);
    let requests: Vec<Value> = (0..6).map(|i| request(i, i == 3)).collect();
    let answers = send_behind_one(&server, "looping", &requests);
    let fault = (3, 504, "exceeded its deadline of 500 ms");
    check_answers(&answers, &requests, Some(fault));
}

#[test]
fn outputs_that_do_not_keep_one_row_per_request_row_are_answered_request_by_request() {
    // The model adds a tensor of shape [0] whatever the rows: a batch of 7 cannot be split.
    let server = TestServer::start(&[batching("reducing", 200, "huge")]);
    let requests: Vec<Value> = (0..8).map(|i| request(i, false)).collect();
    let answers = send_behind_one(&server, "reducing", &requests);
    check_answers(&answers, &requests, None);
    for (_, body) in &answers {
        assert_eq!(body["outputs"][1]["name"], json!("huge"));
        assert_eq!(body["outputs"][1]["shape"], json!([0]));
    }
    // Only the lead request's batch (of one) succeeded as a batch; the others ran alone.
    let text = metrics(&server);
    assert_eq!(
        metric(&text, "weir_batch_size_sum{pipeline=\"reducing\"}"),
        1.0
    );
}
