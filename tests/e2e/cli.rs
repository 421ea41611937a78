//! The `weir` binary as a user runs it: `--help`, and `weir serve` on the iris example
//! answering curl-style requests and Python's `tritonclient` alike.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{faulty_manifest_file, flipped_weights, repo_root};

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[test]
fn help_explains_every_flag_and_default() {
    let out = weir().arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.contains("KServe V2") && text.contains("serve"),
        "{text}"
    );
    let out = weir().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "127.0.0.1:8080",
        "--data-dir",
        "weir-data",
        "--max-body-bytes",
        "MANIFEST",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}: {text}");
    }
}

#[test]
fn serve_refuses_more_running_requests_than_the_instance_pool_holds() {
    // Each running request may hold three instances of the 1000-slot pool.
    let out = weir()
        .args([
            "serve",
            "--max-concurrency",
            "334",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("334 is not in 1..=333"), "{text}");
}

#[test]
fn serve_refuses_queue_and_connection_bounds_it_cannot_keep() {
    for (flag, value) in [
        ("--max-queue", "18446744073709551615"),
        ("--max-queue", "2305843009213693951"),
        ("--max-queue-per-pipeline", "1000001"),
        ("--max-connections", "0"),
        ("--header-timeout", "0"),
    ] {
        let out = weir()
            .args(["serve", flag, value, "--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {text}");
        assert!(
            text.contains(&format!("invalid value '{value}' for '{flag}")),
            "{flag} {value}: {text}"
        );
    }
    let out = weir().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--max-response-bytes",
        "--max-inflight-body-bytes",
        "--max-concurrency-per-pipeline",
        "--max-queue-per-pipeline",
        "--max-connections",
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
    ] {
        assert!(help.contains(flag), "serve --help lacks {flag}");
    }
}

#[test]
fn a_request_cannot_make_a_log_line_of_its_size() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(
        data.path(),
        &repo_root().join("examples/iris/pipeline.toml"),
    );
    let id = "i".repeat(100_000);
    let name = "n".repeat(100_000);
    let request = json!({ "id": id, "inputs": [{ "name": name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4] }] });
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", served.addr))
        .body(request.to_string())
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let record = served.wait_for_log(|r| r["message"] == "request failed");
    let logged_id = record["id"].as_str().unwrap();
    assert!(
        logged_id.len() < 200 && logged_id.ends_with("… (100000 bytes)"),
        "{logged_id}"
    );
    let error = record["error"].as_str().unwrap();
    assert!(error.len() < 1200 && error.contains("bytes)"), "{error}");
}

#[test]
fn serve_with_a_missing_manifest_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = weir()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .arg("no/such/pipeline.toml")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(text.contains("no/such/pipeline.toml"), "{text}");
}

/// `weir serve` on an ephemeral port, killed when dropped.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// The server's JSON log records, as they come.
    logs: mpsc::Receiver<Value>,
    /// The records logged before it listened.
    startup: Vec<Value>,
}

impl Served {
    pub fn start(data_dir: &Path, manifest: &Path) -> Served {
        Served::start_with(data_dir, &[manifest])
    }

    /// Serve `data_dir` with `manifests` (none: what the store holds).
    pub fn start_with(data_dir: &Path, manifests: &[&Path]) -> Served {
        let mut child = weir()
            .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(manifests)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let record = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| panic!("log line is not JSON: {line}"));
                let _ = tx.send(record);
            }
        });
        let mut served = Served {
            child,
            addr: String::new(),
            logs,
            startup: Vec::new(),
        };
        let mut startup = Vec::new();
        let listening = served.wait_for_log(|r| {
            startup.push(r.clone());
            r["addr"].is_string()
        });
        served.addr = listening["addr"].as_str().unwrap().to_owned();
        served.startup = startup;
        served
    }

    /// The first log record (from now on) that satisfies `wanted`.
    pub fn wait_for_log(&self, mut wanted: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let record = self
                .logs
                .recv_timeout(Duration::from_secs(120))
                .expect("the awaited log record");
            if wanted(&record) {
                return record;
            }
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A virtualenv with tritonclient[http], made once per target directory.
fn tritonclient_python() -> std::path::PathBuf {
    crate::support::python_with("py-tritonclient", &["tritonclient[http]==2.*", "numpy"])
}

#[test]
fn tritonclient_gets_the_same_predictions_as_plain_http() {
    let data_dir = tempfile::tempdir().unwrap();
    let served = Served::start(
        data_dir.path(),
        &repo_root().join("examples/iris/pipeline.toml"),
    );
    let rows = json!([
        [5.1, 3.5, 1.4, 0.2],
        [6.0, 2.2, 4.0, 1.0],
        [6.7, 3.0, 5.2, 2.3]
    ]);
    let plain: Value = reqwest::blocking::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", served.addr))
        .json(&json!({ "inputs": [{ "name": "features", "shape": [3, 4], "datatype": "FP32", "data": rows }] }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let out = Command::new(tritonclient_python())
        .arg(repo_root().join("examples/iris/client.py"))
        .args(["--url", &served.addr])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Value = serde_json::from_slice(&out.stdout).unwrap();
    for form in ["binary", "json"] {
        let triton = &answers[form];
        assert_eq!(triton["model_version"], "1", "{form}");
        assert_eq!(triton["label"], plain["outputs"][0]["data"], "{form}");
        assert_eq!(
            triton["label"],
            json!(["setosa", "versicolor", "virginica"])
        );
        let want = plain["outputs"][1]["data"].as_array().unwrap();
        let got = triton["probabilities"].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{form}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-6,
                "{form}"
            );
        }
    }
}

#[test]
fn component_log_lines_reach_the_server_log_with_stage_component_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = faulty_manifest_file(dir.path(), "echo", "mode = \"echo\"");
    let served = Served::start(dir.path(), &manifest);
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{}/v2/models/echo/infer", served.addr))
        .body(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}]}"#)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let record = served.wait_for_log(|r| r["message"] == "echoing 1 tensors");
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["stage"], "model");
    assert_eq!(record["component"], "faulty-stage");
    assert_eq!(record["version"], "0.1.0");
    // Then the request's own record: pipeline, version, status, time per stage.
    let request = served.wait_for_log(|r| r["message"] == "request");
    assert_eq!(request["pipeline"], "echo");
    assert_eq!(request["version"], "1");
    assert_eq!(request["status"], 200);
    let stages = request["stages"].as_str().unwrap();
    assert!(
        stages.starts_with("validate=") && stages.contains(" model="),
        "{stages}"
    );
    assert!(request["duration_us"].as_u64().is_some());
}

#[test]
fn each_stage_of_a_request_writes_its_output_under_its_own_name() {
    // Two stages of one request: the preprocess writes to stdout and stderr, then the model
    // panics when asked. Each line is logged under the stage that wrote it, and the model's
    // trap quotes only the model's stderr.
    let dir = tempfile::tempdir().unwrap();
    let wasm = Path::new(env!("WEIR_TEST_COMPONENTS")).join("faulty_stage.wasm");
    let manifest = dir.path().join("chain.toml");
    let stage = |slot: &str, config: &str| {
        format!(
            "[{slot}]\ncomponent = \"faulty-stage@0.1.0\"\npath = {:?}\nconfig = {{ {config} }}\n",
            wasm.display().to_string()
        )
    };
    let text = format!(
        "name = \"chain\"\n{}{}",
        stage(
            "preprocess",
            "mode = \"say\", text = \"said by preprocess\""
        ),
        stage("model", "mode = \"panic\", on_request = true")
    );
    std::fs::write(&manifest, text).unwrap();
    let served = Served::start(dir.path(), &manifest);
    let response = reqwest::blocking::Client::new()
        .post(format!("http://{}/v2/models/chain/infer", served.addr))
        .body(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[1]}],"parameters":{"fault":true}}"#)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 500);
    let message = response.text().unwrap();
    assert!(
        message.contains("stage 'model' (faulty-stage@0.1.0) trapped")
            && message.contains("faulty-stage panics as configured")
            && !message.contains("said by preprocess"),
        "{message}"
    );
    for stream in ["stdout", "stderr"] {
        let record =
            served.wait_for_log(|r| r["message"] == "said by preprocess" && r["stream"] == stream);
        assert_eq!(record["stage"], "preprocess", "{record}");
    }
}

#[test]
fn weir_profile_reproduces_the_committed_reference_and_prints_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("reference.json");
    let iris = repo_root().join("examples/iris");
    let out = weir()
        .arg("profile")
        .arg(iris.join("reference.csv"))
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    let committed: Value =
        serde_json::from_slice(&std::fs::read(iris.join("reference.json")).unwrap()).unwrap();
    assert_eq!(
        fresh, committed,
        "examples/iris/reference.json is stale: run examples/iris/train.py"
    );
    assert_eq!(fresh["rows"], 150);
    assert_eq!(fresh["columns"][4]["kind"], "categorical");
    let schema = String::from_utf8(out.stdout).unwrap();
    assert!(
        schema.contains(r#"{ name = "petal_width", min = 0, max = "#),
        "{schema}"
    );
    assert!(
        schema
            .contains(r#"{ name = "label", categories = ["setosa", "versicolor", "virginica"] }"#),
        "{schema}"
    );
}

/// Write the flipped iris weights into `dir` and push them with the CLI as
/// `iris-flipped@1.0.0`; the CLI's output.
fn push_flipped(served: &Served, dir: &Path) -> String {
    let path = dir.join("flipped.json");
    std::fs::write(&path, flipped_weights()).unwrap();
    let file = path.to_str().unwrap();
    manage(
        served,
        dir,
        &["push", "artifact", "iris-flipped@1.0.0", file],
    )
    .unwrap()
}

/// Run a `weir` management command against `served`; its stdout, or its stderr on failure.
pub fn manage(served: &Served, data_dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = weir()
        .args(args)
        .args(["--server", &format!("http://{}", served.addr), "--data-dir"])
        .arg(data_dir)
        .env_remove("WEIR_ADMIN_TOKEN")
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8(out.stderr).unwrap())
    }
}

#[test]
fn the_cli_pushes_deploys_swaps_lists_and_rolls_back() {
    let data = tempfile::tempdir().unwrap();
    let iris_manifest = repo_root().join("examples/iris/pipeline.toml");
    let served = Served::start(data.path(), &iris_manifest);
    let dir = data.path();
    let manifest = iris_manifest.to_str().unwrap();
    let out = manage(&served, dir, &["deploy", manifest]).unwrap();
    assert!(out.contains("iris serves version 1"), "{out}");
    let out = push_flipped(&served, dir);
    assert!(
        out.contains("pushed artifact iris-flipped@1.0.0 (sha256-"),
        "{out}"
    );
    let out = manage(
        &served,
        dir,
        &[
            "swap",
            "iris",
            "--stage",
            "model",
            "--artifact",
            "model=iris-flipped@1.0.0",
        ],
    )
    .unwrap();
    assert!(out.contains("iris now serves version 2 (new)"), "{out}");
    let out = manage(&served, dir, &["versions", "iris"]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[1].starts_with("*") && lines[1].contains("model=logistic-regression@0.1.0"),
        "{out}"
    );
    let out = manage(&served, dir, &["rollback", "iris", "1"]).unwrap();
    assert!(out.contains("iris serves version 1"), "{out}");
    let status: Value = serde_json::from_str(&manage(&served, dir, &["status"]).unwrap()).unwrap();
    assert_eq!(status["pipelines"][0]["active"], 1);
    assert_eq!(status["pipelines"][0]["versions"], json!([1, 2]));
    let err = manage(
        &served,
        dir,
        &[
            "swap",
            "iris",
            "--stage",
            "model",
            "--component",
            "nope@1.0.0",
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("404") && err.contains("no component nope@1.0.0"),
        "{err}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let err = manage(&served, elsewhere.path(), &["status"]).unwrap_err();
    assert!(err.contains("no admin token"), "{err}");
    for command in ["push", "deploy", "swap", "rollback", "versions", "status"] {
        let out = weir().args([command, "--help"]).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success()
                && text.contains("--server")
                && text.contains("--admin-token-file"),
            "{command}: {text}"
        );
    }
}

#[test]
fn after_kill_9_during_swaps_a_restart_serves_the_last_completed_version_without_recompiling() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let mut served = Served::start(dir, &repo_root().join("examples/iris/pipeline.toml"));
    push_flipped(&served, dir);
    let token = std::fs::read_to_string(dir.join("admin-token")).unwrap();
    let base = format!("http://{}", served.addr);
    let original = {
        let (_, listed): (u16, Value) = {
            let r = reqwest::blocking::Client::new()
                .get(format!("{base}/v1/artifacts"))
                .bearer_auth(&token)
                .send()
                .unwrap();
            (r.status().as_u16(), r.json().unwrap())
        };
        let a = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "iris.model")
            .unwrap()
            .clone();
        format!("iris.model@{}", a["version"].as_str().unwrap())
    };
    // Swap back and forth until the kill; remember the last version acknowledged.
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let swapper = {
        let acknowledged = acknowledged.clone();
        std::thread::spawn(move || {
            let client = reqwest::blocking::Client::new();
            for i in 0.. {
                let artifact = if i % 2 == 0 {
                    "iris-flipped@1.0.0"
                } else {
                    original.as_str()
                };
                let body = json!({ "stage": "model", "artifacts": { "model": artifact } });
                let Ok(response) = client
                    .post(format!("{base}/v1/pipelines/iris/swap"))
                    .bearer_auth(&token)
                    .body(body.to_string())
                    .send()
                else {
                    return;
                };
                let Ok(change) = response.json::<Value>() else {
                    return;
                };
                acknowledged.store(
                    change["version"].as_u64().unwrap(),
                    std::sync::atomic::Ordering::SeqCst,
                );
            }
        })
    };
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 500;
    std::thread::sleep(Duration::from_millis(300 + u64::from(jitter)));
    served.child.kill().unwrap(); // SIGKILL
    served.child.wait().unwrap();
    swapper.join().unwrap();
    let acknowledged = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    assert!(acknowledged > 1, "no swap completed before the kill");

    let restarted = Served::start_with(dir, &[]);
    let compiled: Vec<&Value> = restarted
        .startup
        .iter()
        .filter(|r| r["message"] == "compiled component")
        .collect();
    assert!(compiled.is_empty(), "the restart recompiled: {compiled:?}");
    let versions: Value =
        serde_json::from_str(&manage(&restarted, dir, &["status"]).unwrap()).unwrap();
    let active = versions["pipelines"][0]["active"].as_u64().unwrap();
    assert!(
        active == acknowledged || active == acknowledged + 1,
        "active {active} after the last acknowledged swap to {acknowledged}"
    );
    let answer: Value = reqwest::blocking::Client::new()
        .post(format!("http://{}/v2/models/iris/infer", restarted.addr))
        .body(r#"{"inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["model_version"], active.to_string());
    // Odd versions serve the original weights (setosa for this row), even ones the flipped.
    let label = answer["outputs"][0]["data"][0].as_str().unwrap();
    assert_eq!(
        label == "setosa",
        active % 2 == 1,
        "version {active} answered {label}"
    );
}

/// The active version of the one pipeline `served` serves, by `weir status`.
fn active_version(served: &Served, dir: &Path) -> u64 {
    let status: Value = serde_json::from_str(&manage(served, dir, &["status"]).unwrap()).unwrap();
    status["pipelines"][0]["active"].as_u64().unwrap()
}

#[test]
fn a_restart_with_the_same_manifest_keeps_what_operators_did_and_a_changed_one_deploys() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    // A copy of the example, so the test can edit its manifest.
    let example = dir.join("iris");
    std::fs::create_dir(&example).unwrap();
    for file in [
        "pipeline.toml",
        "logistic_regression.json",
        "reference.json",
    ] {
        std::fs::copy(
            repo_root().join("examples/iris").join(file),
            example.join(file),
        )
        .unwrap();
    }
    let manifest = example.join("pipeline.toml");
    let restart = |served: Served| {
        drop(served);
        Served::start(dir, &manifest)
    };
    let served = Served::start(dir, &manifest);
    assert_eq!(active_version(&served, dir), 1);
    let served = restart(served);
    assert_eq!(active_version(&served, dir), 1, "the same manifest again");

    push_flipped(&served, dir);
    let swap = ["swap", "iris", "--stage", "model", "--artifact"];
    manage(
        &served,
        dir,
        &[&swap[..], &["model=iris-flipped@1.0.0"]].concat(),
    )
    .unwrap();
    let served = restart(served);
    assert_eq!(active_version(&served, dir), 2, "a swap survives a restart");
    manage(&served, dir, &["rollback", "iris", "1"]).unwrap();
    let served = restart(served);
    assert_eq!(
        active_version(&served, dir),
        1,
        "a rollback survives a restart"
    );
    let versions = manage(&served, dir, &["versions", "iris"]).unwrap();
    assert_eq!(
        versions.lines().count(),
        2,
        "no version was added: {versions}"
    );

    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"virginica\"", "\"Virginica\"")).unwrap();
    let served = restart(served);
    assert_eq!(
        active_version(&served, dir),
        3,
        "the edited manifest deploys"
    );
    let served = restart(served);
    assert_eq!(active_version(&served, dir), 3, "once");
}
