//! Run a model natively on the host through the standard `wasi:nn` interfaces, on a graph the
//! host loaded once from one of this stage's ONNX artifacts. Only stages in the `model` world
//! may call it.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::StageError;
use crate::bindings::wasi::nn::errors::{Error, ErrorCode};
use crate::bindings::wasi::nn::graph;
use crate::bindings::wasi::nn::inference::GraphExecutionContext;
use crate::bindings::wasi::nn::tensor::{Tensor as NnTensor, TensorType};
use crate::tensor::{Datatype, Tensor, datatype_name};

/// Run the graph of the ONNX artifact the manifest names `artifact` on `inputs` (matched to
/// the graph's inputs by name, or by position), as one execution, and return every output of
/// the graph, named as the graph names them.
///
/// A tensor the graph does not accept (datatype, shape) is an invalid-input error naming it;
/// anything else that goes wrong is a failure.
pub fn compute(artifact: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, StageError> {
    CONTEXTS.with_borrow_mut(|contexts| {
        if !contexts.contains_key(artifact) {
            let graph = graph::load_by_name(artifact).map_err(|e| failure(artifact, &e))?;
            let context = graph
                .init_execution_context()
                .map_err(|e| failure(artifact, &e))?;
            contexts.insert(artifact.to_owned(), context);
        }
        run(artifact, &contexts[artifact], inputs)
    })
}

thread_local! {
    /// Execution contexts by artifact name. A fresh instance per request opens one per call;
    /// an instance the manifest reuses keeps it, saving two host calls per request.
    static CONTEXTS: RefCell<HashMap<String, GraphExecutionContext>> = RefCell::default();
}

fn run(
    artifact: &str,
    context: &GraphExecutionContext,
    inputs: Vec<Tensor>,
) -> Result<Vec<Tensor>, StageError> {
    let inputs = inputs
        .into_iter()
        .map(|t| Ok((t.name().to_owned(), to_nn(t)?)))
        .collect::<Result<Vec<_>, StageError>>()?;
    let outputs = context.compute(inputs).map_err(|e| match e.code() {
        ErrorCode::InvalidArgument => StageError::InvalidInput(e.data()),
        _ => failure(artifact, &e),
    })?;
    Ok(outputs
        .into_iter()
        .map(|(name, tensor)| from_nn(name, &tensor))
        .collect())
}

fn failure(artifact: &str, error: &Error) -> StageError {
    StageError::Failure(format!(
        "wasi:nn, graph '{artifact}': {:?}: {}",
        error.code(),
        error.data()
    ))
}

/// The `wasi:nn` element type of a V2 datatype; `wasi:nn` has no others.
fn tensor_type(datatype: Datatype) -> Option<TensorType> {
    Some(match datatype {
        Datatype::Fp16 => TensorType::Fp16,
        Datatype::Fp32 => TensorType::Fp32,
        Datatype::Fp64 => TensorType::Fp64,
        Datatype::Bf16 => TensorType::Bf16,
        Datatype::Uint8 => TensorType::U8,
        Datatype::Int32 => TensorType::I32,
        Datatype::Int64 => TensorType::I64,
        _ => return None,
    })
}

fn to_nn(tensor: Tensor) -> Result<NnTensor, StageError> {
    let ty = tensor_type(tensor.datatype()).ok_or_else(|| {
        StageError::InvalidInput(format!(
            "tensor '{}' is {}; a model runs on FP16, FP32, FP64, BF16, UINT8, INT32 or INT64",
            tensor.name(),
            datatype_name(tensor.datatype())
        ))
    })?;
    let dimensions = tensor
        .shape()
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| {
            StageError::InvalidInput(format!("tensor '{}' is too large", tensor.name()))
        })?;
    Ok(NnTensor::new(&dimensions, ty, &tensor.into_data()))
}

fn from_nn(name: String, tensor: &NnTensor) -> Tensor {
    let datatype = match tensor.ty() {
        TensorType::Fp16 => Datatype::Fp16,
        TensorType::Fp32 => Datatype::Fp32,
        TensorType::Fp64 => Datatype::Fp64,
        TensorType::Bf16 => Datatype::Bf16,
        TensorType::U8 => Datatype::Uint8,
        TensorType::I32 => Datatype::Int32,
        TensorType::I64 => Datatype::Int64,
    };
    let shape = tensor.dimensions().into_iter().map(u64::from).collect();
    Tensor::from_raw(name, datatype, shape, tensor.data())
}
