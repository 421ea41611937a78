//! Limits and overload: per-pipeline bounds on tensors, outputs and bodies, admission control
//! with 503 + Retry-After, and the optional inference token.

use std::time::{Duration, Instant};

use serde_json::json;

use weir::http::admission::Bounds;

use crate::support::{Options, TestServer, error_message, faulty, faulty_with, iris};

#[test]
fn per_pipeline_limits_refuse_big_tensors_outputs_and_bodies() {
    let server = TestServer::start(&[
        faulty_with(
            "huge",
            "mode = \"huge\", mib = 8",
            "[limits]\nmax_output_mib = 4",
        ),
        faulty(
            "small",
            "echo",
            "[limits]\nmax_tensor_elements = 10\nmax_body_mib = 1",
        ),
    ]);
    let request = json!({ "parameters": { "fault": true },
        "inputs": [{ "name": "x", "shape": [1], "datatype": "INT8", "data": [1] }] });
    let (status, body) = server.post_json("/v2/models/huge/infer", &request);
    assert_eq!(status, 500, "{body}");
    assert!(
        error_message(&body).contains("over the pipeline's limit of 4 MiB (limits.max_output_mib)"),
        "{body}"
    );

    let request = json!({ "inputs": [{ "name": "x", "shape": [11], "datatype": "INT8", "data": [0,1,2,3,4,5,6,7,8,9,10] }] });
    let (status, body) = server.post_json("/v2/models/small/infer", &request);
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).contains("11 elements, over this pipeline's limit of 10"),
        "{body}"
    );
    let big = "x".repeat(2 << 20);
    let request =
        json!({ "inputs": [{ "name": "x", "shape": [1], "datatype": "BYTES", "data": [big] }] });
    let (status, body) = server.post_json("/v2/models/small/infer", &request);
    assert_eq!(status, 413, "{body}");
    assert!(
        error_message(&body)
            .contains("over the limit of 1048576 bytes (pipeline 'small''s limits.max_body_mib)"),
        "{body}"
    );
}

#[test]
fn beyond_capacity_requests_get_503_with_retry_after_at_once() {
    let options = Options {
        admission: Bounds::new(1, 1, 1 << 20),
        ..Options::default()
    };
    let busy = faulty_with("busy", "mode = \"busy\", ms = 400", "");
    let server = TestServer::with_options(&[iris(), busy], options);
    let slow = json!({ "parameters": { "fault": true },
        "inputs": [{ "name": "x", "shape": [1], "datatype": "INT8", "data": [1] }] });
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/v2/models/busy/infer", server.base);
    let results: Vec<(u16, Option<String>, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (client, url, slow) = (&client, &url, &slow);
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(20 * i));
                    let sent = Instant::now();
                    let response = client.post(url).body(slow.to_string()).send().unwrap();
                    let retry = response
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_owned());
                    (response.status().as_u16(), retry, sent.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admitted: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 503).collect();
    assert_eq!(admitted.len() + refused.len(), results.len(), "{results:?}");
    assert!(
        (2..=3).contains(&admitted.len()),
        "one running and one waiting, then maybe one more: {results:?}"
    );
    for (_, retry, elapsed) in &refused {
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(
            *elapsed < Duration::from_millis(200),
            "refused at once, not after {elapsed:?}"
        );
    }
    for (_, _, elapsed) in &admitted {
        assert!(
            *elapsed < Duration::from_millis(2000),
            "admitted latency is bounded: {elapsed:?}"
        );
    }
    let (status, _) = server.post_json("/v2/models/iris/infer",
        &json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] }));
    assert_eq!(status, 200);
}

#[test]
fn an_inference_token_guards_inference_but_not_probes() {
    let options = Options {
        inference_token: Some("let-me-in"),
        ..Options::default()
    };
    let server = TestServer::with_options(&[iris()], options);
    let request = json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 401, "{body}");
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v2/models/iris/infer", server.base))
        .bearer_auth("let-me-in")
        .body(request.to_string())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(server.get("/v2/health/ready").0, 200);
    assert_eq!(server.get("/v2/models/iris").0, 200);
}

/// The defaults agree: a tensor at the element limit in the widest datatype fits the stages'
/// memory (the iris stages answer it), and a batch that cannot fit a stage's memory is
/// refused as too large, naming both limits, before any stage runs.
#[test]
fn inputs_the_element_limit_allows_fit_the_memory_and_others_are_413() {
    let echo = faulty(
        "echo",
        "echo",
        "[limits]\nmemory_mib = 16\nmax_tensor_elements = 100000000",
    );
    let server = TestServer::start(&[iris(), echo]);
    let rows = 2_097_152 / 4;
    let header = json!({
        "parameters": { "binary_data_output": true },
        "inputs": [{ "name": "features", "shape": [rows, 4], "datatype": "FP64",
                     "parameters": { "binary_data_size": rows * 32 } }],
    });
    let features: Vec<u8> = [5.1f64, 3.5, 1.4, 0.2]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let (status, answer, _) =
        server.post_binary("/v2/models/iris/infer", &header, &features.repeat(rows));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outputs"][0]["shape"], json!([rows]));

    let header = json!({ "inputs": [{ "name": "x", "shape": [9 << 20], "datatype": "INT8",
                                      "parameters": { "binary_data_size": 9 << 20 } }] });
    let (status, answer, _) =
        server.post_binary("/v2/models/echo/infer", &header, &vec![1; 9 << 20]);
    assert_eq!(status, 413, "{answer}");
    let message = error_message(&answer);
    assert!(
        message.contains("the inputs take 9.0 MiB")
            && message.contains("has 16 MiB of memory (limits.memory_mib)")
            && message.contains("at most half of it"),
        "{message}"
    );
}

#[test]
fn an_unknown_model_is_listed_against_the_served_ones_only_without_a_token() {
    let open = TestServer::start(&[iris()]);
    let (status, body) = open.get("/v2/models/nope");
    assert_eq!(status, 404);
    assert!(error_message(&body).contains("(served: iris)"), "{body}");
    let guarded = TestServer::with_options(
        &[iris()],
        Options {
            inference_token: Some("let-me-in"),
            ..Options::default()
        },
    );
    let (status, body) = guarded.get("/v2/models/nope");
    assert_eq!(status, 404);
    assert_eq!(error_message(&body), "unknown model 'nope'");
}
