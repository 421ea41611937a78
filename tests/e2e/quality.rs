//! Ground truth on real data: the breast-cancer held-out half and scikit-learn's diabetes set,
//! served, then labelled through the feedback route; the reported quality is scikit-learn's on
//! the same predictions, a degraded version alerts (and a webhook on loopback hears it once),
//! feedback that does not fit is counted, never fatal, and a `kill -9` keeps what was flushed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use weir::alerts::{Alerts, MinStatus};
use weir::pipeline::manifest::Manifest;
use weir::quality::records::{FLUSH_INTERVAL, RecordBounds};

use crate::cli::{Served, manage};
use crate::observe::{example, heldout};
use crate::support::{Options, TOKEN, TestServer, iris, negated_weights, repo_root};

/// A webhook receiver on loopback: every JSON body POSTed to it, answered 200.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let bodies = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                bodies
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        Webhook { url, received }
    }

    /// The alerts received about `what`, once `count` of them came (or 10 s passed), and after
    /// a pause in which more could come.
    fn alerts(&self, what: &str, count: usize) -> Vec<Value> {
        let about = || -> Vec<Value> {
            let received = self.received.lock().unwrap();
            received
                .iter()
                .filter(|a| a["what"] == what)
                .cloned()
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while about().len() < count && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        about()
    }
}

/// scikit-learn's metrics of `given` (tests/quality/sklearn_metrics.py).
fn sklearn_metrics(given: &Value) -> Value {
    let mut child = Command::new(crate::zoo::python())
        .arg(repo_root().join("tests/quality/sklearn_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child.stdin.take().unwrap())
        .write_all(given.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "sklearn_metrics.py failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One row of the breast-cancer pipeline through `route`, under `id` if given: the id the
/// answer names, the label and the class probabilities.
fn classify(server: &TestServer, route: &str, id: Option<&str>, row: &[f64]) -> (String, Value) {
    let mut request = json!({ "inputs": [
        { "name": "features", "shape": [1, 30], "datatype": "FP64", "data": row }
    ] });
    if let Some(id) = id {
        request["id"] = json!(id);
    }
    let (status, answer) = server.post_json(route, &request);
    assert_eq!(status, 200, "{answer}");
    let id = answer["id"]
        .as_str()
        .expect("every answer names its request")
        .to_owned();
    (id, answer)
}

/// The `name` output's data of an answer.
fn output<'a>(answer: &'a Value, name: &str) -> &'a Value {
    let outputs = answer["outputs"].as_array().unwrap();
    &outputs.iter().find(|o| o["name"] == name).unwrap()["data"]
}

/// The breast-cancer example's pipeline.
fn breast_cancer() -> Manifest {
    Manifest::load(&example("breast-cancer").join("pipeline.toml")).unwrap()
}

/// The breast-cancer pipeline with its coefficients negated, its files in `dir`: a real,
/// badly degraded model.
pub fn degraded_breast_cancer(dir: &Path) -> Manifest {
    let source = example("breast-cancer");
    let weights = negated_weights("breast-cancer");
    std::fs::write(dir.join("logistic_regression.json"), weights).unwrap();
    std::fs::copy(source.join("reference.json"), dir.join("reference.json")).unwrap();
    let manifest = std::fs::read_to_string(source.join("pipeline.toml")).unwrap();
    Manifest::parse(&manifest, dir).unwrap()
}

#[test]
fn quality_per_version_is_scikit_learns_and_a_degraded_version_alerts_once() {
    let webhook = Webhook::start();
    let options = Options {
        alerts: Alerts::webhook(&webhook.url, MinStatus::Alert).unwrap(),
        ..Options::default()
    };
    let server = TestServer::with_options(&[breast_cancer()], options);
    let dir = tempfile::tempdir().unwrap();
    let change = server
        .registry
        .deploy(&degraded_breast_cancer(dir.path()))
        .unwrap();
    assert_eq!(change.version, 2, "the degraded model serves as version 2");

    // Version 1 (no longer active) answers every held-out row under the client's ids; the
    // active version 2 answers them too, under ids Weir makes.
    let rows = heldout();
    let (mut feedback, mut predicted, mut probabilities) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (row, class)) in rows.iter().enumerate() {
        let route = "/v2/models/breast-cancer/versions/1/infer";
        let (id, answer) = classify(&server, route, Some(&format!("row-{i}")), row);
        assert_eq!(id, format!("row-{i}"));
        predicted.push(output(&answer, "label")[0].clone());
        probabilities.push(output(&answer, "probabilities").clone());
        feedback.push(json!({ "id": id, "target": class }));
        let (id, _) = classify(&server, "/v2/models/breast-cancer/infer", None, row);
        assert!(id.starts_with("weir-"), "{id}");
        feedback.push(json!({ "id": id, "target": class }));
    }
    let (status, summary) = server.admin(
        Method::POST,
        "/v1/pipelines/breast-cancer/feedback",
        json!({ "feedback": feedback }).to_string(),
    );
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["matched"], 2 * rows.len(), "{summary}");

    let (status, report) = server.admin(Method::GET, "/v1/pipelines/breast-cancer/quality", "");
    assert_eq!(status, 200, "{report}");
    let versions = report["versions"].as_array().unwrap();
    let (good, bad) = (&versions[0], &versions[1]);
    assert_eq!(good["version"], 1);
    assert_eq!(good["status"], "ok", "{good}");
    assert_eq!(good["labelled"], rows.len());
    assert_eq!(good["coverage"], 1.0);
    let truth: Vec<&String> = rows.iter().map(|(_, class)| class).collect();
    let expected = sklearn_metrics(&json!({
        "task": "classification", "truth": truth, "predicted": predicted,
        "probabilities": probabilities, "classes": ["malignant", "benign"],
    }));
    let metrics = &good["metrics"];
    for metric in ["accuracy", "macro_f1"] {
        assert_eq!(metrics[metric], expected[metric], "{metric}: {good}");
    }
    for class in ["malignant", "benign"] {
        let scores = &good["classes"][class];
        assert_eq!(scores["precision"], expected["precision"][class], "{class}");
        assert_eq!(scores["recall"], expected["recall"][class], "{class}");
    }
    for metric in ["log_loss", "brier"] {
        let (ours, theirs) = (
            metrics[metric].as_f64().unwrap(),
            expected[metric].as_f64().unwrap(),
        );
        assert!(
            (ours - theirs).abs() < 1e-12 * theirs.max(1.0),
            "{metric}: {ours} vs {theirs}"
        );
    }
    assert_eq!(bad["version"], 2);
    assert_eq!(bad["status"], "alert", "{bad}");
    assert!(bad["metrics"]["accuracy"].as_f64().unwrap() < 0.5, "{bad}");

    let alerts = webhook.alerts("quality", 1);
    assert_eq!(alerts.len(), 1, "exactly one quality alert: {alerts:?}");
    let alert = &alerts[0];
    assert_eq!(alert["pipeline"], "breast-cancer");
    assert_eq!(alert["version"], 2);
    assert_eq!(
        (&alert["from"], &alert["to"]),
        (&json!("insufficient"), &json!("alert"))
    );
    assert_eq!(alert["report"], "/v1/pipelines/breast-cancer/quality");
    assert!(alert["scores"]["accuracy"].is_number(), "{alert}");

    let text = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    for line in [
        r#"weir_quality_status{pipeline="breast-cancer",version="1"} 0"#,
        r#"weir_quality_status{pipeline="breast-cancer",version="2"} 2"#,
        r#"weir_quality_score{pipeline="breast-cancer",version="1",metric="accuracy"} 0.97"#,
        "weir_alerts_delivered_total ",
    ] {
        assert!(text.contains(line), "/metrics lacks {line}");
    }
}

#[test]
fn diabetes_regression_quality_is_scikit_learns() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(crate::zoo::python())
        .arg(repo_root().join("tests/quality/diabetes.py"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(made.success(), "tests/quality/diabetes.py failed");
    let manifest = Manifest::parse(
        "name = \"diabetes\"\n\
         [[inputs]]\nname = \"features\"\ndatatype = \"FP32\"\nshape = [-1, 10]\n\
         [[outputs]]\nname = \"value\"\ndatatype = \"FP32\"\nshape = [-1]\n\
         [model]\ncomponent = \"onnx-model@0.1.0\"\nartifacts = { model = \"diabetes.onnx\" }\n\
         [quality]\ntask = \"regression\"\nprediction = \"value\"\nmin_labelled = 50\n\
         baseline = { mae = 45.0 }\n",
        dir.path(),
    )
    .unwrap();
    let server = TestServer::start(&[manifest]);
    let heldout: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("heldout.json")).unwrap())
            .unwrap();
    let rows = heldout["features"].as_array().unwrap();
    let targets = heldout["targets"].as_array().unwrap();
    let (mut feedback, mut predicted) = (Vec::new(), Vec::new());
    // Requests of ten rows: their truth is a list of ten.
    for (n, (chunk, truth)) in rows.chunks(10).zip(targets.chunks(10)).enumerate() {
        let data: Vec<f64> = chunk
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let request = json!({ "id": format!("batch-{n}"), "inputs": [
            { "name": "features", "shape": [chunk.len(), 10], "datatype": "FP32", "data": data }
        ] });
        let (status, answer) = server.post_json("/v2/models/diabetes/infer", &request);
        assert_eq!(status, 200, "{answer}");
        predicted.extend(output(&answer, "value").as_array().unwrap().iter().cloned());
        feedback.push(json!({ "id": format!("batch-{n}"), "target": truth }));
    }
    let (status, summary) = server.admin(
        Method::POST,
        "/v1/pipelines/diabetes/feedback",
        json!({ "feedback": feedback }).to_string(),
    );
    assert_eq!(
        (status, &summary["matched"]),
        (200, &json!(feedback.len())),
        "{summary}"
    );
    let (_, report) = server.admin(Method::GET, "/v1/pipelines/diabetes/quality", "");
    let version = &report["versions"][0];
    assert_eq!(version["labelled"], rows.len());
    let expected = sklearn_metrics(&json!({
        "task": "regression", "truth": targets, "predicted": predicted,
    }));
    for metric in ["mae", "rmse"] {
        let ours = version["metrics"][metric].as_f64().unwrap();
        let theirs = expected[metric].as_f64().unwrap();
        assert!(
            (ours - theirs).abs() < 1e-12 * theirs,
            "{metric}: {ours} vs {theirs}"
        );
    }
    assert!(version["metrics"]["bias"].is_number());
    // 142 rows, MAE near scikit-learn's held-out MAE for this split: within the baseline's
    // 10% warn margin or not, the status is judged, not insufficient.
    assert_ne!(version["status"], "insufficient", "{version}");
}

#[test]
fn feedback_counts_unknown_duplicate_expired_and_invalid_truth_without_failing_the_batch() {
    let options = Options {
        records: RecordBounds {
            rows: 5,
            seconds: 3600,
        },
        ..Options::default()
    };
    let server = TestServer::with_options(&[iris()], options);
    let row = json!([5.1, 3.5, 1.4, 0.2]);
    for i in 0..8 {
        let request = json!({ "id": format!("a{i}"), "inputs": [
            { "name": "features", "shape": [1, 4], "datatype": "FP64", "data": row }
        ] });
        assert_eq!(server.post_json("/v2/models/iris/infer", &request).0, 200);
    }
    let feedback = json!({ "feedback": [
        { "id": "a7", "target": "setosa" },
        { "id": "a7", "target": "virginica" },
        { "id": "a0", "target": "setosa" },
        { "id": "never-sent", "target": "setosa" },
        { "id": "a6", "target": ["setosa", "setosa"] },
        { "id": "a5", "target": { "not": "a label" } },
    ] });
    // Without a token, and with a wrong one, feedback is refused.
    let (status, _) = server.post_json("/v1/pipelines/iris/feedback", &feedback);
    assert_eq!(status, 401);
    let (status, summary) = server.admin(
        Method::POST,
        "/v1/pipelines/iris/feedback",
        feedback.to_string(),
    );
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["matched"], 1, "{summary}");
    assert_eq!(summary["duplicates"], 1, "the first truth wins: {summary}");
    assert_eq!(
        summary["expired"], 1,
        "a0 was evicted by the 5-record bound: {summary}"
    );
    assert_eq!(summary["unknown"], 1, "{summary}");
    assert_eq!(summary["invalid"], 2, "{summary}");
    let errors = summary["errors"].to_string();
    assert!(
        errors.contains("2 target(s) for a request of 1 row(s)"),
        "{errors}"
    );
    assert!(errors.contains("a number or text"), "{errors}");

    let (_, report) = server.admin(Method::GET, "/v1/pipelines/iris/quality", "");
    assert_eq!(report["records_evicted"], 3, "{report}");
    let version = &report["versions"][0];
    assert_eq!(version["labelled"], 1);
    assert_eq!(
        version["status"], "insufficient",
        "under min_labelled: {version}"
    );

    let (status, answer) = server.admin(
        Method::POST,
        "/v1/pipelines/nope/feedback",
        "{\"feedback\": []}",
    );
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = server.admin(
        Method::POST,
        "/v1/pipelines/iris/feedback",
        "{\"truth\": 1}",
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("invalid feedback"),
        "{answer}"
    );
}

#[test]
fn with_an_inference_token_feedback_takes_it_and_not_the_admin_token() {
    let options = Options {
        inference_token: Some("business-token"),
        ..Options::default()
    };
    let server = TestServer::with_options(&[iris()], options);
    let url = format!("{}/v1/pipelines/iris/feedback", server.base);
    let client = reqwest::blocking::Client::new();
    let send = |token: &str| {
        let response = client
            .post(&url)
            .bearer_auth(token)
            .body(r#"{"feedback": [{"id": "x", "target": "setosa"}]}"#)
            .send()
            .unwrap();
        response.status().as_u16()
    };
    assert_eq!(send(TOKEN), 401);
    assert_eq!(send("business-token"), 200);
}

#[test]
fn a_kill_9_loses_at_most_the_last_flush_and_the_records_reopen_with_their_truth() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let mut served = Served::start(dir, &example("breast-cancer").join("pipeline.toml"));
    let rows = heldout();
    let client = reqwest::blocking::Client::new();
    let classify = |addr: &str, id: &str, row: &[f64]| {
        let request = json!({ "id": id, "inputs": [
            { "name": "features", "shape": [1, 30], "datatype": "FP64", "data": row }
        ] });
        let response = (client.post(format!("http://{addr}/v2/models/breast-cancer/infer")))
            .body(request.to_string())
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
    };
    let mut truth = String::from("id,target\n");
    for (i, (row, class)) in rows.iter().take(60).enumerate() {
        classify(&served.addr, &format!("early-{i}"), row);
        truth.push_str(&format!("early-{i},{class}\n"));
    }
    std::thread::sleep(FLUSH_INTERVAL * 2 + Duration::from_millis(500));
    // Answered within the last flush interval: these may be lost.
    for (i, (row, class)) in rows.iter().skip(60).take(5).enumerate() {
        classify(&served.addr, &format!("late-{i}"), row);
        truth.push_str(&format!("late-{i},{class}\n"));
    }
    served.child.kill().unwrap(); // SIGKILL
    served.child.wait().unwrap();

    let db = rusqlite::Connection::open(dir.join("quality.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(db);
    let restarted = Served::start_with(dir, &[]);
    let file = dir.join("truth.csv");
    std::fs::write(&file, truth).unwrap();
    let printed = manage(
        &restarted,
        dir,
        &["feedback", "breast-cancer", file.to_str().unwrap()],
    )
    .unwrap();
    // "65 sent: N matched, M unknown ids, ..."
    let count = |after: &str| -> u64 {
        let at = printed.find(after).unwrap_or_else(|| panic!("{printed}"));
        let number = printed[..at].trim_end().rsplit([' ', ':']).next().unwrap();
        number.parse().unwrap()
    };
    let (matched, unknown) = (count(" matched"), count(" unknown ids"));
    assert!((60..=65).contains(&matched), "{printed}");
    assert_eq!(matched + unknown, 65, "{printed}");

    let report = |served: &Served| -> Value {
        let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
        (client.get(format!(
            "http://{}/v1/pipelines/breast-cancer/quality",
            served.addr
        )))
        .bearer_auth(token.trim())
        .send()
        .unwrap()
        .json()
        .unwrap()
    };
    let version = report(&restarted)["versions"][0].clone();
    assert_eq!(version["labelled"], matched, "{version}");
    assert_eq!(version["status"], "ok", "{version}");
    drop(restarted);
    // Truth is kept too: after another restart the window holds the same rows.
    let again = Served::start_with(dir, &[]);
    let version = report(&again)["versions"][0].clone();
    assert_eq!(version["window_rows"], matched, "{version}");
    assert_eq!(version["status"], "ok", "{version}");
}

#[test]
fn the_shipped_prometheus_rules_pass_promtool_and_name_metrics_the_server_exports() {
    let rules = repo_root().join("examples/alerts.yml");
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs: install Debian's `prometheus` package (.ci/run does)");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    // A server with requests, drift, quality and an alert behind it exports every series the
    // rules name.
    let server = TestServer::start(&[iris()]);
    let row = json!([5.1, 3.5, 1.4, 0.2]);
    let request = json!({ "id": "r", "inputs": [
        { "name": "features", "shape": [1, 4], "datatype": "FP64", "data": row }
    ] });
    assert_eq!(server.post_json("/v2/models/iris/infer", &request).0, 200);
    let feedback = json!({ "feedback": [{ "id": "r", "target": "setosa" }] }).to_string();
    assert_eq!(
        server
            .admin(Method::POST, "/v1/pipelines/iris/feedback", feedback)
            .0,
        200
    );
    let rows: Vec<Value> = (0..100).map(|_| row.clone()).collect();
    let drifting = json!({ "inputs": [
        { "name": "features", "shape": [100, 4], "datatype": "FP64", "data": rows }
    ] });
    assert_eq!(server.post_json("/v2/models/iris/infer", &drifting).0, 200);
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    let text = std::fs::read_to_string(&rules).unwrap();
    let mut named = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("weir_"))
        .peekable();
    assert!(named.peek().is_some());
    for name in named {
        // A series, or a histogram's family name (its series end in _bucket, _sum, _count).
        let exported = [
            format!("\n{name}{{"),
            format!("\n{name} "),
            format!("# TYPE {name} "),
        ]
        .iter()
        .any(|line| metrics.contains(line));
        assert!(exported, "the rules name {name}, which /metrics lacks");
    }
}
