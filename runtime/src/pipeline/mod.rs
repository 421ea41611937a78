//! Pipelines: manifests, their resolution into pinned versions, the registry that serves
//! and swaps them, and the path a request takes: `validate` → preprocess → model →
//! postprocess.

pub mod manifest;
pub mod registry;
pub mod spec;
pub mod stage;

use anyhow::Context;

use crate::engine::Engine;
use crate::error::Error;
use crate::stages::validate;
use crate::store::Store;
use crate::tensor::{Batch, Datatype, Tensor};
use manifest::TensorSpec;
use spec::PipelineSpec;
use stage::Stage;

pub use registry::Registry;

/// A loaded pipeline version, ready to serve.
pub struct Pipeline {
    pub name: String,
    /// The version that answers: the `model_version` of every response.
    pub version: String,
    pub spec: PipelineSpec,
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Compile and type-check every stage of `spec`; fails naming the stage at fault.
    pub fn load(
        engine: &Engine,
        store: &Store,
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
        Ok(Pipeline {
            name: spec.name.clone(),
            version: version.to_string(),
            spec: spec.clone(),
            stages,
        })
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

    /// Run a request's batch through `validate` and every stage, and pick the declared outputs.
    pub fn infer(&self, batch: Batch) -> Result<Batch, Error> {
        validate::check(self.inputs(), &batch)?;
        let mut batch = batch;
        for stage in &self.stages {
            batch = stage.run(batch)?;
        }
        self.declared_outputs(batch)
    }

    /// One call through every stage with a row of zeros for each declared input, before the
    /// version may serve. A stage that traps, fails or times out fails the warm-up; one that
    /// refuses the zeros as invalid input has still run, and passes.
    pub fn warm_up(&self) -> Result<(), Error> {
        let tensors = self.inputs().iter().map(zeros).collect();
        match self.infer(Batch {
            tensors,
            parameters: Vec::new(),
        }) {
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
