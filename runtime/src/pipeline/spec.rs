//! Resolution: a manifest becomes a [`PipelineSpec`] that pins every stage to a component
//! digest and config and every artifact to a digest. A spec is what a pipeline version is:
//! immutable, stored, and enough to serve that version again at any time.

use std::collections::BTreeMap;

use anyhow::Context;
use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::batching::Batching;
use super::manifest::{ArtifactSource, Limits, Manifest, TensorSpec, split_reference};
use crate::engine::Engine;
use crate::engine::host::StageKind;
use crate::nn::BackendChoice;
use crate::quality::config::QualityConfig;
use crate::stages::drift::MonitorConfig;
use crate::stages::profile::Profile;
use crate::store::{Kind, Object, Store, StoreError};

/// A pinned pipeline: what one pipeline version serves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub limits: Limits,
    pub stages: Vec<PinnedStage>,
    /// The drift monitor: its pinned reference profile and settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe: Option<ObserveSpec>,
    /// Cross-request batching, when opted into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// The quality monitor's settings, when declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityConfig>,
}

/// The drift monitor of a pinned pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObserveSpec {
    pub reference: Pin,
    pub monitor: MonitorConfig,
}

/// One stage of a pinned pipeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinnedStage {
    pub kind: StageKind,
    pub component: Pin,
    /// Handed to the component as JSON on every call.
    pub config: Map<String, Value>,
    pub artifacts: BTreeMap<String, Pin>,
    /// Opt-in: warm instances serve request after request (see the manifest's field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reuse_instances: bool,
    /// The backend of a model stage's graphs (see the manifest's field).
    #[serde(default, skip_serializing_if = "BackendChoice::is_auto")]
    pub backend: BackendChoice,
}

/// An exact stored object: `name@version` and its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub name: String,
    pub version: Version,
    pub digest: String,
}

impl From<&Object> for Pin {
    fn from(o: &Object) -> Self {
        Pin {
            name: o.name.clone(),
            version: o.version.clone(),
            digest: o.digest.clone(),
        }
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

impl PipelineSpec {
    /// The store objects this spec pins, so the store can refuse to delete them.
    pub fn pins(&self, store: &Store) -> anyhow::Result<Vec<Object>> {
        let stage_pins = self.stages.iter().flat_map(|stage| {
            std::iter::once((Kind::Component, &stage.component))
                .chain(stage.artifacts.values().map(|a| (Kind::Artifact, a)))
        });
        let reference = self.observe.iter().map(|o| (Kind::Artifact, &o.reference));
        let mut objects = Vec::new();
        for (kind, pin) in stage_pins.chain(reference) {
            let object = store
                .get(kind, &pin.name, &pin.version)?
                .with_context(|| format!("{pin} is not in the store"))?;
            objects.push(object);
        }
        Ok(objects)
    }

    /// The stage in slot `kind`, if the pipeline has one.
    pub fn stage_mut(&mut self, kind: StageKind) -> Option<&mut PinnedStage> {
        self.stages.iter_mut().find(|s| s.kind == kind)
    }
}

/// Resolve `manifest` against the store, pushing the component and artifact files it names
/// by path first.
pub fn resolve(
    manifest: &Manifest,
    engine: &Engine,
    store: &Store,
) -> anyhow::Result<PipelineSpec> {
    let slots = [
        (StageKind::Preprocess, manifest.preprocess.as_ref()),
        (StageKind::Model, Some(&manifest.model)),
        (StageKind::Postprocess, manifest.postprocess.as_ref()),
    ];
    let mut stages = Vec::new();
    for (kind, stage) in slots {
        let Some(stage) = stage else { continue };
        let resolved = (|| -> anyhow::Result<PinnedStage> {
            let component = match &stage.path {
                Some(path) => {
                    let (name, version) = split_reference(&stage.component, "component")?;
                    let version: Version = version.parse().with_context(|| {
                        format!(
                            "a component pushed from `path` needs an exact version, not '{version}'"
                        )
                    })?;
                    let bytes = std::fs::read(path)
                        .with_context(|| format!("reading component {}", path.display()))?;
                    push_component(engine, store, name, &version, &bytes)?.0
                }
                None => find(store, Kind::Component, &stage.component)?,
            };
            let mut artifacts = BTreeMap::new();
            for (key, source) in &stage.artifacts {
                let object = match source {
                    ArtifactSource::File(path) => {
                        let bytes = std::fs::read(path).with_context(|| {
                            format!("reading artifact '{key}' from {}", path.display())
                        })?;
                        push_file_artifact(store, &manifest.name, key, &bytes)?
                    }
                    ArtifactSource::Stored { artifact } => find(store, Kind::Artifact, artifact)?,
                };
                artifacts.insert(key.clone(), Pin::from(&object));
            }
            Ok(PinnedStage {
                kind,
                component: Pin::from(&component),
                config: serde_json::to_value(&stage.config)?
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                artifacts,
                reuse_instances: stage.reuse_instances,
                backend: stage.backend,
            })
        })()
        .with_context(|| format!("stage '{}'", kind.name()))?;
        stages.push(resolved);
    }
    let observe = match &manifest.observe {
        None => None,
        Some(observe) => {
            let reference = match &observe.reference {
                ArtifactSource::File(path) => {
                    let bytes = std::fs::read(path).with_context(|| {
                        format!("reading the reference profile {}", path.display())
                    })?;
                    serde_json::from_slice::<Profile>(&bytes).with_context(|| {
                        format!("{} is not a profile from `weir profile`", path.display())
                    })?;
                    push_file_artifact(store, &manifest.name, "reference", &bytes)?
                }
                ArtifactSource::Stored { artifact } => find(store, Kind::Artifact, artifact)?,
            };
            Some(ObserveSpec {
                reference: Pin::from(&reference),
                monitor: MonitorConfig {
                    window_rows: observe.window_rows,
                    window_seconds: observe.window_seconds,
                    thresholds: observe.thresholds.clone(),
                    columns: observe.columns.clone(),
                },
            })
        }
    };
    Ok(PipelineSpec {
        name: manifest.name.clone(),
        description: manifest.description.clone(),
        inputs: manifest.inputs.clone(),
        outputs: manifest.outputs.clone(),
        limits: manifest.limits.clone(),
        stages,
        observe,
        batching: manifest.batching.clone(),
        quality: manifest.quality.clone(),
    })
}

/// The stored object `reference` names: `name@version` or `name@requirement`, the highest
/// matching version.
pub fn find(store: &Store, kind: Kind, reference: &str) -> anyhow::Result<Object> {
    let (name, requirement) = split_reference(reference, "reference")?;
    if let Ok(exact) = requirement.parse::<Version>() {
        // Exact, build metadata included (requirements ignore it).
        return store.get(kind, name, &exact)?.ok_or_else(|| {
            StoreError::NotFound(format!("no {} {name}@{exact} in the store", kind.as_str())).into()
        });
    }
    let requirement = VersionReq::parse(requirement)
        .with_context(|| format!("'{requirement}' is neither a version nor a requirement"))?;
    store.resolve(kind, name, &requirement)
}

/// Check that `bytes` are a component that fits a stage world, then store it as
/// `name@version`. Returns the object and whether it was new.
pub fn push_component(
    engine: &Engine,
    store: &Store,
    name: &str,
    version: &Version,
    bytes: &[u8],
) -> anyhow::Result<(Object, bool)> {
    let checked = engine
        .compile(&crate::digest(bytes), || Ok(bytes.to_vec()))
        .and_then(|component| crate::engine::host::fitting_worlds(engine.wasmtime(), &component));
    let worlds = checked.with_context(|| format!("component {name}@{version}"))?;
    store.put(Kind::Component, name, version, &worlds.join(","), bytes)
}

/// The name and version an artifact file named in a manifest is stored as:
/// `<pipeline>.<key>@0.0.0+<digest prefix>`. The version carries the digest, so new bytes are
/// a new version.
pub fn file_artifact_name(pipeline: &str, key: &str, bytes: &[u8]) -> (String, Version) {
    let digest = crate::digest(bytes);
    let hex = digest.trim_start_matches("sha256-");
    let version = format!("0.0.0+{}", &hex[..12])
        .parse()
        .expect("a valid version");
    (format!("{pipeline}.{key}"), version)
}

fn push_file_artifact(
    store: &Store,
    pipeline: &str,
    key: &str,
    bytes: &[u8],
) -> anyhow::Result<Object> {
    let (name, version) = file_artifact_name(pipeline, key, bytes);
    Ok(store.put(Kind::Artifact, &name, &version, "", bytes)?.0)
}
