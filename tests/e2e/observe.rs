//! The built-in stages on real data (scikit-learn's breast-cancer set, split in half by
//! examples/breast-cancer/train.py): validation rules, the drift monitor, metrics and the
//! payload log.

use std::path::Path;

use reqwest::Method;
use serde_json::{Value, json};
use weir::pipeline::manifest::Manifest;

use crate::support::{TestServer, error_message, repo_root};

pub fn example(example: &str) -> std::path::PathBuf {
    repo_root().join("examples").join(example)
}

/// The breast-cancer pipeline under another name, so each scenario has a monitor of its own.
fn manifest(name: &str) -> Manifest {
    renamed("breast-cancer", name)
}

/// An example's pipeline under the name `name`.
pub fn renamed(example_name: &str, name: &str) -> Manifest {
    let dir = example(example_name);
    let text = std::fs::read_to_string(dir.join("pipeline.toml")).unwrap();
    let text = text.replace(
        &format!("name = \"{example_name}\""),
        &format!("name = \"{name}\""),
    );
    Manifest::parse(&text, &dir).unwrap()
}

/// The held-out rows: 30 features and the true class.
pub fn heldout() -> Vec<(Vec<f64>, String)> {
    rows(&example("breast-cancer").join("heldout.csv"), 30)
}

/// The rows of a CSV file: the first `features` columns as numbers, and the next column.
fn rows(csv: &Path, features: usize) -> Vec<(Vec<f64>, String)> {
    let mut reader = csv::Reader::from_path(csv).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            let values = r
                .iter()
                .take(features)
                .map(|v| v.parse().unwrap())
                .collect();
            (values, r[features].to_owned())
        })
        .collect()
}

/// Send `rows` as FP64 in requests of 25; every one must succeed.
fn stream(server: &TestServer, pipeline: &str, rows: &[Vec<f64>]) {
    stream_as(server, pipeline, "FP64", rows);
}

/// Send `rows` as `datatype` in requests of 25; every one must succeed.
fn stream_as(server: &TestServer, pipeline: &str, datatype: &str, rows: &[Vec<f64>]) {
    for chunk in rows.chunks(25) {
        let width = chunk[0].len();
        let request = json!({ "inputs": [{ "name": "features", "shape": [chunk.len(), width], "datatype": datatype, "data": chunk }] });
        let (status, body) = server.post_json(&format!("/v2/models/{pipeline}/infer"), &request);
        assert_eq!(status, 200, "{body}");
    }
}

fn drift(server: &TestServer, pipeline: &str) -> Value {
    let (status, report) =
        server.admin(Method::GET, &format!("/v1/pipelines/{pipeline}/drift"), "");
    assert_eq!(status, 200, "{report}");
    report
}

/// Columns at `status` in a drift report.
fn columns_at(report: &Value, status: &str) -> Vec<String> {
    report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == status)
        .map(|c| c["column"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn drift_alerts_on_shifted_columns_and_class_mix_but_not_on_held_out_data() {
    let server = TestServer::start(&[
        manifest("heldout"),
        manifest("shifted"),
        manifest("malignant"),
    ]);
    let rows = heldout();

    stream(
        &server,
        "heldout",
        &rows.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
    );
    let report = drift(&server, "heldout");
    assert_eq!(report["window_rows"], rows.len());
    assert!(
        columns_at(&report, "alert").is_empty(),
        "held-out data alerted: {report}"
    );
    let radius = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "mean radius")
        .unwrap();
    assert_eq!(radius["method"], "psi");
    assert!(radius["js_distance"].is_number() && radius["counts"].as_array().unwrap().len() == 10);

    // One feature scaled by 1.3 (within the schema's ranges): that column alerts, no other input does.
    let shifted: Vec<Vec<f64>> = rows
        .iter()
        .map(|(f, _)| {
            let mut f = f.clone();
            f[1] *= 1.3; // mean texture
            f
        })
        .collect();
    stream(&server, "shifted", &shifted);
    let report = drift(&server, "shifted");
    let alerts = columns_at(&report, "alert");
    assert!(alerts.contains(&"mean texture".to_owned()), "{report}");
    let other_inputs: Vec<&String> = alerts
        .iter()
        .filter(|c| *c != "mean texture" && *c != "label" && *c != "probabilities.max")
        .collect();
    assert!(
        other_inputs.is_empty(),
        "unshifted inputs alerted: {other_inputs:?}"
    );

    // One class only: the predicted-label distribution drifts.
    let malignant: Vec<Vec<f64>> = rows
        .iter()
        .filter(|(_, c)| c == "malignant")
        .map(|(f, _)| f.clone())
        .collect();
    stream(&server, "malignant", &malignant);
    let report = drift(&server, "malignant");
    let label = report["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["column"] == "label")
        .unwrap();
    assert_eq!(label["method"], "linf");
    assert_eq!(label["status"], "alert", "{label}");
}

/// The training data itself is no drift, whatever precision it travels in: its values are
/// recorded to 0.1 cm, so most rows tie, and FP32 rounds 1.4 to 1.39999998. A real shift (one
/// species only) alerts.
#[test]
fn the_training_data_sent_as_fp32_or_fp64_is_no_drift_and_one_species_is() {
    let server = TestServer::start(&[
        renamed("iris", "iris-fp32"),
        renamed("iris", "iris-fp64"),
        renamed("iris", "setosa"),
    ]);
    let training = rows(&example("iris").join("reference.csv"), 4);
    let features: Vec<Vec<f64>> = training.iter().map(|(f, _)| f.clone()).collect();
    let four_times = [&features[..]; 4].concat();
    for (pipeline, datatype) in [("iris-fp32", "FP32"), ("iris-fp64", "FP64")] {
        stream_as(&server, pipeline, datatype, &four_times);
        let report = drift(&server, pipeline);
        assert_eq!(report["window_rows"], 600);
        let flagged = [columns_at(&report, "warn"), columns_at(&report, "alert")].concat();
        assert!(flagged.is_empty(), "{datatype}: {flagged:?} in {report}");
    }
    let setosa: Vec<Vec<f64>> = training
        .iter()
        .filter(|(_, label)| label == "setosa")
        .map(|(f, _)| f.clone())
        .collect();
    stream_as(&server, "setosa", "FP32", &[&setosa[..]; 4].concat());
    let alerts = columns_at(&drift(&server, "setosa"), "alert");
    for column in ["petal_length", "petal_width", "label"] {
        assert!(alerts.contains(&column.to_owned()), "{column}: {alerts:?}");
    }
}

#[test]
fn validation_names_input_row_column_and_rule_and_reports_several() {
    let server = TestServer::start(&[manifest("bc")]);
    let (mut row, _) = heldout().remove(0);
    let send = |data: Value, name: &str| {
        let request = json!({ "inputs": [{ "name": name, "shape": [2, 30], "datatype": "FP64", "data": data }] });
        server.post_json("/v2/models/bc/infer", &request)
    };
    let good = row.clone();
    row[0] = 1000.0; // mean radius far above the range
    let (status, body) = send(json!([good, row]), "features");
    assert_eq!(status, 400, "{body}");
    let message = error_message(&body);
    assert!(
        message.starts_with(
            "input 'features', row 1, column 'mean radius': 1000 is above the maximum"
        ),
        "{message}"
    );

    // NaN cannot be written in JSON: send it in binary form, with a range violation beside it.
    let mut values = good.clone();
    values[2] = f64::NAN;
    values[3] = -5.0;
    let mut binary: Vec<u8> = values
        .iter()
        .chain(&good)
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let header = json!({ "inputs": [{ "name": "features", "shape": [2, 30], "datatype": "FP64",
                                      "parameters": { "binary_data_size": binary.len() } }] })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.append(&mut binary);
    let response = reqwest::blocking::Client::new()
        .post(format!("{}/v2/models/bc/infer", server.base))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let message = response.json::<Value>().unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("row 0, column 'mean perimeter': value missing (NaN)"),
        "{message}"
    );
    assert!(
        message.contains("row 0, column 'mean area': -5 is below the minimum"),
        "{message}"
    );

    // Every value out of range: reported together, up to the bound.
    let wild = vec![vec![-1e9; 30], vec![-1e9; 30]];
    let (_, body) = send(json!(wild), "features");
    assert!(error_message(&body).ends_with("and 50 more"), "{body}");

    let (status, body) = send(json!([good, good]), "feature");
    assert_eq!(status, 400);
    assert!(
        error_message(&body).starts_with("unknown input 'feature'; expected 'features'"),
        "{body}"
    );

    // The rules broken are counted in /metrics.
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    for line in [
        r#"weir_validation_failures_total{pipeline="bc",rule="range"}"#,
        r#"weir_validation_failures_total{pipeline="bc",rule="missing"} 1"#,
        r#"weir_validation_failures_total{pipeline="bc",rule="unknown_input"} 1"#,
    ] {
        assert!(metrics.contains(line), "/metrics lacks {line}");
    }
}

#[test]
fn metrics_expose_requests_latency_per_stage_drift_and_in_flight() {
    let server = TestServer::start(&[manifest("bc")]);
    let rows: Vec<Vec<f64>> = heldout().into_iter().take(60).map(|(f, _)| f).collect();
    stream(&server, "bc", &rows);
    let response = reqwest::blocking::get(format!("{}/metrics", server.base)).unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let metrics = response.text().unwrap();
    for fragment in [
        r#"weir_requests_total{pipeline="bc",version="1",code="200"} 3"#,
        "# TYPE weir_request_duration_seconds histogram",
        r#"weir_request_duration_seconds_count{pipeline="bc"} 3"#,
        r#"weir_stage_duration_seconds_count{pipeline="bc",stage="model"} 3"#,
        r#"weir_stage_duration_seconds_count{pipeline="bc",stage="observe"} 3"#,
        r#"weir_drift_score{pipeline="bc",column="mean radius",method="psi"}"#,
        r#"weir_drift_status{pipeline="bc",column="label",method="linf"} "#,
        "weir_requests_in_flight 0",
        "weir_instances_capacity 1000",
        "# TYPE weir_instances_active gauge",
    ] {
        assert!(
            metrics.contains(fragment),
            "/metrics lacks {fragment}:\n{metrics}"
        );
    }
}

#[test]
fn the_payload_log_samples_rotates_and_counts_what_it_drops() {
    use weir::stages::log::{PayloadLog, RequestRecord};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payloads.jsonl");
    let log = PayloadLog::open(path.clone(), 0.5, 600).unwrap();
    let record = RequestRecord {
        id: Some("r1"),
        pipeline: "p",
        version: "1",
        arm: None,
        status: 200,
        duration: std::time::Duration::from_micros(42),
        stages: &[],
        error: None,
    };
    for _ in 0..10 {
        log.record(&record, br#"{"inputs":[]}"#, br#"{"outputs":[]}"#);
    }
    let lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let rotated = dir.path().join("payloads.jsonl.1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lines(&path) + lines(&rotated) < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        lines(&path) + lines(&rotated),
        5,
        "one in two of 10 requests"
    );
    assert!(
        rotated.exists(),
        "600 bytes hold fewer than 5 records: rotated"
    );
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&rotated)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["id"], "r1");
    assert_eq!(first["request"], json!({ "inputs": [] }));
    assert_eq!(log.dropped(), 0);
    #[cfg(unix)]
    for file in [&path, &rotated] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} is readable by others",
            file.display()
        );
    }
}
