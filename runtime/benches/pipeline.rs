//! One in-process execution of the iris pipeline (decode → validate → three Wasm stages →
//! encode) against the same computation written in plain Rust, in the same run: with a fresh
//! instance per stage (the default), without the built-in stages, and with every stage opted
//! into reusing warm instances. Then 64 requests at once, each alone in fresh instances and
//! merged into batches (`[batching]`), against plain Rust answering the 64 in turn. Then the
//! cost of `[quality]` on the request path: the same pipeline with and without it, on requests
//! without an id (so each gets one made, and its prediction recorded), and what it adds to the
//! request's own path alone; and a shadow's comparison of two answers to one request.
//!
//! `cargo bench -p weir --bench pipeline`; the ratio weir/plain is the figure that counts.

use std::path::Path;
use std::sync::Arc;

mod common;

use common::{RESPONSE_LIMIT, Request, Response, block_on, deploy_both, output, registry, respond};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use weir::http::inference::infer;
use weir::pipeline::batching::Batching;
use weir::pipeline::manifest::Manifest;
use weir::pipeline::{Pipeline, Trace};

const REQUEST: &str = r#"{"id":"bench","inputs":[{"name":"features","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}"#;

fn iris_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/iris")
}

/// The iris model as plain Rust: the baseline.
struct PlainIris {
    mean: Vec<f64>,
    scale: Vec<f64>,
    coef: Vec<Vec<f64>>,
    intercept: Vec<f64>,
    labels: Vec<String>,
}

impl PlainIris {
    fn load() -> PlainIris {
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(iris_dir().join("pipeline.toml")).unwrap())
                .unwrap();
        let weights: Value = serde_json::from_slice(
            &std::fs::read(iris_dir().join("logistic_regression.json")).unwrap(),
        )
        .unwrap();
        let floats = |v: &toml::Value| -> Vec<f64> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_float().unwrap())
                .collect()
        };
        PlainIris {
            mean: floats(&manifest["preprocess"]["config"]["mean"]),
            scale: floats(&manifest["preprocess"]["config"]["scale"]),
            coef: serde_json::from_value(weights["coef"].clone()).unwrap(),
            intercept: serde_json::from_value(weights["intercept"].clone()).unwrap(),
            labels: manifest["postprocess"]["config"]["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_owned())
                .collect(),
        }
    }

    fn infer_json(&self, body: &[u8]) -> Vec<u8> {
        let request: Request<f64> = serde_json::from_slice(body).unwrap();
        let input = &request.inputs[0];
        let (rows, cols) = (input.shape[0], input.shape[1]);
        let mut labels = Vec::with_capacity(rows);
        let mut probabilities = Vec::with_capacity(rows * self.intercept.len());
        for row in input.data.chunks_exact(cols) {
            let x: Vec<f64> = row
                .iter()
                .zip(&self.mean)
                .zip(&self.scale)
                .map(|((v, m), s)| (v - m) / s)
                .collect();
            let scores: Vec<f64> = self
                .coef
                .iter()
                .zip(&self.intercept)
                .map(|(w, b)| w.iter().zip(&x).map(|(w, x)| w * x).sum::<f64>() + b)
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut best = 0;
            for (i, e) in exps.iter().enumerate() {
                probabilities.push((e / total) as f32);
                if *e > exps[best] {
                    best = i;
                }
            }
            labels.push(self.labels[best].as_str());
        }
        let classes = self.intercept.len();
        serde_json::to_vec(&Response {
            model_name: "iris",
            model_version: "1",
            id: request.id,
            outputs: (
                output("label", "BYTES", vec![rows], labels),
                output("probabilities", "FP32", vec![rows, classes], probabilities),
            ),
        })
        .unwrap()
    }
}

fn bench(c: &mut Criterion) {
    let (registry, _data_dir) = registry(None);
    let (pipeline, reused) = deploy_both(&registry, &iris_dir().join("pipeline.toml"));
    // The same stages with no built-in stage: no declared inputs or outputs, no monitor.
    let mut bare = Manifest::load(&iris_dir().join("pipeline.toml")).unwrap();
    bare.name = "iris-bare".into();
    bare.inputs.clear();
    bare.outputs.clear();
    bare.observe = None;
    bare.quality = None;
    registry.deploy(&bare).unwrap();
    let bare = registry.get("iris-bare", None).unwrap();
    let plain = PlainIris::load();

    let answer = |p: &Arc<Pipeline>| -> Value {
        serde_json::from_slice(&respond(p, REQUEST.as_bytes(), None)).unwrap()
    };
    let plain_out: Value = serde_json::from_slice(&plain.infer_json(REQUEST.as_bytes())).unwrap();
    for p in [&pipeline, &reused] {
        assert_eq!(
            answer(p)["outputs"][0],
            plain_out["outputs"][0],
            "the baseline computes the same answer"
        );
    }
    let bare_out = answer(&bare);
    let bare_label = bare_out["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label");
    assert_eq!(
        bare_label,
        Some(&plain_out["outputs"][0]),
        "without declared outputs, all of them"
    );

    let mut group = c.benchmark_group("iris_one_row");
    group.bench_function("plain_rust", |b| {
        b.iter(|| plain.infer_json(REQUEST.as_bytes()))
    });
    for (name, pipeline) in [
        ("weir_pipeline", &pipeline),
        ("weir_pipeline_without_builtins", &bare),
        ("weir_pipeline_reused_instances", &reused),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| respond(pipeline, REQUEST.as_bytes(), None))
        });
    }
    group.finish();

    let mut batched = Manifest::load(&iris_dir().join("pipeline.toml")).unwrap();
    batched.name = "iris-batched".into();
    batched.batching = Some(Batching { max_batch_size: 64 });
    registry.deploy(&batched).unwrap();
    let batched = registry.get("iris-batched", None).unwrap();
    assert_eq!(answer(&batched)["outputs"], answer(&pipeline)["outputs"]);
    assert_eq!(
        block_on(all_at_once(&batched, 64)),
        64,
        "every request answered"
    );
    let mut group = c.benchmark_group("iris_64_requests_at_once");
    group.bench_function("plain_rust", |b| {
        b.iter(|| {
            (0..64)
                .map(|_| plain.infer_json(REQUEST.as_bytes()))
                .collect::<Vec<_>>()
        })
    });
    for (name, pipeline) in [
        ("weir_pipeline", &pipeline),
        ("weir_pipeline_batched", &batched),
    ] {
        group.bench_function(name, |b| b.iter(|| block_on(all_at_once(pipeline, 64))));
    }
    group.finish();

    // The drift monitor alone, on a batch of 64 rows: divide by 64 for the cost per row.
    let rows: Vec<f64> = (0..64)
        .flat_map(|i| {
            [
                5.0 + i as f64 * 0.03,
                3.0,
                1.5 + i as f64 * 0.08,
                0.2 + i as f64 * 0.03,
            ]
        })
        .collect();
    let request = json!({ "inputs": [{ "name": "features", "shape": [64, 4], "datatype": "FP64", "data": rows }] });
    let inputs = inputs_of(&request.to_string());
    let outputs = block_on(bare.infer(inputs.clone(), &mut Trace::default())).unwrap();
    let monitor = pipeline.monitor().expect("iris has a drift monitor");
    let mut group = c.benchmark_group("drift_monitor_64_rows");
    group.bench_function("observe_and_record", |b| {
        b.iter(|| monitor.record(monitor.observe_inputs(&inputs), &outputs))
    });
    group.bench_function("plain_rust_iris_64_rows", |b| {
        let body = request.to_string();
        b.iter(|| plain.infer_json(body.as_bytes()))
    });
    group.finish();

    let mut unrecorded = Manifest::load(&iris_dir().join("pipeline.toml")).unwrap();
    unrecorded.name = "iris-without-quality".into();
    unrecorded.quality = None;
    registry.deploy(&unrecorded).unwrap();
    let unrecorded = registry.get("iris-without-quality", None).unwrap();
    let request = REQUEST.replace(r#""id":"bench","#, "");
    let mut group = c.benchmark_group("iris_quality_one_row");
    for (name, pipeline) in [
        ("with_quality", &pipeline),
        ("without_quality", &unrecorded),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| respond(pipeline, request.as_bytes(), None))
        });
    }
    group.finish();
    let (dropped, _) = registry.quality().record_counts();
    println!("prediction records dropped (the writer fell behind): {dropped}");

    // What `[quality]` adds to a request's own path: an id made, the prediction recorded.
    // The writer's work (another thread) is written outside the timed calls, every 10,000.
    let recorder = pipeline.recorder().expect("iris has [quality]");
    let outputs = block_on(pipeline.infer(inputs_of(REQUEST), &mut Trace::default())).unwrap();
    let mut group = c.benchmark_group("quality_record");
    group.bench_function("new_id_and_record", |b| {
        b.iter_custom(|iterations| {
            let mut timed = std::time::Duration::ZERO;
            for i in 0..iterations {
                if i % 10_000 == 0 {
                    registry.quality().flush();
                }
                let started = std::time::Instant::now();
                recorder.record(&recorder.new_id(), &outputs);
                timed += started.elapsed();
            }
            timed
        })
    });
    group.finish();
    let (dropped, _) = registry.quality().record_counts();
    assert_eq!(dropped, 0, "every record timed was kept");

    // A shadow's comparison of one request pair: iris's label and probabilities, one row and
    // 64 rows.
    let one = outputs.tensors.clone();
    let many = block_on(bare.infer(inputs.clone(), &mut Trace::default()))
        .unwrap()
        .tensors;
    let mut group = c.benchmark_group("shadow_compare");
    for (name, tensors) in [("one_row", &one), ("64_rows", &many)] {
        group.bench_function(name, |b| {
            b.iter(|| weir::experiment::compare::compare(tensors, tensors, 1e-6))
        });
    }
    group.finish();
}

/// The batch of a V2 request's inputs.
fn inputs_of(request: &str) -> weir::tensor::Batch {
    weir::protocol::decode_request(request.as_bytes(), None, 1 << 21)
        .unwrap()
        .batch
}

/// `count` iris requests to `pipeline` as concurrent tasks, as a server's connections would
/// send them; the number answered.
async fn all_at_once(pipeline: &Arc<Pipeline>, count: usize) -> usize {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..count {
        let pipeline = pipeline.clone();
        requests.spawn(async move {
            let mut trace = Trace::default();
            infer(
                &pipeline,
                REQUEST.as_bytes(),
                None,
                RESPONSE_LIMIT,
                &mut trace,
            )
            .await
        });
    }
    let answers = requests.join_all().await;
    answers.into_iter().filter(|a| a.is_ok()).count()
}

criterion_group!(benches, bench);
criterion_main!(benches);
