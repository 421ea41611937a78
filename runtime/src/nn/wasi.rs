//! The standard `wasi:nn` interfaces over the loaded graphs, for components written against
//! them. Own bindings of the standard WIT rather than the `wasmtime-wasi-nn` crate: that crate
//! reports every failure of `compute` as `runtime-error`, so a guest could not tell a client's
//! wrong shape (HTTP 400) from a backend fault (HTTP 500); here a tensor the graph does not
//! accept is `invalid-argument`, with a message naming the tensor. `wasi:nn` tensors carry
//! FP16, FP32, FP64, BF16, UINT8, INT32 and INT64 only; `weir:pipeline/graphs` carries the rest.

use std::sync::Arc;

use wasmtime::component::Resource;

use super::host::NnView;
use super::{Graph, PastDeadline, RunError};
use crate::engine::host::wasi_nn::{errors, graph, inference, tensor};
use crate::tensor::{Datatype, Tensor};
pub use errors::ErrorCode;
pub use tensor::TensorType;

/// A graph handed to a guest by `load-by-name`.
pub struct WasiGraph(Arc<Graph>);

/// One guest's execution context on a graph: per-request state is all in `compute`, so it is
/// only a handle on the shared graph.
pub struct WasiExecutionContext(Arc<Graph>);

/// A `wasi:nn` tensor: dimensions, element type and little-endian bytes.
#[derive(Debug)]
pub struct WasiTensor {
    pub dimensions: Vec<u32>,
    pub ty: TensorType,
    pub data: Vec<u8>,
}

/// A `wasi:nn` error: its code and a message that names the cause.
#[derive(Debug)]
pub struct NnError {
    pub code: ErrorCode,
    pub message: String,
}

impl NnError {
    pub fn new(code: ErrorCode, message: String) -> NnError {
        NnError { code, message }
    }

    /// The caller's fault: a tensor the graph does not accept.
    pub fn invalid(message: String) -> NnError {
        NnError::new(ErrorCode::InvalidArgument, message)
    }

    /// The backend's fault.
    pub fn runtime(message: String) -> NnError {
        NnError::new(ErrorCode::RuntimeError, message)
    }
}

type Fallible<T> = wasmtime::Result<Result<Resource<T>, Resource<NnError>>>;

impl NnView<'_> {
    /// Hand `outcome` to the guest: the value, or the error, as a resource.
    fn answer<T: Send + 'static>(&mut self, outcome: Result<T, NnError>) -> Fallible<T> {
        Ok(match outcome {
            Ok(value) => Ok(self.table.push(value)?),
            Err(error) => Err(self.table.push(error)?),
        })
    }
}

impl graph::Host for NnView<'_> {
    /// Graphs come from the pipeline's pinned artifacts only: a guest cannot make the host
    /// parse and optimize arbitrary bytes on the request path.
    fn load(
        &mut self,
        _builder: Vec<graph::GraphBuilder>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> Fallible<WasiGraph> {
        self.answer(Err(NnError::new(
            ErrorCode::UnsupportedOperation,
            "Weir loads graphs from the pipeline's artifacts only: use load-by-name with the \
             artifact's name"
                .into(),
        )))
    }

    fn load_by_name(&mut self, name: String) -> Fallible<WasiGraph> {
        let graph = self.graphs.get(&name).map(WasiGraph);
        self.answer(graph)
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<WasiGraph>,
    ) -> Fallible<WasiExecutionContext> {
        let graph = self.table.get(&graph)?.0.clone();
        self.answer(Ok(WasiExecutionContext(graph)))
    }

    fn drop(&mut self, graph: Resource<WasiGraph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<WasiExecutionContext>,
        inputs: Vec<inference::NamedTensor>,
    ) -> wasmtime::Result<Result<Vec<inference::NamedTensor>, Resource<NnError>>> {
        let graph = self.table.get(&context)?.0.clone();
        let inputs = inputs
            .into_iter()
            .map(|(name, tensor)| Ok(from_wasi(name, self.table.delete(tensor)?)))
            .collect::<wasmtime::Result<Vec<_>>>()?;
        let outputs: Result<Vec<_>, NnError> = match graph.run(inputs, self.deadline).await {
            Ok(outputs) => outputs.into_iter().map(to_wasi).collect(),
            Err(RunError::Nn(error)) => Err(error),
            Err(RunError::Deadline) => return Err(PastDeadline.into()),
        };
        match outputs {
            Ok(outputs) => Ok(Ok(outputs
                .into_iter()
                .map(|(name, tensor)| Ok((name, self.table.push(tensor)?)))
                .collect::<wasmtime::Result<_>>()?)),
            Err(error) => Ok(Err(self.table.push(error)?)),
        }
    }

    fn drop(&mut self, context: Resource<WasiExecutionContext>) -> wasmtime::Result<()> {
        self.table.delete(context)?;
        Ok(())
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<WasiTensor>> {
        Ok(self.table.push(WasiTensor {
            dimensions,
            ty,
            data,
        })?)
    }

    fn dimensions(&mut self, tensor: Resource<WasiTensor>) -> wasmtime::Result<Vec<u32>> {
        Ok(self.table.get(&tensor)?.dimensions.clone())
    }

    fn ty(&mut self, tensor: Resource<WasiTensor>) -> wasmtime::Result<TensorType> {
        Ok(self.table.get(&tensor)?.ty)
    }

    fn data(&mut self, tensor: Resource<WasiTensor>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&tensor)?.data.clone())
    }

    fn drop(&mut self, tensor: Resource<WasiTensor>) -> wasmtime::Result<()> {
        self.table.delete(tensor)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<NnError>) -> wasmtime::Result<ErrorCode> {
        Ok(self.table.get(&error)?.code)
    }

    fn data(&mut self, error: Resource<NnError>) -> wasmtime::Result<String> {
        Ok(self.table.get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<NnError>) -> wasmtime::Result<()> {
        self.table.delete(error)?;
        Ok(())
    }
}

/// A `wasi:nn` tensor as the pipeline's.
fn from_wasi(name: String, tensor: WasiTensor) -> Tensor {
    let datatype = match tensor.ty {
        TensorType::Fp16 => Datatype::Fp16,
        TensorType::Fp32 => Datatype::Fp32,
        TensorType::Fp64 => Datatype::Fp64,
        TensorType::Bf16 => Datatype::Bf16,
        TensorType::U8 => Datatype::Uint8,
        TensorType::I32 => Datatype::Int32,
        TensorType::I64 => Datatype::Int64,
    };
    Tensor {
        name,
        datatype,
        shape: tensor.dimensions.iter().map(|&d| u64::from(d)).collect(),
        data: tensor.data,
    }
}

/// A graph output as a `wasi:nn` tensor, if `wasi:nn` can carry its datatype.
fn to_wasi(tensor: Tensor) -> Result<(String, WasiTensor), NnError> {
    let ty = match tensor.datatype {
        Datatype::Fp16 => TensorType::Fp16,
        Datatype::Fp32 => TensorType::Fp32,
        Datatype::Fp64 => TensorType::Fp64,
        Datatype::Bf16 => TensorType::Bf16,
        Datatype::Uint8 => TensorType::U8,
        Datatype::Int32 => TensorType::I32,
        Datatype::Int64 => TensorType::I64,
        other => {
            return Err(NnError::runtime(format!(
                "graph output '{}' is {other}, which wasi:nn tensors cannot carry (weir-sdk's \
                 nn::compute, through weir:pipeline/graphs, can)",
                tensor.name
            )));
        }
    };
    let dimensions = (tensor.shape.iter())
        .map(|&d| u32::try_from(d))
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| NnError::runtime(format!("graph output '{}' is too large", tensor.name)))?;
    Ok((
        tensor.name,
        WasiTensor {
            dimensions,
            ty,
            data: tensor.data,
        },
    ))
}
