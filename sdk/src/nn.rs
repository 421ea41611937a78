//! Run a model natively on the host, on a graph the host loaded once from one of this stage's
//! ONNX artifacts (on tract or ONNX Runtime, as the manifest chooses), through
//! `weir:pipeline/graphs`: every V2 datatype crosses, strings (`BYTES`) included. Only stages
//! in the `model` world may call it.
//!
//! Components written against the standard `wasi:nn` interfaces reach the same graphs, with
//! the numeric tensors `wasi:nn` defines; this crate's [`bindings`](crate::bindings) include
//! them.

use crate::StageError;
use crate::Tensor;
use crate::bindings::weir::pipeline::graphs;
use crate::bindings::weir::pipeline::types as wit;

/// Run the graph of the ONNX artifact the manifest names `artifact` on `inputs` (matched to
/// the graph's inputs by name, or by position), as one execution, and return every output of
/// the graph, named as the graph names them.
///
/// A tensor the graph does not accept (datatype, shape) is an invalid-input error naming it;
/// anything else that goes wrong is a failure.
pub fn compute(artifact: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, StageError> {
    let inputs: Vec<wit::Tensor> = inputs.into_iter().map(Into::into).collect();
    let outputs = graphs::compute(artifact, &inputs)?;
    Ok(outputs.into_iter().map(Into::into).collect())
}
