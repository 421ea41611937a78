//! Limits and overload: per-pipeline bounds on tensors, outputs and bodies, admission control
//! with 503 + Retry-After, and the optional inference token.

use std::time::{Duration, Instant};

use serde_json::json;

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
        error_message(&body).contains("limit of 1 MiB (limits.max_body_mib)"),
        "{body}"
    );
}

#[test]
fn beyond_capacity_requests_get_503_with_retry_after_at_once() {
    let options = Options {
        max_concurrency: 1,
        max_queue: 1,
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
