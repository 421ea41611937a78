//! Labelled rows tallied, and the metrics scikit-learn users know computed from the tallies:
//! accuracy, macro F1, per-class precision and recall, log loss and Brier score for a
//! classification; MAE, RMSE and bias for a regression. A tally is counts and sums, so a
//! window's memory is fixed and tallies merge by adding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{QualityConfig, Task};

/// Distinct (true class, predicted class) pairs one tally holds at most; a row beyond them
/// is refused, so feedback cannot grow memory without bound.
const MAX_PAIRS: usize = 10_000;

/// A predicted or a true value: a class name, or a number (a class index, or a regression's
/// value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Label {
    Number(f64),
    Text(String),
}

impl Label {
    /// The class it names: text as it is, a whole number without a fraction (so a truth of
    /// `1` and a prediction of `1.0` name the same class).
    pub fn class(&self) -> String {
        match self {
            Label::Text(text) => text.clone(),
            Label::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            Label::Number(n) => n.to_string(),
        }
    }

    /// Its value as a number, if it is one (text that parses counts).
    pub fn number(&self) -> Option<f64> {
        match self {
            Label::Number(n) => Some(*n),
            Label::Text(text) => text.trim().parse().ok(),
        }
        .filter(|n: &f64| n.is_finite())
    }
}

/// What a version's labelled rows add up to.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Rows by (true class, predicted class).
    confusion: BTreeMap<(String, String), u64>,
    /// Rows with class scores, and their summed log loss and Brier score.
    scored: u64,
    log_loss: f64,
    brier: f64,
    /// Regression rows, and their summed absolute, squared and signed errors.
    numbered: u64,
    absolute_error: f64,
    squared_error: f64,
    error: f64,
}

impl Tally {
    /// Add one labelled row: its `prediction`, the `truth`, and (classification) the row's
    /// class `scores`. A row that cannot be judged is refused, saying why.
    pub fn add(
        &mut self,
        config: &QualityConfig,
        prediction: &Label,
        truth: &Label,
        scores: Option<&[f64]>,
    ) -> Result<(), String> {
        match config.task {
            Task::Regression => {
                let (Some(predicted), Some(actual)) = (prediction.number(), truth.number()) else {
                    return Err(format!(
                        "a regression's target must be a number, not {truth:?}"
                    ));
                };
                let error = predicted - actual;
                self.numbered += 1;
                self.absolute_error += error.abs();
                self.squared_error += error * error;
                self.error += error;
            }
            Task::Classification => {
                let pair = (truth.class(), prediction.class());
                if self.confusion.len() >= MAX_PAIRS && !self.confusion.contains_key(&pair) {
                    return Err(format!(
                        "more than {MAX_PAIRS} distinct (target, prediction) pairs"
                    ));
                }
                if let Some(scores) = scores {
                    let truth_column = class_column(config, &pair.0);
                    self.scored += 1;
                    self.log_loss += log_loss(scores, truth_column);
                    self.brier += brier(scores, truth_column);
                }
                *self.confusion.entry(pair).or_default() += 1;
            }
        }
        Ok(())
    }

    /// Labelled rows counted.
    pub fn rows(&self) -> u64 {
        self.numbered + self.confusion.values().sum::<u64>()
    }

    /// This tally and `other` together.
    pub fn merge(&mut self, other: &Tally) {
        for (pair, rows) in &other.confusion {
            *self.confusion.entry(pair.clone()).or_default() += rows;
        }
        self.scored += other.scored;
        self.log_loss += other.log_loss;
        self.brier += other.brier;
        self.numbered += other.numbered;
        self.absolute_error += other.absolute_error;
        self.squared_error += other.squared_error;
        self.error += other.error;
    }

    /// The metrics of the rows tallied (none when there are none).
    pub fn score(&self) -> Scores {
        let mut scores = Scores::default();
        if self.numbered > 0 {
            let n = self.numbered as f64;
            scores.metrics.insert("mae", self.absolute_error / n);
            scores
                .metrics
                .insert("rmse", (self.squared_error / n).sqrt());
            scores.metrics.insert("bias", self.error / n);
        }
        if self.scored > 0 {
            let n = self.scored as f64;
            scores.metrics.insert("log_loss", self.log_loss / n);
            scores.metrics.insert("brier", self.brier / n);
        }
        let rows: u64 = self.confusion.values().sum();
        if rows == 0 {
            return scores;
        }
        // Per class, as scikit-learn's `precision_recall_fscore_support` over the classes seen
        // as a target or a prediction, 0 where a ratio has nothing below it.
        let mut classes: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
        for ((truth, predicted), n) in &self.confusion {
            if truth == predicted {
                classes.entry(truth).or_default().0 += n;
            } else {
                classes.entry(predicted).or_default().1 += n;
                classes.entry(truth).or_default().2 += n;
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let mut f1_sum = 0.0;
        let mut correct = 0;
        for (class, (tp, fp, fn_)) in &classes {
            correct += tp;
            let f1 = ratio(2 * tp, 2 * tp + fp + fn_);
            f1_sum += f1;
            scores.classes.insert(
                (*class).to_owned(),
                ClassScores {
                    precision: ratio(*tp, tp + fp),
                    recall: ratio(*tp, tp + fn_),
                    f1,
                    support: tp + fn_,
                },
            );
        }
        scores.metrics.insert("accuracy", ratio(correct, rows));
        scores
            .metrics
            .insert("macro_f1", f1_sum / classes.len() as f64);
        scores
    }
}

/// The column of `scores` that holds `class`: its place in `classes`, else the class read as
/// an index.
fn class_column(config: &QualityConfig, class: &str) -> Option<usize> {
    if config.classes.is_empty() {
        class.parse().ok()
    } else {
        config.classes.iter().position(|c| c == class)
    }
}

/// −ln of the true class's probability, clipped to [ε, 1 − ε] as scikit-learn does (a true
/// class the model has no column for scores ε).
fn log_loss(scores: &[f64], truth: Option<usize>) -> f64 {
    let p = truth.and_then(|i| scores.get(i)).copied().unwrap_or(0.0);
    -p.clamp(f64::EPSILON, 1.0 - f64::EPSILON).ln()
}

/// Σ (p_k − y_k)² over the classes; for two classes, (p − y)² of the second (the positive
/// class): scikit-learn's `brier_score_loss` in both cases.
fn brier(scores: &[f64], truth: Option<usize>) -> f64 {
    let miss = |k: usize, p: f64| {
        let y = if Some(k) == truth { 1.0 } else { 0.0 };
        (p - y) * (p - y)
    };
    if scores.len() == 2 {
        return miss(1, scores[1]);
    }
    scores.iter().enumerate().map(|(k, p)| miss(k, *p)).sum()
}

/// The metrics of a window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scores {
    /// By name: accuracy, macro_f1, log_loss, brier; or mae, rmse, bias.
    pub metrics: BTreeMap<&'static str, f64>,
    /// Per class (classification).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, ClassScores>,
}

/// One class's precision, recall and F1, and its rows among the targets.
#[derive(Clone, Debug, Serialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

/// A version's quality status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fewer labelled rows than `min_labelled`: not judged.
    Insufficient,
    Ok,
    Warn,
    Alert,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Insufficient => "insufficient",
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Alert => "alert",
        }
    }

    /// The `weir_quality_status` gauge's value: -1, 0, 1, 2 (as `weir_drift_status` for the
    /// last three).
    pub fn gauge(self) -> i64 {
        match self {
            Status::Insufficient => -1,
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Alert => 2,
        }
    }
}

/// The status of `scores` over `labelled` rows: the worst over the baselined metrics, each
/// judged by how much worse than its baseline it is.
pub fn judge(config: &QualityConfig, scores: &Scores, labelled: u64) -> Status {
    if labelled < config.min_labelled {
        return Status::Insufficient;
    }
    let mut status = Status::Ok;
    for (metric, baseline) in &config.baseline {
        let Some(live) = scores.metrics.get(metric.name()) else {
            continue;
        };
        let worse = if metric.higher_is_better() {
            baseline - live
        } else {
            live - baseline
        };
        let (warn, alert) = config.drops(*metric, *baseline);
        let judged = if worse > alert {
            Status::Alert
        } else if worse > warn {
            Status::Warn
        } else {
            Status::Ok
        };
        status = status.max_by_severity(judged);
    }
    status
}

impl Status {
    fn max_by_severity(self, other: Status) -> Status {
        if other.gauge() > self.gauge() {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classification() -> QualityConfig {
        toml::from_str(
            "task = \"classification\"\nprediction = \"label\"\nscores = \"p\"\n\
             classes = [\"a\", \"b\"]\nmin_labelled = 4\nbaseline = { accuracy = 0.9 }\n",
        )
        .unwrap()
    }

    #[test]
    fn classification_metrics_are_scikit_learns() {
        let config = classification();
        let mut tally = Tally::default();
        let rows = [
            ("a", "a", 0.9),
            ("a", "b", 0.4),
            ("b", "b", 0.2),
            ("b", "b", 0.3),
        ];
        for (truth, predicted, p_a) in rows {
            let (t, p) = (Label::Text(truth.into()), Label::Text(predicted.into()));
            tally.add(&config, &p, &t, Some(&[p_a, 1.0 - p_a])).unwrap();
        }
        let scores = tally.score();
        // sklearn: accuracy_score 0.75; f1_score(average="macro") = (2/3 + 4/5) / 2.
        assert_eq!(scores.metrics["accuracy"], 0.75);
        assert!((scores.metrics["macro_f1"] - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-15);
        assert_eq!(scores.classes["b"].precision, 2.0 / 3.0);
        assert_eq!(scores.classes["a"].recall, 0.5);
        let log_loss = -(0.9f64.ln() + 0.4f64.ln() + 0.8f64.ln() + 0.7f64.ln()) / 4.0;
        assert!((scores.metrics["log_loss"] - log_loss).abs() < 1e-12);
        let brier = (0.01 + 0.36 + 0.04 + 0.09) / 4.0;
        assert!((scores.metrics["brier"] - brier).abs() < 1e-12);
        assert_eq!(judge(&config, &scores, 4), Status::Alert, "0.15 below 0.9");
        assert_eq!(judge(&config, &scores, 3), Status::Insufficient);
    }

    #[test]
    fn a_whole_number_names_the_same_class_as_its_float() {
        assert_eq!(Label::Number(1.0).class(), "1");
        assert_eq!(Label::Text("1".into()).class(), "1");
        assert_eq!(Label::Number(0.5).class(), "0.5");
    }

    #[test]
    fn regression_metrics_and_a_target_that_is_no_number() {
        let config: QualityConfig =
            toml::from_str("task = \"regression\"\nprediction = \"y\"\n").unwrap();
        let mut tally = Tally::default();
        for (predicted, actual) in [(3.0, 1.0), (1.0, 2.0)] {
            (tally.add(
                &config,
                &Label::Number(predicted),
                &Label::Number(actual),
                None,
            ))
            .unwrap();
        }
        let scores = tally.score();
        assert_eq!(scores.metrics["mae"], 1.5);
        assert_eq!(scores.metrics["rmse"], 2.5f64.sqrt());
        assert_eq!(scores.metrics["bias"], 0.5);
        let refused = tally.add(&config, &Label::Number(1.0), &Label::Text("x".into()), None);
        assert!(refused.unwrap_err().contains("must be a number"));
    }
}
