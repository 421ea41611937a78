//! `faulty-stage`: a component for the runtime's tests. Its `mode` config picks the behaviour,
//! so one component covers every way a stage can fail (and one way it can succeed). With
//! `on_request = true` it misbehaves only for requests carrying the parameter `fault` or a
//! negative number in their first tensor (a bad row, which can share a batch with good ones),
//! so it passes the warm-up call a deploy makes and fails later, under traffic.

use serde::Deserialize;
use weir_sdk::{Batch, Stage, StageError, Tensor};

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Mode {
    /// Return the input batch unchanged, logging how many tensors it holds.
    Echo,
    /// Panic, which traps.
    Panic,
    /// Spin forever.
    Loop,
    /// Allocate until memory runs out.
    Grow,
    /// Report the input as invalid (the host answers 400).
    InvalidInput,
    /// Report a failure (the host answers 500).
    Failure,
    /// Spin for `ms` milliseconds, then echo: a slow but healthy stage.
    Busy,
    /// Return a tensor of `mib` MiB.
    Huge,
    /// Write `text` to stdout and to stderr, then echo.
    Say,
    /// Add a tensor `calls` (INT64 [1]): the calls this instance has served, this one
    /// included; 1 unless the manifest reuses instances. Panics, after counting, on a request
    /// carrying the parameter `fault`.
    Count,
}

/// Calls served by this instance, for [`Mode::Count`].
static CALLS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

#[derive(Deserialize)]
struct FaultyStage {
    mode: Mode,
    #[serde(default)]
    on_request: bool,
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    mib: usize,
    #[serde(default)]
    text: String,
}

impl Stage for FaultyStage {
    type Config = FaultyStage;

    fn new(config: FaultyStage) -> Result<FaultyStage, StageError> {
        Ok(config)
    }

    fn process(&self, mut batch: Batch) -> Result<Batch, StageError> {
        let asked = !self.on_request || batch.parameter("fault").is_some() || has_negative(&batch);
        if let Mode::Count = self.mode {
            let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if batch.parameter("fault").is_some() {
                panic!("faulty-stage panics after {calls} calls");
            }
            batch.push(Tensor::new("calls", vec![1], &[calls]));
            return Ok(batch);
        }
        match self.mode {
            _ if !asked => Ok(batch),
            Mode::Echo => {
                weir_sdk::log::info(&format!("echoing {} tensors", batch.tensors.len()));
                Ok(batch)
            }
            Mode::Panic => panic!("faulty-stage panics as configured"),
            Mode::Loop => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Mode::Grow => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                }
            }
            Mode::InvalidInput => Err(StageError::InvalidInput(
                "faulty-stage refuses every input".into(),
            )),
            Mode::Failure => Err(StageError::Failure(
                "faulty-stage fails as configured".into(),
            )),
            Mode::Busy => {
                let started = std::time::Instant::now();
                while started.elapsed() < std::time::Duration::from_millis(self.ms) {
                    std::hint::spin_loop();
                }
                Ok(batch)
            }
            Mode::Count => unreachable!("answered above"),
            Mode::Say => {
                println!("{}", self.text);
                eprintln!("{}", self.text);
                Ok(batch)
            }
            Mode::Huge => {
                let bytes = vec![7u8; self.mib << 20];
                batch.push(Tensor::new("huge", vec![bytes.len() as u64], &bytes));
                Ok(batch)
            }
        }
    }
}

/// Whether the first tensor holds a negative number.
fn has_negative(batch: &Batch) -> bool {
    let first = batch.tensors.first().map(|t| t.to_f64());
    matches!(first, Some(Ok(values)) if values.iter().any(|v| *v < 0.0))
}

weir_sdk::export_stage!(FaultyStage);
