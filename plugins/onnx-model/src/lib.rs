//! `onnx-model`: a model stage that serves any ONNX model unchanged. The host runs the graph
//! natively (ONNX Runtime or tract-onnx, the host's choice), loaded once when the pipeline
//! version is deployed; this component only hands it the batch and takes back its outputs.
//!
//! Config: optional `graph`, the artifact name of the ONNX model (default `model`), and
//! optional `inputs`, the tensors to feed it (default: every tensor of the batch). They are
//! matched to the graph's inputs by name, or by position when the names differ. Every graph
//! output joins the batch under the graph's name for it; the inputs fed to the graph leave it.
//! A whole batch of N rows is one execution.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OnnxModel {
    #[serde(default = "default_graph")]
    graph: String,
    inputs: Option<Vec<String>>,
}

fn default_graph() -> String {
    "model".to_owned()
}

impl Stage for OnnxModel {
    type Config = OnnxModel;

    fn new(config: OnnxModel) -> Result<OnnxModel, StageError> {
        Ok(config)
    }

    fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
        let inputs = match &self.inputs {
            Some(names) => names
                .iter()
                .map(|name| batch.take(name))
                .collect::<Result<Vec<_>, _>>()?,
            None => std::mem::take(&mut batch.tensors),
        };
        for output in weir_sdk::nn::compute(&self.graph, inputs)? {
            batch.push(output);
        }
        Ok(batch)
    }
}

weir_sdk::export_stage!(OnnxModel);
