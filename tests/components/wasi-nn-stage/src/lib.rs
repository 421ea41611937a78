//! `wasi-nn-stage`: a model stage written against the standard `wasi:nn` interfaces alone, as a
//! component from outside Weir would be: it loads the artifact `model` by name and runs the
//! whole batch through it. Keeps the host's `wasi:nn` side tested now that `weir-sdk` uses
//! `weir:pipeline/graphs`.

use serde::de::IgnoredAny;
use weir_sdk::bindings::wasi::nn::errors::ErrorCode;
use weir_sdk::bindings::wasi::nn::graph;
use weir_sdk::bindings::wasi::nn::tensor::{Tensor as NnTensor, TensorType};
use weir_sdk::{Batch, Datatype, Stage, StageError, Tensor};

struct WasiNnStage;

impl Stage for WasiNnStage {
    type Config = IgnoredAny;

    fn new(_: IgnoredAny) -> Result<WasiNnStage, StageError> {
        Ok(WasiNnStage)
    }

    fn process(&self, batch: Batch) -> Result<Batch, StageError> {
        let failure = |e: weir_sdk::bindings::wasi::nn::errors::Error| match e.code() {
            ErrorCode::InvalidArgument => StageError::InvalidInput(e.data()),
            code => StageError::Failure(format!("wasi:nn {code:?}: {}", e.data())),
        };
        let graph = graph::load_by_name("model").map_err(failure)?;
        let context = graph.init_execution_context().map_err(failure)?;
        let inputs = batch
            .tensors
            .into_iter()
            .map(|t| {
                let ty = match t.datatype() {
                    Datatype::Fp32 => TensorType::Fp32,
                    Datatype::Int64 => TensorType::I64,
                    other => {
                        return Err(StageError::InvalidInput(format!(
                            "wasi-nn-stage takes FP32 and INT64, not {other:?}"
                        )));
                    }
                };
                let dims: Vec<u32> = t.shape().iter().map(|&d| d as u32).collect();
                Ok((
                    t.name().to_owned(),
                    NnTensor::new(&dims, ty, &t.into_data()),
                ))
            })
            .collect::<Result<Vec<_>, StageError>>()?;
        let outputs = context.compute(inputs).map_err(failure)?;
        let tensors = outputs
            .into_iter()
            .map(|(name, t)| {
                let datatype = match t.ty() {
                    TensorType::I64 => Datatype::Int64,
                    _ => Datatype::Fp32,
                };
                let shape = t.dimensions().into_iter().map(u64::from).collect();
                Tensor::from_le_bytes(name, datatype, shape, t.data())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Batch {
            tensors,
            parameters: batch.parameters,
        })
    }
}

weir_sdk::export_stage!(WasiNnStage);
