//! `log`: one structured record per request (JSON lines through `tracing`, human-readable on
//! a terminal), and the optional payload log: sampled request and response bodies as JSON
//! lines in a file of their own, written by a background thread through a bounded queue (a
//! full queue drops the record and counts it, never slows a request), rotated by size.

use std::borrow::Cow;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

/// Records waiting for the payload writer; beyond this they are dropped and counted.
const QUEUE: usize = 1024;

/// Bytes of records waiting for the payload writer; beyond this they are dropped and counted
/// (a record holds whole bodies, which may be many MiB each).
const QUEUE_BYTES: usize = 64 << 20;

/// The most characters of a client's request id a log record keeps.
const MAX_ID_CHARS: usize = 128;

/// The most characters of an error message a request's log record keeps: messages quote
/// what the client sent (names, shapes), which may be long.
const MAX_ERROR_CHARS: usize = 1024;

/// Rotated payload files kept: `FILE.1` … `FILE.3`.
const GENERATIONS: usize = 3;

/// What one request did, for its log record.
pub struct RequestRecord<'a> {
    pub id: Option<&'a str>,
    pub pipeline: &'a str,
    pub version: &'a str,
    /// The experiment arm that answered (`active`, `candidate`), when one is live.
    pub arm: Option<&'static str>,
    pub status: u16,
    pub duration: Duration,
    pub stages: &'a [(&'static str, Duration)],
    pub error: Option<&'a str>,
}

/// Write the request's structured log record; the client's id and the error are clipped, so
/// a request cannot make a log line of its size.
pub fn request(r: &RequestRecord) {
    let stages = StageTimes(r.stages);
    let duration_us = r.duration.as_micros() as u64;
    let id = r.id.map(|id| clip(id, MAX_ID_CHARS));
    let id = id.as_deref();
    match r.error {
        None => tracing::info!(
            target: "weir::request",
            id, pipeline = r.pipeline, version = r.version, arm = r.arm, status = r.status,
            duration_us, stages = %stages, "request"
        ),
        Some(error) => tracing::warn!(
            target: "weir::request",
            id, pipeline = r.pipeline, version = r.version, arm = r.arm, status = r.status,
            duration_us, stages = %stages, error = %clip(error, MAX_ERROR_CHARS), "request failed"
        ),
    }
}

/// `text`, cut after `max` characters with a mark that says how long it was.
fn clip(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len())),
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
    /// Bytes of the records waiting for the writer.
    queued: Arc<AtomicUsize>,
    every: u64,
    seen: AtomicU64,
    dropped: AtomicU64,
}

/// One payload log record; bodies that are JSON are embedded as they came.
#[derive(Serialize)]
struct PayloadRecord<'a> {
    id: Option<Cow<'a, str>>,
    pipeline: &'a str,
    version: &'a str,
    status: u16,
    duration_us: u64,
    request: Payload<'a>,
    response: Payload<'a>,
}

/// A body as the payload log keeps it: its JSON, checked but not parsed into a tree (a body
/// may be many MiB), or, for binary tensors, its size.
#[derive(Serialize)]
#[serde(untagged)]
enum Payload<'a> {
    Json(&'a RawValue),
    Binary { binary_bytes: usize },
}

impl<'a> Payload<'a> {
    fn of(bytes: &'a [u8]) -> Payload<'a> {
        serde_json::from_slice(bytes).map_or(
            Payload::Binary {
                binary_bytes: bytes.len(),
            },
            Payload::Json,
        )
    }
}

impl PayloadLog {
    /// Log one request in `1 / sample_rate` (rounded) to `path`, rotating at `max_bytes`. The
    /// file is readable by its owner only: it holds what clients sent.
    pub fn open(path: PathBuf, sample_rate: f64, max_bytes: u64) -> anyhow::Result<PayloadLog> {
        anyhow::ensure!(
            sample_rate > 0.0 && sample_rate <= 1.0,
            "the payload sample rate must be in (0, 1]"
        );
        let file = append(&path)?;
        let (queue, lines) = sync_channel::<String>(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let written = queued.clone();
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
                    written.fetch_sub(line.len(), Ordering::Relaxed);
                }
            })?;
        Ok(PayloadLog {
            queue,
            queued,
            every: (1.0 / sample_rate).round().max(1.0) as u64,
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue a record of this request if it is in the sample. Bodies are embedded as JSON when
    /// they are JSON, else summarised by size (binary tensors). A record that would take the
    /// queue over [`QUEUE`] records or [`QUEUE_BYTES`] is dropped and counted.
    pub fn record(&self, r: &RequestRecord, request: &[u8], response: &[u8]) {
        if !self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
        {
            return;
        }
        let record = PayloadRecord {
            id: r.id.map(|id| clip(id, MAX_ID_CHARS)),
            pipeline: r.pipeline,
            version: r.version,
            status: r.status,
            duration_us: r.duration.as_micros() as u64,
            request: Payload::of(request),
            response: Payload::of(response),
        };
        let Ok(line) = serde_json::to_string(&record) else {
            return;
        };
        let size = line.len();
        if self.queued.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES
            || self.queue.try_send(line).is_err()
        {
            self.queued.fetch_sub(size, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    crate::store::restrict_to_owner(path)?;
    Ok(file)
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
