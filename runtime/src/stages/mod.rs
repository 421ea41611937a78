//! Built-in stages the runtime wraps around every pipeline, configured from its manifest.

pub mod validate;
