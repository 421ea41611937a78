//! `validate`: checks a request's inputs against the pipeline's declared inputs before any
//! component runs, so a bad request gets a 400 that names the cause instead of reaching code
//! that may misread it. Every violation is reported, not only the first.

use crate::error::Error;
use crate::pipeline::manifest::TensorSpec;
use crate::tensor::{Batch, Tensor};

/// Check `batch` against `specs`. No specs: nothing is declared, everything passes.
pub fn check(specs: &[TensorSpec], batch: &Batch) -> Result<(), Error> {
    if specs.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    for tensor in &batch.tensors {
        match specs.iter().find(|s| s.name == tensor.name) {
            Some(spec) => check_tensor(spec, tensor, &mut problems),
            None => problems.push(format!(
                "unknown input '{}' (expected: {})",
                tensor.name,
                names(specs)
            )),
        }
    }
    for spec in specs {
        if batch.get(&spec.name).is_none() {
            problems.push(format!("missing input '{}'", spec.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidInput(problems.join("; ")))
    }
}

fn check_tensor(spec: &TensorSpec, tensor: &Tensor, problems: &mut Vec<String>) {
    if !spec.datatypes.contains(&tensor.datatype) {
        let accepted: Vec<&str> = spec.datatypes.iter().map(|d| d.name()).collect();
        problems.push(format!(
            "input '{}' has datatype {}, expected {}",
            tensor.name,
            tensor.datatype,
            accepted.join(" or ")
        ));
    }
    let fits = spec.shape.len() == tensor.shape.len()
        && spec
            .shape
            .iter()
            .zip(&tensor.shape)
            .all(|(&want, &got)| want == -1 || want as u64 == got);
    if !fits {
        problems.push(format!(
            "input '{}' has shape {:?}, expected {:?} (-1: any size)",
            tensor.name, tensor.shape, spec.shape
        ));
    }
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
