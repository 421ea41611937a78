//! The host side of the `weir:pipeline` WIT contract: what a stage instance may import, the
//! per-request state behind those imports, and the resource limits of each instance.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::output::{GuestOutput, Stream};
use crate::{nn, tensor};

/// Host bindings generated from `wit/`. The `model` world imports the most of the three
/// worlds; all three export the same `stage` interface. `wasi:nn`'s resources are the types
/// of [`crate::nn`].
mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "model",
        // Native inference runs off the async workers (see `crate::nn`): its host calls are
        // async, the guest waits in them.
        imports: {
            default: trappable,
            "weir:pipeline/graphs.compute": async | trappable,
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
        },
        exports: { default: async },
        with: {
            "wasi:nn/graph.graph": crate::nn::WasiGraph,
            "wasi:nn/tensor.tensor": crate::nn::WasiTensor,
            "wasi:nn/inference.graph-execution-context": crate::nn::WasiExecutionContext,
            "wasi:nn/errors.error": crate::nn::NnError,
        },
    });
}

pub use bindings::wasi::nn as wasi_nn;
pub use bindings::weir::pipeline::graphs;
pub use bindings::weir::pipeline::types as wit;
use bindings::weir::pipeline::{artifacts, log};
pub use bindings::{Model, ModelPre};

/// Which stage slot a component fills; it decides what the component may import.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StageKind {
    Preprocess,
    Model,
    Postprocess,
}

impl StageKind {
    /// The slot's name in manifests, logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Preprocess => "preprocess",
            StageKind::Model => "model",
            StageKind::Postprocess => "postprocess",
        }
    }

    /// The WIT world a component in this slot targets.
    pub fn world(self) -> &'static str {
        match self {
            StageKind::Preprocess => "preprocessor",
            StageKind::Model => "model",
            StageKind::Postprocess => "postprocessor",
        }
    }
}

/// Who a stage instance is, for its log lines and artifact reads.
#[derive(Debug)]
pub struct StageIdentity {
    pub kind: StageKind,
    pub component: String,
    pub version: String,
    /// The model artifacts the manifest pins for this stage, by name.
    pub artifacts: BTreeMap<String, Arc<[u8]>>,
    /// Those artifacts that are ONNX models, loaded for `wasi:nn`.
    pub graphs: nn::Graphs,
}

/// The state of one store: the fresh instances of one request's stages, or one warm instance
/// of a stage that reuses them. Its stage is the one running now.
pub struct HostState {
    stage: Arc<StageIdentity>,
    /// Built on the guest's first WASI call: most calls make none, and building it (random
    /// generators, clocks, two output buffers) was about a twentieth of a fresh-instance
    /// request.
    wasi: Option<Wasi>,
    table: ResourceTable,
    limiter: MemoryCap,
    /// One per instance in the store.
    instances: Vec<super::InstanceCount>,
    /// Epoch ticks the current call may still run.
    ticks_left: u64,
}

impl HostState {
    /// State for instances of `stage` (first), each allowed `memory_cap` bytes of linear memory.
    pub fn new(stage: Arc<StageIdentity>, memory_cap: usize) -> HostState {
        HostState {
            stage,
            wasi: None,
            instances: Vec::new(),
            ticks_left: 0,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                cap: memory_cap,
                exceeded: false,
            },
        }
    }

    /// Serve `stage`'s calls from now on: its log lines, artifacts and graphs, and a WASI side
    /// of its own (the previous stage's output is flushed first).
    pub fn enter(&mut self, stage: &Arc<StageIdentity>) {
        if !Arc::ptr_eq(&self.stage, stage) {
            self.end_call();
            self.wasi = None;
            self.stage = stage.clone();
        }
    }

    /// Count an instance just made in this store as live until the store is dropped.
    pub fn count_instance(&mut self) {
        self.instances.push(super::InstanceCount::new());
    }

    /// Whether the instance tried to grow past its memory cap.
    pub fn memory_cap_exceeded(&self) -> bool {
        self.limiter.exceeded
    }

    /// The end of what the instance wrote to stderr (a panic message, say).
    pub fn stderr_tail(&self) -> String {
        self.wasi
            .as_ref()
            .map_or_else(String::new, |wasi| wasi.stderr.tail())
    }

    /// What this instance's model imports reach; native runs end by the call's deadline.
    fn nn_view(&mut self) -> nn::NnView<'_> {
        let left = super::EPOCH_TICK * u32::try_from(self.ticks_left).unwrap_or(u32::MAX);
        nn::NnView {
            table: &mut self.table,
            graphs: &self.stage.graphs,
            deadline: std::time::Instant::now() + left,
        }
    }

    /// Flush the guest's output after a call, so a reused instance logs each request's lines
    /// under that request's budget.
    pub fn end_call(&mut self) {
        if let Some(wasi) = &self.wasi {
            wasi.stdout.end_call();
            wasi.stderr.end_call();
        }
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        self.end_call();
    }
}

/// A store for stage instances, with the memory cap applied to each. Stages run as futures on the
/// server's async workers: at every epoch tick a running stage yields, so other requests on
/// the same worker go on, until its deadline ([`start_call`]) has passed, when it traps.
pub fn new_store(engine: &wasmtime::Engine, state: HostState) -> Store<HostState> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_callback(|mut context| {
        let state = context.data_mut();
        if state.ticks_left <= 1 {
            return Ok(UpdateDeadline::Interrupt);
        }
        state.ticks_left -= 1;
        Ok(UpdateDeadline::Yield(1))
    });
    store
}

/// Give the next call in `store` `deadline_ticks` epoch ticks before it traps.
pub fn start_call(store: &mut Store<HostState>, deadline_ticks: u64) {
    store.data_mut().ticks_left = deadline_ticks;
    store.set_epoch_deadline(1);
}

/// The imports a component in `kind`'s slot may use: WASI with no capabilities granted, the
/// `log` interface, and for model stages the `artifacts`, `graphs` and `wasi:nn` interfaces. Anything
/// else fails the type check when the stage is loaded, with an error naming the import.
pub fn linker(engine: &wasmtime::Engine, kind: StageKind) -> anyhow::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    if kind == StageKind::Model {
        artifacts::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        nn::add_to_linker(&mut linker, HostState::nn_view)?;
    }
    Ok(linker)
}

/// The WASI interfaces a stage may import. Rust's standard library (and other languages'
/// runtimes) import these for stdio, exit, environment, clocks and randomness; the host links
/// them with nothing granted: empty environment and arguments, stdout and stderr into the log.
/// Filesystem, sockets, HTTP and anything else are refused.
const WASI_ALLOWED: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
];

/// The interfaces only the `model` world offers.
const MODEL_ONLY: &[&str] = &[
    "weir:pipeline/artifacts",
    "weir:pipeline/graphs",
    "wasi:nn/tensor",
    "wasi:nn/graph",
    "wasi:nn/inference",
    "wasi:nn/errors",
];

/// Refuse a component that imports anything `kind`'s world does not offer, naming every such
/// import: capabilities are checked here, before any linking.
pub fn check_imports(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
    kind: StageKind,
) -> anyhow::Result<()> {
    let offered = |interface: &str| {
        WASI_ALLOWED.contains(&interface)
            || interface == "weir:pipeline/types"
            || interface == "weir:pipeline/log"
            || (kind == StageKind::Model && MODEL_ONLY.contains(&interface))
    };
    let refused: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !offered(name.split('@').next().unwrap_or(name)))
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        refused.is_empty(),
        "it imports {}, which the {} world does not offer",
        refused.join(", "),
        kind.world()
    );
    Ok(())
}

/// The stage worlds `component` fits, narrowest imports first: `preprocessor`, `model`,
/// `postprocessor` when it needs nothing but `log`; only `model` when it reads artifacts.
/// An error names the imports no world offers, or the missing `stage` export.
pub fn fitting_worlds(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> anyhow::Result<Vec<&'static str>> {
    let fits = |kind: StageKind| -> anyhow::Result<()> {
        check_imports(engine, component, kind)?;
        let pre = linker(engine, kind)?
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)?;
        ModelPre::new(pre).map_err(|e| {
            anyhow::Error::from(e).context("it does not export weir:pipeline/stage@0.1.0")
        })?;
        Ok(())
    };
    if fits(StageKind::Preprocess).is_ok() {
        return Ok(vec!["preprocessor", "model", "postprocessor"]);
    }
    fits(StageKind::Model).context("it fits no stage world")?;
    Ok(vec!["model"])
}

/// What a stage's WASI imports reach: a context that grants nothing, and its output streams.
struct Wasi {
    ctx: WasiCtx,
    stdout: GuestOutput,
    stderr: GuestOutput,
}

impl Wasi {
    /// No preopened directories, no environment, no arguments, no network: a stage sees only
    /// what its WIT world passes it. Its stdout and stderr go to the log.
    fn new(stage: &Arc<StageIdentity>) -> Wasi {
        let stdout = GuestOutput::new(stage.clone(), Stream::Stdout);
        let stderr = GuestOutput::new(stage.clone(), Stream::Stderr);
        let ctx = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        Wasi {
            ctx,
            stdout,
            stderr,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stage = &self.stage;
        let wasi = self.wasi.get_or_insert_with(|| Wasi::new(stage));
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut self.table,
        }
    }
}

impl wit::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        use log::Level;
        let stage = &self.stage;
        let (kind, component, version) = (stage.kind.name(), &stage.component, &stage.version);
        match level {
            Level::Trace => tracing::trace!(stage = kind, component, version, "{message}"),
            Level::Debug => tracing::debug!(stage = kind, component, version, "{message}"),
            Level::Info => tracing::info!(stage = kind, component, version, "{message}"),
            Level::Warn => tracing::warn!(stage = kind, component, version, "{message}"),
            Level::Error => tracing::error!(stage = kind, component, version, "{message}"),
        }
        Ok(())
    }
}

impl artifacts::Host for HostState {
    fn read(&mut self, name: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.stage.artifacts.get(&name).map(|bytes| bytes.to_vec()))
    }
}

/// Caps an instance's linear memory, remembering that the cap was hit so the error can say so.
struct MemoryCap {
    cap: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            wasmtime::bail!(
                "memory cap of {} MiB exceeded (the stage asked for {} MiB)",
                self.cap >> 20,
                desired.div_ceil(1 << 20)
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl From<tensor::Datatype> for wit::Datatype {
    fn from(d: tensor::Datatype) -> Self {
        use tensor::Datatype as D;
        match d {
            D::Bool => wit::Datatype::Bool,
            D::Uint8 => wit::Datatype::Uint8,
            D::Uint16 => wit::Datatype::Uint16,
            D::Uint32 => wit::Datatype::Uint32,
            D::Uint64 => wit::Datatype::Uint64,
            D::Int8 => wit::Datatype::Int8,
            D::Int16 => wit::Datatype::Int16,
            D::Int32 => wit::Datatype::Int32,
            D::Int64 => wit::Datatype::Int64,
            D::Fp16 => wit::Datatype::Fp16,
            D::Fp32 => wit::Datatype::Fp32,
            D::Fp64 => wit::Datatype::Fp64,
            D::Bf16 => wit::Datatype::Bf16,
            D::Bytes => wit::Datatype::Bytes,
        }
    }
}

impl From<wit::Datatype> for tensor::Datatype {
    fn from(d: wit::Datatype) -> Self {
        use tensor::Datatype as D;
        match d {
            wit::Datatype::Bool => D::Bool,
            wit::Datatype::Uint8 => D::Uint8,
            wit::Datatype::Uint16 => D::Uint16,
            wit::Datatype::Uint32 => D::Uint32,
            wit::Datatype::Uint64 => D::Uint64,
            wit::Datatype::Int8 => D::Int8,
            wit::Datatype::Int16 => D::Int16,
            wit::Datatype::Int32 => D::Int32,
            wit::Datatype::Int64 => D::Int64,
            wit::Datatype::Fp16 => D::Fp16,
            wit::Datatype::Fp32 => D::Fp32,
            wit::Datatype::Fp64 => D::Fp64,
            wit::Datatype::Bf16 => D::Bf16,
            wit::Datatype::Bytes => D::Bytes,
        }
    }
}

impl From<tensor::Tensor> for wit::Tensor {
    fn from(t: tensor::Tensor) -> Self {
        wit::Tensor {
            name: t.name,
            datatype: t.datatype.into(),
            shape: t.shape,
            data: t.data,
        }
    }
}

impl From<wit::Tensor> for tensor::Tensor {
    fn from(t: wit::Tensor) -> Self {
        tensor::Tensor {
            name: t.name,
            datatype: t.datatype.into(),
            shape: t.shape,
            data: t.data,
        }
    }
}

impl From<tensor::Batch> for wit::Batch {
    fn from(b: tensor::Batch) -> Self {
        wit::Batch {
            tensors: b.tensors.into_iter().map(Into::into).collect(),
            parameters: b.parameters,
        }
    }
}

impl From<wit::Batch> for tensor::Batch {
    fn from(b: wit::Batch) -> Self {
        tensor::Batch {
            tensors: b.tensors.into_iter().map(Into::into).collect(),
            parameters: b.parameters,
        }
    }
}
