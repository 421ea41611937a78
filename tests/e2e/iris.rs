//! The iris example answers exactly as the scikit-learn model it was trained from.

use serde_json::{Value, json};

use crate::support::{TestServer, error_message, iris, repo_root};

fn fixture() -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples/iris/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Send all 150 rows to `model` (the iris pipeline, or one serving the same model) and check
/// its labels equal sklearn's and its probabilities are within `tolerance` of sklearn's.
pub fn predict_all(server: &TestServer, model: &str, datatype: &str, tolerance: f64) {
    let expected = fixture();
    let rows = expected["inputs"].as_array().unwrap();
    let request = json!({
        "inputs": [{ "name": "features", "shape": [rows.len(), 4], "datatype": datatype, "data": rows }]
    });
    let (status, body) = server.post_json(&format!("/v2/models/{model}/infer"), &request);
    assert_eq!(status, 200, "{body}");
    let outputs = body["outputs"].as_array().unwrap();
    let label = outputs.iter().find(|o| o["name"] == "label").unwrap();
    let probabilities = outputs
        .iter()
        .find(|o| o["name"] == "probabilities")
        .unwrap();
    assert_eq!(label["datatype"], "BYTES");
    assert_eq!(label["shape"], json!([150]));
    assert_eq!(
        label["data"], expected["labels"],
        "labels differ from sklearn's predict"
    );
    assert_eq!(probabilities["datatype"], "FP32");
    assert_eq!(probabilities["shape"], json!([150, 3]));
    let got = probabilities["data"].as_array().unwrap();
    let want: Vec<f64> = expected["probabilities"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g = g.as_f64().unwrap();
        assert!(
            (g - w).abs() < tolerance,
            "probability {i}: {g} vs sklearn {w}"
        );
    }
}

#[test]
fn all_150_rows_match_sklearn_predict_and_predict_proba() {
    let server = TestServer::start(&[iris()]);
    predict_all(&server, "iris", "FP64", 1e-5);
    predict_all(&server, "iris", "FP32", 1e-5);
}

#[test]
fn wrong_width_is_refused_before_any_stage_runs() {
    let server = TestServer::start(&[iris()]);
    let request = json!({
        "inputs": [{ "name": "features", "shape": [1, 3], "datatype": "FP32", "data": [5.1, 3.5, 1.4] }]
    });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 400);
    let message = error_message(&body);
    assert!(
        message.contains("'features'") && message.contains("[1, 3]"),
        "{message}"
    );
}

#[test]
fn strings_for_features_are_refused_with_the_datatype_named() {
    let server = TestServer::start(&[iris()]);
    let request = json!({
        "inputs": [{ "name": "features", "shape": [1, 4], "datatype": "BYTES", "data": ["a", "b", "c", "d"] }]
    });
    let (status, body) = server.post_json("/v2/models/iris/infer", &request);
    assert_eq!(status, 400);
    assert!(
        error_message(&body).contains("BYTES, expected FP32 or FP64"),
        "{body}"
    );
}
