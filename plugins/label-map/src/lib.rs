//! `label-map`: a postprocessing stage that turns class scores into class names: the argmax of
//! each row (the first one on ties, as numpy's `argmax`), looked up in `labels`.
//!
//! Config: `labels` (one name per class), optional `input` (default `probabilities`) and
//! `output` (default `label`). Emits BYTES, one label per row; the scores pass through.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError, Tensor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelMap {
    labels: Vec<String>,
    #[serde(default = "default_input")]
    input: String,
    #[serde(default = "default_output")]
    output: String,
}

fn default_input() -> String {
    "probabilities".to_owned()
}
fn default_output() -> String {
    "label".to_owned()
}

/// Index of the largest value; the first one wins a tie.
fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

impl Stage for LabelMap {
    type Config = LabelMap;

    fn new(config: LabelMap) -> Result<LabelMap, StageError> {
        Ok(config)
    }

    fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
        let scores = batch.get(&self.input)?;
        let (rows, cols) = scores.matrix()?;
        if cols != self.labels.len() {
            return Err(StageError::Failure(format!(
                "tensor '{}' has {cols} classes, the config names {}",
                self.input,
                self.labels.len()
            )));
        }
        let values = scores.to_f64()?;
        let labels: Vec<&str> = values
            .chunks_exact(cols.max(1))
            .map(|row| self.labels[argmax(row)].as_str())
            .collect();
        batch.push(Tensor::from_bytes(
            self.output.clone(),
            vec![rows as u64],
            labels,
        ));
        Ok(batch)
    }
}

weir_sdk::export_stage!(LabelMap);

#[cfg(test)]
mod tests {
    use super::argmax;

    #[test]
    fn argmax_takes_the_first_of_equal_maxima() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7]), 1);
        assert_eq!(argmax(&[0.9, 0.05, 0.05]), 0);
    }
}
