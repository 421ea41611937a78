//! Weir: serve machine-learning pipelines of sandboxed WebAssembly components over the Open
//! Inference Protocol (KServe V2).
//!
//! A request flows one way: [`http`] decodes it with [`protocol`] into a [`tensor::Batch`],
//! the [`pipeline`] runs the built-in [`stages`] and its Wasm stages on it (each in a fresh
//! instance from the [`engine`]), and [`protocol`] encodes the result.

pub mod alerts;
pub mod bundled;
pub mod cli;
pub mod engine;
pub mod error;
pub mod experiment;
pub mod http;
pub mod nn;
pub mod pipeline;
pub mod protocol;
pub mod quality;
pub mod stages;
pub mod store;
pub mod tensor;

use sha2::{Digest, Sha256};

/// The cores this process may use (2 when the system cannot say): what the defaults of
/// concurrency, native runs and ONNX Runtime threads are sized by.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

/// The content address of a blob: `sha256-` and the hex digest (a valid file name).
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256-{}", hex::encode(Sha256::digest(bytes)))
}
