//! The pipeline manifest (`pipeline.toml`): which components fill which stage, with what
//! config and artifacts, what inputs and outputs the pipeline declares, and its limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::batching::Batching;
use crate::nn::BackendChoice;
use crate::quality::config::QualityConfig;
use crate::stages::drift::Thresholds;
use crate::stages::validate::ColumnSpec;
use crate::store::check_name;
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
    /// Live model quality against truth sent later (see `quality`); none by default.
    pub quality: Option<QualityConfig>,
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
    /// Which backend runs the model stage's ONNX artifacts: `auto` (ONNX Runtime when it is
    /// loaded and takes the model, else tract), `tract` or `onnxruntime`.
    #[serde(default, skip_serializing_if = "BackendChoice::is_auto")]
    pub backend: BackendChoice,
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
    /// 2,097,152 is 8 MiB of FP32 and 16 MiB of FP64: with the default 64 MiB of memory, a
    /// stage has room for such an input, its working copies and its output (the bundled
    /// iris stages answer 524,288 rows of four FP64 features).
    pub max_tensor_elements: u64,
    /// Most tensor bytes a stage may hand on, MiB: a runaway output fails its request instead
    /// of the server's memory.
    pub max_output_mib: u64,
    /// Largest request body for this pipeline, MiB (the server's `--max-body-bytes` bounds
    /// every pipeline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_mib: Option<u64>,
}

impl Limits {
    fn check(&self) -> anyhow::Result<()> {
        let max_mib = (crate::engine::MAX_MEMORY >> 20) as u64;
        within("limits.memory_mib", self.memory_mib, 1, max_mib)?;
        within(
            "limits.stage_timeout_ms",
            self.stage_timeout_ms,
            1,
            3_600_000,
        )?;
        within(
            "limits.max_tensor_elements",
            self.max_tensor_elements,
            1,
            1 << 40,
        )?;
        within("limits.max_output_mib", self.max_output_mib, 1, max_mib)?;
        if let Some(mib) = self.max_body_mib {
            within("limits.max_body_mib", mib, 1, 1 << 20)?;
        }
        Ok(())
    }
}

impl ObserveManifest {
    fn check(&self) -> anyhow::Result<()> {
        within("observe.window_rows", self.window_rows, 1, 1 << 40)?;
        within("observe.window_seconds", self.window_seconds, 1, 1 << 40)?;
        self.thresholds.check("observe.thresholds")?;
        for (column, thresholds) in &self.columns {
            thresholds.check(&format!("observe.columns.{column}"))?;
        }
        Ok(())
    }
}

/// The most rows one batch of a batching pipeline may hold.
const MAX_BATCH_SIZE: u64 = 1 << 16;

/// Refuse `value` of `field` outside `low..=high`.
pub(crate) fn within(field: &str, value: u64, low: u64, high: u64) -> anyhow::Result<()> {
    if !(low..=high).contains(&value) {
        bail!("{field} is {value}; it must be between {low} and {high}");
    }
    Ok(())
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            stage_timeout_ms: 1000,
            max_tensor_elements: 1 << 21,
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

    /// Refuse names and values no pipeline can mean, naming the field.
    fn check(&self) -> anyhow::Result<()> {
        check_name("pipeline name", &self.name)?;
        for stage in [
            self.preprocess.as_ref(),
            Some(&self.model),
            self.postprocess.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            for key in stage.artifacts.keys() {
                check_name("artifact name", key)?;
            }
        }
        for (slot, stage) in [
            ("preprocess", &self.preprocess),
            ("postprocess", &self.postprocess),
        ] {
            if stage.as_ref().is_some_and(|s| !s.backend.is_auto()) {
                bail!("[{slot}] backend: only the model stage runs ONNX graphs");
            }
        }
        self.limits.check()?;
        if let Some(observe) = &self.observe {
            observe.check()?;
        }
        if let Some(batching) = &self.batching {
            self.check_batching(batching)?;
        }
        if let Some(quality) = &self.quality {
            quality.check(&self.outputs)?;
        }
        Ok(())
    }

    /// A batching pipeline's first dimension is the batch: every declared input and output
    /// must leave it open (-1), or merged requests would break the shapes declared.
    fn check_batching(&self, batching: &Batching) -> anyhow::Result<()> {
        within(
            "batching.max_batch_size",
            batching.max_batch_size,
            1,
            MAX_BATCH_SIZE,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest of the bundled scaler, with `extra` TOML appended.
    fn parse(extra: &str) -> anyhow::Result<Manifest> {
        let text = format!("name = \"p\"\n[model]\ncomponent = \"standard-scaler@0.1.0\"\n{extra}");
        Manifest::parse(&text, Path::new("."))
    }

    #[test]
    fn absurd_values_are_refused_naming_the_field() {
        let reference = "[observe]\nreference = { artifact = \"r@1.0.0\" }\n";
        for (extra, field) in [
            (
                "[limits]\nmax_tensor_elements = 0",
                "limits.max_tensor_elements is 0",
            ),
            ("[limits]\nmax_body_mib = 0", "limits.max_body_mib is 0"),
            ("[limits]\nmax_output_mib = 0", "limits.max_output_mib is 0"),
            ("[limits]\nmemory_mib = 0", "limits.memory_mib is 0"),
            (
                "[limits]\nstage_timeout_ms = 0",
                "limits.stage_timeout_ms is 0",
            ),
            (
                "[batching]\nmax_batch_size = 9223372036854775807",
                "batching.max_batch_size is",
            ),
            (
                &format!("{reference}thresholds = {{ psi_warn = nan }}"),
                "observe.thresholds.psi_warn is NaN",
            ),
            (
                &format!("{reference}thresholds = {{ linf_alert = -1.0 }}"),
                "observe.thresholds.linf_alert is -1",
            ),
            (
                &format!("{reference}thresholds = {{ psi_warn = 0.5, psi_alert = 0.2 }}"),
                "observe.thresholds.psi_warn (0.5) is above psi_alert (0.2)",
            ),
            (
                &format!("{reference}columns = {{ x = {{ psi_alert = inf }} }}"),
                "observe.columns.x.psi_alert is inf",
            ),
            (
                &format!("{reference}window_rows = 0"),
                "observe.window_rows is 0",
            ),
            (
                &format!("{reference}window_seconds = 0"),
                "observe.window_seconds is 0",
            ),
            (
                "[model.artifacts]\n\"../x\" = \"w.json\"",
                "artifact name '../x'",
            ),
        ] {
            let error = format!("{:#}", parse(extra).unwrap_err());
            assert!(error.contains(field), "{extra}: {error}");
        }
        assert!(parse("[limits]\nmax_tensor_elements = 10\n[batching]").is_ok());
    }
}
