//! `logistic-regression`: a model stage that evaluates a (multinomial or binary) logistic
//! regression, as scikit-learn's `LogisticRegression.predict_proba` does.
//!
//! The weights are a model artifact (versioned apart from this code): JSON with `coef`
//! (classes × features, or 1 × features for a binary model) and `intercept`. Config: optional
//! `artifact` (default `model`), `input` (default `features`), `output` (default
//! `probabilities`). Emits FP32 probabilities, rows × classes.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError, Tensor};

/// The fitted weights and where to find the input and put the output.
struct LogisticRegression {
    weights: Weights,
    input: String,
    output: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_artifact")]
    artifact: String,
    #[serde(default = "default_input")]
    input: String,
    #[serde(default = "default_output")]
    output: String,
}

fn default_artifact() -> String {
    "model".to_owned()
}
fn default_input() -> String {
    "features".to_owned()
}
fn default_output() -> String {
    "probabilities".to_owned()
}

/// The fitted weights, as `train.py` exports them from scikit-learn.
#[derive(Deserialize)]
struct Weights {
    coef: Vec<Vec<f64>>,
    intercept: Vec<f64>,
}

impl Weights {
    fn load(artifact: &str) -> Result<Weights, StageError> {
        let bytes = weir_sdk::artifact(artifact)?;
        let weights: Weights = serde_json::from_slice(&bytes)
            .map_err(|e| StageError::Failure(format!("artifact '{artifact}': {e}")))?;
        let features = weights.coef.first().map_or(0, Vec::len);
        if weights.coef.is_empty()
            || weights.coef.len() != weights.intercept.len()
            || weights.coef.iter().any(|row| row.len() != features)
        {
            return Err(StageError::Failure(format!(
                "artifact '{artifact}': `coef` must be classes × features with one `intercept` per class"
            )));
        }
        Ok(weights)
    }

    fn features(&self) -> usize {
        self.coef[0].len()
    }

    /// Classes the model tells apart: one per row of `coef`, two for a binary model.
    fn classes(&self) -> usize {
        self.coef.len().max(2)
    }

    /// Class probabilities for one row: softmax of the decision function, or the logistic
    /// function for a binary model (one row of `coef`), as scikit-learn computes them.
    fn probabilities(&self, row: &[f64]) -> Vec<f64> {
        let scores: Vec<f64> = self
            .coef
            .iter()
            .zip(&self.intercept)
            .map(|(coef, b)| coef.iter().zip(row).map(|(w, x)| w * x).sum::<f64>() + b)
            .collect();
        if let [score] = scores[..] {
            let p = 1.0 / (1.0 + (-score).exp());
            return vec![1.0 - p, p];
        }
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        exps.iter().map(|e| e / total).collect()
    }
}

impl Stage for LogisticRegression {
    type Config = Config;

    fn new(config: Config) -> Result<LogisticRegression, StageError> {
        Ok(LogisticRegression {
            weights: Weights::load(&config.artifact)?,
            input: config.input,
            output: config.output,
        })
    }

    fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
        let weights = &self.weights;
        let input = batch.take(&self.input)?;
        let (rows, cols) = input.matrix()?;
        if cols != weights.features() {
            return Err(StageError::InvalidInput(format!(
                "tensor '{}' has {cols} columns, the model expects {}",
                self.input,
                weights.features()
            )));
        }
        let values = input.to_f64()?;
        let probabilities: Vec<f32> = values
            .chunks_exact(cols)
            .flat_map(|row| weights.probabilities(row))
            .map(|p| p as f32)
            .collect();
        batch.push(Tensor::new(
            self.output.clone(),
            vec![rows as u64, weights.classes() as u64],
            &probabilities,
        ));
        Ok(batch)
    }
}

weir_sdk::export_stage!(LogisticRegression);
