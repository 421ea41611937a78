//! `standard-scaler`: a preprocessing stage that standardizes features as scikit-learn's
//! `StandardScaler` does: `(x - mean) / scale`, per column.
//!
//! Config: `mean` and `scale` (one number per column), optional `input` (default `features`)
//! and `output` (default: the input's name). Accepts any numeric datatype, rows × columns;
//! emits FP64 so the model stage loses no precision.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError, Tensor};

struct StandardScaler;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mean: Vec<f64>,
    scale: Vec<f64>,
    #[serde(default = "default_input")]
    input: String,
    output: Option<String>,
}

fn default_input() -> String {
    "features".to_owned()
}

impl Stage for StandardScaler {
    type Config = Config;

    fn process(config: Config, mut batch: Batch) -> Result<Batch, StageError> {
        if config.mean.len() != config.scale.len() || config.scale.contains(&0.0) {
            return Err(StageError::Failure(
                "config needs as many `scale` values as `mean` values, none of them 0".into(),
            ));
        }
        let input = batch.take(&config.input)?;
        let (_, cols) = input.matrix()?;
        if cols != config.mean.len() {
            return Err(StageError::InvalidInput(format!(
                "tensor '{}' has {cols} columns, the scaler was fit on {}",
                config.input,
                config.mean.len()
            )));
        }
        let mut values = input.to_f64()?;
        for row in values.chunks_exact_mut(cols) {
            for ((x, mean), scale) in row.iter_mut().zip(&config.mean).zip(&config.scale) {
                *x = (*x - mean) / scale;
            }
        }
        let output = config.output.unwrap_or(config.input);
        batch.push(Tensor::new(output, input.shape().to_vec(), &values));
        Ok(batch)
    }
}

weir_sdk::export_stage!(StandardScaler);
