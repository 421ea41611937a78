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

/// The fitted scaler and where to find the input and put the output.
struct StandardScaler {
    mean: PerColumn,
    scale: PerColumn,
    input: String,
    output: String,
    datatype: OutputType,
}

#[derive(Deserialize)]
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
#[derive(Deserialize)]
#[serde(untagged)]
enum PerColumn {
    All(f64),
    Each(Vec<f64>),
}

impl PerColumn {
    /// Whether there is a value for each of `cols` columns.
    fn fits(&self, cols: usize) -> bool {
        self.len().is_none_or(|len| len == cols)
    }

    /// The value for column `col` (which [`PerColumn::fits`]).
    fn at(&self, col: usize) -> f64 {
        match self {
            PerColumn::All(value) => *value,
            PerColumn::Each(values) => values[col],
        }
    }

    fn len(&self) -> Option<usize> {
        match self {
            PerColumn::All(_) => None,
            PerColumn::Each(values) => Some(values.len()),
        }
    }

    fn has_zero(&self) -> bool {
        match self {
            PerColumn::All(value) => *value == 0.0,
            PerColumn::Each(values) => values.contains(&0.0),
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

    fn new(config: Config) -> Result<StandardScaler, StageError> {
        if let (Some(m), Some(s)) = (config.mean.len(), config.scale.len())
            && m != s
        {
            return Err(StageError::Failure(
                "config needs as many `scale` values as `mean` values".into(),
            ));
        }
        if config.scale.has_zero() {
            return Err(StageError::Failure("config `scale` must not be 0".into()));
        }
        Ok(StandardScaler {
            output: config.output.unwrap_or_else(|| config.input.clone()),
            mean: config.mean,
            scale: config.scale,
            input: config.input,
            datatype: config.datatype,
        })
    }

    fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
        let input = batch.take(&self.input)?;
        let (_, cols) = input.matrix()?;
        if !self.mean.fits(cols) || !self.scale.fits(cols) {
            return Err(StageError::InvalidInput(format!(
                "tensor '{}' has {cols} columns, the scaler was fit on {}",
                self.input,
                self.mean.len().or(self.scale.len()).unwrap_or(cols)
            )));
        }
        let mut values = input.to_f64()?;
        for row in values.chunks_exact_mut(cols) {
            for (col, x) in row.iter_mut().enumerate() {
                *x = (*x - self.mean.at(col)) / self.scale.at(col);
            }
        }
        let output = self.output.clone();
        let shape = input.shape().to_vec();
        batch.push(match self.datatype {
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
