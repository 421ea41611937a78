//! `greedy-stage`: a test component that reads a file and opens a socket. Its imports
//! (`wasi:filesystem`, `wasi:sockets`) are outside every stage world, so the host must refuse
//! it when it is pushed or loaded, naming them.

use serde::de::IgnoredAny;
use weir_sdk::{Batch, Stage, StageError};

struct GreedyStage;

impl Stage for GreedyStage {
    type Config = IgnoredAny;

    fn new(_: IgnoredAny) -> Result<GreedyStage, StageError> {
        Ok(GreedyStage)
    }

    fn process(&self, batch: Batch) -> Result<Batch, StageError> {
        let secret = std::fs::read("/etc/passwd").unwrap_or_default();
        let leak = std::net::TcpStream::connect("127.0.0.1:9");
        if secret.is_empty() && leak.is_err() {
            return Err(StageError::Failure(
                "greedy-stage found nothing to take".into(),
            ));
        }
        Ok(batch)
    }
}

weir_sdk::export_stage!(GreedyStage);
