//! A stage that traps, loops, eats memory or refuses its input fails only its own request,
//! with the status for its cause and a message naming the stage, component and version.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestServer, error_message, faulty, iris, registry};
use weir::pipeline::manifest::Manifest;

fn request() -> Value {
    json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2] }] })
}

/// A request that asks the faulty component to misbehave.
fn faulting() -> Value {
    let mut request = request();
    request["parameters"] = json!({ "fault": true });
    request
}

fn iris_still_serves(server: &TestServer) {
    let (status, body) = server.post_json("/v2/models/iris/infer", &request());
    assert_eq!(status, 200, "iris after a fault: {body}");
    assert_eq!(body["outputs"][0]["data"], json!(["setosa"]));
}

/// (mode, status, fragments of the message)
const FAULTS: &[(&str, u16, &[&str])] = &[
    (
        "panic",
        500,
        &[
            "stage 'model' (faulty-stage@0.1.0) trapped",
            "unreachable",
            "its stderr ends: thread '<unnamed>'",
            "faulty-stage panics as configured",
        ],
    ),
    (
        "grow",
        500,
        &["stage 'model' (faulty-stage@0.1.0) exceeded its memory cap of 16 MiB"],
    ),
    (
        "invalid-input",
        400,
        &[
            "stage 'model' (faulty-stage@0.1.0) rejected the input: faulty-stage refuses every input",
        ],
    ),
    (
        "failure",
        500,
        &["stage 'model' (faulty-stage@0.1.0) failed: faulty-stage fails as configured"],
    ),
];

#[test]
fn each_fault_gets_its_status_and_the_server_keeps_serving() {
    let mut manifests = vec![iris()];
    for (mode, _, _) in FAULTS {
        manifests.push(faulty(mode, mode, "[limits]\nmemory_mib = 16"));
    }
    let server = TestServer::start(&manifests);
    for (mode, want_status, fragments) in FAULTS {
        for _ in 0..3 {
            let (status, body) = server.post_json(&format!("/v2/models/{mode}/infer"), &faulting());
            assert_eq!(status, *want_status, "{mode}: {body}");
            let message = error_message(&body);
            for fragment in *fragments {
                assert!(
                    message.contains(fragment),
                    "{mode}: '{message}' lacks '{fragment}'"
                );
            }
            iris_still_serves(&server);
        }
    }
}

#[test]
fn an_endless_loop_is_cut_at_the_deadline_while_others_are_served() {
    let server = TestServer::start(&[
        iris(),
        faulty("loop", "loop", "[limits]\nstage_timeout_ms = 300"),
    ]);
    std::thread::scope(|scope| {
        let looping = scope.spawn(|| {
            let started = Instant::now();
            let (status, body) = server.post_json("/v2/models/loop/infer", &faulting());
            (status, body, started.elapsed())
        });
        // Meanwhile the other pipeline answers.
        std::thread::sleep(Duration::from_millis(50));
        let started = Instant::now();
        iris_still_serves(&server);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "iris waited on the loop"
        );
        let (status, body, elapsed) = looping.join().unwrap();
        assert_eq!(status, 504, "{body}");
        assert!(
            error_message(&body)
                .contains("stage 'model' (faulty-stage@0.1.0) exceeded its deadline of 300 ms"),
            "{body}"
        );
        assert!(
            elapsed >= Duration::from_millis(300),
            "cut early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(1500),
            "cut late: {elapsed:?}"
        );
    });
    iris_still_serves(&server);
}

fn load_error(text: &str) -> String {
    let base = std::path::Path::new(env!("WEIR_TEST_COMPONENTS"));
    let manifest = Manifest::parse(text, base).unwrap();
    let (registry, _dir) = registry(&[]);
    match registry.deploy(&manifest) {
        Ok(_) => panic!("pipeline deployed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_component_importing_outside_its_world_is_refused_naming_the_import() {
    // logistic-regression reads artifacts, which only the model world offers.
    let message = load_error(
        "name = \"p\"\n[preprocess]\ncomponent = \"logistic-regression@0.1.0\"\n\
         [model]\ncomponent = \"faulty-stage@0.1.0\"\npath = \"faulty_stage.wasm\"\nconfig = { mode = \"echo\" }\n",
    );
    assert!(message.contains("stage 'preprocess'"), "{message}");
    assert!(message.contains("weir:pipeline/artifacts"), "{message}");
}

#[test]
fn a_component_reaching_for_files_or_sockets_is_refused_naming_the_imports() {
    let message = load_error(
        "name = \"p\"\n[model]\ncomponent = \"greedy-stage@0.1.0\"\npath = \"greedy_stage.wasm\"\n",
    );
    for import in [
        "wasi:filesystem/types@0.2",
        "wasi:sockets/tcp@0.2",
        "does not offer",
    ] {
        assert!(message.contains(import), "'{message}' lacks {import}");
    }
}

#[test]
fn unknown_components_and_non_components_are_refused_at_load() {
    let message = load_error("name = \"p\"\n[model]\ncomponent = \"no-such@1.0.0\"\n");
    assert!(
        message.contains("no component no-such@1.0.0 in the store"),
        "{message}"
    );
    let message = load_error("name = \"p\"\n[model]\ncomponent = \"label-map@^9\"\n");
    assert!(
        message.contains("no component label-map matches ^9 (stored versions: 0.1.0)"),
        "{message}"
    );
    let message = load_error(
        "name = \"p\"\n[model]\ncomponent = \"x@1.0.0\"\npath = \"../../../../Cargo.toml\"\n",
    );
    assert!(message.contains("compiling the component"), "{message}");
    let message = load_error("name = \"p\"\n[model]\ncomponent = \"scaler\"\n");
    assert!(message.contains("name@version"), "{message}");
}

/// The `calls` count the counting stage returns for one request.
fn calls(server: &TestServer, model: &str, request: &Value) -> (u16, Value) {
    server.post_json(&format!("/v2/models/{model}/infer"), request)
}

fn count_of(body: &Value) -> i64 {
    let outputs = body["outputs"].as_array().unwrap();
    let calls = outputs.iter().find(|o| o["name"] == "calls").unwrap();
    calls["data"][0].as_i64().unwrap()
}

#[test]
fn every_request_gets_a_fresh_instance_unless_the_stage_opts_into_reuse() {
    let fresh = faulty("fresh", "count", "");
    let mut reused = faulty("reused", "count", "");
    reused.model.reuse_instances = true;
    let server = TestServer::start(&[fresh, reused]);
    for _ in 0..3 {
        let (status, body) = calls(&server, "fresh", &request());
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            count_of(&body),
            1,
            "a fresh instance has served no other request"
        );
    }
    let counts: Vec<i64> = (0..3)
        .map(|_| count_of(&calls(&server, "reused", &request()).1))
        .collect();
    assert!(
        counts.windows(2).all(|w| w[1] == w[0] + 1),
        "one warm instance serves request after request: {counts:?}"
    );
    // A trap discards the warm instance; the next request gets a new one.
    let (status, body) = calls(&server, "reused", &faulting());
    assert_eq!(status, 500, "{body}");
    assert!(error_message(&body).contains("panics after"), "{body}");
    let (status, body) = calls(&server, "reused", &request());
    assert_eq!(status, 200, "{body}");
    assert_eq!(count_of(&body), 1, "the trapped instance was not reused");
}
