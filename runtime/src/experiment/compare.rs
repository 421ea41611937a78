//! Two versions' answers to the same request, compared output by output: labels (BYTES and
//! integer outputs) element by element, 2-D scores by each row's top class, other numbers by
//! their absolute difference.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::tensor::{Datatype, Tensor};

/// How two answers agree on one output, over its elements (labels, numbers) or rows (scores).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Agreement {
    /// Elements or rows compared, and those that agreed.
    pub compared: u64,
    pub agreed: u64,
    /// For numbers: the sum and the largest absolute difference.
    #[serde(skip)]
    pub difference_sum: f64,
    pub max_difference: f64,
}

impl Agreement {
    /// The share that agreed (1 when nothing was compared).
    pub fn share(&self) -> f64 {
        if self.compared == 0 {
            1.0
        } else {
            self.agreed as f64 / self.compared as f64
        }
    }

    /// The mean absolute difference of numeric outputs.
    pub fn mean_difference(&self) -> f64 {
        if self.compared == 0 {
            0.0
        } else {
            self.difference_sum / self.compared as f64
        }
    }

    pub fn merge(&mut self, other: &Agreement) {
        self.compared += other.compared;
        self.agreed += other.agreed;
        self.difference_sum += other.difference_sum;
        self.max_difference = self.max_difference.max(other.max_difference);
    }
}

/// Compare `candidate`'s outputs with `active`'s, each of the active's outputs by name; an
/// output the candidate lacks, or of another datatype or shape, agrees nowhere.
pub fn compare(
    active: &[Tensor],
    candidate: &[Tensor],
    tolerance: f64,
) -> BTreeMap<String, Agreement> {
    active
        .iter()
        .map(|a| {
            let c = candidate.iter().find(|c| c.name == a.name);
            (a.name.clone(), compare_one(a, c, tolerance))
        })
        .collect()
}

fn compare_one(a: &Tensor, c: Option<&Tensor>, tolerance: f64) -> Agreement {
    let rows = a.shape.first().copied().unwrap_or(1).max(1);
    let Some(c) = c.filter(|c| c.datatype == a.datatype && c.shape == a.shape) else {
        let elements = crate::tensor::element_count(&a.shape).unwrap_or(0);
        let compared = if a.shape.len() == 2 { rows } else { elements };
        return Agreement {
            compared,
            ..Agreement::default()
        };
    };
    if a.datatype == Datatype::Bytes {
        let (left, right) = (a.strings(), c.strings());
        let (Ok(left), Ok(right)) = (left, right) else {
            return Agreement::default();
        };
        let agreed = left.iter().zip(&right).filter(|(l, r)| l == r).count();
        return Agreement {
            compared: left.len() as u64,
            agreed: agreed as u64,
            ..Agreement::default()
        };
    }
    let (left, right) = (a.numbers(), c.numbers());
    if integer(a.datatype) {
        let agreed = left.iter().zip(&right).filter(|(l, r)| l == r).count();
        return Agreement {
            compared: left.len() as u64,
            agreed: agreed as u64,
            ..Agreement::default()
        };
    }
    let mut agreement = Agreement::default();
    for (l, r) in left.iter().zip(&right) {
        let difference = (l - r).abs();
        agreement.difference_sum += difference;
        agreement.max_difference = agreement.max_difference.max(difference);
    }
    if a.shape.len() == 2 && a.shape[1] > 1 {
        // Scores: rows agree when their top classes do.
        let width = a.shape[1] as usize;
        let top = |row: &[f64]| (0..row.len()).max_by(|&i, &j| row[i].total_cmp(&row[j]));
        agreement.compared = rows;
        agreement.agreed = (left.chunks(width).zip(right.chunks(width)))
            .filter(|(l, r)| top(l) == top(r))
            .count() as u64;
        // The mean difference stays per element.
        agreement.difference_sum /= width as f64;
    } else {
        agreement.compared = left.len() as u64;
        agreement.agreed = (left.iter().zip(&right))
            .filter(|(l, r)| (*l - *r).abs() <= tolerance)
            .count() as u64;
    }
    agreement
}

/// Integer and boolean outputs are labels: class indices, flags, counts.
fn integer(datatype: Datatype) -> bool {
    !matches!(
        datatype,
        Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64 | Datatype::Bf16 | Datatype::Bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, datatype: Datatype, shape: Vec<u64>, data: Vec<u8>) -> Tensor {
        Tensor {
            name: name.into(),
            datatype,
            shape,
            data,
        }
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn labels_rows_of_scores_and_numbers_agree_as_a_person_would_say() {
        let labels = |names: &[&str]| {
            let data = crate::tensor::bytes_data(names.iter().map(|n| n.as_bytes()));
            tensor("label", Datatype::Bytes, vec![names.len() as u64], data)
        };
        let scores = |v: &[f32]| tensor("p", Datatype::Fp32, vec![2, 2], floats(v));
        let active = [labels(&["a", "b", "a"]), scores(&[0.9, 0.1, 0.4, 0.6])];
        let candidate = [labels(&["a", "a", "a"]), scores(&[0.8, 0.2, 0.7, 0.3])];
        let compared = compare(&active, &candidate, 1e-6);
        assert_eq!(
            (compared["label"].compared, compared["label"].agreed),
            (3, 2)
        );
        assert_eq!((compared["p"].compared, compared["p"].agreed), (2, 1));
        assert!((compared["p"].max_difference - 0.3).abs() < 1e-6);

        let value = |v: &[f32]| tensor("y", Datatype::Fp32, vec![v.len() as u64], floats(v));
        let compared = compare(&[value(&[1.0, 2.0])], &[value(&[1.0, 2.5])], 0.1);
        assert_eq!((compared["y"].compared, compared["y"].agreed), (2, 1));
        assert_eq!(compared["y"].mean_difference(), 0.25);

        let missing = compare(&[value(&[1.0, 2.0])], &[], 0.1);
        assert_eq!((missing["y"].compared, missing["y"].agreed), (2, 0));
    }
}
