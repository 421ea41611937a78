//! `observe`: the drift monitor. Each monitored column (an input column, a 1-D output, or the
//! top score of a 2-D output) is binned as in the reference profile; a [`Sliding`] window of
//! live rows (`window_rows`, also bounded to `window_seconds`) keeps bin counts, so memory is
//! fixed per column whatever the traffic, and counts from several replicas merge by adding. Scores are distances, not p-values (which fire on every large
//! window): PSI with an empty-bin epsilon and Jensen–Shannon distance for numeric columns,
//! L-infinity between category shares for categorical ones. A status change raises one alert.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::profile::{Profile, Summary};
use super::window::Sliding;
use crate::alerts::{Alert, Alerts};
use crate::pipeline::manifest::TensorSpec;
use crate::tensor::{Batch, Datatype, Tensor};

/// Rows needed in the window before any column is judged.
const MIN_ROWS: u64 = 50;

/// Floor for empty bins in PSI (Evidently's choice), so an empty bin does not make it infinite.
const EPSILON: f64 = 1e-4;

/// Warn and alert thresholds; the defaults are the usual ones (PSI 0.1 / 0.25, see
/// ../shared/DRIFT.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub psi_warn: f64,
    pub psi_alert: f64,
    pub linf_warn: f64,
    pub linf_alert: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            psi_warn: 0.1,
            psi_alert: 0.25,
            linf_warn: 0.1,
            linf_alert: 0.2,
        }
    }
}

impl Thresholds {
    /// Refuse thresholds that cannot mean anything: not a number, negative, or a warning
    /// above its alert. `field` names them in the message.
    pub fn check(&self, field: &str) -> anyhow::Result<()> {
        let pairs = [
            ("psi", self.psi_warn, self.psi_alert),
            ("linf", self.linf_warn, self.linf_alert),
        ];
        for (measure, warn, alert) in pairs {
            for (level, value) in [("warn", warn), ("alert", alert)] {
                if !(value.is_finite() && value >= 0.0) {
                    anyhow::bail!("{field}.{measure}_{level} is {value}; it must be 0 or more");
                }
            }
            if warn > alert {
                anyhow::bail!("{field}.{measure}_warn ({warn}) is above {measure}_alert ({alert})");
            }
        }
        Ok(())
    }
}

/// A column's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok = 0,
    Warn = 1,
    Alert = 2,
}

impl Status {
    /// `ok`, `warn` or `alert`.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Alert => "alert",
        }
    }
}

/// Where a monitored column's values come from.
#[derive(Clone, Debug)]
enum Source {
    /// Column `index` of 2-D input tensor `tensor`.
    Input { tensor: String, index: usize },
    /// 1-D output `tensor`.
    Output { tensor: String },
    /// The largest value of each row of 2-D output `tensor` (the top score).
    OutputMax { tensor: String },
}

struct Column {
    name: String,
    source: Source,
    summary: Summary,
    thresholds: Thresholds,
}

impl Column {
    fn bins(&self) -> usize {
        match &self.summary {
            Summary::Numeric { edges, .. } => edges.len() + 1,
            Summary::Categorical { categories, .. } => categories.len() + 1,
        }
    }

    /// The bin of one value (numbers, or text for categorical columns); `None` if missing.
    fn bin(&self, value: Value<'_>) -> Option<usize> {
        match (&self.summary, value) {
            (Summary::Numeric { edges, .. }, Value::Number(v)) if v.is_finite() => {
                Some(Summary::bin(edges, v))
            }
            (Summary::Categorical { categories, .. }, Value::Text(t)) => Some(
                categories
                    .keys()
                    .position(|k| k.as_bytes() == t)
                    .unwrap_or(categories.len()),
            ),
            (Summary::Categorical { categories, .. }, Value::Number(v)) => {
                let text = v.to_string();
                Some(
                    categories
                        .keys()
                        .position(|k| *k == text)
                        .unwrap_or(categories.len()),
                )
            }
            _ => None,
        }
    }

    /// Rows the window needs before this column is judged: enough that live rows drawn from
    /// the reference itself score, on average, half the warn threshold. A sample of `n` rows
    /// in `k` bins has an expected PSI of about (k − 1) / n, and category shares wander by about
    /// 0.5 / √n, so judging 100 held-out breast-cancer rows (10 bins, PSI warn 0.1) warned on
    /// most columns and alerted on one.
    fn min_rows(&self) -> u64 {
        let rows = match &self.summary {
            Summary::Numeric { .. } => 2.0 * (self.bins() - 1) as f64 / self.thresholds.psi_warn,
            Summary::Categorical { .. } => 1.0 / (self.thresholds.linf_warn.powi(2)),
        };
        MIN_ROWS.max(rows.ceil().min(1e12) as u64)
    }

    fn reference(&self) -> Vec<f64> {
        match &self.summary {
            Summary::Numeric { proportions, .. } => proportions.clone(),
            Summary::Categorical { categories, other } => {
                categories.values().copied().chain([*other]).collect()
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Value<'a> {
    Number(f64),
    Text(&'a [u8]),
}

/// Where each monitored value of a request fell, gathered before the lock is taken.
pub struct Observation {
    rows: u64,
    /// Per column, the bin of each row's value (missing values skipped).
    bins: Vec<Vec<usize>>,
}

/// Drift monitor configuration from the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorConfig {
    pub window_rows: u64,
    pub window_seconds: u64,
    pub thresholds: Thresholds,
    /// Per-column thresholds, by column name.
    pub columns: BTreeMap<String, Thresholds>,
}

/// The monitor of one pipeline.
pub struct Monitor {
    pipeline: String,
    columns: Vec<Column>,
    window: Mutex<Window>,
    alerts: Alerts,
}

struct Window {
    /// Per column, the count of live values in each bin.
    counts: Sliding<Vec<Vec<u64>>>,
    statuses: Vec<Status>,
}

/// One column's drift, as `GET /v1/pipelines/{name}/drift` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct ColumnDrift {
    pub column: String,
    /// `psi` (numeric) or `linf` (categorical): the measure the status comes from.
    pub method: &'static str,
    /// `None` until the window holds `min_rows` rows.
    pub score: Option<f64>,
    /// Rows the column needs before it is judged (see `Column::min_rows`).
    pub min_rows: u64,
    /// Jensen–Shannon distance (base 2), for numeric columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub js_distance: Option<f64>,
    pub warn: f64,
    pub alert: f64,
    pub status: Status,
    /// The window's bin counts (mergeable across replicas by adding).
    pub counts: Vec<u64>,
    /// The reference's share per bin.
    pub reference: Vec<f64>,
}

/// A pipeline's drift report.
#[derive(Clone, Debug, Serialize)]
pub struct DriftReport {
    pub pipeline: String,
    pub window_rows: u64,
    /// Seconds between the window's first and last sub-window starts.
    pub window_span_seconds: f64,
    pub columns: Vec<ColumnDrift>,
}

impl Monitor {
    /// A monitor comparing against `profile`. Every profile column must name an input column
    /// (declared in `inputs`), a 1-D output, or `<output>.max` for a 2-D output. Status
    /// changes go to `alerts`.
    pub fn new(
        pipeline: &str,
        profile: &Profile,
        inputs: &[TensorSpec],
        outputs: &[TensorSpec],
        config: MonitorConfig,
        alerts: Alerts,
    ) -> anyhow::Result<Monitor> {
        let mut columns = Vec::new();
        for reference in &profile.columns {
            let source = source(&reference.name, inputs, outputs).ok_or_else(|| {
                anyhow::anyhow!(
                    "reference column '{}' is no input column, no 1-D output and no `<output>.max`",
                    reference.name
                )
            })?;
            columns.push(Column {
                thresholds: config
                    .columns
                    .get(&reference.name)
                    .cloned()
                    .unwrap_or_else(|| config.thresholds.clone()),
                name: reference.name.clone(),
                source,
                summary: reference.summary.clone(),
            });
        }
        let empty = columns.iter().map(|c| vec![0; c.bins()]).collect();
        Ok(Monitor {
            pipeline: pipeline.to_owned(),
            window: Mutex::new(Window {
                counts: Sliding::new(config.window_rows, config.window_seconds, empty),
                statuses: vec![Status::Ok; columns.len()],
            }),
            columns,
            alerts,
        })
    }

    /// The bins of the monitored input columns of `inputs`; call before the stages run.
    pub fn observe_inputs(&self, inputs: &Batch) -> Observation {
        self.observe(inputs, |s| matches!(s, Source::Input { .. }))
    }

    /// Add the bins of the monitored outputs of `outputs` to `observation` and count it in the
    /// window; call once a request succeeded.
    pub fn record(&self, mut observation: Observation, outputs: &Batch) {
        let from_outputs = self.observe(outputs, |s| !matches!(s, Source::Input { .. }));
        for (mine, theirs) in observation.bins.iter_mut().zip(from_outputs.bins) {
            mine.extend(theirs);
        }
        observation.rows = observation.rows.max(from_outputs.rows);
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let closed = window.counts.add(observation.rows, |columns| {
            for (counts, bins) in columns.iter_mut().zip(&observation.bins) {
                for bin in bins {
                    counts[*bin] += 1;
                }
            }
        });
        if closed {
            self.judge_changes(&mut window);
        }
    }

    /// Judge the window, and raise an alert for each column whose status changed.
    fn judge_changes(&self, window: &mut Window) {
        let report = self.report_window(window);
        for (i, column) in report.columns.iter().enumerate() {
            if column.status != window.statuses[i] {
                self.alerts.raise(Alert {
                    pipeline: self.pipeline.clone(),
                    version: None,
                    what: "drift",
                    subject: column.column.clone(),
                    from: window.statuses[i].name().to_owned(),
                    to: column.status.name().to_owned(),
                    scores: serde_json::json!({ column.method: column.score, "js_distance": column.js_distance }),
                    report: format!("/v1/pipelines/{}/drift", self.pipeline),
                    at: crate::alerts::now(),
                });
                window.statuses[i] = column.status;
            }
        }
    }

    /// The drift of the current window, open sub-window included.
    pub fn report(&self) -> DriftReport {
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        self.report_window(&window)
    }

    fn report_window(&self, window: &Window) -> DriftReport {
        let columns = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                let mut counts = vec![0u64; column.bins()];
                for part in window.counts.tallies() {
                    for (total, c) in counts.iter_mut().zip(&part[i]) {
                        *total += c;
                    }
                }
                judge(column, counts)
            })
            .collect();
        DriftReport {
            pipeline: self.pipeline.clone(),
            window_rows: window.counts.rows(),
            window_span_seconds: window.counts.span_seconds(),
            columns,
        }
    }

    fn observe(&self, batch: &Batch, wanted: impl Fn(&Source) -> bool) -> Observation {
        let mut rows = 0;
        // Widen each tensor once, however many of its columns are monitored.
        let widened: Vec<(&Tensor, Vec<f64>)> =
            batch.tensors.iter().map(|t| (t, t.numbers())).collect();
        let bins = self
            .columns
            .iter()
            .map(|column| {
                if !wanted(&column.source) {
                    return Vec::new();
                }
                let values = values(&column.source, &widened);
                rows = rows.max(values.len() as u64);
                values.into_iter().filter_map(|v| column.bin(v)).collect()
            })
            .collect();
        Observation { rows, bins }
    }
}

fn source(name: &str, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Option<Source> {
    for input in inputs {
        if let Some(index) = input.columns.iter().position(|c| c.name == name) {
            return Some(Source::Input {
                tensor: input.name.clone(),
                index,
            });
        }
    }
    if outputs.iter().any(|o| o.name == name && o.shape.len() == 1) {
        return Some(Source::Output {
            tensor: name.to_owned(),
        });
    }
    let tensor = name.strip_suffix(".max")?;
    outputs
        .iter()
        .any(|o| o.name == tensor && o.shape.len() == 2)
        .then(|| Source::OutputMax {
            tensor: tensor.to_owned(),
        })
}

/// The values a source yields from a batch's tensors (each with its elements as f64), one
/// per row.
fn values<'a>(source: &Source, widened: &'a [(&'a Tensor, Vec<f64>)]) -> Vec<Value<'a>> {
    let tensor_named = |name: &str| widened.iter().find(|(t, _)| t.name == name);
    match source {
        Source::Input { tensor, index } => tensor_named(tensor)
            .filter(|(t, _)| t.shape.len() == 2)
            .map(|(t, numbers)| {
                let cols = t.shape[1] as usize;
                numbers
                    .iter()
                    .skip(*index)
                    .step_by(cols.max(1))
                    .map(|v| Value::Number(*v))
                    .collect()
            })
            .unwrap_or_default(),
        Source::Output { tensor } => tensor_named(tensor)
            .map(|(t, numbers)| match t.datatype {
                Datatype::Bytes => crate::tensor::bytes_elements(&t.data)
                    .filter_map(Result::ok)
                    .map(Value::Text)
                    .collect(),
                _ => numbers.iter().map(|v| Value::Number(*v)).collect(),
            })
            .unwrap_or_default(),
        Source::OutputMax { tensor } => tensor_named(tensor)
            .filter(|(t, _)| t.shape.len() == 2 && t.shape[1] > 0)
            .map(|(t, numbers)| {
                numbers
                    .chunks(t.shape[1] as usize)
                    .map(|row| Value::Number(row.iter().copied().fold(f64::NEG_INFINITY, f64::max)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Score a column's window counts against its reference.
fn judge(column: &Column, counts: Vec<u64>) -> ColumnDrift {
    let reference = column.reference();
    let total: u64 = counts.iter().sum();
    let numeric = matches!(column.summary, Summary::Numeric { .. });
    let t = &column.thresholds;
    let (method, warn, alert) = if numeric {
        ("psi", t.psi_warn, t.psi_alert)
    } else {
        ("linf", t.linf_warn, t.linf_alert)
    };
    let min_rows = column.min_rows();
    let (score, js_distance) = if total < min_rows {
        (None, None)
    } else {
        let live: Vec<f64> = counts.iter().map(|c| *c as f64 / total as f64).collect();
        if numeric {
            (
                Some(psi(&reference, &live)),
                Some(js_distance(&reference, &live)),
            )
        } else {
            (Some(linf(&reference, &live)), None)
        }
    };
    let status = match score {
        Some(s) if s >= alert => Status::Alert,
        Some(s) if s >= warn => Status::Warn,
        _ => Status::Ok,
    };
    ColumnDrift {
        column: column.name.clone(),
        method,
        score,
        js_distance,
        warn,
        alert,
        status,
        min_rows,
        counts,
        reference,
    }
}

/// Population stability index, with empty bins floored at [`EPSILON`].
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    expected
        .iter()
        .zip(actual)
        .map(|(e, a)| {
            let (e, a) = (e.max(EPSILON), a.max(EPSILON));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// Jensen–Shannon distance, base 2: 0 for equal distributions, 1 for disjoint ones.
pub fn js_distance(p: &[f64], q: &[f64]) -> f64 {
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(x, _)| **x > 0.0)
            .map(|(x, y)| x * (x / y).log2())
            .sum()
    };
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).max(0.0).sqrt()
}

/// The largest difference between two shares.
pub fn linf(p: &[f64], q: &[f64]) -> f64 {
    p.iter()
        .zip(q)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_are_zero_for_equal_shares_and_grow_with_the_shift() {
        let reference = [0.25, 0.25, 0.25, 0.25];
        assert!(psi(&reference, &reference).abs() < 1e-12);
        assert!(js_distance(&reference, &reference).abs() < 1e-12);
        let shifted = [0.1, 0.2, 0.3, 0.4];
        let far = [0.0, 0.0, 0.1, 0.9];
        assert!(psi(&reference, &shifted) < psi(&reference, &far));
        assert!(js_distance(&reference, &shifted) < js_distance(&reference, &far));
        assert!(
            (js_distance(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12,
            "disjoint: 1"
        );
        assert!((linf(&[0.5, 0.5], &[0.9, 0.1]) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn a_value_falls_in_the_bin_of_the_edges_at_or_below_it() {
        let edges = [1.0, 2.0, 3.0];
        assert_eq!(Summary::bin(&edges, 0.5), 0);
        assert_eq!(Summary::bin(&edges, 1.0), 1);
        assert_eq!(Summary::bin(&edges, 2.5), 2);
        assert_eq!(Summary::bin(&edges, 99.0), 3);
    }
}
