//! The ONNX compatibility suite: models exported by the real converters — scikit-learn through
//! skl2onnx, XGBoost and LightGBM through onnxmltools, a CNN and an attention block built with
//! `onnx.helper` — each served by the stock `onnx-model` stage with a four-line manifest and
//! checked against what the `onnxruntime` Python package answers on the same rows: labels
//! exactly, numbers within 1e-4. `tests/onnx-zoo/export.py` makes them, in a virtualenv of
//! pinned versions that the suite installs from PyPI.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};
use weir::engine::Engine;
use weir::nn::OnnxRuntime;
use weir::pipeline::manifest::Manifest;

use crate::support::{Options, TestServer, python_with, registry_on, repo_root};

/// What the suite's exporters need, pinned.
const PACKAGES: &[&str] = &[
    "numpy==2.4.6",
    "scikit-learn==1.9.1",
    "skl2onnx==1.20.0",
    "onnx==1.23.2",
    "onnxruntime==1.32.0",
    "onnxmltools==1.16.0",
    "xgboost-cpu==3.2.0",
    "lightgbm==4.7.0",
];

/// Every model of the suite, and whether tract alone serves it (the README's table).
const MODELS: &[(&str, bool)] = &[
    ("logistic_regression", true),
    ("decision_tree", true),
    ("random_forest", true),
    ("gradient_boosting_classifier", true),
    ("gradient_boosting_regressor", false),
    ("svc", false),
    ("knn", true),
    ("mlp_regressor", true),
    ("scaler_pca_logistic", false),
    ("string_labels", false),
    ("string_input", false),
    ("xgboost", true),
    ("lightgbm", true),
    ("cnn", true),
    ("attention", true),
];

/// The suite's virtualenv (scikit-learn, onnx, onnxruntime), which other tests share.
pub fn python() -> PathBuf {
    python_with("py-onnx-zoo", PACKAGES)
}

/// The exported models and their fixtures, made once per test process.
fn zoo() -> &'static Path {
    static ZOO: OnceLock<PathBuf> = OnceLock::new();
    ZOO.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-zoo");
        let ok = std::process::Command::new(python())
            .args(["-W", "ignore"])
            .arg(repo_root().join("tests/onnx-zoo/export.py"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "tests/onnx-zoo/export.py failed");
        dir
    })
}

/// The ONNX Runtime library of the suite's `onnxruntime` package.
pub fn onnxruntime_library() -> PathBuf {
    let site = python().parent().unwrap().parent().unwrap().join("lib");
    let python_dir = std::fs::read_dir(&site)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let capi = python_dir.join("site-packages/onnxruntime/capi");
    let found = std::fs::read_dir(&capi)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("libonnxruntime.so.")
        });
    found.unwrap_or_else(|| panic!("no libonnxruntime.so.* in {}", capi.display()))
}

/// An engine with ONNX Runtime, shared by the tests that need it.
pub fn engine_with_onnxruntime() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let runtime: Arc<OnnxRuntime> = OnnxRuntime::load(&onnxruntime_library(), 2).unwrap();
        crate::support::engine().clone().with_onnxruntime(runtime)
    })
}

/// The four-line manifest that serves model `name` of the suite, with time to spare for tract
/// unoptimized in a debug build.
fn manifest(name: &str) -> Manifest {
    let text = format!(
        "name = \"{name}\"\n[model]\ncomponent = \"onnx-model@0.1.0\"\n\
         artifacts = {{ model = \"{name}.onnx\" }}\n[limits]\nstage_timeout_ms = 20000\n"
    );
    Manifest::parse(&text, zoo()).unwrap()
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(zoo().join(format!("{name}.json"))).unwrap())
        .unwrap()
}

/// Send the fixture's inputs to model `name`; check every output against ONNX Runtime's.
fn assert_matches_onnxruntime(server: &TestServer, name: &str) {
    let fixture = fixture(name);
    let request = json!({ "inputs": fixture["inputs"] });
    let (status, body) = server.post_json(&format!("/v2/models/{name}/infer"), &request);
    assert_eq!(status, 200, "{name}: {body}");
    for expected in fixture["outputs"].as_array().unwrap() {
        let output = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == expected["name"])
            .unwrap_or_else(|| panic!("{name}: no output {} in {body}", expected["name"]));
        assert_eq!(output["datatype"], expected["datatype"], "{name}");
        assert_eq!(output["shape"], expected["shape"], "{name}");
        let (got, want) = (
            output["data"].as_array().unwrap(),
            expected["data"].as_array().unwrap(),
        );
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (got, want)) in got.iter().zip(want).enumerate() {
            match (got.as_f64(), want.as_f64()) {
                (Some(g), Some(w)) if expected["datatype"].as_str().unwrap().starts_with("FP") => {
                    let tolerance = 1e-4f64.max(w.abs() * 1e-5);
                    assert!(
                        (g - w).abs() <= tolerance,
                        "{name} {}[{i}]: {g} vs {w}",
                        expected["name"]
                    );
                }
                _ => assert_eq!(got, want, "{name} {}[{i}]", expected["name"]),
            }
        }
    }
}

#[test]
fn with_onnx_runtime_every_model_serves_and_matches_onnxruntime() {
    let manifests: Vec<Manifest> = MODELS.iter().map(|(name, _)| manifest(name)).collect();
    let options = Options {
        engine: engine_with_onnxruntime(),
        ..Options::default()
    };
    let server = TestServer::with_options(&manifests, options);
    for (name, _) in MODELS {
        assert_matches_onnxruntime(&server, name);
        let (_, metadata) = server.get(&format!("/v2/models/{name}"));
        assert_eq!(
            metadata["parameters"]["weir_stages"][0]["graphs"],
            json!({ "model": "onnxruntime" }),
            "{name}"
        );
    }
}

#[test]
fn on_tract_alone_a_model_matches_or_is_refused_naming_what_tract_lacks() {
    for (name, tract_serves) in MODELS {
        let (registry, _dir) = registry_on(crate::support::engine(), &[]);
        match registry.deploy(&manifest(name)) {
            Ok(_) => assert!(
                tract_serves,
                "{name}: tract serves it now; update the README's table"
            ),
            Err(e) => {
                let message = e.to_string();
                assert!(!tract_serves, "{name}: tract refused it: {message}");
                assert!(
                    message.contains("tract-onnx")
                        && message.contains("ONNX Runtime is not loaded"),
                    "{name}: {message}"
                );
            }
        }
    }
    let served: Vec<Manifest> = MODELS
        .iter()
        .filter(|(_, tract_serves)| *tract_serves)
        .map(|(name, _)| manifest(name))
        .collect();
    let server = TestServer::start(&served);
    for (name, _) in MODELS.iter().filter(|(_, tract_serves)| *tract_serves) {
        assert_matches_onnxruntime(&server, name);
    }
}

#[test]
fn a_manifest_can_pin_a_backend_and_metadata_says_which_serves() {
    let text = |name: &str, backend: &str| {
        format!(
            "name = \"{name}\"\n[model]\ncomponent = \"onnx-model@0.1.0\"\nbackend = \"{backend}\"\n\
             artifacts = {{ model = \"random_forest.onnx\" }}\n"
        )
    };
    let on_tract = Manifest::parse(&text("forest-tract", "tract"), zoo()).unwrap();
    let on_ort = Manifest::parse(&text("forest-ort", "onnxruntime"), zoo()).unwrap();
    let options = Options {
        engine: engine_with_onnxruntime(),
        ..Options::default()
    };
    let server = TestServer::with_options(&[on_tract, on_ort], options);
    for (name, backend) in [("forest-tract", "tract"), ("forest-ort", "onnxruntime")] {
        let (_, metadata) = server.get(&format!("/v2/models/{name}"));
        assert_eq!(
            metadata["parameters"]["weir_stages"][0]["graphs"]["model"],
            backend
        );
        let request = json!({ "inputs": fixture("random_forest")["inputs"] });
        let (status, body) = server.post_json(&format!("/v2/models/{name}/infer"), &request);
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["outputs"][0]["data"],
            fixture("random_forest")["outputs"][0]["data"]
        );
    }
    let (registry, _dir) = registry_on(crate::support::engine(), &[]);
    let refused = registry
        .deploy(&Manifest::parse(&text("forest-x", "onnxruntime"), zoo()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("backend = \"onnxruntime\", and ONNX Runtime is not loaded"),
        "{refused}"
    );
}

/// ONNX Runtime is told to stop a run that passes the stage's deadline: the request gets its
/// 504 at once, not when the run would have ended, and the model serves the next request.
#[test]
fn a_run_past_the_deadline_is_stopped_and_answered_504() {
    let text = "name = \"slow\"\n[model]\ncomponent = \"onnx-model@0.1.0\"\n\
                artifacts = { model = \"slow.onnx\" }\n[limits]\nstage_timeout_ms = 200\n";
    let options = Options {
        engine: engine_with_onnxruntime(),
        ..Options::default()
    };
    let server = TestServer::with_options(&[Manifest::parse(text, zoo()).unwrap()], options);
    let rows = |n: usize| json!({ "inputs": [{ "name": "x0", "shape": [n, 256], "datatype": "FP32", "data": vec![0.5; n * 256] }] });
    let started = std::time::Instant::now();
    let (status, body) = server.post_json("/v2/models/slow/infer", &rows(1024));
    let elapsed = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        crate::support::error_message(&body).contains("exceeded its deadline of 200 ms"),
        "{body}"
    );
    // The whole run takes over a second (2,000 products of 1,024 rows, 256 wide).
    assert!(
        elapsed < std::time::Duration::from_millis(800),
        "answered after {elapsed:?}"
    );
    let (status, body) = server.post_json("/v2/models/slow/infer", &rows(1));
    assert_eq!(status, 200, "{body}");
}
