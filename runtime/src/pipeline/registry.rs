//! The registry: every pipeline's retained versions, loaded and ready, and the active one
//! behind an atomic pointer. Deploy, swap and rollback follow one protocol: resolve → compile
//! and type-check (off the request path) → warm-up call → record in the store (one
//! transaction) → pointer swap. In-flight requests keep the `Arc` of the version they
//! started on; a failure at any step leaves the old version serving.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::Context;
use arc_swap::ArcSwapOption;
use semver::Version;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Pipeline;
use super::manifest::Manifest;
use super::spec::{self, Pin, PipelineSpec};
use crate::alerts::Alerts;
use crate::bundled;
use crate::engine::Engine;
use crate::engine::host::StageKind;
use crate::error::Error;
use crate::experiment::settings::Settings;
use crate::experiment::{Experiment, Experiments, State};
use crate::quality::Quality;
use crate::quality::records::RecordBounds;
use crate::stages::drift::DriftReport;
use crate::store::{Kind, Store};

/// One pipeline's versions and the one that serves.
#[derive(Default)]
struct Slot {
    active: ArcSwapOption<Pipeline>,
    versions: RwLock<BTreeMap<u64, Arc<Pipeline>>>,
}

/// All pipelines, backed by the store.
pub struct Registry {
    engine: Engine,
    store: Arc<Store>,
    /// The quality monitors and prediction records, and where alerts go.
    quality: Arc<Quality>,
    /// Each pipeline's experiment (made once the versions are loaded).
    experiments: OnceLock<Experiments>,
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Changes (deploy, swap, rollback, load, unload) happen one at a time.
    changes: Mutex<()>,
}

/// The outcome of a change.
#[derive(Debug, Serialize)]
pub struct Change {
    pub pipeline: String,
    /// The version serving after the change.
    pub version: u64,
    /// False when the change resolved to the version already active (a no-op).
    pub created: bool,
}

/// A swap: the parts of one stage to replace in the active version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Swap {
    pub stage: StageKind,
    /// `name@version` or `name@requirement` of the new component.
    pub component: Option<String>,
    /// Artifacts to replace, by name: `name@version` or `name@requirement` in the store.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    /// A new config for the stage (replaces the old one whole).
    pub config: Option<Map<String, Value>>,
    /// Swap even while an experiment is live (which ends it as superseded).
    #[serde(default)]
    pub force: bool,
}

/// A pipeline's serving state, for status routes.
#[derive(Debug, Serialize)]
pub struct PipelineStatus {
    pub name: String,
    pub active: Option<u64>,
    pub versions: Vec<u64>,
}

impl Registry {
    /// Open the registry on `store` with the default record bounds, its alerts logged only.
    pub fn open(engine: Engine, store: Arc<Store>) -> anyhow::Result<Registry> {
        let quality = Quality::open(store.dir(), RecordBounds::default(), Alerts::log_only())?;
        Registry::open_with(engine, store, quality)
    }

    /// Open the registry on `store`: put the bundled components in it, then load every
    /// retained pipeline version and warm up the active ones. Their prediction records and
    /// alerts go to `quality`.
    pub fn open_with(
        engine: Engine,
        store: Arc<Store>,
        quality: Arc<Quality>,
    ) -> anyhow::Result<Registry> {
        for plugin in bundled::BUNDLED {
            let version: Version = plugin.version.parse()?;
            if let Err(e) =
                spec::push_component(&engine, &store, plugin.name, &version, plugin.wasm)
            {
                tracing::warn!(
                    component = plugin.name,
                    version = plugin.version,
                    "bundled component not stored: {e:#}"
                );
            }
        }
        let registry = Registry {
            engine,
            store,
            quality,
            experiments: OnceLock::new(),
            slots: RwLock::default(),
            changes: Mutex::new(()),
        };
        for record in registry.store.pipelines()? {
            let slot = Arc::new(Slot::default());
            for stored in registry.store.versions(&record.name)? {
                let loaded = serde_json::from_str::<PipelineSpec>(&stored.spec)
                    .map_err(anyhow::Error::from)
                    .and_then(|spec| {
                        Pipeline::load(
                            &registry.engine,
                            &registry.store,
                            &registry.quality,
                            &spec,
                            stored.version,
                        )
                    });
                match loaded {
                    Ok(pipeline) => {
                        slot.versions
                            .write()
                            .unwrap()
                            .insert(stored.version, Arc::new(pipeline));
                    }
                    Err(e) => {
                        tracing::error!(pipeline = %record.name, version = stored.version, "cannot load: {e:#}")
                    }
                }
            }
            if let Some(active) = record.active {
                let pipeline = slot.versions.read().unwrap().get(&active).cloned();
                match pipeline {
                    Some(p) => {
                        p.warm_up()
                            .with_context(|| format!("warming up {} v{active}", record.name))?;
                        slot.active.store(Some(p));
                    }
                    None => {
                        tracing::error!(pipeline = %record.name, version = active, "active version did not load; not serving")
                    }
                }
            }
            registry.slots.write().unwrap().insert(record.name, slot);
        }
        let experiments = Experiments::open(registry.store.clone(), |name, version| {
            registry.get(name, Some(&version.to_string())).ok()
        })?;
        let _ = registry.experiments.set(experiments);
        Ok(registry)
    }

    /// The store behind the registry.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The engine that compiles components.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The quality monitors.
    pub fn quality(&self) -> &Arc<Quality> {
        &self.quality
    }

    /// The experiments.
    pub fn experiments(&self) -> &Experiments {
        self.experiments
            .get()
            .expect("set when the registry opened")
    }

    fn slot(&self, name: &str) -> Result<Arc<Slot>, Error> {
        let slots = self.slots.read().unwrap();
        (slots.get(name).cloned()).ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))
    }

    /// Whether a pipeline named `name` exists (active or unloaded).
    pub fn serves(&self, name: &str) -> bool {
        self.slots.read().unwrap().contains_key(name)
    }

    /// Every pipeline's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.slots.read().unwrap().keys().cloned().collect()
    }

    /// The pipeline `name` at `version` (any retained one), or its active version.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Pipeline>, Error> {
        let slot = self.slot(name)?;
        match version {
            Some(v) => {
                let versions = slot.versions.read().unwrap();
                v.parse::<u64>()
                    .ok()
                    .and_then(|n| versions.get(&n).cloned())
                    .ok_or_else(|| {
                        let known: Vec<String> = versions.keys().map(u64::to_string).collect();
                        Error::NotFound(format!(
                            "model '{name}' has no version '{v}' (versions: {})",
                            known.join(", ")
                        ))
                    })
            }
            None => slot.active.load_full().ok_or_else(|| {
                Error::Unavailable(format!(
                    "model '{name}' is unloaded (POST /v2/repository/models/{name}/load)"
                ))
            }),
        }
    }

    /// Every pipeline, its active version and its retained versions.
    pub fn status(&self) -> Vec<PipelineStatus> {
        self.slots
            .read()
            .unwrap()
            .iter()
            .map(|(name, slot)| PipelineStatus {
                name: name.clone(),
                active: slot.active.load().as_ref().map(|p| p.number),
                versions: slot.versions.read().unwrap().keys().copied().collect(),
            })
            .collect()
    }

    /// The drift report of every active pipeline that has a monitor.
    pub fn drift_reports(&self) -> Vec<DriftReport> {
        self.slots
            .read()
            .unwrap()
            .values()
            .filter_map(|slot| slot.active.load_full())
            .filter_map(|p| p.monitor().map(|m| m.report()))
            .collect()
    }

    /// The drift report of pipeline `name`'s active version.
    pub fn drift(&self, name: &str) -> Result<DriftReport, Error> {
        let pipeline = self.get(name, None)?;
        pipeline.monitor().map(|m| m.report()).ok_or_else(|| {
            Error::NotFound(format!(
                "pipeline '{name}' has no drift monitor (no [observe] in its manifest)"
            ))
        })
    }

    /// Deploy `manifest`: resolve it and activate the result as the next version, unless it
    /// resolves to the active version (then nothing changes).
    pub fn deploy(&self, manifest: &Manifest) -> Result<Change, Error> {
        let _change = self.changes.lock().unwrap();
        let spec = spec::resolve(manifest, &self.engine, &self.store).map_err(Error::refused)?;
        self.activate_spec(spec)
    }

    /// Deploy `manifest`, named on `weir serve`'s command line, only when it resolves to
    /// something else than the last time it was deployed from there; `None` when it does not.
    /// The command line is desired state only when it changes: swaps, rollbacks and unloads
    /// made through the API since stand across restarts. In a store that has no record yet, a
    /// manifest equal to a retained version counts as deployed from there.
    pub fn deploy_if_changed(&self, manifest: &Manifest) -> Result<Option<Change>, Error> {
        let _change = self.changes.lock().unwrap();
        let spec = spec::resolve(manifest, &self.engine, &self.store).map_err(Error::refused)?;
        let name = spec.name.clone();
        let json = spec_json(&spec)?;
        let last = (self.store.command_line_spec(&name)).map_err(Error::refused)?;
        let recorded = last.as_ref().is_some_and(|last| {
            serde_json::from_str::<PipelineSpec>(last).is_ok_and(|l| l == spec)
        });
        let change = if recorded || (last.is_none() && self.retains(&spec)) {
            None
        } else {
            Some(self.activate_spec(spec)?)
        };
        // A restart with the same manifest writes nothing.
        if !recorded {
            self.store
                .set_command_line_spec(&name, &json)
                .map_err(Error::refused)?;
        }
        Ok(change)
    }

    /// Whether a retained version of `spec`'s pipeline pins exactly `spec`.
    fn retains(&self, spec: &PipelineSpec) -> bool {
        let slot = self.slots.read().unwrap().get(&spec.name).cloned();
        slot.is_some_and(|s| s.versions.read().unwrap().values().any(|p| p.spec == *spec))
    }

    /// Deploy `manifest` as the next version without activating it: a candidate for an
    /// experiment (always a new version, even when it equals the active one).
    pub fn deploy_candidate(&self, manifest: &Manifest) -> Result<Change, Error> {
        let _change = self.changes.lock().unwrap();
        let spec = spec::resolve(manifest, &self.engine, &self.store).map_err(Error::refused)?;
        self.add_spec(spec, false)
    }

    /// Replace parts of one stage of `name`'s active version, as the next version. Refused
    /// while an experiment is live, unless forced.
    pub fn swap(&self, name: &str, swap: &Swap) -> Result<Change, Error> {
        let _change = self.changes.lock().unwrap();
        self.experiments().guard(name, swap.force)?;
        let active = self.get(name, None)?;
        let mut spec = active.spec.clone();
        let stage = spec.stage_mut(swap.stage).ok_or_else(|| {
            Error::InvalidInput(format!(
                "pipeline '{name}' has no {} stage",
                swap.stage.name()
            ))
        })?;
        if let Some(reference) = &swap.component {
            let object =
                spec::find(&self.store, Kind::Component, reference).map_err(Error::refused)?;
            stage.component = Pin::from(&object);
        }
        for (key, reference) in &swap.artifacts {
            let object =
                spec::find(&self.store, Kind::Artifact, reference).map_err(Error::refused)?;
            stage.artifacts.insert(key.clone(), Pin::from(&object));
        }
        if let Some(config) = &swap.config {
            stage.config = config.clone();
        }
        self.activate_spec(spec)
    }

    /// Make retained `version` of `name` the active one again. Refused while an experiment is
    /// live, unless `force`.
    pub fn rollback(&self, name: &str, version: u64, force: bool) -> Result<Change, Error> {
        let _change = self.changes.lock().unwrap();
        let pipeline = self.get(name, Some(&version.to_string()))?;
        self.experiments().guard(name, force)?;
        self.activate(name, pipeline)
    }

    /// Start an experiment of `name`'s active version against retained version
    /// `settings.candidate`.
    pub fn start_experiment(
        &self,
        name: &str,
        settings: Settings,
    ) -> Result<Arc<Experiment>, Error> {
        let _change = self.changes.lock().unwrap();
        let active = self.get(name, None)?;
        let candidate = self.get(name, Some(&settings.candidate.to_string()))?;
        (self.experiments()).start(name, active.number, candidate, settings)
    }

    /// Promote `name`'s experiment: its candidate becomes the active version, and the
    /// experiment ends, in one store transaction. Promoting a promoted one changes nothing.
    pub fn promote(&self, name: &str, reason: &str) -> Result<Arc<Experiment>, Error> {
        let _change = self.changes.lock().unwrap();
        let experiment = self.experiments().get(name)?;
        match experiment.state() {
            State::Promoted => return Ok(experiment),
            State::Aborted => {
                return Err(Error::Conflict(format!(
                    "pipeline '{name}''s experiment was aborted: start a new one to promote"
                )));
            }
            State::Running | State::Paused => {}
        }
        let candidate = experiment.candidate().clone();
        candidate.warm_up().map_err(|e| {
            Error::InvalidInput(format!("the candidate failed its warm-up call: {e}"))
        })?;
        let version = candidate.number;
        let slot = self.slot(name)?;
        let switch = || slot.active.store(Some(candidate.clone()));
        (self.experiments()).end(
            &experiment,
            State::Promoted,
            reason,
            Some((version, &switch)),
        )?;
        tracing::info!(
            pipeline = name,
            version,
            "promoted the experiment's candidate"
        );
        Ok(experiment)
    }

    /// Abort `name`'s experiment: the candidate gets no more traffic; the active version is
    /// untouched. Aborting an ended one changes nothing.
    pub fn abort(&self, name: &str) -> Result<Arc<Experiment>, Error> {
        let _change = self.changes.lock().unwrap();
        let experiment = self.experiments().get(name)?;
        if matches!(experiment.state(), State::Running | State::Paused) {
            (self.experiments()).end(&experiment, State::Aborted, "aborted by hand", None)?;
        }
        Ok(experiment)
    }

    /// Judge the experiments whose interval is over, and promote those that passed.
    pub fn check_experiments(&self) {
        for experiment in self.experiments().check(&self.quality) {
            if let Err(e) = self.promote(&experiment.pipeline, "passed every step") {
                tracing::error!(pipeline = %experiment.pipeline, "promoting failed: {e}");
            }
        }
    }

    /// Stop serving `name` (its versions stay stored); V2 repository `unload`.
    pub fn unload(&self, name: &str) -> Result<(), Error> {
        let _change = self.changes.lock().unwrap();
        let slot = self.slot(name)?;
        self.store.set_active(name, None).map_err(Error::refused)?;
        slot.active.store(None);
        Ok(())
    }

    /// Serve `name` again at the version active before its unload; V2 repository `load`.
    pub fn load(&self, name: &str) -> Result<Change, Error> {
        let _change = self.changes.lock().unwrap();
        let record = self
            .store
            .pipelines()
            .map_err(Error::refused)?
            .into_iter()
            .find(|r| r.name == name);
        let version = record
            .and_then(|r| r.active.or(r.last_active))
            .ok_or_else(|| Error::NotFound(format!("unknown model '{name}'")))?;
        let pipeline = self.get(name, Some(&version.to_string()))?;
        self.activate(name, pipeline)
    }

    /// Load, warm up, record and activate `spec` as the next version; a no-op when it equals
    /// the active version's spec.
    fn activate_spec(&self, spec: PipelineSpec) -> Result<Change, Error> {
        let slot = self.slots.read().unwrap().get(&spec.name).cloned();
        if let Some(active) = slot.as_ref().and_then(|s| s.active.load_full())
            && active.spec == spec
        {
            return Ok(Change {
                pipeline: spec.name,
                version: active.number,
                created: false,
            });
        }
        self.add_spec(spec, true)
    }

    /// Load, warm up and record `spec` as the next version, and activate it if `activate`.
    fn add_spec(&self, spec: PipelineSpec, activate: bool) -> Result<Change, Error> {
        let slot = self.slots.read().unwrap().get(&spec.name).cloned();
        let next = self
            .store
            .versions(&spec.name)
            .map_err(Error::refused)?
            .last()
            .map_or(1, |v| v.version + 1);
        let mut pipeline = Pipeline::load(&self.engine, &self.store, &self.quality, &spec, next)
            .map_err(Error::refused)?;
        if let Some(active) = slot.as_ref().and_then(|s| s.active.load_full()) {
            pipeline.continue_monitor(&active);
        }
        pipeline.warm_up().map_err(|e| {
            Error::InvalidInput(format!(
                "pipeline '{}' failed its warm-up call: {e}",
                spec.name
            ))
        })?;
        let pins = spec.pins(&self.store).map_err(Error::refused)?;
        let version = self
            .store
            .add_version(
                &spec.name,
                &spec_json(&spec)?,
                &pins.iter().collect::<Vec<_>>(),
                activate,
            )
            .map_err(Error::refused)?;
        debug_assert_eq!(
            version, next,
            "changes are serialized, so the store numbers alike"
        );
        let pipeline = Arc::new(pipeline);
        let slot = self
            .slots
            .write()
            .unwrap()
            .entry(spec.name.clone())
            .or_default()
            .clone();
        slot.versions
            .write()
            .unwrap()
            .insert(version, pipeline.clone());
        if activate {
            slot.active.store(Some(pipeline));
            tracing::info!(pipeline = %spec.name, version, "activated new version");
        } else {
            tracing::info!(pipeline = %spec.name, version, "added a candidate version");
        }
        Ok(Change {
            pipeline: spec.name,
            version,
            created: true,
        })
    }

    /// Warm up a retained version, record it as active, and swap the pointer.
    fn activate(&self, name: &str, pipeline: Arc<Pipeline>) -> Result<Change, Error> {
        pipeline.warm_up().map_err(|e| {
            Error::InvalidInput(format!(
                "pipeline '{name}' v{} failed its warm-up call: {e}",
                pipeline.version
            ))
        })?;
        let version = pipeline.number;
        self.store
            .set_active(name, Some(version))
            .map_err(Error::refused)?;
        self.slot(name)?.active.store(Some(pipeline));
        tracing::info!(pipeline = name, version, "activated retained version");
        Ok(Change {
            pipeline: name.to_owned(),
            version,
            created: false,
        })
    }
}

/// `spec` as the JSON the store keeps.
fn spec_json(spec: &PipelineSpec) -> Result<String, Error> {
    serde_json::to_string(spec).map_err(|e| Error::StageFailed(e.to_string()))
}
