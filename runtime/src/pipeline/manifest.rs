//! The pipeline manifest (`pipeline.toml`): which components fill which stage, with what
//! config and artifacts, what inputs and outputs the pipeline declares, and its limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::tensor::Datatype;

/// A parsed manifest with every relative path resolved against the manifest's directory.
#[derive(Debug, Deserialize)]
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
}

/// A declared input or output: name, accepted datatypes (the first is the one metadata
/// reports) and shape, with -1 for a dimension of any size.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawTensorSpec")]
pub struct TensorSpec {
    pub name: String,
    pub datatypes: Vec<Datatype>,
    pub shape: Vec<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensorSpec {
    name: String,
    datatype: OneOrMany,
    shape: Vec<i64>,
}

#[derive(Deserialize)]
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
        Ok(TensorSpec {
            datatypes: names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?,
            name: raw.name,
            shape: raw.shape,
        })
    }
}

/// One stage: the component that runs it, its config and its artifacts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// `name@version`: a bundled plugin, or the name and version of the file at `path`.
    pub component: String,
    /// A component file of your own, relative to the manifest.
    pub path: Option<PathBuf>,
    /// Handed to the component as a JSON object on every call.
    #[serde(default)]
    pub config: toml::Table,
    /// Model artifact files by the name the component reads them with.
    #[serde(default)]
    pub artifacts: BTreeMap<String, PathBuf>,
}

impl StageSpec {
    /// The component's name and version from `name@version`.
    pub fn name_and_version(&self) -> anyhow::Result<(&str, &str)> {
        match self.component.split_once('@') {
            Some((name, version)) if !name.is_empty() && !version.is_empty() => Ok((name, version)),
            _ => bail!(
                "component '{}' must be written name@version, e.g. standard-scaler@0.1.0",
                self.component
            ),
        }
    }
}

/// Per-pipeline resource limits for each stage instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory per instance, MiB. 64 MiB fits tabular models and their buffers with
    /// room to spare while letting a thousand concurrent instances fit in a small machine.
    pub memory_mib: u64,
    /// Wall-clock time per stage call, ms, checked every epoch tick (10 ms).
    pub stage_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            stage_timeout_ms: 1000,
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
            for p in stage.artifacts.values_mut() {
                *p = base.join(&*p);
            }
        }
        manifest.check()?;
        Ok(manifest)
    }

    fn stages_mut(&mut self) -> impl Iterator<Item = &mut StageSpec> {
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
        Ok(())
    }
}
