//! Ground truth: live model quality per pipeline version. A pipeline that declares `[quality]`
//! gets an id for every request (the client's V2 `id`, else one Weir makes and returns), and
//! what each request predicted is kept in the prediction [`records`]. Truth sent later to
//! `POST /v1/pipelines/{name}/feedback` is joined to its record and tallied into the window
//! of the version that answered (still served or not), whose metrics ([`score`]) are judged
//! against the training baseline; a status change raises an alert.

pub mod config;
pub mod records;
pub mod score;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

use crate::alerts::{Alert, Alerts};
use crate::stages::window::Sliding;
use crate::tensor::{Batch, Datatype, Tensor};
use config::QualityConfig;
use records::{Outcome, Prediction, RecordBounds, Recorded, Records};
use score::{ClassScores, Label, Scores, Status, Tally};

/// Error messages a feedback answer quotes at most.
const MAX_ERRORS: usize = 10;

/// The quality monitors of every `[quality]` pipeline version, and their records.
pub struct Quality {
    records: Records,
    alerts: Alerts,
    monitors: Mutex<BTreeMap<(String, u64), Arc<Monitor>>>,
    /// Ids Weir makes are this process's random prefix and a counter.
    id_prefix: String,
    next_id: AtomicU64,
}

/// One version's quality: its settings, its window of labelled rows, and its status.
pub struct Monitor {
    pipeline: Arc<str>,
    version: u64,
    config: QualityConfig,
    window: Mutex<Sliding<Tally>>,
    status: Mutex<Status>,
    /// Rows answered and rows labelled (kept records at start, then counted).
    answered: AtomicU64,
    labelled: AtomicU64,
}

/// What a pipeline version records on each request: its handle on the quality monitor.
pub struct Recorder {
    quality: Arc<Quality>,
    monitor: Arc<Monitor>,
}

/// What became of a feedback batch.
#[derive(Debug, Default, Serialize)]
pub struct FeedbackSummary {
    pub matched: u64,
    /// Ids no record has.
    pub unknown: u64,
    /// Ids whose record was evicted (`--quality-record-rows`, `--quality-record-seconds`).
    pub expired: u64,
    /// Ids that had truth already: the first truth wins.
    pub duplicates: u64,
    /// Truth that does not fit its record; `errors` says why (the first few).
    pub invalid: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `GET /v1/pipelines/{name}/quality`.
#[derive(Debug, Serialize)]
pub struct QualityReport {
    pub pipeline: String,
    pub versions: Vec<VersionQuality>,
    /// Records dropped because the writer fell behind, and evicted by the bounds (every
    /// pipeline's).
    pub records_dropped: u64,
    pub records_evicted: u64,
}

/// One version's quality.
#[derive(Debug, Serialize)]
pub struct VersionQuality {
    pub version: u64,
    pub task: config::Task,
    pub status: Status,
    /// Rows answered, and rows with truth, among the kept records.
    pub answered: u64,
    pub labelled: u64,
    /// `labelled / answered`.
    pub coverage: f64,
    /// Labelled rows the metrics cover (the window), and the fewest judged.
    pub window_rows: u64,
    pub min_labelled: u64,
    pub metrics: BTreeMap<&'static str, f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassScores>,
    pub baseline: BTreeMap<&'static str, f64>,
    /// Per baselined metric, how much worse than the baseline warns and alerts.
    pub thresholds: BTreeMap<&'static str, Value>,
}

impl Quality {
    /// Open the prediction records in `dir/quality.db`; status changes go to `alerts`.
    pub fn open(dir: &Path, bounds: RecordBounds, alerts: Alerts) -> anyhow::Result<Arc<Quality>> {
        let mut prefix = [0u8; 6];
        getrandom::fill(&mut prefix).map_err(|e| anyhow::anyhow!("random id prefix: {e}"))?;
        Ok(Arc::new(Quality {
            records: Records::open(&dir.join("quality.db"), bounds)?,
            alerts,
            monitors: Mutex::default(),
            id_prefix: hex::encode(prefix),
            next_id: AtomicU64::new(0),
        }))
    }

    /// Where drift and quality alerts go.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The recorder of `pipeline` version `version`, whose monitor is made (its window
    /// refilled from the records, after a restart) the first time the version is loaded.
    pub fn watch(
        self: &Arc<Self>,
        pipeline: &str,
        version: u64,
        config: &QualityConfig,
    ) -> anyhow::Result<Recorder> {
        let key = (pipeline.to_owned(), version);
        let existing = self.monitors.lock().unwrap().get(&key).cloned();
        let monitor = match existing {
            // A version number is reused only after a deploy that never committed.
            Some(monitor) if monitor.config == *config => monitor,
            _ => {
                let monitor = Arc::new(self.restore(pipeline, version, config)?);
                self.monitors.lock().unwrap().insert(key, monitor.clone());
                monitor
            }
        };
        Ok(Recorder {
            quality: self.clone(),
            monitor,
        })
    }

    /// A monitor for a version, with the counts and latest labelled rows its kept records
    /// hold (after a restart, the window's rows come back as one sub-window).
    fn restore(
        &self,
        pipeline: &str,
        version: u64,
        config: &QualityConfig,
    ) -> anyhow::Result<Monitor> {
        let (answered, labelled) = (self.records.counts(pipeline)?)
            .get(&version)
            .copied()
            .unwrap_or_default();
        let since = crate::alerts::now() - config.window_seconds as f64;
        let rows = self
            .records
            .labelled(pipeline, version, since, config.window_rows)?;
        let mut tally = Tally::default();
        for (recorded, truth) in &rows {
            // Rows that no longer fit (settings changed) are left out.
            let _ = add_rows(config, &mut tally, recorded, truth);
        }
        let mut window = Sliding::new(config.window_rows, config.window_seconds, Tally::default());
        let restored = tally.rows();
        window.add(restored, |t| t.merge(&tally));
        let status = score::judge(config, &tally.score(), restored);
        Ok(Monitor {
            pipeline: pipeline.into(),
            version,
            config: config.clone(),
            window: Mutex::new(window),
            status: Mutex::new(status),
            answered: AtomicU64::new(answered),
            labelled: AtomicU64::new(labelled),
        })
    }

    /// Join `truths` (`(id, target)`) to `pipeline`'s records and count them in the windows
    /// of the versions that answered; then judge each of those versions (blocking).
    pub fn feedback(
        &self,
        pipeline: &str,
        truths: &[(String, Value)],
    ) -> anyhow::Result<FeedbackSummary> {
        self.records.flush();
        let mut touched: BTreeMap<u64, Arc<Monitor>> = BTreeMap::new();
        let outcomes = self.records.label(pipeline, truths, |recorded, truth| {
            let monitor = self.monitor(pipeline, recorded.version)?;
            let mut tally = Tally::default();
            add_rows(&monitor.config, &mut tally, recorded, truth)?;
            let rows = tally.rows();
            (monitor.window.lock().unwrap()).add(rows, |t| t.merge(&tally));
            monitor.labelled.fetch_add(rows, Ordering::Relaxed);
            touched.insert(recorded.version, monitor);
            Ok(())
        })?;
        for monitor in touched.values() {
            monitor.judge(&self.alerts);
        }
        let mut summary = FeedbackSummary::default();
        for outcome in outcomes {
            match outcome {
                Outcome::Matched => summary.matched += 1,
                Outcome::Unknown => summary.unknown += 1,
                Outcome::Expired => summary.expired += 1,
                Outcome::Duplicate => summary.duplicates += 1,
                Outcome::Invalid(reason) => {
                    summary.invalid += 1;
                    if summary.errors.len() < MAX_ERRORS {
                        summary.errors.push(reason);
                    }
                }
            }
        }
        Ok(summary)
    }

    fn monitor(&self, pipeline: &str, version: u64) -> Result<Arc<Monitor>, String> {
        let monitors = self.monitors.lock().unwrap();
        monitors
            .get(&(pipeline.to_owned(), version))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "version {version}, which answered it, is no longer kept or has no [quality]"
                )
            })
    }

    /// The quality of every monitored version of `pipeline`, oldest first.
    pub fn report(&self, pipeline: &str) -> QualityReport {
        let monitors: Vec<Arc<Monitor>> = (self.monitors.lock().unwrap())
            .range((pipeline.to_owned(), 0)..=(pipeline.to_owned(), u64::MAX))
            .map(|(_, monitor)| monitor.clone())
            .collect();
        QualityReport {
            pipeline: pipeline.to_owned(),
            versions: monitors.iter().map(|m| m.report()).collect(),
            records_dropped: self.records.dropped(),
            records_evicted: self.records.evicted(),
        }
    }

    /// Every monitored version's report, for `/metrics`.
    pub fn reports(&self) -> Vec<(String, VersionQuality)> {
        let monitors: Vec<Arc<Monitor>> = self.monitors.lock().unwrap().values().cloned().collect();
        (monitors.iter())
            .map(|m| (m.pipeline.to_string(), m.report()))
            .collect()
    }

    /// The quality gate of an experiment: whether version `candidate` of `pipeline` is worse
    /// than version `active` by more than a baselined metric's warn drop (the reason, or
    /// `None`); `None` outside when either has no monitor or too little truth to judge.
    pub fn compare(&self, pipeline: &str, active: u64, candidate: u64) -> Option<Option<String>> {
        let monitor = |version| {
            let monitors = self.monitors.lock().unwrap();
            monitors.get(&(pipeline.to_owned(), version)).cloned()
        };
        let (active, candidate) = (monitor(active)?, monitor(candidate)?);
        let (scores_a, _, status_a) = active.judged();
        let (scores_c, _, status_c) = candidate.judged();
        if status_a == Status::Insufficient || status_c == Status::Insufficient {
            return None;
        }
        let config = &candidate.config;
        for (metric, baseline) in &config.baseline {
            let name = metric.name();
            let (Some(a), Some(c)) = (scores_a.metrics.get(name), scores_c.metrics.get(name))
            else {
                continue;
            };
            let worse = if metric.higher_is_better() {
                a - c
            } else {
                c - a
            };
            let (warn, _) = config.drops(*metric, *baseline);
            if worse > warn {
                return Some(Some(format!(
                    "the candidate's {name} {c:.4} is worse than the active version's {a:.4} \
                     by more than {warn}"
                )));
            }
        }
        Some(None)
    }

    /// Whether some version of `pipeline` has a quality monitor.
    pub fn watches(&self, pipeline: &str) -> bool {
        let monitors = self.monitors.lock().unwrap();
        let versions = (pipeline.to_owned(), 0)..=(pipeline.to_owned(), u64::MAX);
        monitors.range(versions).next().is_some()
    }

    /// Write every queued record (blocking): before a graceful exit.
    pub fn flush(&self) {
        self.records.flush();
    }

    /// Records dropped and evicted.
    pub fn record_counts(&self) -> (u64, u64) {
        (self.records.dropped(), self.records.evicted())
    }
}

/// Tally a record's rows with their truth; refused whole when a row does not fit.
fn add_rows(
    config: &QualityConfig,
    tally: &mut Tally,
    recorded: &Recorded,
    truth: &[Label],
) -> Result<(), String> {
    let mut rows = Tally::default();
    for (i, (prediction, target)) in recorded.predictions.iter().zip(truth).enumerate() {
        let scores = recorded.scores.as_ref().and_then(|s| s.get(i));
        rows.add(config, prediction, target, scores.map(Vec::as_slice))?;
    }
    tally.merge(&rows);
    Ok(())
}

impl Monitor {
    /// The window's metrics and the status they earn.
    fn judged(&self) -> (Scores, u64, Status) {
        let window = self.window.lock().unwrap();
        let mut all = Tally::default();
        for tally in window.tallies() {
            all.merge(tally);
        }
        let scores = all.score();
        let rows = window.rows();
        let status = score::judge(&self.config, &scores, rows);
        (scores, rows, status)
    }

    /// Judge the window; a change of status raises an alert.
    fn judge(&self, alerts: &Alerts) {
        let (scores, _, status) = self.judged();
        let before = std::mem::replace(&mut *self.status.lock().unwrap(), status);
        if before == status {
            return;
        }
        alerts.raise(Alert {
            pipeline: self.pipeline.to_string(),
            version: Some(self.version),
            what: "quality",
            subject: "status".into(),
            from: before.name().into(),
            to: status.name().into(),
            scores: json!(scores.metrics),
            report: format!("/v1/pipelines/{}/quality", self.pipeline),
            at: crate::alerts::now(),
        });
    }

    fn report(&self) -> VersionQuality {
        let (scores, window_rows, status) = self.judged();
        let answered = self.answered.load(Ordering::Relaxed);
        let labelled = self.labelled.load(Ordering::Relaxed);
        let config = &self.config;
        VersionQuality {
            version: self.version,
            task: config.task,
            status,
            answered,
            labelled,
            coverage: if answered == 0 {
                0.0
            } else {
                labelled as f64 / answered as f64
            },
            window_rows,
            min_labelled: config.min_labelled,
            metrics: scores.metrics,
            classes: scores.classes,
            baseline: (config.baseline.iter())
                .map(|(metric, value)| (metric.name(), *value))
                .collect(),
            thresholds: (config.baseline.iter())
                .map(|(metric, baseline)| {
                    let (warn, alert) = config.drops(*metric, *baseline);
                    (metric.name(), json!({ "warn": warn, "alert": alert }))
                })
                .collect(),
        }
    }
}

impl Recorder {
    /// A new request id, unique across the server's restarts (a random prefix per process).
    pub fn new_id(&self) -> String {
        let n = self.quality.next_id.fetch_add(1, Ordering::Relaxed);
        format!("weir-{}-{n}", self.quality.id_prefix)
    }

    /// Queue the record of request `id` of this version, which answered `outputs`. Outputs
    /// without the prediction tensor (a stage that failed to make it) record nothing.
    pub fn record(&self, id: &str, outputs: &Batch) {
        let config = &self.monitor.config;
        let find = |name: &str| outputs.tensors.iter().find(|t| t.name == name);
        let Some(prediction) = find(&config.prediction) else {
            return;
        };
        let predictions = labels(prediction);
        let scores = (config.scores.as_deref())
            .and_then(find)
            .map(rows_of_scores);
        (self.monitor.answered).fetch_add(predictions.len() as u64, Ordering::Relaxed);
        self.quality.records.record(Prediction {
            pipeline: self.monitor.pipeline.clone(),
            version: self.monitor.version,
            id: id.to_owned(),
            at: crate::alerts::now(),
            predictions,
            scores,
        });
    }
}

/// A prediction tensor's values, one per element: text for BYTES, else numbers.
fn labels(tensor: &Tensor) -> Vec<Label> {
    if tensor.datatype == Datatype::Bytes {
        return crate::tensor::bytes_elements(&tensor.data)
            .filter_map(Result::ok)
            .map(|bytes| Label::Text(String::from_utf8_lossy(bytes).into_owned()))
            .collect();
    }
    tensor.numbers().into_iter().map(Label::Number).collect()
}

/// A `[rows, classes]` scores tensor's rows.
fn rows_of_scores(tensor: &Tensor) -> Vec<Vec<f64>> {
    let width = tensor.shape.get(1).copied().unwrap_or(1).max(1) as usize;
    tensor
        .numbers()
        .chunks(width)
        .map(<[f64]>::to_vec)
        .collect()
}
