//! Real models from ONNX through `wasi:nn`: the digits example answers as the scikit-learn
//! model it was exported from, and a model the backend cannot run is refused at deploy.

use std::path::Path;

use prost::Message;
use serde_json::{Value, json};
use weir::pipeline::manifest::Manifest;

use crate::support::{TestServer, error_message, registry, repo_root};

fn digits_dir() -> std::path::PathBuf {
    repo_root().join("examples/digits")
}

fn digits() -> Manifest {
    Manifest::load(&digits_dir().join("pipeline.toml")).expect("digits manifest")
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(digits_dir().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn output<'a>(body: &'a Value, name: &str) -> &'a Value {
    body["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {body}"))
}

fn numbers(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| match v.as_array() {
            Some(row) => row.iter().map(|x| x.as_f64().unwrap()).collect(),
            None => vec![v.as_f64().unwrap()],
        })
        .collect()
}

/// Check one answer against scikit-learn's for `rows` of the fixture, starting at `first`.
fn assert_matches_sklearn(body: &Value, expected: &Value, first: usize, rows: usize) {
    let labels = numbers(&output(body, "label")["data"]);
    let want_labels = numbers(&expected["labels"]);
    assert_eq!(
        labels,
        want_labels[first..first + rows],
        "labels differ from predict"
    );
    let probabilities = numbers(&output(body, "probabilities")["data"]);
    let want = numbers(&expected["probabilities"]);
    for (i, (got, want)) in probabilities.iter().zip(&want[first * 10..]).enumerate() {
        assert!(
            (got - want).abs() < 1e-4,
            "probability {i}: {got} vs sklearn {want}"
        );
    }
    assert_eq!(probabilities.len(), rows * 10);
    let top = numbers(&output(body, "top_k_classes")["data"]);
    let firsts: Vec<f64> = top.chunks_exact(3).map(|row| row[0]).collect();
    assert_eq!(firsts, labels, "the best class of top-k is the label");
}

/// Every held-out digit in one request to `digits`; the answer, which must be a 200.
fn all_held_out(server: &TestServer, expected: &Value) -> Value {
    let rows = expected["inputs"].as_array().unwrap();
    let request = json!({
        "inputs": [{ "name": "pixels", "shape": [rows.len(), 64], "datatype": "FP32", "data": rows }]
    });
    let (status, body) = server.post_json("/v2/models/digits/infer", &request);
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn held_out_digits_match_sklearn_in_one_batch_and_row_by_row() {
    let server = TestServer::start(&[digits()]);
    let expected = fixture();
    let rows = expected["inputs"].as_array().unwrap();
    let body = all_held_out(&server, &expected);
    assert_eq!(
        output(&body, "probabilities")["shape"],
        json!([rows.len(), 10])
    );
    assert_matches_sklearn(&body, &expected, 0, rows.len());
    // The raw pixels are integers: clients may send them as such.
    for (i, row) in rows.iter().enumerate().take(40) {
        let row: Vec<i64> = numbers(row).iter().map(|&v| v as i64).collect();
        let request = json!({
            "inputs": [{ "name": "pixels", "shape": [1, 64], "datatype": "INT64", "data": row }]
        });
        let (status, body) = server.post_json("/v2/models/digits/infer", &request);
        assert_eq!(status, 200, "{body}");
        assert_matches_sklearn(&body, &expected, i, 1);
    }
}

/// A component written against the standard `wasi:nn` interfaces alone runs the same graph.
#[test]
fn a_component_using_wasi_nn_directly_answers_as_sklearn() {
    let text = std::fs::read_to_string(digits_dir().join("pipeline.toml")).unwrap();
    let wasm = Path::new(env!("WEIR_TEST_COMPONENTS")).join("wasi_nn_stage.wasm");
    let text = text.replace(
        "component = \"onnx-model@0.1.0\"",
        &format!(
            "component = \"wasi-nn-stage@0.1.0\"\npath = {:?}",
            wasm.display().to_string()
        ),
    );
    let server = TestServer::start(&[Manifest::parse(&text, &digits_dir()).unwrap()]);
    let expected = fixture();
    let body = all_held_out(&server, &expected);
    assert_matches_sklearn(
        &body,
        &expected,
        0,
        expected["inputs"].as_array().unwrap().len(),
    );
}

#[test]
fn the_iris_model_from_onnx_gives_the_same_labels() {
    let manifest = Manifest::load(&repo_root().join("examples/iris/pipeline-onnx.toml")).unwrap();
    let server = TestServer::start(&[manifest]);
    crate::iris::predict_all(&server, "iris-onnx", "FP64", 1e-4);
}

/// A manifest whose model stage runs `model` (ONNX bytes) straight on the client's tensors,
/// with no declared inputs: what reaches the graph is what the client sent.
fn bare_model(dir: &Path, model: &[u8]) -> Manifest {
    std::fs::write(dir.join("model.onnx"), model).unwrap();
    let text = "name = \"bare\"\n[model]\ncomponent = \"onnx-model@0.1.0\"\n\
                artifacts = { model = \"model.onnx\" }\n";
    Manifest::parse(text, dir).unwrap()
}

/// The digits example's ONNX model.
fn mlp() -> Vec<u8> {
    std::fs::read(digits_dir().join("mlp.onnx")).unwrap()
}

/// Why deploying [`bare_model`] with `model` is refused.
fn deploy_error(model: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _data) = registry(&[]);
    match registry.deploy(&bare_model(dir.path(), model)) {
        Ok(_) => panic!("the pipeline deployed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_artifact_that_is_not_onnx_is_refused_at_deploy() {
    let model = mlp();
    let message = deploy_error(&model[..model.len() / 2]);
    assert!(
        message.contains("'model' is not an ONNX model"),
        "{message}"
    );
}

#[test]
fn an_operator_the_backend_lacks_is_refused_at_deploy_by_name() {
    let mut model = tract_onnx::pb::ModelProto::decode(&*mlp()).unwrap();
    let node = &mut model.graph.as_mut().unwrap().node[3];
    node.op_type = "FancyActivation".into();
    node.domain = "com.example".into();
    let message = deploy_error(&model.encode_to_vec());
    assert!(
        message.contains("does not support the operator com.example.FancyActivation"),
        "{message}"
    );
}

#[test]
fn a_tensor_the_graph_does_not_take_is_400_naming_it_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&[bare_model(dir.path(), &mlp())]);
    let send = |datatype: &str, width: usize| {
        let request = json!({
            "inputs": [{ "name": "pixels", "shape": [2, width], "datatype": datatype,
                         "data": vec![0.5; 2 * width] }]
        });
        server.post_json("/v2/models/bare/infer", &request)
    };
    let (status, body) = send("FP32", 63);
    assert_eq!(status, 400, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("tensor 'pixels'") && message.contains("takes FP32 [N, 64]"),
        "{message}"
    );
    let (status, body) = send("FP64", 64);
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).contains("tensor 'pixels' is FP64"),
        "{body}"
    );
    let (status, body) = send("BOOL", 64);
    assert_eq!(status, 400, "{body}");
    let (status, body) = send("FP32", 64);
    assert_eq!(status, 200, "{body}");
    assert_eq!(output(&body, "label")["shape"], json!([2]));
}

#[test]
fn warm_reused_instances_answer_as_fresh_ones() {
    let mut manifest = digits();
    for stage in manifest.stages_mut() {
        stage.reuse_instances = true;
    }
    let server = TestServer::start(&[manifest]);
    let expected = fixture();
    for (i, row) in expected["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .take(20)
    {
        let request = json!({
            "inputs": [{ "name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row }]
        });
        let (status, body) = server.post_json("/v2/models/digits/infer", &request);
        assert_eq!(status, 200, "{body}");
        assert_matches_sklearn(&body, &expected, i, 1);
    }
}
