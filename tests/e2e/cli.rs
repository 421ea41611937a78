//! The `weir` binary as a user runs it: `--help`, and `weir serve` on the iris example
//! answering curl-style requests and Python's `tritonclient` alike.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::repo_root;

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
struct Served {
    child: Child,
    addr: String,
    /// The server's JSON log records, as they come.
    logs: mpsc::Receiver<Value>,
}

impl Served {
    fn start(data_dir: &Path, manifest: &Path) -> Served {
        let mut child = weir()
            .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .arg(manifest)
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
        };
        let listening = served.wait_for_log(|r| r["addr"].is_string());
        served.addr = listening["addr"].as_str().unwrap().to_owned();
        served
    }

    /// The first log record (from now on) that satisfies `wanted`.
    fn wait_for_log(&self, wanted: impl Fn(&Value) -> bool) -> Value {
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
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-tritonclient");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .unwrap();
        assert!(ok.success(), "python3 -m venv failed");
        let ok = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "tritonclient[http]==2.*",
                "numpy",
            ])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install tritonclient[http] failed");
    }
    python
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
    let manifest = dir.path().join("echo.toml");
    let wasm = Path::new(env!("WEIR_TEST_COMPONENTS")).join("faulty_stage.wasm");
    std::fs::write(
        &manifest,
        format!(
            "name = \"echo\"\n[model]\ncomponent = \"faulty-stage@0.1.0\"\npath = {:?}\n\
             config = {{ mode = \"echo\" }}\n",
            wasm.display().to_string()
        ),
    )
    .unwrap();
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
}
