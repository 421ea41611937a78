//! End-to-end tests: real servers on loopback, real HTTP, real components.
//! One binary with a module per area (as wasmtime's `tests/all`).

mod batching;
mod cli;
mod experiments;
mod faults;
mod hostile;
mod iris;
mod lifecycle;
mod limits;
mod observe;
mod onnx;
mod protocol;
mod quality;
mod support;
mod versions;
mod zoo;
