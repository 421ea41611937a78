//! Versions: deploy, swap, rollback and the management API, on an in-process server with a
//! store of its own. Every change is a new immutable version; any retained one serves again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{TestServer, error_message, faulty, flipped_weights, iris};

fn rows() -> Value {
    json!({ "inputs": [{ "name": "features", "shape": [3, 4], "datatype": "FP32",
        "data": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.2, 4.0, 1.0], [6.7, 3.0, 5.2, 2.3]] }] })
}

fn push_flipped(server: &TestServer) {
    let (status, body) = server.admin(
        Method::PUT,
        "/v1/artifacts/iris-flipped/1.0.0",
        flipped_weights(),
    );
    assert_eq!(status, 201, "{body}");
}

fn infer(server: &TestServer, path: &str) -> Value {
    let (status, body) = server.post_json(path, &rows());
    assert_eq!(status, 200, "{body}");
    body
}

fn swap(server: &TestServer, body: Value) -> (u16, Value) {
    server.admin(Method::POST, "/v1/pipelines/iris/swap", body.to_string())
}

#[test]
fn swap_makes_the_next_version_and_rollback_restores_the_exact_answers() {
    let server = TestServer::start(&[iris()]);
    let v1 = infer(&server, "/v2/models/iris/infer");
    assert_eq!(v1["model_version"], "1");

    // Deploying the same manifest again changes nothing.
    let change = server.registry.deploy(&iris()).unwrap();
    assert_eq!((change.version, change.created), (1, false));

    push_flipped(&server);
    let (status, change) = swap(
        &server,
        json!({ "stage": "model", "artifacts": { "model": "iris-flipped@1.0.0" } }),
    );
    assert_eq!(status, 200, "{change}");
    assert_eq!(
        change,
        json!({ "pipeline": "iris", "version": 2, "created": true })
    );
    let v2 = infer(&server, "/v2/models/iris/infer");
    assert_eq!(v2["model_version"], "2");
    assert_ne!(
        v2["outputs"], v1["outputs"],
        "the new artifact answers differently"
    );

    // Every retained version serves on its versioned route.
    assert_eq!(
        infer(&server, "/v2/models/iris/versions/1/infer")["outputs"],
        v1["outputs"]
    );
    assert_eq!(
        infer(&server, "/v2/models/iris/versions/2/infer")["outputs"],
        v2["outputs"]
    );

    let (status, change) = server.admin(
        Method::POST,
        "/v1/pipelines/iris/rollback",
        json!({ "version": 1 }).to_string(),
    );
    assert_eq!(status, 200, "{change}");
    assert_eq!(change["version"], 1);
    let back = infer(&server, "/v2/models/iris/infer");
    assert_eq!(back["model_version"], "1");
    assert_eq!(
        back["outputs"], v1["outputs"],
        "rollback restores the earlier answers exactly"
    );

    let (status, versions) = server.admin(Method::GET, "/v1/pipelines/iris/versions", "");
    assert_eq!(status, 200);
    let listed: Vec<(u64, bool)> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(listed, vec![(1, true), (2, false)]);
    let v2_spec = &versions["versions"][1]["spec"]["stages"][1];
    assert_eq!(v2_spec["artifacts"]["model"]["name"], "iris-flipped");
    assert!(
        v2_spec["component"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256-")
    );
}

#[test]
fn a_swap_to_a_config_the_stage_refuses_is_refused_naming_the_setting() {
    let server = TestServer::start(&[iris()]);
    let v1 = infer(&server, "/v2/models/iris/infer");
    // The scaler checks its config once, when an instance prepares it (`Stage::new`): the
    // deploy's warm-up call catches a bad value before any client sees the version.
    for (config, cause) in [
        (
            json!({ "mean": 0.0, "scale": 0.0 }),
            "config `scale` must not be 0",
        ),
        (
            json!({ "mean": [1.0, 2.0], "scale": [1.0] }),
            "as many `scale` values as `mean` values",
        ),
    ] {
        let (status, body) = swap(&server, json!({ "stage": "preprocess", "config": config }));
        assert_eq!(status, 400, "{body}");
        let message = error_message(&body);
        assert!(
            message.contains("failed its warm-up call") && message.contains(cause),
            "{message}"
        );
        let now = infer(&server, "/v2/models/iris/infer");
        assert_eq!(
            (&now["model_version"], &now["outputs"]),
            (&v1["model_version"], &v1["outputs"])
        );
    }
}

#[test]
fn a_swap_that_fails_its_warm_up_is_refused_and_the_old_version_keeps_serving() {
    let server = TestServer::start(&[faulty("echo", "echo", "")]);
    let request =
        json!({ "inputs": [{ "name": "x", "shape": [1], "datatype": "INT8", "data": [7] }] });
    for mode in ["panic", "failure", "loop"] {
        let config = json!({ "mode": mode });
        let (status, body) = server.admin(
            Method::POST,
            "/v1/pipelines/echo/swap",
            json!({ "stage": "model", "config": config }).to_string(),
        );
        assert_eq!(status, 400, "{mode}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains("failed its warm-up call") && message.contains("stage 'model'"),
            "{message}"
        );
        let (status, body) = server.post_json("/v2/models/echo/infer", &request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_version"], "1");
    }
    let (_, versions) = server.admin(Method::GET, "/v1/pipelines/echo/versions", "");
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "refused swaps leave no version"
    );
    let (status, body) = server.admin(
        Method::POST,
        "/v1/pipelines/echo/swap",
        json!({ "stage": "preprocess", "config": {} }).to_string(),
    );
    assert_eq!(status, 400);
    assert!(
        error_message(&body).contains("has no preprocess stage"),
        "{body}"
    );
}

#[test]
fn management_routes_need_the_admin_token() {
    let server = TestServer::start(&[iris()]);
    let client = reqwest::blocking::Client::new();
    for (method, path) in [
        (Method::GET, "/v1/status"),
        (Method::GET, "/v1/components"),
        (Method::POST, "/v1/pipelines/iris/rollback"),
        (Method::POST, "/v2/repository/index"),
        (Method::POST, "/v2/repository/models/iris/unload"),
    ] {
        for auth in [None, Some("Bearer wrong-token"), Some("test-admin-token")] {
            let mut request = client.request(method.clone(), format!("{}{path}", server.base));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.send().unwrap();
            assert_eq!(
                response.status().as_u16(),
                401,
                "{method} {path} with {auth:?}"
            );
            assert!(response.text().unwrap().contains("Bearer"));
        }
    }
    assert_eq!(
        infer(&server, "/v2/models/iris/infer")["model_version"],
        "1",
        "inference needs no token"
    );
    // The scheme's name is case-insensitive (RFC 9110).
    for scheme in ["bearer", "BEARER"] {
        let response = client
            .get(format!("{}/v1/status", server.base))
            .header("authorization", format!("{scheme} test-admin-token"))
            .send()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{scheme}");
    }
}

#[test]
fn management_errors_are_json_and_names_keep_to_their_character_set() {
    let server = TestServer::with_body_limit(&[iris()], 1024);
    let (status, body) = server.admin(Method::PUT, "/v1/artifacts/big/1.0.0", vec![0u8; 4096]);
    assert_eq!(status, 413, "{body}");
    assert!(error_message(&body).contains("length limit"), "{body}");
    let (status, body) = server.admin(Method::DELETE, "/v1/artifacts/%FF/1.0.0", "");
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("UTF-8"), "{body}");
    let long = "a".repeat(200);
    for name in ["a%2Fb", "a%40b", "a%0Ab", "a%00b", "-a", long.as_str()] {
        let (status, body) = server.admin(Method::PUT, &format!("/v1/artifacts/{name}/1.0.0"), "x");
        assert_eq!(status, 400, "{name}: {body}");
        assert!(
            error_message(&body).contains("must be 1 to 128 ASCII letters, digits"),
            "{name}: {body}"
        );
    }
    let (status, body) = server.admin(Method::PUT, "/v1/artifacts/ok.name_1-x/1.0.0", "x");
    assert_eq!(status, 201, "{body}");
}

#[test]
fn pushes_are_checked_immutable_and_pinned_objects_stay() {
    let server = TestServer::start(&[iris()]);
    let (status, body) = server.admin(Method::PUT, "/v1/components/junk/1.0.0", "not wasm");
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("junk@1.0.0"), "{body}");

    let wasm = |name: &str| {
        std::fs::read(std::path::Path::new(env!("WEIR_TEST_COMPONENTS")).join(name)).unwrap()
    };
    let (status, body) = server.admin(
        Method::PUT,
        "/v1/components/lr/2.0.0",
        wasm("logistic_regression.wasm"),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["object"]["worlds"], "model",
        "reads artifacts: fits only the model world"
    );
    let (status, body) = server.admin(
        Method::PUT,
        "/v1/components/lr/2.0.0",
        wasm("logistic_regression.wasm"),
    );
    assert_eq!(
        (status, body["created"].clone()),
        (200, json!(false)),
        "same bytes again: no-op"
    );
    let (status, body) = server.admin(
        Method::PUT,
        "/v1/components/lr/2.0.0",
        wasm("label_map.wasm"),
    );
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("immutable"), "{body}");
    let (_, body) = server.admin(
        Method::PUT,
        "/v1/components/labels/1.0.0",
        wasm("label_map.wasm"),
    );
    assert_eq!(body["object"]["worlds"], "preprocessor,model,postprocessor");

    let (status, body) = server.admin(Method::DELETE, "/v1/components/label-map/0.1.0", "");
    assert_eq!(status, 409, "{body}");
    assert!(
        error_message(&body).contains("pinned by pipeline versions iris v1"),
        "{body}"
    );
    let (status, _) = server.admin(Method::DELETE, "/v1/components/lr/2.0.0", "");
    assert_eq!(status, 204);
    let (status, _) = server.admin(Method::DELETE, "/v1/components/lr/2.0.0", "");
    assert_eq!(status, 404);
    let (status, body) = server.admin(
        Method::POST,
        "/v1/pipelines",
        "name = \"x\"\n[model]\ncomponent = \"lr@1.0.0\"\npath = \"/etc/passwd\"\n",
    );
    assert_eq!(status, 400);
    assert!(
        error_message(&body).contains("only name stored components"),
        "{body}"
    );
}

#[test]
fn the_v2_repository_extension_unloads_and_loads() {
    let server = TestServer::start(&[iris()]);
    let (status, index) = server.admin(Method::POST, "/v2/repository/index", "");
    assert_eq!(status, 200);
    assert_eq!(
        index,
        json!([{ "name": "iris", "version": "1", "state": "READY", "reason": "" }])
    );
    let (status, _) = server.admin(Method::POST, "/v2/repository/models/iris/unload", "");
    assert_eq!(status, 200);
    let (status, body) = server.post_json("/v2/models/iris/infer", &rows());
    assert_eq!(status, 503, "{body}");
    assert!(error_message(&body).contains("unloaded"));
    let (status, _) = server.get("/v2/models/iris/ready");
    assert_eq!(status, 503);
    let (_, index) = server.admin(Method::POST, "/v2/repository/index", "");
    assert_eq!(index[0]["state"], "UNAVAILABLE");
    let (status, body) = server.admin(Method::POST, "/v2/repository/models/iris/load", "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        infer(&server, "/v2/models/iris/infer")["model_version"],
        "1"
    );
    let (status, _) = server.admin(Method::POST, "/v2/repository/models/nope/load", "");
    assert_eq!(status, 404);
}

/// When a version was active, as seen from outside: from the start of the swap request that
/// made it active to the end of the one that replaced it.
struct Activation {
    version: String,
    from: Instant,
    until: Option<Instant>,
}

#[test]
fn swaps_under_concurrent_load_fail_no_request() {
    let server = TestServer::start(&[iris()]);
    push_flipped(&server);
    let activations = Mutex::new(vec![Activation {
        version: "1".into(),
        from: Instant::now(),
        until: None,
    }]);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let answers = std::thread::scope(|scope| {
        // Stop the clients however the swapping below ends, a failed assertion included.
        let _stop_clients = StopOnDrop(&stop);
        let clients: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let (status, body) = server.post_json("/v2/models/iris/infer", &rows());
                        seen.push((
                            status,
                            body["model_version"].as_str().unwrap_or("").to_owned(),
                            sent,
                            Instant::now(),
                        ));
                    }
                    seen
                })
            })
            .collect();
        let mut swaps = 0;
        while swaps < 24 || started.elapsed() < Duration::from_secs(10) {
            let artifact = if swaps % 2 == 0 {
                "iris-flipped@1.0.0"
            } else {
                "iris.model@*"
            };
            let artifact = if artifact.ends_with('*') {
                iris_artifact(&server)
            } else {
                artifact.to_owned()
            };
            let requested = Instant::now();
            let (status, change) = swap(
                &server,
                json!({ "stage": "model", "artifacts": { "model": artifact } }),
            );
            let done = Instant::now();
            assert_eq!(status, 200, "{change}");
            let mut log = activations.lock().unwrap();
            log.last_mut().unwrap().until = Some(done);
            log.push(Activation {
                version: change["version"].to_string(),
                from: requested,
                until: None,
            });
            swaps += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    let activations = activations.into_inner().unwrap();
    assert!(activations.len() > 20);
    assert!(answers.len() > 100, "only {} requests", answers.len());
    let failed = answers.iter().filter(|(status, ..)| *status != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during swaps",
        answers.len()
    );
    for (_, version, sent, answered) in &answers {
        let possible = activations.iter().any(|a| {
            &a.version == version
                && a.from <= *answered
                && a.until.is_none_or(|until| until >= *sent)
        });
        assert!(
            possible,
            "version {version} answered a request it could not have been active for"
        );
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The reference of the artifact the iris manifest deployed (`iris.model@0.0.0+<digest>`).
fn iris_artifact(server: &TestServer) -> String {
    let (_, artifacts) = server.admin(Method::GET, "/v1/artifacts", "");
    let original = artifacts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "iris.model")
        .unwrap();
    format!("iris.model@{}", original["version"].as_str().unwrap())
}
