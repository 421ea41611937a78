//! Models run natively on the host for model stages, instead of inside the Wasm sandbox: the
//! ONNX artifacts a stage pins are loaded once per artifact version, on one of two backends —
//! tract-onnx (pure Rust, always there) or ONNX Runtime (loaded at start from a library the
//! machine has; see [`onnxruntime`]) — and run whole batches at once.
//!
//! Stages reach them two ways, on the same loaded graphs: the standard `wasi:nn` interfaces
//! ([`wasi`]; numeric tensors only, as `wasi:nn` defines them) and Weir's own
//! `weir:pipeline/graphs` ([`host`]), whose tensors are the pipeline's, so every V2 datatype
//! crosses, strings included. `weir-sdk`'s `nn::compute` uses the latter.
//!
//! A run never starves the async workers: it runs in place after tokio has handed the worker's
//! other tasks to another thread, at most one run per core at once. The stage's deadline
//! bounds it: ONNX Runtime is told to stop; tract cannot be, and its run ends first.

mod host;
pub mod onnxruntime;
mod tract;
mod wasi;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::tensor::{Datatype, Tensor};
pub use host::{NnView, add_to_linker};
pub use onnxruntime::OnnxRuntime;
pub use wasi::{ErrorCode, NnError, TensorType, WasiExecutionContext, WasiGraph, WasiTensor};

/// Which backend runs a model stage's graphs: the manifest's `backend`, pinned in the version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// ONNX Runtime when it is loaded and takes the model, else tract.
    #[default]
    Auto,
    Tract,
    Onnxruntime,
}

impl BackendChoice {
    /// Whether this is the default (left out of stored specs, so older ones read the same).
    pub fn is_auto(&self) -> bool {
        *self == BackendChoice::Auto
    }

    /// As the manifest writes it.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Tract => "tract",
            BackendChoice::Onnxruntime => "onnxruntime",
        }
    }
}

/// A loaded model, ready to run on the backend that loaded it.
pub struct Graph {
    backend: Backend,
    inputs: Vec<Port>,
    outputs: Vec<String>,
    /// Places for native runs, shared by every graph of the engine.
    runs: Arc<Semaphore>,
}

enum Backend {
    Tract(tract::Plan),
    OnnxRuntime(onnxruntime::Model),
}

/// One input of a graph: its name, element type (`None`: one no V2 datatype carries) and
/// shape (`None`: any size).
struct Port {
    name: String,
    datatype: Option<Datatype>,
    type_name: String,
    shape: Vec<Option<usize>>,
}

/// Why a run gave no outputs.
#[derive(Debug)]
pub enum RunError {
    /// The backend refused the inputs or failed.
    Nn(NnError),
    /// The stage's deadline passed first.
    Deadline,
}

/// The error a stage traps with when its native run passes its deadline; the host answers 504.
#[derive(Debug, thiserror::Error)]
#[error("its model ran past the stage's deadline")]
pub struct PastDeadline;

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inputs: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
        f.debug_struct("Graph")
            .field("backend", &self.backend_name())
            .field("inputs", &inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Graph {
    /// `tract` or `onnxruntime`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Tract(_) => "tract",
            Backend::OnnxRuntime(_) => "onnxruntime",
        }
    }

    /// Run one execution, bounded by `deadline`. `inputs` are matched to the graph's inputs by
    /// name, or by position when their names are not the graph's; every graph output comes
    /// back, named. ONNX Runtime is told to stop at the deadline (it stops at its next
    /// operator); tract cannot be stopped, so a run past the deadline ends first.
    pub async fn run(
        self: &Arc<Self>,
        inputs: Vec<Tensor>,
        deadline: Instant,
    ) -> Result<Vec<Tensor>, RunError> {
        let inputs = self.prepare(inputs).map_err(RunError::Nn)?;
        let deadline = tokio::time::Instant::from_std(deadline);
        // A free place is taken at once; only a wait for one needs a timer.
        let _place = match self.runs.try_acquire() {
            Ok(place) => place,
            Err(_) => tokio::time::timeout_at(deadline, self.runs.acquire())
                .await
                .map_err(|_| RunError::Deadline)?
                .expect("the semaphore is never closed"),
        };
        let options = match &self.backend {
            Backend::OnnxRuntime(model) => Some(model.run_options().map_err(RunError::Nn)?),
            Backend::Tract(_) => None,
        };
        if let Some(options) = &options {
            onnxruntime::stop_at(deadline.into_std(), options);
        }
        let outcome = blocking(|| {
            let run = std::panic::AssertUnwindSafe(|| self.execute(inputs, options.as_deref()));
            std::panic::catch_unwind(run).unwrap_or_else(|_| {
                Err(NnError::runtime(format!(
                    "the {} backend panicked",
                    self.backend_name()
                )))
            })
        });
        if tokio::time::Instant::now() >= deadline {
            return Err(RunError::Deadline);
        }
        outcome.map_err(RunError::Nn)
    }

    /// Run on this thread: the blocking part of [`Graph::run`].
    fn execute(
        &self,
        inputs: Vec<Tensor>,
        options: Option<&ort::session::RunOptions>,
    ) -> Result<Vec<Tensor>, NnError> {
        let outputs = match (&self.backend, options) {
            (Backend::Tract(plan), _) => plan.run(inputs)?,
            (Backend::OnnxRuntime(model), Some(options)) => model.run(inputs, options)?,
            (Backend::OnnxRuntime(_), None) => unreachable!("ONNX Runtime runs with options"),
        };
        Ok(self
            .outputs
            .iter()
            .cloned()
            .zip(outputs)
            .map(rename)
            .collect())
    }

    /// The request's tensors in the graph's input order and under its names, each checked
    /// against its input.
    fn prepare(&self, mut inputs: Vec<Tensor>) -> Result<Vec<Tensor>, NnError> {
        let by_name = self
            .inputs
            .iter()
            .all(|port| inputs.iter().any(|t| t.name == port.name));
        let mut ordered: Vec<Tensor> = if by_name {
            self.inputs
                .iter()
                .map(|port| {
                    let at = inputs.iter().position(|t| t.name == port.name);
                    inputs.swap_remove(at.expect("checked above"))
                })
                .collect()
        } else if inputs.len() == self.inputs.len() {
            inputs
        } else {
            let expected: Vec<&str> = self.inputs.iter().map(|p| p.name.as_str()).collect();
            let given: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(NnError::invalid(format!(
                "the ONNX graph takes the inputs [{}]; got [{}]",
                expected.join(", "),
                given.join(", ")
            )));
        };
        for (tensor, port) in ordered.iter_mut().zip(&self.inputs) {
            port.accept(tensor)?;
            // Under the graph's name: matched by position, it may have come under another.
            tensor.name.clone_from(&port.name);
        }
        Ok(ordered)
    }
}

/// Run `work` on this thread. On a multi-threaded runtime tokio first hands this worker's
/// other tasks to another thread, so a long run starves none of them; the run itself does not
/// hop to another thread and back, which cost about 95 µs a run on a 2-core VM.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    match flavor {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

/// A backend's output tensor under the graph's name for it.
fn rename((name, mut tensor): (String, Tensor)) -> Tensor {
    tensor.name = name;
    tensor
}

impl Port {
    /// Refuse `tensor` for this input, naming both, when its datatype or shape does not fit.
    fn accept(&self, tensor: &Tensor) -> Result<(), NnError> {
        let fits = tensor.shape.len() == self.shape.len()
            && (tensor.shape.iter().zip(&self.shape))
                .all(|(&given, expected)| expected.is_none_or(|e| e as u64 == given));
        if self.datatype == Some(tensor.datatype) && fits {
            return Ok(());
        }
        Err(NnError::invalid(format!(
            "tensor '{}' is {} {:?}; the ONNX graph's input '{}' takes {} {}",
            tensor.name,
            tensor.datatype,
            tensor.shape,
            self.name,
            self.type_name,
            self.describe_shape()
        )))
    }

    /// `[N, 64]`: an open first dimension as `N`, other open ones as `?`.
    fn describe_shape(&self) -> String {
        let dims: Vec<String> = (self.shape.iter().enumerate())
            .map(|(axis, d)| match (axis, d) {
                (_, Some(d)) => d.to_string(),
                (0, None) => "N".to_owned(),
                (_, None) => "?".to_owned(),
            })
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

/// The graphs of one model stage, by the name the manifest gives their artifacts.
#[derive(Debug, Default)]
pub struct Graphs {
    onnx: BTreeMap<String, Arc<Graph>>,
    /// The stage's artifacts that are not ONNX, so a lookup can say why it found none.
    other: Vec<String>,
}

impl Graphs {
    /// The graph named `name`, or why there is none.
    fn get(&self, name: &str) -> Result<Arc<Graph>, NnError> {
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
        Err(NnError::new(ErrorCode::NotFound, message))
    }

    /// Each graph's artifact name and backend, for model metadata.
    pub fn backends(&self) -> BTreeMap<&str, &'static str> {
        (self.onnx.iter())
            .map(|(name, graph)| (name.as_str(), graph.backend_name()))
            .collect()
    }
}

/// An artifact's digest and the backend that loaded it.
type GraphKey = (String, &'static str);

/// The graphs loaded so far, by artifact digest and backend, shared by every pipeline version
/// that pins the same artifact; a graph no version uses any more is freed.
#[derive(Clone)]
pub struct GraphCache {
    onnxruntime: Option<Arc<OnnxRuntime>>,
    loaded: Arc<Mutex<HashMap<GraphKey, Weak<Graph>>>>,
    runs: Arc<Semaphore>,
}

impl GraphCache {
    /// Graphs on tract, and on ONNX Runtime when it is given; at most one native run per core
    /// at once.
    pub fn new(onnxruntime: Option<Arc<OnnxRuntime>>) -> GraphCache {
        let cores = crate::cores();
        GraphCache {
            onnxruntime,
            loaded: Arc::default(),
            runs: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Whether ONNX Runtime is loaded.
    pub fn has_onnxruntime(&self) -> bool {
        self.onnxruntime.is_some()
    }

    /// The graphs of a model stage's artifacts (name → digest and bytes), on the backend
    /// `choice` picks. An artifact that is ONNX but that no allowed backend loads fails the
    /// stage, naming the backends tried and why each refused.
    pub fn graphs(
        &self,
        artifacts: &[(&str, &str, &[u8])],
        choice: BackendChoice,
    ) -> anyhow::Result<Graphs> {
        let mut graphs = Graphs::default();
        for &(name, digest, bytes) in artifacts {
            let graph = self
                .graph(digest, bytes, choice)
                .map_err(|e| e.context(format!("artifact '{name}' (ONNX)")))?;
            let Some(graph) = graph else {
                graphs.other.push(name.to_owned());
                continue;
            };
            tracing::info!(
                artifact = name,
                digest,
                backend = graph.backend_name(),
                choice = choice.name(),
                "model graph ready"
            );
            graphs.onnx.insert(name.to_owned(), graph);
        }
        Ok(graphs)
    }

    /// The graph of one ONNX artifact on the first backend `choice` allows that loads it.
    /// `None` when the artifact is not ONNX. A graph already loaded (another version pins the
    /// same artifact) is reused without decoding the artifact again.
    fn graph(
        &self,
        digest: &str,
        bytes: &[u8],
        choice: BackendChoice,
    ) -> anyhow::Result<Option<Arc<Graph>>> {
        let cached = (self.candidates(choice).iter().flatten())
            .find_map(|backend| self.cached(digest, backend));
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(proto) = tract::decode(bytes) else {
            return Ok(None);
        };
        let mut refusals = Vec::new();
        for backend in self.candidates(choice)? {
            match self.load(digest, bytes, &proto, backend) {
                Ok(graph) => {
                    if !refusals.is_empty() {
                        tracing::warn!(
                            digest,
                            backend,
                            "the model runs on {backend}: {}",
                            refusals.join("; ")
                        );
                    }
                    return Ok(Some(graph));
                }
                Err(e) => refusals.push(format!("{e:#}")),
            }
        }
        if self.onnxruntime.is_none() && choice == BackendChoice::Auto {
            refusals.push(
                "ONNX Runtime is not loaded (weir serve --onnxruntime-lib, or the \
                 onnxruntime Python package)"
                    .into(),
            );
        }
        anyhow::bail!("{}", refusals.join("; "))
    }

    /// The backends `choice` allows, in the order to try them.
    fn candidates(&self, choice: BackendChoice) -> anyhow::Result<Vec<&'static str>> {
        Ok(match (choice, &self.onnxruntime) {
            (BackendChoice::Auto, Some(_)) => vec!["onnxruntime", "tract"],
            (BackendChoice::Auto, None) | (BackendChoice::Tract, _) => vec!["tract"],
            (BackendChoice::Onnxruntime, Some(_)) => vec!["onnxruntime"],
            (BackendChoice::Onnxruntime, None) => anyhow::bail!(
                "the manifest asks for backend = \"onnxruntime\", and ONNX Runtime is not loaded \
                 (weir serve --onnxruntime-lib, or the onnxruntime Python package)"
            ),
        })
    }

    /// The graph of one artifact already loaded on `backend`, if a version still uses it.
    fn cached(&self, digest: &str, backend: &'static str) -> Option<Arc<Graph>> {
        let loaded = self.loaded.lock().unwrap();
        loaded
            .get(&(digest.to_owned(), backend))
            .and_then(Weak::upgrade)
    }

    /// Load one artifact (`bytes`, decoded as `proto`) on `backend`.
    fn load(
        &self,
        digest: &str,
        bytes: &[u8],
        proto: &tract_onnx::pb::ModelProto,
        backend: &'static str,
    ) -> anyhow::Result<Arc<Graph>> {
        let key = (digest.to_owned(), backend);
        let started = Instant::now();
        let (backend, inputs, outputs) = match (backend, &self.onnxruntime) {
            ("onnxruntime", Some(runtime)) => {
                let (model, inputs, outputs) = runtime.load_model(bytes)?;
                (Backend::OnnxRuntime(model), inputs, outputs)
            }
            _ => {
                let (plan, inputs, outputs) = tract::Plan::load(proto)?;
                (Backend::Tract(plan), inputs, outputs)
            }
        };
        let graph = Arc::new(Graph {
            backend,
            inputs,
            outputs,
            runs: self.runs.clone(),
        });
        tracing::debug!(
            digest,
            backend = graph.backend_name(),
            load_ms = started.elapsed().as_millis() as u64,
            "loaded ONNX graph"
        );
        let mut loaded = self.loaded.lock().unwrap();
        loaded.retain(|_, graph| graph.strong_count() > 0);
        loaded.insert(key, Arc::downgrade(&graph));
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use tract_onnx::pb::ModelProto;

    use super::*;

    const DIGITS: &[u8] = include_bytes!("../../../examples/digits/mlp.onnx");

    /// An FP32 tensor named `name` of `values` in `shape`.
    fn fp32(name: &str, shape: Vec<u64>, values: impl IntoIterator<Item = f32>) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape,
            data: values.into_iter().flat_map(f32::to_le_bytes).collect(),
        }
    }

    /// The values of an FP32 tensor.
    fn floats(tensor: &Tensor) -> Vec<f32> {
        (tensor.data.chunks_exact(4))
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    fn pixels(name: &str, rows: u64, columns: u64) -> Tensor {
        let values = (0..rows * columns).map(|i| (i % 17) as f32 / 16.0);
        fp32(name, vec![rows, columns], values)
    }

    /// The graph of `bytes` on tract.
    fn tract(bytes: &[u8]) -> anyhow::Result<Arc<Graph>> {
        let graph = GraphCache::new(None).graph("test", bytes, BackendChoice::Tract)?;
        Ok(graph.expect("an ONNX model"))
    }

    /// Run `graph` on `inputs` as a stage would, with a second to spare.
    fn run(graph: &Arc<Graph>, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, RunError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        runtime.block_on(graph.run(inputs, deadline))
    }

    fn invalid(result: Result<Vec<Tensor>, RunError>) -> String {
        match result {
            Err(RunError::Nn(e)) if e.code == ErrorCode::InvalidArgument => e.message,
            other => panic!("not an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn a_batch_of_rows_is_one_execution_with_a_row_per_output() {
        let outputs = run(&tract(DIGITS).unwrap(), vec![pixels("x", 5, 64)]).unwrap();
        let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["label", "probabilities"]);
        assert_eq!(outputs[0].shape, [5]);
        assert_eq!(outputs[0].datatype, Datatype::Int64);
        assert_eq!(outputs[1].shape, [5, 10]);
        for row in floats(&outputs[1]).chunks_exact(10) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
    }

    #[test]
    fn a_wrong_shape_or_type_is_invalid_argument_naming_the_tensor() {
        let graph = tract(DIGITS).unwrap();
        let message = invalid(run(&graph, vec![pixels("pixels", 2, 63)]));
        assert!(message.contains("tensor 'pixels'"), "{message}");
        assert!(message.contains("[N, 64]"), "{message}");
        let mut wide = pixels("pixels", 1, 32);
        wide.datatype = Datatype::Fp64;
        let message = invalid(run(&graph, vec![wide]));
        assert!(message.contains("is FP64"), "{message}");
        let message = invalid(run(&graph, Vec::new()));
        assert!(message.contains("takes the inputs [pixels]"), "{message}");
    }

    #[test]
    fn an_unknown_operator_is_refused_by_name_with_the_backends_tried() {
        let mut proto = ModelProto::decode(DIGITS).unwrap();
        let node = &mut proto.graph.as_mut().unwrap().node[3];
        node.op_type = "FancyActivation".into();
        node.domain = "com.example".into();
        let bytes = proto.encode_to_vec();
        let error = GraphCache::new(None)
            .graph("x", &bytes, BackendChoice::Auto)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("tract-onnx does not support the operator com.example.FancyActivation"),
            "{error}"
        );
        assert!(error.contains("ONNX Runtime is not loaded"), "{error}");
        let error = GraphCache::new(None)
            .graph("x", &bytes, BackendChoice::Onnxruntime)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("backend = \"onnxruntime\", and ONNX Runtime is not loaded"),
            "{error}"
        );
    }

    /// `y = relu(x)`, with `x` FP32 of two open dimensions.
    fn relu_of_two_open_dimensions() -> ModelProto {
        use tract_onnx::pb::*;
        let open = tensor_shape_proto::Dimension::default;
        let value = |name: &str| ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: vec![open(), open()],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                version: 17,
                ..Default::default()
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    name: "relu".into(),
                    op_type: "Relu".into(),
                    input: vec!["x".into()],
                    output: vec!["y".into()],
                    ..Default::default()
                }],
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn open_dimensions_after_the_first_are_independent_of_the_batch() {
        let graph = tract(&relu_of_two_open_dimensions().encode_to_vec()).unwrap();
        let x = fp32("x", vec![2, 3], [-1.0, 2.0, -3.0, 4.0, 5.0, -6.0]);
        let outputs = run(&graph, vec![x]).unwrap();
        assert_eq!(outputs[0].shape, [2, 3]);
        assert_eq!(floats(&outputs[0]), [0.0, 2.0, 0.0, 4.0, 5.0, 0.0]);
        let wide = run(&graph, vec![pixels("x", 1, 5)]).unwrap();
        assert_eq!(wide[0].shape, [1, 5]);
    }

    #[test]
    fn a_run_that_cannot_start_before_its_deadline_is_past_it() {
        let graph = tract(DIGITS).unwrap();
        // Every place for a native run is taken.
        let places = graph.runs.available_permits() as u32;
        let _taken = graph.runs.clone().try_acquire_many_owned(places).unwrap();
        let outcome = run(&graph, vec![pixels("x", 1, 64)]);
        assert!(matches!(outcome, Err(RunError::Deadline)), "{outcome:?}");
    }

    #[test]
    fn json_is_not_onnx() {
        assert!(tract::decode(br#"{"coef": [[1.0]], "intercept": [0.0]}"#).is_none());
        assert!(tract::decode(b"").is_none());
        assert!(tract::decode(DIGITS).is_some());
    }
}
