//! `standard-scaler`: a preprocessing stage that standardizes features as scikit-learn's
//! `StandardScaler` does: `(x - mean) / scale`, per column.
//!
//! Config: `mean` and `scale`, each one number per column or one number for every column
//! (`scale = 16` scales 0..16 pixels to 0..1); optional `input` (default `features`), `output`
//! (default: the input's name) and `datatype` of the output, `FP64` (default, so a model stage
//! loses no precision) or `FP32` (what most ONNX models take). Accepts any numeric datatype,
//! rows × columns.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError, Tensor};

struct StandardScaler;

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Config {
    mean: PerColumn,
    scale: PerColumn,
    #[serde(default = "default_input")]
    input: String,
    output: Option<String>,
    #[serde(default)]
    datatype: OutputType,
}

/// One value per column, or one value for all of them.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum PerColumn {
    All(f64),
    Each(Vec<f64>),
}

impl PerColumn {
    /// The value for each of `cols` columns, or `None` when a list has another length.
    fn expand(&self, cols: usize) -> Option<Vec<f64>> {
        match self {
            PerColumn::All(value) => Some(vec![*value; cols]),
            PerColumn::Each(values) => (values.len() == cols).then(|| values.clone()),
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            PerColumn::All(_) => None,
            PerColumn::Each(values) => Some(values.len()),
        }
    }
}

#[derive(Deserialize, Default, Clone, Copy)]
enum OutputType {
    #[serde(rename = "FP32")]
    Fp32,
    #[default]
    #[serde(rename = "FP64")]
    Fp64,
}

fn default_input() -> String {
    "features".to_owned()
}

impl Stage for StandardScaler {
    type Config = Config;

    fn process(config: Config, mut batch: Batch) -> Result<Batch, StageError> {
        let fitted = match (config.mean.len(), config.scale.len()) {
            (Some(m), Some(s)) if m != s => {
                return Err(StageError::Failure(
                    "config needs as many `scale` values as `mean` values".into(),
                ));
            }
            (m, s) => m.or(s),
        };
        let input = batch.take(&config.input)?;
        let (_, cols) = input.matrix()?;
        let (Some(mean), Some(scale)) = (config.mean.expand(cols), config.scale.expand(cols))
        else {
            return Err(StageError::InvalidInput(format!(
                "tensor '{}' has {cols} columns, the scaler was fit on {}",
                config.input,
                fitted.unwrap_or(cols)
            )));
        };
        if scale.contains(&0.0) {
            return Err(StageError::Failure("config `scale` must not be 0".into()));
        }
        let mut values = input.to_f64()?;
        for row in values.chunks_exact_mut(cols) {
            for ((x, mean), scale) in row.iter_mut().zip(&mean).zip(&scale) {
                *x = (*x - mean) / scale;
            }
        }
        let output = config.output.unwrap_or(config.input);
        let shape = input.shape().to_vec();
        batch.push(match config.datatype {
            OutputType::Fp64 => Tensor::new(output, shape, &values),
            OutputType::Fp32 => {
                let narrow: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Tensor::new(output, shape, &narrow)
            }
        });
        Ok(batch)
    }
}

weir_sdk::export_stage!(StandardScaler);
