//! Write a [Weir](https://github.com/weir-ml/weir) pipeline stage as one Rust function.
//!
//! A stage is a WebAssembly component that receives a [`Batch`] of named tensors and returns
//! the batch for the next stage. This crate hides the component plumbing: you implement
//! [`Stage`] over typed tensor views and call [`export_stage!`] once. Build with
//! `cargo build --target wasm32-wasip2` and the output `.wasm` file is the component.
//!
//! ```no_run
//! use weir_sdk::{Batch, Stage, StageError, Tensor};
//!
//! /// Multiplies every value of the `x` tensor by a factor from the manifest.
//! struct Scale {
//!     factor: f64,
//! }
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     factor: f64,
//! }
//!
//! impl Stage for Scale {
//!     type Config = Config;
//!
//!     fn new(config: Config) -> Result<Scale, StageError> {
//!         if !config.factor.is_finite() {
//!             return Err(StageError::Failure("`factor` must be a finite number".into()));
//!         }
//!         Ok(Scale { factor: config.factor })
//!     }
//!
//!     fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
//!         let x = batch.take("x")?;
//!         let scaled: Vec<f64> = x.to_f64()?.iter().map(|v| v * self.factor).collect();
//!         batch.push(Tensor::new("x", x.shape().to_vec(), &scaled));
//!         Ok(batch)
//!     }
//! }
//!
//! weir_sdk::export_stage!(Scale);
//! ```
//!
//! Configuration comes from the stage's `config` table in the pipeline manifest, decoded into
//! `Stage::Config` with serde and handed to `Stage::new`, which prepares what every request
//! needs (checked settings, parsed weights); a stage that needs none uses
//! `serde::de::IgnoredAny`. Model weights are read with [`artifact`], and log lines sent with
//! the functions in [`log`]. A model stage can run an ONNX artifact natively on the host with
//! [`nn::compute`].

mod batch;
pub mod nn;
mod tensor;

pub use batch::Batch;
pub use tensor::{Datatype, Element, Tensor};

/// Bindings generated from the `weir:pipeline` WIT package. Used by [`export_stage!`]; a stage
/// author should not need them.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "model",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "weir_sdk::bindings",
    });
}

/// Why a stage produced no batch. The host answers `InvalidInput` with HTTP 400 (the client
/// sent data this stage cannot use) and `Failure` with HTTP 500 (the stage or its config is wrong).
pub use bindings::weir::pipeline::types::StageError;

/// One stage of a pipeline: a pure function from a batch to a batch, prepared once from its
/// config.
///
/// The host creates a fresh instance for every request, so `process` sees no state from
/// earlier requests and may allocate freely: the whole instance is dropped afterwards. A
/// pipeline may opt a stage into reusing warm instances (`reuse_instances`); then `new` runs
/// once per instance (again if the config changes) and `process` serves many requests with
/// the same `self`, which is why it gets `&self`.
pub trait Stage: Sized + 'static {
    /// The stage's configuration, decoded from the manifest's `config` table.
    type Config: serde::de::DeserializeOwned;

    /// Prepare the stage: check the config, read and parse artifacts. An error here fails
    /// the request like an error from `process`.
    fn new(config: Self::Config) -> Result<Self, StageError>;

    /// Turn the input batch into the batch for the next stage.
    fn process(&self, batch: Batch) -> Result<Batch, StageError>;
}

/// The bytes of the model artifact the pipeline manifest names `name` for this stage.
///
/// Only stages in the `model` world may read artifacts; a pre- or post-processor that calls
/// this is refused when its pipeline is loaded.
pub fn artifact(name: &str) -> Result<Vec<u8>, StageError> {
    bindings::weir::pipeline::artifacts::read(name).ok_or_else(|| {
        StageError::Failure(format!(
            "the manifest gives this stage no artifact named '{name}'"
        ))
    })
}

/// Log lines that the host records with this stage's name and version attached.
pub mod log {
    use crate::bindings::weir::pipeline::log::{Level, log};

    /// Log at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Log at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Log at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Log at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Prepare the stage for this config (unless this instance already has) and run it; what the
/// exported `process` function does.
#[doc(hidden)]
pub fn run<S: Stage>(
    config: String,
    batch: bindings::weir::pipeline::types::Batch,
) -> Result<bindings::weir::pipeline::types::Batch, StageError> {
    PREPARED.with_borrow_mut(|prepared| {
        let ready = matches!(prepared, Some((seen, stage)) if *seen == config && stage.is::<S>());
        if !ready {
            *prepared = None;
            let decoded: S::Config = serde_json::from_str(&config)
                .map_err(|e| StageError::Failure(format!("invalid stage config: {e}")))?;
            *prepared = Some((config, Box::new(S::new(decoded)?)));
        }
        let stage = prepared
            .as_ref()
            .and_then(|(_, stage)| stage.downcast_ref::<S>())
            .expect("prepared just above");
        stage.process(Batch::from(batch)).map(Into::into)
    })
}

thread_local! {
    /// The config text this instance's stage was prepared from, and the stage. A fresh
    /// instance prepares once anyway; an instance the manifest reuses prepares once, not once
    /// per request.
    static PREPARED: std::cell::RefCell<Option<(String, Box<dyn std::any::Any>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Export a type that implements [`Stage`] as this component's `process` function.
/// Call it once per component crate.
#[macro_export]
macro_rules! export_stage {
    ($stage:ty) => {
        #[doc(hidden)]
        struct __WeirStageExport;

        impl $crate::bindings::exports::weir::pipeline::stage::Guest for __WeirStageExport {
            fn process(
                config: ::std::string::String,
                input: $crate::bindings::weir::pipeline::types::Batch,
            ) -> ::std::result::Result<
                $crate::bindings::weir::pipeline::types::Batch,
                $crate::StageError,
            > {
                $crate::run::<$stage>(config, input)
            }
        }

        $crate::bindings::export_bindings!(__WeirStageExport with_types_in $crate::bindings);
    };
}
