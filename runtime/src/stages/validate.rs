//! `validate`: checks a request's inputs against the pipeline's declared inputs before any
//! component runs, so a bad request gets a 400 that names the input, the row, the column and
//! the rule, instead of reaching code that may misread it. Every violation is reported (up to
//! [`MAX_REPORTED`]), not only the first; a misspelt input name gets the nearest expected one.

use serde::{Deserialize, Serialize};

use crate::pipeline::manifest::TensorSpec;
use crate::tensor::{Batch, Datatype, Tensor};

/// Violations listed in one error message; the rest are counted.
pub const MAX_REPORTED: usize = 10;

/// Rules for one column of a 2-D (rows × columns) input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Accept missing values (NaN; empty strings for BYTES). Refused by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_missing: bool,
    /// Accept +Inf and -Inf. Refused by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_infinite: bool,
    /// The values a BYTES column may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The rule's name, for metrics: `unknown_input`, `missing_input`, `datatype`, `shape`,
    /// `range`, `missing`, `infinite`, `category`.
    pub rule: &'static str,
    pub message: String,
}

/// Check `batch` against `specs`; every violation found. No specs: everything passes.
pub fn check(specs: &[TensorSpec], batch: &Batch) -> Vec<Violation> {
    let mut found = Vec::new();
    if specs.is_empty() {
        return found;
    }
    for tensor in &batch.tensors {
        match specs.iter().find(|s| s.name == tensor.name) {
            Some(spec) => check_tensor(spec, tensor, &mut found),
            None => found.push(Violation {
                rule: "unknown_input",
                message: unknown_input(&tensor.name, specs),
            }),
        }
    }
    for spec in specs {
        if !spec.optional && batch.get(&spec.name).is_none() {
            found.push(Violation {
                rule: "missing_input",
                message: format!("missing input '{}'", spec.name),
            });
        }
    }
    found
}

/// The violations as one message: the first [`MAX_REPORTED`], then how many more.
pub fn message(violations: &[Violation]) -> String {
    let mut parts: Vec<&str> = violations
        .iter()
        .take(MAX_REPORTED)
        .map(|v| v.message.as_str())
        .collect();
    let more = violations.len().saturating_sub(MAX_REPORTED);
    let tail = format!("and {more} more");
    if more > 0 {
        parts.push(&tail);
    }
    parts.join("; ")
}

/// "unknown input 'petal_len'; expected 'petal_length'" when one declared name is close,
/// else the list of expected names.
fn unknown_input(name: &str, specs: &[TensorSpec]) -> String {
    let nearest = specs
        .iter()
        .map(|s| (strsim::jaro_winkler(name, &s.name), &s.name))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match nearest {
        Some((similarity, expected)) if similarity >= 0.8 => {
            format!("unknown input '{name}'; expected '{expected}'")
        }
        _ => {
            let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            format!("unknown input '{name}' (expected: {})", names.join(", "))
        }
    }
}

fn check_tensor(spec: &TensorSpec, tensor: &Tensor, found: &mut Vec<Violation>) {
    let datatype_fits = spec.datatypes.contains(&tensor.datatype);
    if !datatype_fits {
        let accepted: Vec<&str> = spec.datatypes.iter().map(|d| d.name()).collect();
        found.push(Violation {
            rule: "datatype",
            message: format!(
                "input '{}' has datatype {}, expected {}",
                tensor.name,
                tensor.datatype,
                accepted.join(" or ")
            ),
        });
    }
    let fits = spec.shape.len() == tensor.shape.len()
        && spec
            .shape
            .iter()
            .zip(&tensor.shape)
            .all(|(&want, &got)| want == -1 || want as u64 == got);
    if !fits {
        found.push(Violation {
            rule: "shape",
            message: format!(
                "input '{}' has shape {:?}, expected {:?} (-1: any size)",
                tensor.name, tensor.shape, spec.shape
            ),
        });
        return;
    }
    if let [_, cols] = tensor.shape[..]
        && datatype_fits
        && cols as usize == spec.columns.len()
    {
        check_columns(spec, tensor, found);
    }
}

fn check_columns(spec: &TensorSpec, tensor: &Tensor, found: &mut Vec<Violation>) {
    let cols = spec.columns.len();
    let at = |index: usize| {
        let column = &spec.columns[index % cols];
        format!(
            "input '{}', row {}, column '{}'",
            tensor.name,
            index / cols,
            column.name
        )
    };
    if tensor.datatype == Datatype::Bytes {
        let items = crate::tensor::bytes_elements(&tensor.data);
        for (index, item) in items.enumerate() {
            let Ok(item) = item else { break };
            let column = &spec.columns[index % cols];
            let text = String::from_utf8_lossy(item);
            if text.is_empty() && !column.allow_missing {
                found.push(Violation {
                    rule: "missing",
                    message: format!("{}: value missing", at(index)),
                });
            } else if let Some(allowed) = &column.categories
                && !text.is_empty()
                && !allowed.iter().any(|c| *c == text)
            {
                found.push(Violation {
                    rule: "category",
                    message: format!("{}: '{text}' is not one of {allowed:?}", at(index)),
                });
            }
        }
        return;
    }
    for (index, value) in tensor.numbers().into_iter().enumerate() {
        let column = &spec.columns[index % cols];
        let broken = if value.is_nan() {
            (!column.allow_missing).then(|| ("missing", "value missing (NaN)".to_owned()))
        } else if value.is_infinite() {
            (!column.allow_infinite).then(|| ("infinite", format!("{value} is not finite")))
        } else if let Some(min) = column.min.filter(|min| value < *min) {
            Some(("range", format!("{value} is below the minimum {min}")))
        } else {
            column
                .max
                .filter(|max| value > *max)
                .map(|max| ("range", format!("{value} is above the maximum {max}")))
        };
        if let Some((rule, what)) = broken {
            found.push(Violation {
                rule,
                message: format!("{}: {what}", at(index)),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(columns: Vec<ColumnSpec>, datatype: Datatype) -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            datatypes: vec![datatype],
            shape: vec![-1, columns.len() as i64],
            columns,
            optional: false,
        }
    }

    fn floats(values: &[f64]) -> Tensor {
        Tensor {
            name: "x".into(),
            datatype: Datatype::Fp64,
            shape: vec![1, values.len() as u64],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn rules(spec: &TensorSpec, tensor: Tensor) -> Vec<&'static str> {
        let batch = Batch {
            tensors: vec![tensor],
            parameters: vec![],
        };
        check(std::slice::from_ref(spec), &batch)
            .iter()
            .map(|v| v.rule)
            .collect()
    }

    #[test]
    fn each_numeric_rule_fires_alone_and_can_be_relaxed() {
        let strict = spec(
            vec![
                ColumnSpec {
                    name: "a".into(),
                    min: Some(0.0),
                    max: Some(1.0),
                    ..Default::default()
                };
                1
            ],
            Datatype::Fp64,
        );
        assert_eq!(rules(&strict, floats(&[0.5])), Vec::<&str>::new());
        assert_eq!(rules(&strict, floats(&[-0.1])), vec!["range"]);
        assert_eq!(rules(&strict, floats(&[1.1])), vec!["range"]);
        assert_eq!(rules(&strict, floats(&[f64::NAN])), vec!["missing"]);
        assert_eq!(rules(&strict, floats(&[f64::INFINITY])), vec!["infinite"]);
        let relaxed = spec(
            vec![ColumnSpec {
                name: "a".into(),
                allow_missing: true,
                allow_infinite: true,
                ..Default::default()
            }],
            Datatype::Fp64,
        );
        assert!(rules(&relaxed, floats(&[f64::NAN])).is_empty());
        assert!(rules(&relaxed, floats(&[f64::NEG_INFINITY])).is_empty());
    }

    #[test]
    fn categories_and_missing_text_are_checked_per_column() {
        let colour = ColumnSpec {
            name: "colour".into(),
            categories: Some(vec!["red".into(), "blue".into()]),
            ..Default::default()
        };
        let spec = spec(vec![colour], Datatype::Bytes);
        let text = |items: &[&str]| {
            let mut data = Vec::new();
            for item in items {
                data.extend((item.len() as u32).to_le_bytes());
                data.extend(item.as_bytes());
            }
            Tensor {
                name: "x".into(),
                datatype: Datatype::Bytes,
                shape: vec![items.len() as u64, 1],
                data,
            }
        };
        assert!(rules(&spec, text(&["red", "blue"])).is_empty());
        assert_eq!(
            rules(&spec, text(&["green", ""])),
            vec!["category", "missing"]
        );
        let batch = Batch {
            tensors: vec![text(&["green"])],
            parameters: vec![],
        };
        let message = message(&check(std::slice::from_ref(&spec), &batch));
        assert_eq!(
            message,
            r#"input 'x', row 0, column 'colour': 'green' is not one of ["red", "blue"]"#
        );
    }

    #[test]
    fn a_misspelt_input_gets_the_nearest_name_and_missing_optional_inputs_pass() {
        let mut features = spec(vec![], Datatype::Fp64);
        features.name = "petal_length".into();
        let mut extra = spec(vec![], Datatype::Fp64);
        extra.name = "notes".into();
        extra.optional = true;
        let mut tensor = floats(&[1.0]);
        tensor.name = "petal_len".into();
        let batch = Batch {
            tensors: vec![tensor],
            parameters: vec![],
        };
        let found = check(&[features, extra], &batch);
        assert_eq!(
            found[0].message,
            "unknown input 'petal_len'; expected 'petal_length'"
        );
        assert_eq!(
            found.iter().map(|v| v.rule).collect::<Vec<_>>(),
            vec!["unknown_input", "missing_input"]
        );
    }
}
