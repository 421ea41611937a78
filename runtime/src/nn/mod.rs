//! The host side of `wasi:nn` for model stages: heavy inference runs natively here, on graphs
//! loaded and optimized once per artifact version, instead of inside the Wasm sandbox.
//!
//! Own bindings of the standard WIT rather than the `wasmtime-wasi-nn` crate: that crate
//! reports every failure of `compute` as `runtime-error`, so a guest could not tell a client's
//! wrong shape (HTTP 400) from a backend fault (HTTP 500); here a tensor the graph does not
//! accept is `invalid-argument`, with a message naming the tensor.

mod onnx;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::engine::host::wasi_nn::{errors, graph, inference, tensor};
pub use errors::ErrorCode;
pub use onnx::OnnxGraph;
pub use tensor::TensorType;

/// A graph handed to a guest by `load-by-name`.
pub struct Graph(Arc<OnnxGraph>);

/// One guest's execution context on a graph: per-request state is all in `compute`, so it is
/// only a handle on the shared graph.
pub struct ExecutionContext(Arc<OnnxGraph>);

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
    code: ErrorCode,
    message: String,
}

impl NnError {
    /// The caller's fault: a tensor the graph does not accept.
    fn invalid(message: String) -> NnError {
        NnError {
            code: ErrorCode::InvalidArgument,
            message,
        }
    }

    /// The backend's fault.
    fn runtime(message: String) -> NnError {
        NnError {
            code: ErrorCode::RuntimeError,
            message,
        }
    }
}

/// The ONNX graphs of one model stage, by the name the manifest gives their artifacts.
#[derive(Debug, Default)]
pub struct Graphs {
    onnx: BTreeMap<String, Arc<OnnxGraph>>,
    /// The stage's artifacts that are not ONNX, so `load-by-name` can say why it found none.
    other: Vec<String>,
}

impl Graphs {
    /// The graph named `name`, or why there is none.
    fn get(&self, name: &str) -> Result<Arc<OnnxGraph>, NnError> {
        if let Some(graph) = self.onnx.get(name) {
            return Ok(graph.clone());
        }
        let message = if self.other.iter().any(|n| n == name) {
            format!("the artifact '{name}' is not an ONNX model")
        } else {
            let names: Vec<&str> = self.onnx.keys().map(String::as_str).collect();
            format!(
                "the manifest gives this stage no ONNX artifact named '{name}' (it has: [{}])",
                names.join(", ")
            )
        };
        Err(NnError {
            code: ErrorCode::NotFound,
            message,
        })
    }
}

/// The graphs loaded so far, by artifact digest, shared by every pipeline version that pins
/// the same artifact; a graph no version uses any more is freed.
#[derive(Clone, Default)]
pub struct GraphCache {
    loaded: Arc<Mutex<HashMap<String, Weak<OnnxGraph>>>>,
}

impl GraphCache {
    /// The graphs of a model stage's artifacts (name → digest and bytes). An artifact that is
    /// ONNX but does not load (an operator the backend lacks, say) fails the stage.
    pub fn graphs(&self, artifacts: &[(&str, &str, &[u8])]) -> anyhow::Result<Graphs> {
        let mut graphs = Graphs::default();
        for &(name, digest, bytes) in artifacts {
            match self.graph(digest, bytes) {
                Ok(Some(graph)) => {
                    graphs.onnx.insert(name.to_owned(), graph);
                }
                Ok(None) => graphs.other.push(name.to_owned()),
                Err(e) => return Err(e.context(format!("artifact '{name}' (ONNX)"))),
            }
        }
        Ok(graphs)
    }

    /// The graph of one artifact: already loaded, or loaded now; `None` if it is not ONNX.
    fn graph(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<Option<Arc<OnnxGraph>>> {
        if let Some(graph) = self
            .loaded
            .lock()
            .unwrap()
            .get(digest)
            .and_then(Weak::upgrade)
        {
            return Ok(Some(graph));
        }
        let Some(proto) = onnx::decode(bytes) else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        let graph = Arc::new(OnnxGraph::load(&proto).context("loading the model")?);
        tracing::info!(
            digest,
            load_ms = started.elapsed().as_millis() as u64,
            "loaded ONNX graph"
        );
        let mut loaded = self.loaded.lock().unwrap();
        loaded.retain(|_, graph| graph.strong_count() > 0);
        loaded.insert(digest.to_owned(), Arc::downgrade(&graph));
        Ok(Some(graph))
    }
}

/// What the `wasi:nn` imports of one stage instance reach: its resources and its graphs.
pub struct NnView<'a> {
    pub table: &'a mut ResourceTable,
    pub graphs: &'a Graphs,
}

struct HasNnView;

impl HasData for HasNnView {
    type Data<'a> = NnView<'a>;
}

/// Link the `wasi:nn` interfaces, reached through `view`.
pub fn add_to_linker<T: 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> anyhow::Result<()> {
    graph::add_to_linker::<T, HasNnView>(linker, view)?;
    tensor::add_to_linker::<T, HasNnView>(linker, view)?;
    inference::add_to_linker::<T, HasNnView>(linker, view)?;
    errors::add_to_linker::<T, HasNnView>(linker, view)?;
    Ok(())
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
    ) -> Fallible<Graph> {
        self.answer(Err(NnError {
            code: ErrorCode::UnsupportedOperation,
            message: "Weir loads graphs from the pipeline's artifacts only: use load-by-name \
                      with the artifact's name"
                .into(),
        }))
    }

    fn load_by_name(&mut self, name: String) -> Fallible<Graph> {
        let graph = self.graphs.get(&name).map(Graph);
        self.answer(graph)
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(&mut self, graph: Resource<Graph>) -> Fallible<ExecutionContext> {
        let graph = self.table.get(&graph)?.0.clone();
        self.answer(Ok(ExecutionContext(graph)))
    }

    fn drop(&mut self, graph: Resource<Graph>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    fn compute(
        &mut self,
        context: Resource<ExecutionContext>,
        inputs: Vec<inference::NamedTensor>,
    ) -> wasmtime::Result<Result<Vec<inference::NamedTensor>, Resource<NnError>>> {
        let graph = self.table.get(&context)?.0.clone();
        let inputs = inputs
            .into_iter()
            .map(|(name, tensor)| Ok((name, self.table.delete(tensor)?)))
            .collect::<wasmtime::Result<Vec<_>>>()?;
        match graph.run(inputs) {
            Ok(outputs) => Ok(Ok(outputs
                .into_iter()
                .map(|(name, tensor)| Ok((name, self.table.push(tensor)?)))
                .collect::<wasmtime::Result<_>>()?)),
            Err(error) => Ok(Err(self.table.push(error)?)),
        }
    }

    fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
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
