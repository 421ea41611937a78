//! The prediction record: what each answered request of a `[quality]` pipeline predicted, kept
//! to be joined with the truth when it arrives. It lives in `quality.db`, an SQLite database
//! beside the store's `weir.db`: SQLite for the same atomic, crash-safe writes and one file to
//! back up, a database of its own because it takes a write per second of traffic while the
//! store's takes one per deploy, so neither waits on the other's lock or its `FULL` syncs.
//!
//! Requests only queue their record (a bounded queue: when the writer falls behind, records are
//! dropped and counted, and requests never wait). A writer thread inserts the queue every
//! [`FLUSH_INTERVAL`] (or when feedback asks for it) in one transaction, then evicts records
//! beyond the bounds, oldest first, remembering their ids so late truth for them counts as
//! expired rather than unknown. A `kill -9` loses at most the records still queued: those of
//! the last flush interval.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::score::Label;

/// How often queued records are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Records waiting for the writer; beyond this they are dropped and counted. A second of
/// traffic at 65k requests a second.
const QUEUE: usize = 65_536;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS predictions (
    pipeline TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    at REAL NOT NULL,
    rows INTEGER NOT NULL,
    prediction TEXT NOT NULL,
    scores TEXT,
    truth TEXT,
    labelled_at REAL,
    PRIMARY KEY (pipeline, id)
);
CREATE INDEX IF NOT EXISTS predictions_by_age ON predictions (at);
CREATE TABLE IF NOT EXISTS expired (
    pipeline TEXT NOT NULL,
    id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS expired_by_id ON expired (pipeline, id);
";

/// How many records are kept, and for how long (`weir serve --quality-record-*`).
#[derive(Clone, Copy, Debug)]
pub struct RecordBounds {
    pub rows: u64,
    pub seconds: u64,
}

impl Default for RecordBounds {
    /// A million requests, for a week.
    fn default() -> Self {
        RecordBounds {
            rows: 1_000_000,
            seconds: 7 * 24 * 3600,
        }
    }
}

/// One answered request's record.
pub struct Prediction {
    pub pipeline: Arc<str>,
    pub version: u64,
    pub id: String,
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// One per row.
    pub predictions: Vec<Label>,
    /// Each row's class scores, when the quality settings name a scores output.
    pub scores: Option<Vec<Vec<f64>>>,
}

/// A stored record that truth was sent for.
pub struct Recorded {
    pub version: u64,
    pub predictions: Vec<Label>,
    pub scores: Option<Vec<Vec<f64>>>,
}

/// What became of one piece of truth.
pub enum Outcome {
    Matched,
    /// No record has the id.
    Unknown,
    /// Its record was evicted (older, or beyond the row bound).
    Expired,
    /// Its record has truth already: the first truth wins.
    Duplicate,
    /// The truth does not fit the record (the message says why).
    Invalid(String),
}

/// Records waiting for the writer. A request only pushes under a lock it holds for
/// nanoseconds and never wakes the writer: with a wake per record (through a channel) the
/// iris request took 79 µs with `[quality]` against 56 µs without in a criterion run.
#[derive(Default)]
struct Pending {
    records: Mutex<Vec<Prediction>>,
}

/// The record: the pending records, flush requests to the writer, and a connection for
/// feedback.
pub struct Records {
    pending: Arc<Pending>,
    flushes: Sender<Sender<()>>,
    db: Mutex<Connection>,
    dropped: AtomicU64,
    evicted: Arc<AtomicU64>,
}

impl Records {
    /// Open (creating) `path` and start its writer.
    pub fn open(path: &Path, bounds: RecordBounds) -> anyhow::Result<Records> {
        let reader = connect(path)?;
        let writer = connect(path)?;
        let kept: u64 = writer.query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))?;
        let pending = Arc::new(Pending::default());
        let (flushes, requests) = std::sync::mpsc::channel();
        let evicted = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            db: writer,
            bounds,
            kept,
            evicted: evicted.clone(),
        };
        std::thread::Builder::new()
            .name("weir-quality-records".into())
            .spawn({
                let pending = pending.clone();
                move || writer.run(pending, requests)
            })?;
        Ok(Records {
            pending,
            flushes,
            db: Mutex::new(reader),
            dropped: AtomicU64::new(0),
            evicted,
        })
    }

    /// Queue `prediction` for the writer; dropped and counted when [`QUEUE`] are waiting.
    pub fn record(&self, prediction: Prediction) {
        let mut records = self.pending.records.lock().unwrap();
        if records.len() < QUEUE {
            records.push(prediction);
        } else {
            drop(records);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until every record queued before this call is written (blocking).
    pub fn flush(&self) {
        let (done, written) = std::sync::mpsc::channel();
        if self.flushes.send(done).is_ok() {
            let _ = written.recv();
        }
    }

    /// Records dropped because the writer fell behind, and records evicted by the bounds.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Join truth to `pipeline`'s records, in one transaction (blocking): for each `(id,
    /// target)`, `accept` gets the record and the truth, one per row, and counts them, or says
    /// why they do not fit; accepted truth is stored, and the record's outcome returned.
    pub fn label(
        &self,
        pipeline: &str,
        truths: &[(String, Value)],
        mut accept: impl FnMut(&Recorded, &[Label]) -> Result<(), String>,
    ) -> anyhow::Result<Vec<Outcome>> {
        let mut db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let transaction = db.transaction()?;
        let mut outcomes = Vec::with_capacity(truths.len());
        let now = crate::alerts::now();
        for (id, target) in truths {
            let outcome = match find(&transaction, pipeline, id)? {
                Found::None if was_evicted(&transaction, pipeline, id)? => Outcome::Expired,
                Found::None => Outcome::Unknown,
                Found::Labelled => Outcome::Duplicate,
                Found::Open(recorded) => match rows_of(target, recorded.predictions.len())
                    .and_then(|truth| accept(&recorded, &truth).map(|()| truth))
                {
                    Err(reason) => Outcome::Invalid(format!("id '{id}': {reason}")),
                    Ok(truth) => {
                        transaction.execute(
                            "UPDATE predictions SET truth = ?1, labelled_at = ?2 \
                             WHERE pipeline = ?3 AND id = ?4",
                            params![serde_json::to_string(&truth)?, now, pipeline, id],
                        )?;
                        Outcome::Matched
                    }
                },
            };
            outcomes.push(outcome);
        }
        transaction.commit()?;
        Ok(outcomes)
    }

    /// The latest labelled rows of `pipeline` version `version` labelled after `since` (at
    /// most `rows` records), with their truth: to refill a window after a restart.
    pub fn labelled(
        &self,
        pipeline: &str,
        version: u64,
        since: f64,
        rows: u64,
    ) -> anyhow::Result<Vec<(Recorded, Vec<Label>)>> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let mut statement = db.prepare(
            "SELECT prediction, scores, truth FROM predictions \
             WHERE pipeline = ?1 AND version = ?2 AND labelled_at > ?3 \
             ORDER BY labelled_at DESC LIMIT ?4",
        )?;
        let found = statement.query_map(params![pipeline, version, since, rows], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut labelled = Vec::new();
        for row in found {
            let (prediction, scores, truth) = row?;
            let recorded = recorded(version, &prediction, scores.as_deref())?;
            labelled.push((recorded, serde_json::from_str(&truth)?));
        }
        Ok(labelled)
    }

    /// Per version of `pipeline`: rows answered and rows labelled among the kept records.
    pub fn counts(&self, pipeline: &str) -> anyhow::Result<BTreeMap<u64, (u64, u64)>> {
        let db = self.db.lock().unwrap_or_else(|e| e.into_inner());
        let mut statement = db.prepare(
            "SELECT version, SUM(rows), SUM(CASE WHEN truth IS NULL THEN 0 ELSE rows END) \
             FROM predictions WHERE pipeline = ?1 GROUP BY version",
        )?;
        let rows = statement.query_map([pipeline], |row| {
            Ok((row.get(0)?, (row.get(1)?, row.get(2)?)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    if !path.exists() {
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    }
    crate::store::restrict_to_owner(path)?;
    let db = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    // WAL, synced at checkpoints: a crash of the process loses no committed record, and
    // every commit is not a disk sync.
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "NORMAL")?;
    db.busy_timeout(Duration::from_secs(10))?;
    db.execute_batch(SCHEMA)?;
    Ok(db)
}

/// A record looked up by id.
enum Found {
    None,
    Labelled,
    Open(Recorded),
}

fn find(db: &Connection, pipeline: &str, id: &str) -> anyhow::Result<Found> {
    let row = db
        .query_row(
            "SELECT version, prediction, scores, truth IS NOT NULL FROM predictions \
             WHERE pipeline = ?1 AND id = ?2",
            params![pipeline, id],
            |row| {
                Ok((
                    row.get::<_, u64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, bool>(3)?,
                ))
            },
        )
        .optional()?;
    Ok(match row {
        None => Found::None,
        Some((_, _, _, true)) => Found::Labelled,
        Some((version, prediction, scores, false)) => {
            Found::Open(recorded(version, &prediction, scores.as_deref())?)
        }
    })
}

fn recorded(version: u64, prediction: &str, scores: Option<&str>) -> anyhow::Result<Recorded> {
    Ok(Recorded {
        version,
        predictions: serde_json::from_str(prediction)?,
        scores: scores.map(serde_json::from_str).transpose()?,
    })
}

fn was_evicted(db: &Connection, pipeline: &str, id: &str) -> anyhow::Result<bool> {
    let found = db
        .query_row(
            "SELECT 1 FROM expired WHERE pipeline = ?1 AND id = ?2",
            params![pipeline, id],
            |_| Ok(()),
        )
        .optional()?;
    Ok(found.is_some())
}

/// The truth for each of a record's `rows` rows: a list of one per row, or a single value
/// for a record of one row.
fn rows_of(target: &Value, rows: usize) -> Result<Vec<Label>, String> {
    let label = |value: &Value| {
        serde_json::from_value::<Label>(value.clone())
            .map_err(|_| format!("a target must be a number or text, not {value}"))
    };
    let truth = match target {
        Value::Array(values) => values.iter().map(label).collect::<Result<Vec<_>, _>>()?,
        single => vec![label(single)?],
    };
    if truth.len() != rows {
        return Err(format!(
            "{} target(s) for a request of {rows} row(s)",
            truth.len()
        ));
    }
    Ok(truth)
}

/// The writer thread's state.
struct Writer {
    db: Connection,
    bounds: RecordBounds,
    /// Records in the table.
    kept: u64,
    evicted: Arc<AtomicU64>,
}

impl Writer {
    /// Every [`FLUSH_INTERVAL`], or at once when a flush is asked for, write what is pending;
    /// stop once the records are dropped.
    fn run(&mut self, pending: Arc<Pending>, flushes: Receiver<Sender<()>>) {
        loop {
            let mut waiting = Vec::new();
            let open = match flushes.recv_timeout(FLUSH_INTERVAL) {
                Ok(done) => {
                    waiting.push(done);
                    true
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            waiting.extend(flushes.try_iter());
            let mut batch = std::mem::take(&mut *pending.records.lock().unwrap());
            if let Err(e) = self.write(&mut batch) {
                tracing::error!(error = %format!("{e:#}"), "writing prediction records failed");
            }
            for done in waiting {
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

    /// Insert `batch` (a known id keeps its first record) and evict beyond the bounds, in one
    /// transaction.
    fn write(&mut self, batch: &mut Vec<Prediction>) -> anyhow::Result<()> {
        let transaction = self.db.transaction()?;
        let mut inserted = 0;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT OR IGNORE INTO predictions (pipeline, id, version, at, rows, prediction, \
                 scores) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for p in batch.drain(..) {
                let scores = p.scores.as_ref().map(serde_json::to_string).transpose()?;
                inserted += insert.execute(params![
                    &*p.pipeline,
                    p.id,
                    p.version,
                    p.at,
                    p.predictions.len(),
                    serde_json::to_string(&p.predictions)?,
                    scores,
                ])? as u64;
            }
        }
        let horizon = crate::alerts::now() - self.bounds.seconds as f64;
        let mut evicted = evict(&transaction, "at < ?1", &horizon)?;
        let excess = (self.kept + inserted).saturating_sub(evicted + self.bounds.rows);
        if excess > 0 {
            let oldest = "rowid IN (SELECT rowid FROM predictions ORDER BY at LIMIT ?1)";
            evicted += evict(&transaction, oldest, &excess)?;
        }
        // Expired ids are kept as long and as many as the records.
        transaction.execute(
            "DELETE FROM expired WHERE at < ?1 OR rowid <= (SELECT MAX(rowid) FROM expired) - ?2",
            params![horizon - self.bounds.seconds as f64, self.bounds.rows],
        )?;
        transaction.commit()?;
        self.kept = self.kept + inserted - evicted;
        self.evicted.fetch_add(evicted, Ordering::Relaxed);
        Ok(())
    }
}

/// Move the records `filter` (with `?1` bound to `value`) selects to the expired ids; how many.
fn evict(db: &Connection, filter: &str, value: &dyn rusqlite::ToSql) -> anyhow::Result<u64> {
    db.execute(
        &format!("INSERT INTO expired (pipeline, id, at) SELECT pipeline, id, at FROM predictions WHERE {filter}"),
        [value],
    )?;
    Ok(db.execute(&format!("DELETE FROM predictions WHERE {filter}"), [value])? as u64)
}
