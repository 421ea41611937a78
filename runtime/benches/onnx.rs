//! One in-process request to the digits pipeline (decode → validate → scale → ONNX model
//! through wasi:nn → top-k → encode) against the same request served by native tract in plain
//! Rust, in the same run, at batch 1 and batch 64.
//!
//! `cargo bench -p weir --bench onnx`; the ratio weir/native is the figure that counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use common::{RESPONSE_LIMIT, Request, Response, block_on, deploy_both, output, registry};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tract_onnx::prelude::*;
use weir::http::inference::infer;
use weir::pipeline::Trace;

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
    let (registry, _data_dir) = registry();
    let (pipeline, reused) = deploy_both(&registry, &digits_dir().join("pipeline.toml"));
    let native = NativeDigits::load();

    let mut group = c.benchmark_group("digits");
    for rows in [1, 64] {
        let body = request(rows);
        let weir_answer: Value = serde_json::from_slice(
            &block_on(infer(
                &pipeline,
                body.as_bytes(),
                None,
                RESPONSE_LIMIT,
                &mut Trace::default(),
            ))
            .unwrap()
            .body,
        )
        .unwrap();
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
                b.iter(|| {
                    block_on(infer(
                        pipeline,
                        body.as_bytes(),
                        None,
                        RESPONSE_LIMIT,
                        &mut Trace::default(),
                    ))
                    .unwrap()
                    .body
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
