//! One Wasm stage of a pipeline: a component compiled and type-checked once at load, run in a
//! fresh, bounded instance for every request (or, opted into per stage, a warm one).

use std::sync::{Arc, Mutex};

use anyhow::Context;
use wasmtime::Trap;

use crate::engine::host::{
    HostState, Model, ModelPre, StageIdentity, StageKind, new_store, start_call, wit,
};
use crate::engine::{EPOCH_TICK, Engine};
use crate::error::Error;
use crate::pipeline::manifest::Limits;
use crate::pipeline::spec::PinnedStage;
use crate::store::Store;
use crate::tensor::Batch;

/// A loaded stage, ready to serve.
pub struct Stage {
    identity: Arc<StageIdentity>,
    digest: String,
    pre: ModelPre<HostState>,
    /// The manifest's config for this stage, as the JSON text handed to every call.
    config: String,
    memory_cap: usize,
    max_output_bytes: usize,
    deadline_ticks: u64,
    timeout_ms: u64,
    /// Idle warm instances, when the manifest opts this stage into reusing them.
    warm: Option<Mutex<Vec<Instance>>>,
}

/// What a stage's call returns when it did not trap.
type StageResult = Result<wit::Batch, wit::StageError>;

/// The store of one request's fresh instances: made at its first stage that does not reuse
/// instances, dropped (and every instance in it with it) when the request is done. One store
/// instead of one per stage saves its setup and teardown twice a request.
#[derive(Default)]
pub struct RequestStore(Option<wasmtime::Store<HostState>>);

/// A stage instance with its store.
struct Instance {
    store: wasmtime::Store<HostState>,
    model: Model,
}

impl Stage {
    /// Compile (or load from cache) and type-check `pinned` for its slot, reading its
    /// component and artifacts from `store`. Fails with the import or export at fault when
    /// the component does not fit the slot's world.
    pub fn load(
        engine: &Engine,
        store: &Store,
        pinned: &PinnedStage,
        limits: &Limits,
    ) -> anyhow::Result<Stage> {
        let mut artifacts = std::collections::BTreeMap::new();
        for (name, pin) in &pinned.artifacts {
            let bytes: Arc<[u8]> = store
                .blob(&pin.digest)
                .with_context(|| format!("artifact {pin}"))?
                .into();
            artifacts.insert(name.clone(), bytes);
        }
        let graphs = match pinned.kind {
            StageKind::Model => {
                let named: Vec<(&str, &str, &[u8])> = pinned
                    .artifacts
                    .iter()
                    .map(|(name, pin)| (name.as_str(), pin.digest.as_str(), &*artifacts[name]))
                    .collect();
                engine.graphs().graphs(&named, pinned.backend)?
            }
            _ => Default::default(),
        };
        let identity = StageIdentity {
            kind: pinned.kind,
            component: pinned.component.name.clone(),
            version: pinned.component.version.to_string(),
            artifacts,
            graphs,
        };
        let digest = pinned.component.digest.clone();
        let kind = identity.kind;
        let component = engine.compile(&digest, || store.blob(&digest))?;
        let refusal = || {
            format!(
                "{} does not fit the {} stage (WIT world `{}`)",
                identity.component,
                kind.name(),
                kind.world()
            )
        };
        crate::engine::host::check_imports(engine.wasmtime(), &component, kind)
            .with_context(refusal)?;
        let linker = crate::engine::host::linker(engine.wasmtime(), kind)?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(refusal)?;
        let pre = ModelPre::new(instance_pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("{} does not export weir:pipeline/stage", identity.component)
            })?;
        let tick_ms = EPOCH_TICK.as_millis() as u64;
        Ok(Stage {
            identity: Arc::new(identity),
            digest,
            pre,
            config: serde_json::to_string(&pinned.config)?,
            memory_cap: usize::try_from(limits.memory_mib << 20)?,
            max_output_bytes: usize::try_from(limits.max_output_mib << 20)?,
            // One tick more than the timeout: the first tick may come at once, and a stage
            // must get at least its full time.
            deadline_ticks: limits.stage_timeout_ms.div_ceil(tick_ms) + 1,
            timeout_ms: limits.stage_timeout_ms,
            warm: pinned.reuse_instances.then(Mutex::default),
        })
    }

    /// Which slot this stage fills.
    pub fn kind(&self) -> StageKind {
        self.identity.kind
    }

    /// `name@version` of the component.
    pub fn component(&self) -> String {
        format!("{}@{}", self.identity.component, self.identity.version)
    }

    /// The sha256 digest of the component's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The backend each of the stage's ONNX artifacts runs on, by artifact name.
    pub fn graph_backends(&self) -> std::collections::BTreeMap<&str, &'static str> {
        self.identity.graphs.backends()
    }

    /// Run the stage on `batch` in a fresh instance, made in `request`'s store and dropped
    /// with it whatever happens: a trap or a timeout fails this request only. A stage that
    /// reuses instances takes a warm one and gives it back unless it trapped.
    pub async fn run(&self, batch: Batch, request: &mut RequestStore) -> Result<Batch, Error> {
        let input = wit::Batch::from(batch);
        let output = match &self.warm {
            None => self.call_fresh(request, &input).await?,
            Some(warm) => self.call_warm(warm, &input).await?,
        };
        match output {
            Ok(output) => self.check_output(Batch::from(output)),
            Err(wit::StageError::InvalidInput(msg)) => Err(Error::InvalidInput(format!(
                "{} rejected the input: {msg}",
                self.describe()
            ))),
            Err(wit::StageError::Failure(msg)) => Err(Error::StageFailed(format!(
                "{} failed: {msg}",
                self.describe()
            ))),
        }
    }

    /// One call in a fresh instance in the request's store.
    async fn call_fresh(
        &self,
        request: &mut RequestStore,
        input: &wit::Batch,
    ) -> Result<StageResult, Error> {
        let store = request.0.get_or_insert_with(|| {
            let state = HostState::new(self.identity.clone(), self.memory_cap);
            new_store(self.pre.engine(), state)
        });
        store.data_mut().enter(&self.identity);
        start_call(store, self.deadline_ticks);
        let outcome = async {
            let model = self.instantiate(store).await?;
            model
                .weir_pipeline_stage()
                .call_process(&mut *store, &self.config, input)
                .await
        }
        .await;
        outcome.map_err(|e| self.trap_error(e, store.data()))
    }

    /// One call in a warm instance (a new one when none is idle), given back after it unless
    /// it trapped.
    async fn call_warm(
        &self,
        warm: &Mutex<Vec<Instance>>,
        input: &wit::Batch,
    ) -> Result<StageResult, Error> {
        let idle = warm.lock().unwrap().pop();
        let (mut store, model) = match idle {
            Some(Instance { store, model }) => (store, Some(model)),
            None => {
                let state = HostState::new(self.identity.clone(), self.memory_cap);
                (new_store(self.pre.engine(), state), None)
            }
        };
        start_call(&mut store, self.deadline_ticks);
        let outcome = async {
            let model = match model {
                Some(model) => model,
                None => self.instantiate(&mut store).await?,
            };
            let output = model
                .weir_pipeline_stage()
                .call_process(&mut store, &self.config, input)
                .await?;
            Ok((output, model))
        }
        .await;
        match outcome {
            Ok((output, model)) => {
                store.data_mut().end_call();
                warm.lock().unwrap().push(Instance { store, model });
                Ok(output)
            }
            Err(e) => Err(self.trap_error(e, store.data())),
        }
    }

    /// A new instance in `store`, counted as live (a pool slot) until the store is dropped.
    async fn instantiate(&self, store: &mut wasmtime::Store<HostState>) -> wasmtime::Result<Model> {
        let model = self.pre.instantiate_async(&mut *store).await?;
        store.data_mut().count_instance();
        Ok(model)
    }

    /// Refuse an output batch over the pipeline's `max_output_mib`.
    fn check_output(&self, batch: Batch) -> Result<Batch, Error> {
        let bytes: usize = batch.tensors.iter().map(|t| t.data.len()).sum();
        if bytes > self.max_output_bytes {
            return Err(Error::StageFailed(format!(
                "{} produced {} MiB of tensors, over the pipeline's limit of {} MiB \
                 (limits.max_output_mib)",
                self.describe(),
                bytes.div_ceil(1 << 20),
                self.max_output_bytes >> 20
            )));
        }
        Ok(batch)
    }

    /// Classify a trap: deadline (504), memory cap or anything else (500).
    fn trap_error(&self, error: wasmtime::Error, state: &HostState) -> Error {
        let interrupted = error.downcast_ref::<Trap>() == Some(&Trap::Interrupt);
        if interrupted || error.downcast_ref::<crate::nn::PastDeadline>().is_some() {
            return Error::StageTimeout(format!(
                "{} exceeded its deadline of {} ms",
                self.describe(),
                self.timeout_ms
            ));
        }
        if state.memory_cap_exceeded() {
            return Error::StageFailed(format!(
                "{} exceeded its memory cap of {} MiB",
                self.describe(),
                self.memory_cap >> 20
            ));
        }
        let error = anyhow::Error::from(error);
        let trap = error.root_cause().to_string();
        let mut message = format!("{} trapped: {trap}", self.describe());
        let stderr = state.stderr_tail();
        if !stderr.is_empty() {
            message.push_str(&format!("; its stderr ends: {stderr}"));
        }
        Error::StageFailed(message)
    }

    /// "stage 'model' (logistic-regression@0.1.0)", for error messages.
    fn describe(&self) -> String {
        format!("stage '{}' ({})", self.kind().name(), self.component())
    }
}
