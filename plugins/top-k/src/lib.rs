//! `top-k`: a postprocessing stage that adds each row's `k` best classes and their scores,
//! best first (the lower class index first on ties, as a stable sort gives).
//!
//! Config: `k` (at least 1), optional `input` (default `probabilities`, rows × classes of any
//! numeric datatype), optional `output` prefix (default `top_k`). Emits `<output>_classes`
//! (INT64 [N, k]) and `<output>_scores` (FP32 [N, k]); when a row has fewer than `k` classes,
//! all of them. The scores pass through.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError, Tensor};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopK {
    k: usize,
    #[serde(default = "default_input")]
    input: String,
    #[serde(default = "default_output")]
    output: String,
}

fn default_input() -> String {
    "probabilities".to_owned()
}
fn default_output() -> String {
    "top_k".to_owned()
}

/// The indices of the `k` largest values, largest first; the lower index first on ties.
fn best(row: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.truncate(k);
    order
}

impl Stage for TopK {
    type Config = TopK;

    fn new(config: TopK) -> Result<TopK, StageError> {
        if config.k == 0 {
            return Err(StageError::Failure("config `k` must be at least 1".into()));
        }
        Ok(config)
    }

    fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
        let scores = batch.get(&self.input)?;
        let (rows, cols) = scores.matrix()?;
        let k = self.k.min(cols);
        let values = scores.to_f64()?;
        let mut classes = Vec::with_capacity(rows * k);
        let mut top = Vec::with_capacity(rows * k);
        for row in values.chunks_exact(cols.max(1)).take(rows) {
            for index in best(row, k) {
                classes.push(index as i64);
                top.push(row[index] as f32);
            }
        }
        let shape = vec![rows as u64, k as u64];
        batch.push(Tensor::new(
            format!("{}_classes", self.output),
            shape.clone(),
            &classes,
        ));
        batch.push(Tensor::new(format!("{}_scores", self.output), shape, &top));
        Ok(batch)
    }
}

weir_sdk::export_stage!(TopK);

#[cfg(test)]
mod tests {
    use super::best;

    #[test]
    fn best_is_largest_first_with_lower_index_on_ties() {
        assert_eq!(best(&[0.1, 0.5, 0.2, 0.5], 3), vec![1, 3, 2]);
        assert_eq!(best(&[0.3, 0.7], 5), vec![1, 0]);
    }
}
