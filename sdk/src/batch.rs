//! The batch of named tensors that flows from stage to stage.

use crate::StageError;
use crate::bindings::weir::pipeline::types as wit;
use crate::tensor::Tensor;

/// Named tensors plus the request's string parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// The tensors, in the order the previous stage produced them.
    pub tensors: Vec<Tensor>,
    /// The request's parameters (name, value), passed through unchanged unless a stage edits them.
    pub parameters: Vec<(String, String)>,
}

impl Batch {
    /// The tensor called `name`, or an invalid-input error that names it.
    pub fn get(&self, name: &str) -> Result<&Tensor, StageError> {
        self.tensors
            .iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| self.missing(name))
    }

    /// Remove and return the tensor called `name`, or an invalid-input error that names it.
    pub fn take(&mut self, name: &str) -> Result<Tensor, StageError> {
        let index = self
            .tensors
            .iter()
            .position(|t| t.name() == name)
            .ok_or_else(|| self.missing(name))?;
        Ok(self.tensors.remove(index))
    }

    /// Add `tensor`, replacing any tensor of the same name.
    pub fn push(&mut self, tensor: Tensor) {
        self.tensors.retain(|t| t.name() != tensor.name());
        self.tensors.push(tensor);
    }

    /// The value of the request parameter `name`, if the client sent one.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn missing(&self, name: &str) -> StageError {
        let present: Vec<&str> = self.tensors.iter().map(Tensor::name).collect();
        StageError::InvalidInput(format!(
            "no tensor named '{name}' (present: {})",
            present.join(", ")
        ))
    }
}

impl From<wit::Batch> for Batch {
    fn from(batch: wit::Batch) -> Self {
        Batch {
            tensors: batch.tensors.into_iter().map(Tensor::from).collect(),
            parameters: batch.parameters,
        }
    }
}

impl From<Batch> for wit::Batch {
    fn from(batch: Batch) -> Self {
        wit::Batch {
            tensors: batch.tensors.into_iter().map(Into::into).collect(),
            parameters: batch.parameters,
        }
    }
}
