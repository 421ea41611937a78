//! `[quality]` in the manifest: what the model predicts, the output that holds it, the
//! baseline from the training evaluation, and how far below it a live metric may fall.

use std::collections::BTreeMap;

use anyhow::{bail, ensure};
use serde::{Deserialize, Serialize};

use crate::pipeline::manifest::{TensorSpec, within};

/// What the model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A class label per row (text or a number), optionally with a score per class.
    Classification,
    /// A number per row.
    Regression,
}

/// A metric the status may be judged on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Accuracy,
    MacroF1,
    LogLoss,
    Brier,
    Mae,
    Rmse,
}

impl Metric {
    /// Its name in reports, metrics and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::MacroF1 => "macro_f1",
            Metric::LogLoss => "log_loss",
            Metric::Brier => "brier",
            Metric::Mae => "mae",
            Metric::Rmse => "rmse",
        }
    }

    /// Whether a larger value is better (rates) rather than worse (errors, losses).
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::Accuracy | Metric::MacroF1)
    }

    fn task(self) -> Task {
        match self {
            Metric::Mae | Metric::Rmse => Task::Regression,
            _ => Task::Classification,
        }
    }

    /// How much worse than the baseline warns and alerts when the manifest does not say: for
    /// rates, 0.05 and 0.10 below it; for errors and losses, 10% and 25% above it.
    fn default_drops(self, baseline: f64) -> (f64, f64) {
        if self.higher_is_better() {
            (0.05, 0.10)
        } else {
            (0.10 * baseline, 0.25 * baseline)
        }
    }
}

/// The quality monitor's settings, as the manifest writes them and the version pins them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualityConfig {
    pub task: Task,
    /// The declared output holding the prediction: one value per row.
    pub prediction: String,
    /// For classification, the declared output holding each row's class probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<String>,
    /// The class of each column of `scores`, in order. Without it, column `i` is class `i`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// The metrics of the training evaluation: the status judges these.
    #[serde(default)]
    pub baseline: BTreeMap<Metric, f64>,
    /// How much worse than its baseline a metric may get before `warn` (see `default_drops`).
    #[serde(default)]
    pub warn: BTreeMap<Metric, f64>,
    /// How much worse than its baseline a metric may get before `alert`.
    #[serde(default)]
    pub alert: BTreeMap<Metric, f64>,
    /// Labelled rows the window needs before it is judged (`insufficient` until then).
    #[serde(default = "default_min_labelled")]
    pub min_labelled: u64,
    /// Labelled rows the metrics cover: the latest ones.
    #[serde(default = "default_window_rows")]
    pub window_rows: u64,
    /// The window also covers at most this many seconds of feedback.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
}

fn default_min_labelled() -> u64 {
    100
}

fn default_window_rows() -> u64 {
    10_000
}

fn default_window_seconds() -> u64 {
    7 * 24 * 3600
}

impl QualityConfig {
    /// Refuse settings that cannot be judged: outputs the pipeline does not declare, metrics
    /// of the other task, thresholds that are not numbers or put `warn` beyond `alert`.
    pub fn check(&self, outputs: &[TensorSpec]) -> anyhow::Result<()> {
        let declared = |name: &str| outputs.is_empty() || outputs.iter().any(|o| o.name == name);
        ensure!(
            declared(&self.prediction),
            "quality.prediction '{}' is not a declared output",
            self.prediction
        );
        if let Some(scores) = &self.scores {
            ensure!(
                self.task == Task::Classification,
                "quality.scores: only a classification has class scores"
            );
            ensure!(
                declared(scores),
                "quality.scores '{scores}' is not a declared output"
            );
        }
        for (table, metrics) in [
            ("baseline", &self.baseline),
            ("warn", &self.warn),
            ("alert", &self.alert),
        ] {
            for (metric, value) in metrics {
                if metric.task() != self.task {
                    bail!(
                        "quality.{table}.{}: not a {:?} metric",
                        metric.name(),
                        self.task
                    );
                }
                if matches!(metric, Metric::LogLoss | Metric::Brier) && self.scores.is_none() {
                    bail!("quality.{table}.{}: needs quality.scores", metric.name());
                }
                ensure!(
                    value.is_finite() && *value >= 0.0,
                    "quality.{table}.{} is {value}; it must be 0 or more",
                    metric.name()
                );
            }
        }
        for metric in self.warn.keys().chain(self.alert.keys()) {
            ensure!(
                self.baseline.contains_key(metric),
                "quality: a threshold for {} needs its baseline (quality.baseline.{0})",
                metric.name()
            );
        }
        for (metric, baseline) in &self.baseline {
            let (warn, alert) = self.drops(*metric, *baseline);
            ensure!(
                warn <= alert,
                "quality.warn.{} ({warn}) is beyond quality.alert.{0} ({alert})",
                metric.name()
            );
        }
        within("quality.min_labelled", self.min_labelled, 1, 1 << 40)?;
        within("quality.window_rows", self.window_rows, 1, 1 << 40)?;
        within("quality.window_seconds", self.window_seconds, 1, 1 << 40)?;
        Ok(())
    }

    /// How much worse than `baseline` `metric` may get before warn and before alert.
    pub fn drops(&self, metric: Metric, baseline: f64) -> (f64, f64) {
        let (warn, alert) = metric.default_drops(baseline);
        (
            self.warn.get(&metric).copied().unwrap_or(warn),
            self.alert.get(&metric).copied().unwrap_or(alert),
        )
    }
}
