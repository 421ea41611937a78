//! Pipelines: the manifest, its stages, and the path a request takes through them:
//! `validate` → preprocess → model → postprocess.

pub mod manifest;
pub mod stage;

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bundled;
use crate::engine::Engine;
use crate::engine::host::{StageIdentity, StageKind};
use crate::error::Error;
use crate::stages::validate;
use crate::tensor::{Batch, Tensor};
use manifest::{Manifest, StageSpec, TensorSpec};
use stage::Stage;

/// A loaded pipeline version, ready to serve.
pub struct Pipeline {
    pub name: String,
    /// The version that answers: the `model_version` of every response.
    pub version: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Compile and type-check every stage of `manifest`; fails naming the stage at fault.
    pub fn load(engine: &Engine, manifest: &Manifest, version: &str) -> anyhow::Result<Pipeline> {
        let slots = [
            (StageKind::Preprocess, manifest.preprocess.as_ref()),
            (StageKind::Model, Some(&manifest.model)),
            (StageKind::Postprocess, manifest.postprocess.as_ref()),
        ];
        let mut stages = Vec::new();
        for (kind, spec) in slots {
            let Some(spec) = spec else { continue };
            let stage = load_stage(engine, kind, spec, manifest).with_context(|| {
                format!("pipeline '{}', stage '{}'", manifest.name, kind.name())
            })?;
            stages.push(stage);
        }
        Ok(Pipeline {
            name: manifest.name.clone(),
            version: version.to_owned(),
            inputs: manifest.inputs.clone(),
            outputs: manifest.outputs.clone(),
            stages,
        })
    }

    /// The stages in the order a request passes them.
    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    /// Run a request's batch through `validate` and every stage, and pick the declared outputs.
    pub fn infer(&self, batch: Batch) -> Result<Batch, Error> {
        validate::check(&self.inputs, &batch)?;
        let mut batch = batch;
        for stage in &self.stages {
            batch = stage.run(batch)?;
        }
        self.declared_outputs(batch)
    }

    /// The declared outputs in declared order (all of them when none are declared). A declared
    /// output that the last stage did not produce is the pipeline's fault.
    fn declared_outputs(&self, mut batch: Batch) -> Result<Batch, Error> {
        if self.outputs.is_empty() {
            return Ok(batch);
        }
        let mut outputs: Vec<Tensor> = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
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

fn load_stage(
    engine: &Engine,
    kind: StageKind,
    spec: &StageSpec,
    manifest: &Manifest,
) -> anyhow::Result<Stage> {
    let (name, version) = spec.name_and_version()?;
    let wasm: std::borrow::Cow<[u8]> = match &spec.path {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("reading component {}", path.display()))?
            .into(),
        None => match bundled::find(name, version) {
            Some(b) => b.wasm.into(),
            None => bail!(
                "no bundled component {name}@{version} (bundled: {}); give `path` for your own",
                bundled::list()
            ),
        },
    };
    let mut artifacts = BTreeMap::new();
    for (artifact, path) in &spec.artifacts {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading artifact '{artifact}' from {}", path.display()))?;
        artifacts.insert(artifact.clone(), Arc::from(bytes));
    }
    let identity = StageIdentity {
        kind,
        component: name.to_owned(),
        version: version.to_owned(),
        artifacts,
    };
    Stage::load(engine, identity, &wasm, &spec.config, &manifest.limits)
}

/// The pipelines this server serves, by name.
#[derive(Default)]
pub struct Registry {
    pipelines: BTreeMap<String, Arc<Pipeline>>,
}

impl Registry {
    /// Add `pipeline`; refuses a second pipeline of the same name.
    pub fn insert(&mut self, pipeline: Pipeline) -> anyhow::Result<()> {
        if self.pipelines.contains_key(&pipeline.name) {
            bail!("two manifests name the pipeline '{}'", pipeline.name);
        }
        self.pipelines
            .insert(pipeline.name.clone(), Arc::new(pipeline));
        Ok(())
    }

    /// The pipeline called `name`, at `version` if given (else the active one).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Pipeline>, Error> {
        let pipeline = self.pipelines.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.pipelines.keys().map(String::as_str).collect();
            Error::NotFound(format!(
                "unknown model '{name}' (served: {})",
                names.join(", ")
            ))
        })?;
        match version {
            Some(v) if v != pipeline.version => Err(Error::NotFound(format!(
                "model '{name}' has no version '{v}' (versions: {})",
                pipeline.version
            ))),
            _ => Ok(pipeline.clone()),
        }
    }

    /// Every pipeline, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pipeline>> {
        self.pipelines.values()
    }
}
