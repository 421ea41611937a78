//! Experiments on real components and real traffic on loopback: a shadow's comparison, a
//! canary's steps, routing and gates, and what survives a restart.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use weir::http::admission::Bounds;
use weir::pipeline::manifest::Manifest;

use crate::cli::{Served, manage};
use crate::support::{Options, TestServer, faulty, faulty_with, iris, repo_root};

/// The iris example's 150 training rows, with the label the model gives each.
fn iris_rows() -> Vec<(Value, String)> {
    let text = std::fs::read_to_string(repo_root().join("examples/iris/expected.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let labels = fixture["labels"].as_array().unwrap();
    (fixture["inputs"].as_array().unwrap().iter())
        .zip(labels)
        .map(|(row, label)| (row.clone(), label.as_str().unwrap().to_owned()))
        .collect()
}

/// The iris pipeline with its label map's first two classes swapped.
fn iris_swapping_two_classes() -> Manifest {
    let dir = repo_root().join("examples/iris");
    let text = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap();
    let text = text.replace(
        "labels = [\"setosa\", \"versicolor\", \"virginica\"]",
        "labels = [\"versicolor\", \"setosa\", \"virginica\"]",
    );
    Manifest::parse(&text, &dir).unwrap()
}

fn classify(server: &TestServer, row: &Value, key: Option<&str>) -> Value {
    let request = json!({ "inputs": [
        { "name": "features", "shape": [1, 4], "datatype": "FP64", "data": row }
    ] });
    let client = reqwest::blocking::Client::new();
    let mut post = client.post(format!("{}/v2/models/iris/infer", server.base));
    if let Some(key) = key {
        post = post.header("x-weir-route-key", key);
    }
    let response = post.body(request.to_string()).send().unwrap();
    assert_eq!(response.status(), 200);
    response.json().unwrap()
}

fn start(server: &TestServer, pipeline: &str, settings: Value) -> Value {
    let path = format!("/v1/pipelines/{pipeline}/experiment");
    let (status, answer) = server.admin(Method::PUT, &path, settings.to_string());
    assert_eq!(status, 201, "{answer}");
    answer
}

fn experiment(server: &TestServer, pipeline: &str) -> Value {
    let path = format!("/v1/pipelines/{pipeline}/experiment");
    let (status, answer) = server.admin(Method::GET, &path, "");
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Poll the experiment's status until `done` holds (at most 30 s).
fn wait_for(server: &TestServer, pipeline: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = experiment(server, pipeline);
        if done(&answer) || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_a_a_shadow_agrees_everywhere_and_a_swapped_label_map_disagrees_where_expected() {
    let server = TestServer::start(&[iris()]);
    start(
        &server,
        "iris",
        json!({ "mode": "shadow", "candidate": 1, "shadow_share": 1.0 }),
    );
    let rows = iris_rows();
    for (row, _) in &rows {
        assert_eq!(classify(&server, row, None)["model_version"], "1");
    }
    let answer = wait_for(&server, "iris", |s| {
        s["arms"]["candidate"]["requests"] == 150
    });
    assert_eq!(answer["arms"]["candidate"]["requests"], 150, "{answer}");
    for output in ["label", "probabilities"] {
        assert_eq!(
            answer["agreement"][output]["share"], 1.0,
            "A/A on {output}: {answer}"
        );
    }
    assert_eq!(answer["disagreements"], json!([]));

    // A candidate that calls setosa versicolor and the reverse.
    let (status, _) = server.admin(Method::POST, "/v1/pipelines/iris/experiment/abort", "");
    assert_eq!(status, 200);
    let change = server
        .registry
        .deploy_candidate(&iris_swapping_two_classes())
        .unwrap();
    assert_eq!(change.version, 2);
    assert_eq!(
        server.registry.get("iris", None).unwrap().number,
        1,
        "a candidate is not active"
    );
    start(
        &server,
        "iris",
        json!({ "mode": "shadow", "candidate": 2, "shadow_share": 1.0 }),
    );
    for (row, _) in &rows {
        let answer = classify(&server, row, None);
        assert_eq!(
            answer["model_version"], "1",
            "clients get the active version's answer"
        );
    }
    let answer = wait_for(&server, "iris", |s| {
        s["arms"]["candidate"]["requests"] == 150
    });
    let virginica = rows
        .iter()
        .filter(|(_, label)| label == "virginica")
        .count();
    let label = &answer["agreement"]["label"];
    assert_eq!(label["compared"], 150);
    assert_eq!(label["share"], virginica as f64 / 150.0, "{answer}");
    assert_eq!(
        answer["agreement"]["probabilities"]["share"], 1.0,
        "the same scores"
    );
    let kept = answer["disagreements"].as_array().unwrap();
    assert_eq!(kept.len(), 20, "the last 20 disagreeing pairs");
    let example = &kept[0];
    assert_ne!(
        example["active"]["label"], example["candidate"]["label"],
        "{example}"
    );
    assert!(example["request"]["inputs"].is_array(), "{example}");
}

#[test]
fn a_candidate_that_fails_on_some_rows_never_reaches_shadow_clients_and_aborts_a_canary() {
    let fast = json!({ "min_requests": 10 });
    let server = TestServer::start(&[faulty("f", "echo", "")]);
    server
        .registry
        .deploy_candidate(&faulty("f", "panic", ""))
        .unwrap();
    let send = |x: f64| {
        let request =
            json!({ "inputs": [{ "name": "x", "shape": [1], "datatype": "FP32", "data": [x] }] });
        server.post_json("/v2/models/f/infer", &request)
    };
    start(
        &server,
        "f",
        json!({ "mode": "shadow", "candidate": 2, "interval_seconds": 1, "shadow_share": 1.0, "gates": fast }),
    );
    for i in 0..40 {
        let (status, answer) = send(if i % 2 == 0 { 1.0 } else { -1.0 });
        assert_eq!(
            status, 200,
            "a shadow's panic never reaches the client: {answer}"
        );
    }
    let answer = wait_for(&server, "f", |s| s["arms"]["candidate"]["requests"] == 40);
    assert_eq!(answer["arms"]["candidate"]["errors"], 20, "{answer}");
    server.admin(Method::POST, "/v1/pipelines/f/experiment/abort", "");

    // As a canary at half the traffic, it fails the error gate twice and is aborted.
    start(
        &server,
        "f",
        json!({ "mode": "canary", "candidate": 2, "steps": [50],
                                "interval_seconds": 1, "gates": fast }),
    );
    let started = Instant::now();
    let mut candidate_errors = 0;
    while experiment(&server, "f")["state"] == "running"
        && started.elapsed() < Duration::from_secs(20)
    {
        let (code, _) = send(-1.0);
        candidate_errors += usize::from(code == 500);
    }
    let answer = experiment(&server, "f");
    assert_eq!(answer["state"], "aborted", "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("error rate"),
        "{answer}"
    );
    assert!(candidate_errors > 0);
    // Aborted at the second failed check: two intervals that judged traffic.
    let outcomes: Vec<&Value> = (answer["history"].as_array().unwrap().iter())
        .map(|d| &d["outcome"])
        .filter(|o| *o != "inconclusive")
        .collect();
    assert_eq!(
        outcomes,
        [&json!("started"), &json!("fail"), &json!("aborted")],
        "{answer}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        server.registry.get("f", None).unwrap().number,
        1,
        "the active version stays"
    );
    for _ in 0..20 {
        assert_eq!(
            send(-1.0).0,
            200,
            "after the abort every request goes to the active version"
        );
    }
    let text = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        text.contains(r#"weir_experiment_state{pipeline="f",state="aborted"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"weir_experiment_requests_total{pipeline="f",arm="candidate",code="500"}"#)
    );
}

#[test]
fn a_slower_candidate_fails_the_latency_gate() {
    let server = TestServer::start(&[faulty("slow", "echo", "")]);
    (server.registry)
        .deploy_candidate(&faulty_with("slow", "mode = \"busy\", ms = 200", ""))
        .unwrap();
    start(
        &server,
        "slow",
        json!({ "mode": "canary", "candidate": 2, "steps": [50],
                                   "interval_seconds": 2, "gates": { "min_requests": 5 } }),
    );
    // 200 ms a request against an echo: far past 1.2x + 5 ms even when other tests slow the
    // active version's requests.
    let request =
        json!({ "inputs": [{ "name": "x", "shape": [1], "datatype": "FP32", "data": [-1.0] }] });
    let started = Instant::now();
    while experiment(&server, "slow")["state"] == "running"
        && started.elapsed() < Duration::from_secs(30)
    {
        assert_eq!(server.post_json("/v2/models/slow/infer", &request).0, 200);
    }
    let answer = experiment(&server, "slow");
    assert_eq!(answer["state"], "aborted", "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("p99"),
        "{answer}"
    );
}

#[test]
fn a_routing_key_stays_on_its_arm_as_the_share_rises_and_promote_ends_the_canary() {
    let server = TestServer::start(&[iris()]);
    server.registry.deploy_candidate(&iris()).unwrap();
    start(
        &server,
        "iris",
        json!({ "mode": "canary", "candidate": 2, "steps": [5, 25, 50],
                                  "interval_seconds": 4, "auto_promote": false,
                "gates": { "min_requests": 5, "max_p99_ratio": 100.0, "p99_slack_ms": 1e6 } }),
    );
    let row = &iris_rows()[0].0;
    // (The latency gate is off: this test is about routing, and beside other tests one slow
    // request among a few on an arm can fail it, twice, and abort the canary.)
    let keys: Vec<String> = (0..200).map(|k| format!("customer-{k}")).collect();
    let mut previous: Vec<bool> = vec![false; keys.len()];
    for (step, share) in [(0, 5.0), (1, 25.0), (2, 50.0)] {
        let answer = wait_for(&server, "iris", |s| s["step"] == step);
        assert_eq!(answer["step"], step, "{answer}");
        // The same key twice in a row answers from the same arm.
        let first = classify(&server, row, Some(&keys[0]))["model_version"] == "2";
        let on_candidate: Vec<bool> = (keys.iter())
            .map(|key| classify(&server, row, Some(key))["model_version"] == "2")
            .collect();
        assert_eq!(first, on_candidate[0]);
        for (before, now) in previous.iter().zip(&on_candidate) {
            assert!(
                !before || *now,
                "a key left the candidate when its share rose"
            );
        }
        let count = on_candidate.iter().filter(|c| **c).count() as f64;
        assert!(
            (count / 200.0 * 100.0 - share).abs() < 10.0,
            "{count} of 200 at {share}%"
        );
        previous = on_candidate;
    }
    let answer = wait_for(&server, "iris", |s| {
        let history = s["history"].as_array().unwrap();
        history.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for promote")
    });
    assert_eq!(answer["state"], "running", "the last step passed: {answer}");
    for _ in 0..2 {
        let path = "/v1/pipelines/iris/experiment/promote";
        let (status, answer) = server.admin(Method::POST, path, "");
        assert_eq!(
            (status, &answer["state"]),
            (200, &json!("promoted")),
            "idempotent"
        );
    }
    assert_eq!(server.registry.get("iris", None).unwrap().number, 2);
    assert_eq!(classify(&server, row, Some(&keys[0]))["model_version"], "2");
}

#[test]
fn while_an_experiment_is_live_a_rollback_is_refused_unless_forced() {
    let server = TestServer::start(&[iris()]);
    server.registry.deploy_candidate(&iris()).unwrap();
    start(&server, "iris", json!({ "mode": "shadow", "candidate": 2 }));
    let (status, _) = server.admin(
        Method::PUT,
        "/v1/pipelines/iris/experiment",
        json!({ "mode": "shadow", "candidate": 2 }).to_string(),
    );
    assert_eq!(status, 409, "one experiment at a time");
    let body = json!({ "version": 2 }).to_string();
    let (status, answer) = server.admin(Method::POST, "/v1/pipelines/iris/rollback", body);
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("experiment"),
        "{answer}"
    );
    let body = json!({ "version": 2, "force": true }).to_string();
    let (status, _) = server.admin(Method::POST, "/v1/pipelines/iris/rollback", body);
    assert_eq!(status, 200);
    let answer = experiment(&server, "iris");
    assert_eq!(
        (&answer["state"], &answer["reason"]),
        (&json!("aborted"), &json!("superseded"))
    );
}

#[test]
fn under_overload_shadow_copies_are_dropped_and_counted_and_every_client_is_answered() {
    let options = Options {
        admission: Bounds::new(1, 256, 512 << 20),
        ..Options::default()
    };
    let server = TestServer::with_options(&[iris()], options);
    start(&server, "iris", json!({ "mode": "shadow", "candidate": 1 }));
    let row = iris_rows()[0].0.clone();
    let base = server.base.clone();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (base, row) = (base.clone(), row.clone());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let request = json!({ "inputs": [
                    { "name": "features", "shape": [1, 4], "datatype": "FP64", "data": row }
                ] });
                (0..50)
                    .filter(|_| {
                        let response = client
                            .post(format!("{base}/v2/models/iris/infer"))
                            .body(request.to_string())
                            .send()
                            .unwrap();
                        response.status() == 200
                    })
                    .count()
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 800, "every client request answered 200");
    let answer = experiment(&server, "iris");
    // Copies give way to the requests: skipped while the server is busy, or dropped from a
    // full queue; none of them is lost uncounted.
    let busy = answer["shadow_dropped"]["pressure"].as_u64().unwrap();
    let full = answer["shadow_dropped"]["queue_full"].as_u64().unwrap();
    assert!(busy + full > 0, "{answer}");
    let ran = answer["arms"]["candidate"]["requests"].as_u64().unwrap();
    let queued = 64;
    assert!(
        ran + busy + full <= 800 && ran + busy + full + queued >= 800,
        "{answer}"
    );
    let text = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(text.contains(r#"weir_shadow_dropped_total{pipeline="iris",reason="queue_full"}"#));
}

#[test]
fn a_restart_mid_step_resumes_the_step_with_a_fresh_window_and_promotes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let manifest = repo_root().join("examples/iris/pipeline.toml");
    let mut served = Served::start(dir, &manifest);
    let base = format!("http://{}", served.addr);
    let client = reqwest::blocking::Client::new();
    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    let admin = |method: Method, path: &str, body: String| -> Value {
        let response = (client.request(method, format!("{base}{path}")))
            .bearer_auth(token.trim())
            .body(body)
            .send()
            .unwrap();
        response.json().unwrap()
    };
    // The candidate: the same manifest, deployed through the CLI as a new version.
    let deployed = manage(
        &served,
        dir,
        &["deploy", "--candidate", manifest.to_str().unwrap()],
    );
    assert!(deployed.unwrap().contains("candidate"));
    let settings = json!({ "mode": "canary", "candidate": 2, "steps": [10, 20, 30],
                           "interval_seconds": 1, "auto_promote": false,
                           "gates": { "min_requests": 1, "max_p99_ratio": 100.0, "p99_slack_ms": 1e6 } });
    admin(
        Method::PUT,
        "/v1/pipelines/iris/experiment",
        settings.to_string(),
    );
    let request = json!({ "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "FP64",
                                       "data": [5.1, 3.5, 1.4, 0.2] }] });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut key = 0;
    while admin(Method::GET, "/v1/pipelines/iris/experiment", String::new())["step"] != 1
        && Instant::now() < deadline
    {
        key += 1;
        let response = (client.post(format!("{base}/v2/models/iris/infer")))
            .header("x-weir-route-key", key.to_string())
            .body(request.to_string())
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    served.child.kill().unwrap(); // SIGKILL
    served.child.wait().unwrap();

    let restarted = Served::start_with(dir, &[]);
    let base = format!("http://{}", restarted.addr);
    let answer: Value = (client.get(format!("{base}/v1/pipelines/iris/experiment")))
        .bearer_auth(token.trim())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["state"], "running", "{answer}");
    assert!(
        answer["step"].as_u64().unwrap() >= 1,
        "the step survives: {answer}"
    );
    assert_eq!(
        answer["arms"]["active"]["requests"], 0,
        "a fresh window: {answer}"
    );
    let status: Value = (client.get(format!("{base}/v1/status")))
        .bearer_auth(token.trim())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        status["pipelines"][0]["active"], 1,
        "no promotion on restart"
    );
}

#[test]
fn a_canary_whose_quality_falls_below_the_active_versions_is_aborted_on_the_truth() {
    let source = repo_root().join("examples/breast-cancer");
    let server = TestServer::start(&[Manifest::load(&source.join("pipeline.toml")).unwrap()]);
    let dir = tempfile::tempdir().unwrap();
    let degraded = crate::quality::degraded_breast_cancer(dir.path());
    server.registry.deploy_candidate(&degraded).unwrap();
    // Errors and latency pass; only the truth can fail it.
    start(
        &server,
        "breast-cancer",
        json!({ "mode": "canary", "candidate": 2, "steps": [50],
          "interval_seconds": 1, "auto_promote": false,
          "gates": { "min_requests": 5, "max_p99_ratio": 100.0, "p99_slack_ms": 1e6 } }),
    );
    let rows = crate::observe::heldout();
    let classify = |i: usize| {
        let (row, _) = &rows[i % rows.len()];
        let request = json!({ "id": format!("r{i}"), "inputs": [
            { "name": "features", "shape": [1, 30], "datatype": "FP64", "data": row }
        ] });
        assert_eq!(
            server
                .post_json("/v2/models/breast-cancer/infer", &request)
                .0,
            200
        );
    };
    let feedback: Vec<Value> = (0..rows.len())
        .map(|i| {
            classify(i);
            json!({ "id": format!("r{i}"), "target": rows[i].1 })
        })
        .collect();
    let body = json!({ "feedback": feedback }).to_string();
    let (status, summary) =
        server.admin(Method::POST, "/v1/pipelines/breast-cancer/feedback", body);
    assert_eq!(
        (status, &summary["matched"]),
        (200, &json!(rows.len())),
        "{summary}"
    );
    let started = Instant::now();
    let mut i = rows.len();
    while experiment(&server, "breast-cancer")["state"] == "running"
        && started.elapsed() < Duration::from_secs(20)
    {
        classify(i);
        i += 1;
    }
    let answer = experiment(&server, "breast-cancer");
    assert_eq!(answer["state"], "aborted", "{answer}");
    assert!(
        answer["reason"].as_str().unwrap().contains("accuracy"),
        "{answer}"
    );
}

#[test]
fn a_canary_that_passes_its_last_step_is_promoted() {
    let server = TestServer::start(&[iris()]);
    server.registry.deploy_candidate(&iris()).unwrap();
    start(
        &server,
        "iris",
        json!({ "mode": "canary", "candidate": 2, "steps": [50],
          "interval_seconds": 1,
          "gates": { "min_requests": 3, "max_p99_ratio": 100.0, "p99_slack_ms": 1e6 } }),
    );
    let row = &iris_rows()[0].0;
    let started = Instant::now();
    let mut key = 0;
    while experiment(&server, "iris")["state"] == "running"
        && started.elapsed() < Duration::from_secs(20)
    {
        key += 1;
        classify(&server, row, Some(&key.to_string()));
    }
    let answer = experiment(&server, "iris");
    assert_eq!(answer["state"], "promoted", "{answer}");
    assert_eq!(answer["reason"], "passed every step");
    assert_eq!(server.registry.get("iris", None).unwrap().number, 2);
}
