//! Pipelines: manifests, their resolution into pinned versions, the registry that serves
//! and swaps them, and the path a request takes: `validate` → preprocess → model →
//! postprocess (alone, or merged with others into a batch).

pub mod batching;
pub mod manifest;
pub mod registry;
pub mod spec;
pub mod stage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::engine::Engine;
use crate::error::Error;
use crate::quality::{Quality, Recorder};
use crate::stages::drift::Monitor;
use crate::stages::profile::Profile;
use crate::stages::validate;
use crate::store::Store;
use crate::tensor::{Batch, Datatype, Tensor};
use batching::{Answer, Batcher, StageTimes};
use manifest::TensorSpec;
use spec::PipelineSpec;
use stage::{RequestStore, Stage};

pub use registry::Registry;

/// A loaded pipeline version, ready to serve.
pub struct Pipeline {
    pub name: String,
    /// The version number in the store.
    pub number: u64,
    /// `number` as the V2 `model_version` every response carries, formatted once.
    pub version: String,
    pub spec: PipelineSpec,
    stages: Vec<Stage>,
    /// The drift monitor, shared with the versions before and after this one while the
    /// `[observe]` settings stay the same.
    monitor: Option<Arc<Monitor>>,
    /// The queue that merges concurrent requests, when the manifest opts into `[batching]`.
    batcher: Option<Batcher>,
    /// What each answered request predicted goes here, when the manifest has `[quality]`.
    quality: Option<Recorder>,
}

/// What a request did inside the pipeline: time per stage, rules it broke.
#[derive(Debug, Default)]
pub struct Trace {
    /// The client's request id, once decoded.
    pub request_id: Option<String>,
    pub stages: StageTimes,
    pub violated_rules: Vec<&'static str>,
    /// Set on the first request of each batch a batching pipeline ran: how many requests the
    /// batch served.
    pub batch_size: Option<usize>,
    /// The arm of the pipeline's live experiment that answered, if one is live.
    pub arm: Option<crate::experiment::Arm>,
}

impl Pipeline {
    /// Compile and type-check every stage of `spec`; fails naming the stage at fault. Its
    /// drift and quality monitors raise their alerts through `quality`.
    pub fn load(
        engine: &Engine,
        store: &Store,
        quality: &Arc<Quality>,
        spec: &PipelineSpec,
        version: u64,
    ) -> anyhow::Result<Pipeline> {
        let mut stages = Vec::new();
        for pinned in &spec.stages {
            let stage = Stage::load(engine, store, pinned, &spec.limits).with_context(|| {
                format!("pipeline '{}', stage '{}'", spec.name, pinned.kind.name())
            })?;
            stages.push(stage);
        }
        let monitor = match &spec.observe {
            None => None,
            Some(observe) => {
                let bytes = store.blob(&observe.reference.digest)?;
                let profile: Profile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reference profile {}", observe.reference))?;
                let monitor = Monitor::new(
                    &spec.name,
                    &profile,
                    &spec.inputs,
                    &spec.outputs,
                    observe.monitor.clone(),
                    quality.alerts().clone(),
                )
                .with_context(|| format!("pipeline '{}', [observe]", spec.name))?;
                Some(Arc::new(monitor))
            }
        };
        Ok(Pipeline {
            name: spec.name.clone(),
            number: version,
            version: version.to_string(),
            spec: spec.clone(),
            stages,
            monitor,
            batcher: spec.batching.as_ref().map(Batcher::new),
            quality: (spec.quality.as_ref())
                .map(|config| quality.watch(&spec.name, version, config))
                .transpose()?,
        })
    }

    /// Keep `previous`'s drift window when the monitor settings did not change, so a swap of
    /// code does not reset what the monitor has seen.
    pub fn continue_monitor(&mut self, previous: &Pipeline) {
        if self.spec.observe == previous.spec.observe {
            self.monitor = previous.monitor.clone();
        }
    }

    /// The drift monitor, if the pipeline has one.
    pub fn monitor(&self) -> Option<&Monitor> {
        self.monitor.as_deref()
    }

    /// The declared inputs.
    pub fn inputs(&self) -> &[TensorSpec] {
        &self.spec.inputs
    }

    /// The declared outputs.
    pub fn outputs(&self) -> &[TensorSpec] {
        &self.spec.outputs
    }

    /// The stages in the order a request passes them.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// A new request id when the pipeline records predictions (`[quality]`), whose answers
    /// must name the request the truth will name.
    pub fn new_request_id(&self) -> Option<String> {
        self.quality.as_ref().map(Recorder::new_id)
    }

    /// Where this version records predictions, when it has `[quality]`.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.quality.as_ref()
    }

    /// Whether requests are merged into batches (`[batching]`).
    pub fn batches(&self) -> bool {
        self.batcher.is_some()
    }

    /// Run a request's batch through `validate`, every stage (alone, or in a batch with
    /// others when the pipeline batches) and `observe`, and pick the declared outputs; `trace`
    /// gets the time in each stage.
    pub async fn infer(self: &Arc<Self>, batch: Batch, trace: &mut Trace) -> Result<Batch, Error> {
        let mut clock = Laps::start();
        self.check_fits(&batch)?;
        self.validate(&batch, trace, &mut clock)?;
        // The monitor's pass over the inputs, and the time it took.
        let observation = (self.monitor.as_deref())
            .map(|monitor| (monitor, monitor.observe_inputs(&batch), clock.lap()));
        let outputs = match (&self.batcher, batching::rows(&batch)) {
            (Some(batcher), Some(rows)) => {
                self.run_batched(batcher, batch, rows, trace, &mut clock)
                    .await?
            }
            _ => {
                self.run_stages(batch, &mut trace.stages, &mut clock)
                    .await?
            }
        };
        if let Some((monitor, observation, observing)) = observation {
            monitor.record(observation, &outputs);
            trace.stages.push(("observe", observing + clock.lap()));
        }
        if let (Some(quality), Some(id)) = (&self.quality, &trace.request_id) {
            quality.record(id, &outputs);
        }
        Ok(outputs)
    }

    /// Run a shadow copy of a request: `validate` and the stages, alone, with no drift or
    /// quality record (the request was counted when the active version answered it).
    pub async fn run_shadow(&self, batch: Batch) -> Result<Batch, Error> {
        let mut clock = Laps::start();
        let mut trace = Trace::default();
        self.check_fits(&batch)?;
        self.validate(&batch, &mut trace, &mut clock)?;
        self.run_stages(batch, &mut trace.stages, &mut clock).await
    }

    /// Refuse inputs that cannot fit in a stage's memory (413): a stage holds the batch it
    /// gets and the batch it returns in its linear memory, so inputs may take at most half of
    /// `limits.memory_mib`. Without this, a request the element limit lets through could only
    /// fail inside the stage, as the stage's fault (500).
    fn check_fits(&self, batch: &Batch) -> Result<(), Error> {
        let bytes: usize = batch.tensors.iter().map(|t| t.data.len()).sum();
        let memory = self.spec.limits.memory_mib << 20;
        if bytes as u64 <= memory / 2 {
            return Ok(());
        }
        Err(Error::TooLarge(format!(
            "the inputs take {:.1} MiB; a stage of pipeline '{}' has {} MiB of memory \
             (limits.memory_mib) and holds both the batch it gets and the one it returns, so \
             inputs may take at most half of it: send fewer rows, or raise limits.memory_mib",
            bytes as f64 / f64::from(1 << 20),
            self.name,
            memory >> 20
        )))
    }

    /// The `validate` stage: the declared inputs' rules.
    fn validate(&self, batch: &Batch, trace: &mut Trace, clock: &mut Laps) -> Result<(), Error> {
        let violations = validate::check(self.inputs(), batch);
        trace.stages.push(("validate", clock.lap()));
        if violations.is_empty() {
            return Ok(());
        }
        trace.violated_rules = violations.iter().map(|v| v.rule).collect();
        Err(Error::InvalidInput(validate::message(&violations)))
    }

    /// Run `batch` in `batcher`'s next batch (or alone, when that batch failed). Its wait for
    /// the batch to start is the `queue` stage.
    async fn run_batched(
        self: &Arc<Self>,
        batcher: &Batcher,
        batch: Batch,
        rows: u64,
        trace: &mut Trace,
        clock: &mut Laps,
    ) -> Result<Batch, Error> {
        match batcher.submit(self, batch, rows).await {
            Answer::Done {
                outputs,
                queued,
                stages,
                batch_size,
            } => {
                trace.stages.push(("queue", queued));
                trace.stages.extend(stages);
                trace.batch_size = batch_size;
                clock.lap();
                Ok(outputs)
            }
            Answer::Alone(batch) => {
                trace.stages.push(("queue", clock.lap()));
                self.run_stages(batch, &mut trace.stages, clock).await
            }
            Answer::Failed { error, queued } => {
                trace.stages.push(("queue", queued));
                Err(error)
            }
        }
    }

    /// Every Wasm stage in turn, then the declared outputs; `stages` gets each one's time.
    async fn run_stages(
        &self,
        batch: Batch,
        stages: &mut StageTimes,
        clock: &mut Laps,
    ) -> Result<Batch, Error> {
        // The stages' fresh instances, torn down when this returns: in the request's duration,
        // in no stage's.
        let mut request = RequestStore::default();
        let mut batch = batch;
        for stage in &self.stages {
            batch = stage.run(batch, &mut request).await?;
            stages.push((stage.kind().name(), clock.lap()));
        }
        self.declared_outputs(batch)
    }

    /// One call through every stage with a row of zeros for each declared input, before the
    /// version may serve. A stage that traps, fails or times out fails the warm-up; one that
    /// refuses the zeros as invalid input has still run, and passes. Blocking: call it from a
    /// thread that is not an async worker (the registry's changes run on the blocking pool).
    pub fn warm_up(&self) -> Result<(), Error> {
        let tensors = self.inputs().iter().map(zeros).collect();
        let batch = Batch {
            tensors,
            parameters: Vec::new(),
        };
        // Neither observed (zeros are not traffic) nor batched.
        let mut trace = Trace::default();
        let mut clock = Laps::start();
        let run = async {
            self.validate(&batch, &mut trace, &mut clock)?;
            self.run_stages(batch, &mut trace.stages, &mut clock).await
        };
        match wasmtime_wasi::runtime::in_tokio(run) {
            Ok(_) | Err(Error::InvalidInput(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The declared outputs in declared order (all of them when none are declared). A declared
    /// output that the last stage did not produce is the pipeline's fault.
    fn declared_outputs(&self, mut batch: Batch) -> Result<Batch, Error> {
        if self.outputs().is_empty() {
            return Ok(batch);
        }
        let mut outputs: Vec<Tensor> = Vec::with_capacity(self.outputs().len());
        for spec in self.outputs() {
            let index = batch
                .tensors
                .iter()
                .position(|t| t.name == spec.name)
                .ok_or_else(|| {
                    Error::StageFailed(format!(
                        "pipeline '{}' declares output '{}' but its last stage did not produce it",
                        self.name, spec.name
                    ))
                })?;
            outputs.push(batch.tensors.swap_remove(index));
        }
        batch.tensors = outputs;
        Ok(batch)
    }
}

/// Consecutive intervals from one clock: one read per stage boundary, not two per stage.
struct Laps(Instant);

impl Laps {
    fn start() -> Laps {
        Laps(Instant::now())
    }

    /// When the previous lap (or the start) ended.
    fn mark(&self) -> Instant {
        self.0
    }

    /// The time since the previous lap (or the start).
    fn lap(&mut self) -> Duration {
        let now = Instant::now();
        let elapsed = now - self.0;
        self.0 = now;
        elapsed
    }
}

/// A tensor of zeros (empty strings for BYTES) fitting `spec`, with 1 for each -1 dimension.
fn zeros(spec: &TensorSpec) -> Tensor {
    let shape: Vec<u64> = spec.shape.iter().map(|&d| d.max(1) as u64).collect();
    let count = crate::tensor::element_count(&shape).unwrap_or(0) as usize;
    let datatype = spec.datatypes[0];
    let data = match datatype {
        Datatype::Bytes => vec![0; 4 * count],
        other => vec![0; other.size().unwrap_or(0) * count],
    };
    Tensor {
        name: spec.name.clone(),
        datatype,
        shape,
        data,
    }
}
