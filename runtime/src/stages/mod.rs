//! Built-in stages the runtime wraps around every pipeline, configured from its manifest:
//! `validate` before the Wasm stages, `observe` (the drift monitor, against a reference
//! [`profile`]) and the request `log` after them.

pub mod drift;
pub mod log;
pub mod profile;
pub mod validate;
pub mod window;
