//! Clients that hold the server's resources without using them, and a pipeline that hogs
//! them: stalled or oversized bodies, slow headers, idle and surplus connections, a flood of
//! requests to a slow pipeline. Each is bounded by a setting, and the others are still served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::http::admission::Bounds;

use crate::support::{Options, TestServer, error_message, faulty, faulty_with, iris};

fn iris_request() -> String {
    json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] })
        .to_string()
}

/// A raw connection to `server`.
fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Headers of a POST of `length` bytes to `path`.
fn post_head(path: &str, length: usize) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: test\r\ncontent-length: {length}\r\n\r\n")
}

/// Everything the server sends until it closes the connection, and how long that took.
fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut text = Vec::new();
    let _ = stream.read_to_end(&mut text);
    (
        String::from_utf8_lossy(&text).into_owned(),
        started.elapsed(),
    )
}

/// The status and JSON body of an HTTP/1.1 response's text.
fn parse(response: &str) -> (u16, Value) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {response:?}"));
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn iris_answers(server: &TestServer) {
    let (status, body) = server.post("/v2/models/iris/infer", iris_request());
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let server = TestServer::start(&[iris()]);
    let mut stream = connect(&server);
    let head = post_head("/v2/models/iris/infer", 1 << 30);
    stream.write_all(head.as_bytes()).unwrap();
    let (response, elapsed) = read_until_closed(&mut stream);
    let (status, body) = parse(&response);
    assert_eq!(status, 413, "{response}");
    assert!(
        error_message(&body)
            .contains("over the limit of 67108864 bytes (weir serve --max-body-bytes)"),
        "{body}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "waited for the body: {elapsed:?}"
    );
    iris_answers(&server);
}

#[test]
fn a_stalled_upload_gets_408_and_until_then_holds_only_what_it_sent() {
    let mut options = Options {
        admission: Bounds::new(4, 16, 1 << 20),
        ..Options::default()
    };
    options.limits.body_timeout = Duration::from_secs(2);
    let server = TestServer::with_options(&[iris()], options);
    let started = Instant::now();
    // Declares 8 MiB and stalls after 600 KB: its buffer holds most of the 1 MiB budget.
    let mut stalled = connect(&server);
    let head = post_head("/v2/models/iris/infer", 8 << 20);
    stalled.write_all(head.as_bytes()).unwrap();
    stalled.write_all(&vec![b' '; 600_000]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // A request of 200 KB does not fit in what is left; a small one does.
    let padded = format!("{}{}", iris_request(), " ".repeat(200_000));
    let (status, body) = server.post("/v2/models/iris/infer", padded.clone());
    assert_eq!(status, 503, "{body}");
    assert!(
        error_message(&body).contains("--max-inflight-body-bytes"),
        "{body}"
    );
    iris_answers(&server);
    let (response, _) = read_until_closed(&mut stalled);
    let (status, body) = parse(&response);
    assert_eq!(status, 408, "{response}");
    assert!(error_message(&body).contains("--body-timeout"), "{body}");
    let elapsed = started.elapsed();
    assert!(
        (Duration::from_secs(2)..Duration::from_secs(5)).contains(&elapsed),
        "408 after {elapsed:?}"
    );
    let (status, body) = server.post("/v2/models/iris/infer", padded);
    assert_eq!(
        status, 200,
        "the stalled upload gave its bytes back: {body}"
    );
}

#[test]
fn a_half_sent_header_is_closed_at_the_header_timeout() {
    let mut options = Options::default();
    options.connections.header_timeout = Duration::from_secs(1);
    let server = TestServer::with_options(&[iris()], options);
    let mut stream = connect(&server);
    stream
        .write_all(b"POST /v2/models/iris/infer HTTP/1.1\r\nhost: test\r\n")
        .unwrap();
    let (response, elapsed) = read_until_closed(&mut stream);
    assert!(response.is_empty(), "{response}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "closed after {elapsed:?}"
    );
    iris_answers(&server);
}

#[test]
fn an_idle_connection_is_closed_at_the_idle_timeout_but_a_slow_answer_is_not() {
    let mut options = Options::default();
    options.connections.idle_timeout = Duration::from_secs(1);
    let busy = faulty_with(
        "busy",
        "mode = \"busy\", ms = 1300",
        "[limits]\nstage_timeout_ms = 3000",
    );
    let server = TestServer::with_options(&[iris(), busy], options);

    // Never sends anything.
    let (_, elapsed) = read_until_closed(&mut connect(&server));
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(3)).contains(&elapsed),
        "a silent connection closed after {elapsed:?}"
    );

    // Keep-alive: one request answered, then idle.
    let mut stream = connect(&server);
    let body = iris_request();
    let request = format!("{}{body}", post_head("/v2/models/iris/infer", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let (response, elapsed) = read_until_closed(&mut stream);
    assert_eq!(parse(&response).0, 200, "{response}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&elapsed),
        "an idle keep-alive connection closed after {elapsed:?}"
    );

    // A request that takes longer than the idle timeout to answer is answered.
    let slow = json!({ "parameters": { "fault": true },
        "inputs": [{ "name": "x", "shape": [1], "datatype": "INT8", "data": [1] }] })
    .to_string();
    let mut stream = connect(&server);
    let request = format!("{}{slow}", post_head("/v2/models/busy/infer", slow.len()));
    stream.write_all(request.as_bytes()).unwrap();
    let (response, _) = read_until_closed(&mut stream);
    assert_eq!(parse(&response).0, 200, "{response}");
}

#[test]
fn connections_over_the_cap_get_503_at_once_and_are_counted() {
    let mut options = Options::default();
    options.connections.max_connections = 3;
    let server = TestServer::with_options(&[iris()], options);
    let held: Vec<TcpStream> = (0..3).map(|_| connect(&server)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut surplus = connect(&server);
    let (response, elapsed) = read_until_closed(&mut surplus);
    let (status, body) = parse(&response);
    assert_eq!(status, 503, "{response}");
    assert!(response.contains("retry-after: 1"), "{response}");
    assert!(error_message(&body).contains("--max-connections"), "{body}");
    assert!(
        elapsed < Duration::from_secs(1),
        "refused after {elapsed:?}"
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    iris_answers(&server);
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("weir_connections_refused_total 1"),
        "{metrics}"
    );
}

#[test]
fn a_pipeline_flooded_with_slow_requests_fills_only_its_share() {
    // Four turns and four places in the queue for the server; each pipeline gets two of each.
    let options = Options {
        admission: Bounds::new(4, 4, 64 << 20),
        ..Options::default()
    };
    let looping = faulty("loop", "loop", "[limits]\nstage_timeout_ms = 2000");
    let server = TestServer::with_options(&[iris(), looping], options);
    let fault = json!({ "parameters": { "fault": true },
        "inputs": [{ "name": "x", "shape": [1], "datatype": "INT8", "data": [1] }] });
    std::thread::scope(|scope| {
        let flood: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| server.post_json("/v2/models/loop/infer", &fault)))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..5 {
            let started = Instant::now();
            iris_answers(&server);
            let elapsed = started.elapsed();
            assert!(
                elapsed < Duration::from_secs(1),
                "iris waited {elapsed:?} behind the loop"
            );
        }
        let answers: Vec<(u16, Value)> = flood.into_iter().map(|h| h.join().unwrap()).collect();
        let refused: Vec<&Value> = answers
            .iter()
            .filter(|(s, _)| *s == 503)
            .map(|(_, b)| b)
            .collect();
        assert_eq!(refused.len(), 2, "two running and two waiting: {answers:?}");
        assert!(
            error_message(refused[0]).contains("pipeline 'loop' is at its share"),
            "{refused:?}"
        );
        assert!(
            answers.iter().all(|(s, _)| [503, 504].contains(s)),
            "{answers:?}"
        );
    });
}
