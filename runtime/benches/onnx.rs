//! In-process requests against native runs of the same model, in the same run:
//! - `digits`: the digits pipeline (decode → validate → scale → ONNX MLP → top-k → encode)
//!   against the same request served by native tract in plain Rust, at batch 1 and 64;
//! - `cnn`: a small CNN (two convolutions, batch norm, pooling, a dense layer) behind the stock
//!   `onnx-model` stage, a request with binary tensors, on ONNX Runtime and on tract, against
//!   ONNX Runtime's own `run` of the same batch through the `ort` crate (what `session.run`
//!   does), at batch 1 and 32. Needs ONNX Runtime: `WEIR_ONNXRUNTIME_LIB`, or the onnxruntime
//!   Python package `python3` imports (`pip install onnxruntime`); without it only tract runs.
//!
//! `cargo bench -p weir --bench onnx`; the ratios weir/native are the figures that count.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use common::{Request, Response, deploy_both, output, registry, respond};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tract_onnx::prelude::*;

fn digits_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/digits")
}

/// The digits request served natively: serde, x / 16, tract, top 3, serde. The baseline.
struct NativeDigits {
    plan: Arc<TypedRunnableModel>,
}

impl NativeDigits {
    fn load() -> NativeDigits {
        let mut model = tract_onnx::onnx()
            .model_for_path(digits_dir().join("mlp.onnx"))
            .unwrap();
        let batch = model.symbols.sym("N");
        model
            .set_input_fact(0, f32::fact([batch.to_dim(), 64.to_dim()]).into())
            .unwrap();
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        NativeDigits { plan }
    }

    fn infer_json(&self, body: &[u8]) -> Vec<u8> {
        let request: Request<f32> = serde_json::from_slice(body).unwrap();
        let input = &request.inputs[0];
        let rows = input.shape[0];
        let scaled: Vec<f32> = input.data.iter().map(|v| v / 16.0).collect();
        let pixels = tract_ndarray::Array2::from_shape_vec((rows, 64), scaled).unwrap();
        let outputs = self.plan.run(tvec!(Tensor::from(pixels).into())).unwrap();
        let labels: Vec<i64> = outputs[0]
            .cast_to::<i64>()
            .unwrap()
            .to_plain_array_view::<i64>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let probabilities: Vec<f32> = outputs[1]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        let (mut classes, mut scores) = (Vec::new(), Vec::new());
        for row in probabilities.chunks_exact(10) {
            let mut order: Vec<usize> = (0..10).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            for &i in &order[..3] {
                classes.push(i as i64);
                scores.push(row[i]);
            }
        }
        serde_json::to_vec(&Response {
            model_name: "digits",
            model_version: "1",
            id: request.id,
            outputs: (
                output("label", "INT64", vec![rows], labels),
                output("probabilities", "FP32", vec![rows, 10], probabilities),
                output("top_k_classes", "INT64", vec![rows, 3], classes),
                output("top_k_scores", "FP32", vec![rows, 3], scores),
            ),
        })
        .unwrap()
    }
}

/// A V2 request for the first `rows` held-out digits.
fn request(rows: usize) -> String {
    let fixture: Value =
        serde_json::from_slice(&std::fs::read(digits_dir().join("expected.json")).unwrap())
            .unwrap();
    let data: Vec<&Value> = fixture["inputs"].as_array().unwrap()[..rows]
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .collect();
    json!({ "id": "bench", "inputs": [{ "name": "pixels", "shape": [rows, 64], "datatype": "FP32", "data": data }] })
        .to_string()
}

fn bench(c: &mut Criterion) {
    let (registry, _data_dir) = registry(None);
    let (pipeline, reused) = deploy_both(&registry, &digits_dir().join("pipeline.toml"));
    let native = NativeDigits::load();

    let mut group = c.benchmark_group("digits");
    for rows in [1, 64] {
        let body = request(rows);
        let weir_answer: Value =
            serde_json::from_slice(&respond(&pipeline, body.as_bytes(), None)).unwrap();
        let native_answer: Value =
            serde_json::from_slice(&native.infer_json(body.as_bytes())).unwrap();
        assert_eq!(
            weir_answer["outputs"][0], native_answer["outputs"][0],
            "the baseline computes the same labels"
        );
        group.bench_with_input(BenchmarkId::new("native_tract", rows), &body, |b, body| {
            b.iter(|| native.infer_json(body.as_bytes()))
        });
        for (name, pipeline) in [
            ("weir_pipeline", &pipeline),
            ("weir_reused_instances", &reused),
        ] {
            group.bench_with_input(BenchmarkId::new(name, rows), &body, |b, body| {
                b.iter(|| respond(pipeline, body.as_bytes(), None))
            });
        }
    }
    group.finish();
}

/// A CNN for 28×28 images into 10 classes: conv 3×3 (8) → batch norm → ReLU → max pool →
/// conv 3×3 (16) → ReLU → max pool → dense → softmax, weights from a fixed pseudo-random
/// sequence.
fn cnn() -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::*;
    let mut seed = 7u64;
    let mut weights = |name: &str, dims: &[i64]| {
        let count: i64 = dims.iter().product();
        let values = (0..count)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 0.2
            })
            .collect();
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: values,
            ..Default::default()
        }
    };
    let ones = |name: &str, n: usize| TensorProto {
        name: name.into(),
        dims: vec![n as i64],
        data_type: 1,
        float_data: vec![1.0; n],
        ..Default::default()
    };
    let attribute = |name: &str, ints: &[i64]| AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: 7,
        ..Default::default()
    };
    let node =
        |op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>| NodeProto {
            name: output.into(),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute: attributes,
            ..Default::default()
        };
    let pool = || {
        vec![
            attribute("kernel_shape", &[2, 2]),
            attribute("strides", &[2, 2]),
        ]
    };
    let pad = || vec![attribute("pads", &[1, 1, 1, 1])];
    let value = |name: &str, dims: &[Option<i64>]| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: d.map(tensor_shape_proto::dimension::Value::DimValue),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let graph = GraphProto {
        node: vec![
            node("Conv", &["image", "w1", "b1"], "c1", pad()),
            node(
                "BatchNormalization",
                &["c1", "g1", "beta1", "m1", "v1"],
                "n1",
                vec![],
            ),
            node("Relu", &["n1"], "r1", vec![]),
            node("MaxPool", &["r1"], "p1", pool()),
            node("Conv", &["p1", "w2", "b2"], "c2", pad()),
            node("Relu", &["c2"], "r2", vec![]),
            node("MaxPool", &["r2"], "p2", pool()),
            node("Flatten", &["p2"], "f", vec![]),
            node(
                "Gemm",
                &["f", "w3", "b3"],
                "logits",
                vec![AttributeProto {
                    name: "transB".into(),
                    i: 1,
                    r#type: 2,
                    ..Default::default()
                }],
            ),
            node(
                "Softmax",
                &["logits"],
                "probabilities",
                vec![AttributeProto {
                    name: "axis".into(),
                    i: 1,
                    r#type: 2,
                    ..Default::default()
                }],
            ),
        ],
        initializer: vec![
            weights("w1", &[8, 1, 3, 3]),
            weights("b1", &[8]),
            ones("g1", 8),
            weights("beta1", &[8]),
            weights("m1", &[8]),
            ones("v1", 8),
            weights("w2", &[16, 8, 3, 3]),
            weights("b2", &[16]),
            weights("w3", &[10, 16 * 7 * 7]),
            weights("b3", &[10]),
        ],
        input: vec![value("image", &[None, Some(1), Some(28), Some(28)])],
        output: vec![value("probabilities", &[None, Some(10)])],
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            version: 17,
            ..Default::default()
        }],
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A binary-tensor request of `rows` images, and its JSON part's length.
fn image_request(rows: usize) -> (Vec<u8>, String) {
    let pixels: Vec<u8> = (0..rows * 784)
        .flat_map(|i| ((i % 255) as f32 / 255.0).to_le_bytes())
        .collect();
    let header =
        json!({ "inputs": [{ "name": "image", "shape": [rows, 1, 28, 28], "datatype": "FP32",
                                      "parameters": { "binary_data_size": pixels.len() } }],
                         "parameters": { "binary_data_output": true } })
        .to_string();
    let length = header.len().to_string();
    let mut body = header.into_bytes();
    body.extend(pixels);
    (body, length)
}

fn bench_cnn(c: &mut Criterion) {
    let model = cnn();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cnn.onnx"), &model).unwrap();
    let threads = weir::cores();
    let found = weir::nn::OnnxRuntime::find(
        std::env::var_os("WEIR_ONNXRUNTIME_LIB")
            .map(PathBuf::from)
            .as_deref(),
    );
    let runtime = found.and_then(|(path, _)| weir::nn::OnnxRuntime::load(&path, threads).ok());
    if runtime.is_none() {
        eprintln!(
            "ONNX Runtime not found (WEIR_ONNXRUNTIME_LIB, or pip install onnxruntime): tract only"
        );
    }
    let (registry, _data_dir) = registry(runtime.clone());
    let mut backends = vec!["tract"];
    if runtime.is_some() {
        backends.push("onnxruntime");
    }
    let pipelines: Vec<(&str, Arc<weir::pipeline::Pipeline>)> = backends
        .iter()
        .map(|backend| {
            let text = format!(
                "name = \"cnn-{backend}\"\n[model]\ncomponent = \"onnx-model@0.1.0\"\n\
                 backend = \"{backend}\"\nartifacts = {{ model = \"cnn.onnx\" }}\n"
            );
            let manifest = weir::pipeline::manifest::Manifest::parse(&text, dir.path()).unwrap();
            registry.deploy(&manifest).unwrap();
            (
                *backend,
                registry.get(&format!("cnn-{backend}"), None).unwrap(),
            )
        })
        .collect();
    let mut native = runtime.as_ref().map(|runtime| {
        ort::session::Session::builder(runtime.environment())
            .unwrap()
            .with_intra_threads(threads)
            .unwrap()
            .with_intra_op_spinning(false)
            .unwrap()
            .commit_from_memory(&model)
            .unwrap()
    });
    let mut group = c.benchmark_group("cnn");
    for rows in [1, 32] {
        let (body, length) = image_request(rows);
        for (backend, pipeline) in &pipelines {
            group.bench_with_input(
                BenchmarkId::new(format!("weir_{backend}"), rows),
                &body,
                |b, body| b.iter(|| respond(pipeline, body, Some(&length))),
            );
        }
        if let Some(session) = &mut native {
            let image: Vec<f32> = (0..rows * 784).map(|i| (i % 255) as f32 / 255.0).collect();
            group.bench_function(BenchmarkId::new("native_onnxruntime", rows), |b| {
                b.iter(|| {
                    let input = ort::value::Tensor::from_array((
                        vec![rows as i64, 1, 28, 28],
                        image.clone(),
                    ))
                    .unwrap();
                    let outputs = session.run(ort::inputs!["image" => input]).unwrap();
                    outputs["probabilities"]
                        .try_extract_tensor::<f32>()
                        .unwrap()
                        .1
                        .to_vec()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench, bench_cnn);
criterion_main!(benches);
