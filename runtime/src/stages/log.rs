//! `log`: one structured record per request (JSON lines through `tracing`, human-readable on
//! a terminal), and the optional payload log: sampled request and response bodies as JSON
//! lines in a file of their own, written by a background thread through a bounded queue (a
//! full queue drops the record and counts it, never slows a request), rotated by size.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde_json::{Value, json};

/// Records waiting for the payload writer; beyond this they are dropped and counted.
const QUEUE: usize = 1024;

/// Rotated payload files kept: `FILE.1` … `FILE.3`.
const GENERATIONS: usize = 3;

/// What one request did, for its log record.
pub struct RequestRecord<'a> {
    pub id: Option<&'a str>,
    pub pipeline: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub duration: Duration,
    pub stages: &'a [(&'static str, Duration)],
    pub error: Option<&'a str>,
}

/// Write the request's structured log record.
pub fn request(r: &RequestRecord) {
    let stages = StageTimes(r.stages);
    let duration_us = r.duration.as_micros() as u64;
    match r.error {
        None => tracing::info!(
            target: "weir::request",
            id = r.id, pipeline = r.pipeline, version = r.version, status = r.status, duration_us,
            stages = %stages, "request"
        ),
        Some(error) => tracing::warn!(
            target: "weir::request",
            id = r.id, pipeline = r.pipeline, version = r.version, status = r.status, duration_us,
            stages = %stages, error, "request failed"
        ),
    }
}

/// `validate=3us preprocess=41us ...`, written only when the record is logged: with request
/// records off, a request pays nothing for them.
struct StageTimes<'a>(&'a [(&'static str, Duration)]);

impl std::fmt::Display for StageTimes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (stage, duration)) in self.0.iter().enumerate() {
            let separator = if i == 0 { "" } else { " " };
            write!(f, "{separator}{stage}={}us", duration.as_micros())?;
        }
        Ok(())
    }
}

/// The payload log: a sample of request and response bodies, as JSON lines.
pub struct PayloadLog {
    queue: SyncSender<String>,
    every: u64,
    seen: AtomicU64,
    dropped: AtomicU64,
}

impl PayloadLog {
    /// Log one request in `1 / sample_rate` (rounded) to `path`, rotating at `max_bytes`.
    pub fn open(path: PathBuf, sample_rate: f64, max_bytes: u64) -> anyhow::Result<PayloadLog> {
        anyhow::ensure!(
            sample_rate > 0.0 && sample_rate <= 1.0,
            "the payload sample rate must be in (0, 1]"
        );
        let file = append(&path)?;
        let (queue, lines) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("weir-payload-log".into())
            .spawn(move || {
                let mut writer = Writer {
                    path,
                    file,
                    max_bytes,
                };
                for line in lines {
                    if let Err(e) = writer.write(&line) {
                        tracing::error!(error = %e, "payload log write failed");
                    }
                }
            })?;
        Ok(PayloadLog {
            queue,
            every: (1.0 / sample_rate).round().max(1.0) as u64,
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue a record of this request if it is in the sample. Bodies are embedded as JSON when
    /// they are JSON, else summarised by size (binary tensors).
    pub fn record(&self, r: &RequestRecord, request: &[u8], response: &[u8]) {
        if !self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
        {
            return;
        }
        let line = json!({
            "id": r.id, "pipeline": r.pipeline, "version": r.version, "status": r.status,
            "duration_us": r.duration.as_micros() as u64,
            "request": body(request), "response": body(response),
        })
        .to_string();
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!({ "binary_bytes": bytes.len() }))
}

fn append(path: &Path) -> anyhow::Result<File> {
    Ok(OpenOptions::new().create(true).append(true).open(path)?)
}

struct Writer {
    path: PathBuf,
    file: File,
    max_bytes: u64,
}

impl Writer {
    fn write(&mut self, line: &str) -> anyhow::Result<()> {
        if self.file.metadata()?.len() + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        writeln!(self.file, "{line}")?;
        Ok(())
    }

    /// FILE → FILE.1 → FILE.2 …, the oldest beyond [`GENERATIONS`] deleted.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let generation = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(generation(GENERATIONS));
        for n in (1..GENERATIONS).rev() {
            let _ = fs::rename(generation(n), generation(n + 1));
        }
        fs::rename(&self.path, generation(1))?;
        self.file = append(&self.path)?;
        Ok(())
    }
}
