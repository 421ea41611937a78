//! The pipeline manifest (`pipeline.toml`): which components fill which stage, with what
//! config and artifacts, what inputs and outputs the pipeline declares, and its limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::batching::Batching;
use crate::stages::drift::Thresholds;
use crate::stages::validate::ColumnSpec;
use crate::tensor::Datatype;

/// A parsed manifest with every relative path resolved against the manifest's directory.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The pipeline's name: the `{m}` of `/v2/models/{m}`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The inputs clients must send; checked by the `validate` stage. Empty: anything goes.
    #[serde(default)]
    pub inputs: Vec<TensorSpec>,
    /// The outputs the pipeline returns, in this order. Empty: whatever the last stage emits.
    #[serde(default)]
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub limits: Limits,
    pub preprocess: Option<StageSpec>,
    pub model: StageSpec,
    pub postprocess: Option<StageSpec>,
    /// The drift monitor; none without a reference profile.
    pub observe: Option<ObserveManifest>,
    /// Merge concurrent requests into one pass through the stages (see `batching`). Off by
    /// default: requests in one batch share the stages' instances.
    pub batching: Option<Batching>,
}

/// `[observe]`: the drift monitor's reference profile, window and thresholds.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ObserveManifest {
    /// The reference profile (`weir profile` output): a file, or a stored artifact.
    pub reference: ArtifactSource,
    /// Live rows compared with the reference.
    #[serde(default = "default_window_rows")]
    pub window_rows: u64,
    /// The window also covers at most this many seconds.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
    #[serde(default)]
    pub thresholds: Thresholds,
    /// Thresholds for single columns, by name.
    #[serde(default)]
    pub columns: BTreeMap<String, Thresholds>,
}

fn default_window_rows() -> u64 {
    1000
}

fn default_window_seconds() -> u64 {
    3600
}

/// A declared input or output: name, accepted datatypes (the first is the one metadata
/// reports) and shape, with -1 for a dimension of any size.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "RawTensorSpec", into = "RawTensorSpec")]
pub struct TensorSpec {
    pub name: String,
    pub datatypes: Vec<Datatype>,
    pub shape: Vec<i64>,
    /// For a rows × columns input: each column's name and rules (checked by `validate`, named
    /// by the drift monitor).
    pub columns: Vec<ColumnSpec>,
    /// An input clients may leave out.
    pub optional: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTensorSpec {
    name: String,
    datatype: OneOrMany,
    shape: Vec<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns: Vec<ColumnSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    optional: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<RawTensorSpec> for TensorSpec {
    type Error = String;

    fn try_from(raw: RawTensorSpec) -> Result<Self, String> {
        let names = match raw.datatype {
            OneOrMany::One(name) => vec![name],
            OneOrMany::Many(names) => names,
        };
        if names.is_empty() {
            return Err(format!("tensor '{}' declares no datatype", raw.name));
        }
        if let Some(bad) = raw.shape.iter().find(|&&d| d < -1) {
            return Err(format!(
                "tensor '{}': dimension {bad} (use -1 for any size)",
                raw.name
            ));
        }
        if let (false, Some(&width)) = (raw.columns.is_empty(), raw.shape.last())
            && (raw.shape.len() != 2 || width != raw.columns.len() as i64)
        {
            return Err(format!(
                "tensor '{}' names {} columns, so its shape must be [-1, {}]",
                raw.name,
                raw.columns.len(),
                raw.columns.len()
            ));
        }
        Ok(TensorSpec {
            datatypes: names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
            name: raw.name,
            shape: raw.shape,
            columns: raw.columns,
            optional: raw.optional,
        })
    }
}

impl From<TensorSpec> for RawTensorSpec {
    fn from(spec: TensorSpec) -> Self {
        RawTensorSpec {
            name: spec.name,
            datatype: OneOrMany::Many(spec.datatypes.iter().map(|d| d.name().to_owned()).collect()),
            shape: spec.shape,
            columns: spec.columns,
            optional: spec.optional,
        }
    }
}

/// One stage: the component that runs it, its config and its artifacts.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `name@version` or `name@requirement` (`standard-scaler@^0.1`) of a component in the
    /// store (the bundled plugins are always there); with `path`, the exact version to push
    /// the file as.
    pub component: String,
    /// A component file of your own, relative to the manifest, pushed on deploy.
    pub path: Option<PathBuf>,
    /// Handed to the component as a JSON object on every call.
    #[serde(default)]
    pub config: toml::Table,
    /// Model artifacts by the name the component reads them with.
    #[serde(default)]
    pub artifacts: BTreeMap<String, ArtifactSource>,
    /// Opt-in speed for stages you trust to keep no state: serve requests from warm instances
    /// instead of a fresh one each, saving the instantiation (several µs per stage). What a
    /// call leaves in the instance's memory (statics, caches) is then visible to later
    /// requests, so requests are no longer isolated from each other in this stage. An
    /// instance that traps or times out is still discarded. Off by default.
    #[serde(default)]
    pub reuse_instances: bool,
}

/// Where an artifact comes from.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ArtifactSource {
    /// A file relative to the manifest, pushed on deploy as `<pipeline>.<name>@0.0.0+<digest>`.
    File(PathBuf),
    /// An artifact already in the store: `{ artifact = "iris-weights@^1" }`.
    Stored { artifact: String },
}

/// Split `name@version` (or `name@requirement`); `what` names the field for the error.
pub fn split_reference<'a>(reference: &'a str, what: &str) -> anyhow::Result<(&'a str, &'a str)> {
    match reference.split_once('@') {
        Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok((name, version)),
        _ => bail!("{what} '{reference}' must be written name@version, e.g. standard-scaler@0.1.0"),
    }
}

/// Per-pipeline resource limits for each stage instance.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per instance, MiB. 64 MiB fits tabular models and their buffers with
    /// room to spare while letting a thousand concurrent instances fit in a small machine.
    pub memory_mib: u64,
    /// Wall-clock time per stage call, ms, checked every epoch tick (10 ms).
    pub stage_timeout_ms: u64,
    /// Most elements in one input tensor, checked from its shape before any data is copied.
    /// 16,777,216 is 64 MiB of FP32.
    pub max_tensor_elements: u64,
    /// Most tensor bytes a stage may hand on, MiB: a runaway output fails its request instead
    /// of the server's memory.
    pub max_output_mib: u64,
    /// Largest request body for this pipeline, MiB (the server's `--max-body-bytes` bounds
    /// every pipeline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_mib: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            stage_timeout_ms: 1000,
            max_tensor_elements: 1 << 24,
            max_output_mib: 16,
            max_body_mib: None,
        }
    }
}

impl Manifest {
    /// Read and check the manifest at `path`, resolving its relative paths.
    pub fn load(path: &Path) -> anyhow::Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the manifest {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Manifest::parse(&text, base).with_context(|| format!("in the manifest {}", path.display()))
    }

    /// Parse and check manifest text whose relative paths are relative to `base`.
    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Manifest> {
        let mut manifest: Manifest = toml::from_str(text)?;
        for stage in manifest.stages_mut() {
            if let Some(p) = &mut stage.path {
                *p = base.join(&*p);
            }
            for source in stage.artifacts.values_mut() {
                if let ArtifactSource::File(p) = source {
                    *p = base.join(&*p);
                }
            }
        }
        if let Some(ObserveManifest {
            reference: ArtifactSource::File(p),
            ..
        }) = &mut manifest.observe
        {
            *p = base.join(&*p);
        }
        manifest.check()?;
        Ok(manifest)
    }

    /// Whether any stage names a component or artifact file (rather than a stored object).
    pub fn names_files(&self) -> bool {
        [
            self.preprocess.as_ref(),
            Some(&self.model),
            self.postprocess.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|s| {
            s.path.is_some()
                || s.artifacts
                    .values()
                    .any(|a| matches!(a, ArtifactSource::File(_)))
        }) || matches!(&self.observe, Some(o) if matches!(o.reference, ArtifactSource::File(_)))
    }

    /// The stages present, in pipeline order.
    pub fn stages_mut(&mut self) -> impl Iterator<Item = &mut StageSpec> {
        [
            self.preprocess.as_mut(),
            Some(&mut self.model),
            self.postprocess.as_mut(),
        ]
        .into_iter()
        .flatten()
    }

    fn check(&self) -> anyhow::Result<()> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_name {
            bail!(
                "pipeline name '{}' must be letters, digits, '-', '_' or '.' (it is part of URLs)",
                self.name
            );
        }
        let max_mib = (crate::engine::MAX_MEMORY >> 20) as u64;
        if self.limits.memory_mib == 0 || self.limits.memory_mib > max_mib {
            bail!("limits.memory_mib must be between 1 and {max_mib}");
        }
        if self.limits.stage_timeout_ms == 0 {
            bail!("limits.stage_timeout_ms must be at least 1");
        }
        if let Some(batching) = &self.batching {
            self.check_batching(batching)?;
        }
        Ok(())
    }

    /// A batching pipeline's first dimension is the batch: every declared input and output
    /// must leave it open (-1), or merged requests would break the shapes declared.
    fn check_batching(&self, batching: &Batching) -> anyhow::Result<()> {
        if batching.max_batch_size == 0 {
            bail!("batching.max_batch_size must be at least 1");
        }
        let mut declared = self.inputs.iter().chain(&self.outputs);
        if let Some(fixed) = declared.find(|t| t.shape.first() != Some(&-1)) {
            bail!(
                "[batching] merges requests on the first dimension, so it must be -1 in every \
                 declared input and output; '{}' has shape {:?}",
                fixed.name,
                fixed.shape
            );
        }
        Ok(())
    }
}
