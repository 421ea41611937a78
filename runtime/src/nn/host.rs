//! What a model stage's instance reaches of the loaded graphs: the view its imports get, and
//! `weir:pipeline/graphs`, the interface `weir-sdk`'s `nn::compute` calls.

use std::time::Instant;

use wasmtime::component::{HasData, Linker, ResourceTable};

use super::{Graphs, PastDeadline, RunError};
use crate::engine::host::graphs;
use crate::engine::host::wasi_nn::{errors, graph, inference, tensor};
use crate::engine::host::wit;

/// What the model imports of one stage instance reach: its resources, its graphs, and when
/// its call must end.
pub struct NnView<'a> {
    pub table: &'a mut ResourceTable,
    pub graphs: &'a Graphs,
    pub deadline: Instant,
}

struct HasNnView;

impl HasData for HasNnView {
    type Data<'a> = NnView<'a>;
}

/// Link `wasi:nn` and `weir:pipeline/graphs`, reached through `view`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> anyhow::Result<()> {
    graph::add_to_linker::<T, HasNnView>(linker, view)?;
    tensor::add_to_linker::<T, HasNnView>(linker, view)?;
    inference::add_to_linker::<T, HasNnView>(linker, view)?;
    errors::add_to_linker::<T, HasNnView>(linker, view)?;
    graphs::add_to_linker::<T, HasNnView>(linker, view)?;
    Ok(())
}

impl graphs::Host for NnView<'_> {
    async fn compute(
        &mut self,
        graph: String,
        inputs: Vec<wit::Tensor>,
    ) -> wasmtime::Result<Result<Vec<wit::Tensor>, wit::StageError>> {
        let graph = match self.graphs.get(&graph) {
            Ok(graph) => graph,
            Err(error) => return Ok(Err(wit::StageError::Failure(error.message))),
        };
        let inputs = inputs.into_iter().map(Into::into).collect();
        Ok(match graph.run(inputs, self.deadline).await {
            Ok(outputs) => Ok(outputs.into_iter().map(Into::into).collect()),
            Err(RunError::Nn(error)) if error.code == errors::ErrorCode::InvalidArgument => {
                Err(wit::StageError::InvalidInput(error.message))
            }
            Err(RunError::Nn(error)) => Err(wit::StageError::Failure(format!(
                "the {} backend: {}",
                graph.backend_name(),
                error.message
            ))),
            Err(RunError::Deadline) => return Err(PastDeadline.into()),
        })
    }
}
