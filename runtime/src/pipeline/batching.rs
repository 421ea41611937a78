//! Cross-request batching, opted into per pipeline with `[batching]`: requests that arrive
//! while the pipeline's previous batch runs are merged on their first dimension and pass the
//! stages once, in one set of fresh instances, then each gets its own rows back.
//!
//! Why: a fresh instance per stage costs a few µs (../shared/MEASURED.md) and every call
//! crosses the Wasm boundary; under load, a batch pays both once for many requests. What it
//! trades: requests in one batch share the stages' instances, so they are not isolated from
//! each other — hence opt-in, like `reuse_instances`. What it keeps: each request is decoded,
//! validated, observed and answered alone; a batch that fails (a trap, a refusal, a timeout, an
//! output that does not split by rows) runs each of its requests again alone, so only the
//! request at fault gets the error. No request waits for others to arrive: a batch starts as
//! soon as the previous one ends, with whatever came meanwhile (Triton's dynamic batcher with
//! no queue delay).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Laps, Pipeline};
use crate::error::Error;
use crate::tensor::{Batch, Datatype, Tensor, element_count};

/// `[batching]` in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Batching {
    /// Most rows (entries of the first dimension, summed over its requests) in one batch; a
    /// request with more runs in a batch of its own.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: u64,
}

fn default_max_batch_size() -> u64 {
    64
}

/// Time in each stage, as a request's trace holds it.
pub type StageTimes = Vec<(&'static str, Duration)>;

/// What a request gets back from its batch.
pub enum Answer {
    /// Its declared outputs; its wait for the batch to start; the batch's time in each
    /// stage; for the first request of each batch, how many requests the batch served (for the
    /// batch-size metric), else `None`.
    Done {
        outputs: Batch,
        queued: Duration,
        stages: StageTimes,
        batch_size: Option<usize>,
    },
    /// Its batch failed or its outputs did not split by rows: run it alone.
    Alone(Batch),
    /// It ran alone (the only request of its batch) and failed.
    Failed { error: Error, queued: Duration },
}

/// One pipeline version's queue of requests and its runner: at most one batch runs at a time.
pub struct Batcher {
    max_rows: u64,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    /// Whether a runner task is draining the queue.
    running: bool,
}

/// A request waiting for its batch.
struct Waiting {
    batch: Batch,
    rows: u64,
    since: Instant,
    reply: oneshot::Sender<Answer>,
}

impl Batcher {
    pub fn new(batching: &Batching) -> Batcher {
        Batcher {
            max_rows: batching.max_batch_size,
            queue: Mutex::default(),
        }
    }

    /// Queue `batch` (a validated request of `rows` rows) for `pipeline`'s next batch, starting
    /// a runner when none is draining the queue, and wait for its answer. The runner is its
    /// own task, so a client that goes away cancels only its own wait.
    pub async fn submit(&self, pipeline: &Arc<Pipeline>, batch: Batch, rows: u64) -> Answer {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().unwrap();
            queue.waiting.push_back(Waiting {
                batch,
                rows,
                since: Instant::now(),
                reply,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            tokio::spawn(drain(pipeline.clone()));
        }
        answer.await.unwrap_or_else(|_| Answer::Failed {
            error: Error::StageFailed(format!(
                "pipeline '{}': the batch holding this request stopped before answering",
                pipeline.name
            )),
            queued: Duration::ZERO,
        })
    }

    /// The next batch: the oldest waiting request and every later one that fits with it,
    /// within `max_rows`. `None`, and the runner's end, when nothing waits.
    fn take(&self) -> Option<Vec<Waiting>> {
        let mut queue = self.queue.lock().unwrap();
        let Some(first) = queue.waiting.pop_front() else {
            queue.running = false;
            return None;
        };
        let mut rows = first.rows;
        let mut taken = vec![first];
        let mut index = 0;
        while index < queue.waiting.len() && rows < self.max_rows {
            let next = &queue.waiting[index];
            if rows + next.rows <= self.max_rows && fits(&taken[0].batch, &next.batch) {
                rows += next.rows;
                taken.extend(queue.waiting.remove(index));
            } else {
                index += 1;
            }
        }
        Some(taken)
    }
}

/// Clears the queue if the runner panics, so its waiting requests fail instead of waiting
/// forever, and the next request starts a new runner.
struct Runner<'a>(&'a Batcher);

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut queue) = self.0.queue.lock()
        {
            queue.waiting.clear();
            queue.running = false;
        }
    }
}

/// Run `pipeline`'s batches one after another until its queue is empty.
async fn drain(pipeline: Arc<Pipeline>) {
    let batcher = pipeline.batcher.as_ref().expect("a batching pipeline");
    let _runner = Runner(batcher);
    loop {
        // Let the requests already ready on this worker reach the queue first: a batch then
        // holds what arrived together instead of the one request that woke the runner.
        tokio::task::yield_now().await;
        let Some(taken) = batcher.take() else { return };
        run(&pipeline, taken).await;
    }
}

/// Run one batch and answer each of its requests.
async fn run(pipeline: &Pipeline, mut taken: Vec<Waiting>) {
    let mut stages = StageTimes::new();
    let mut clock = Laps::start();
    if taken.len() == 1 {
        let Waiting {
            batch,
            since,
            reply,
            ..
        } = taken.remove(0);
        let queued = clock.mark() - since;
        let answer = match pipeline.run_stages(batch, &mut stages, &mut clock).await {
            Ok(outputs) => Answer::Done {
                outputs,
                queued,
                stages,
                batch_size: Some(1),
            },
            Err(error) => Answer::Failed { error, queued },
        };
        let _ = reply.send(answer);
        return;
    }
    let merged = merge(&taken.iter().map(|w| &w.batch).collect::<Vec<_>>());
    let rows: Vec<u64> = taken.iter().map(|w| w.rows).collect();
    let started = clock.mark();
    let outputs = pipeline.run_stages(merged, &mut stages, &mut clock).await;
    let parts = match outputs {
        Ok(outputs) => split(outputs, &rows).ok_or_else(|| {
            // Not the requests' fault but the pipeline's: a stage that does not keep one
            // output row per input row makes every batch run twice. Said at warn, so it shows.
            let total: u64 = rows.iter().sum();
            tracing::warn!(
                pipeline = %pipeline.name,
                "a batch of {total} rows gave outputs that do not have {total} rows; its \
                 requests run alone (do this pipeline's stages treat rows independently?)"
            );
            format!("its outputs do not have {total} rows")
        }),
        Err(e) => Err(e.to_string()),
    };
    match parts {
        Ok(parts) => {
            let batch_size = taken.len();
            for (index, (waiting, outputs)) in taken.into_iter().zip(parts).enumerate() {
                let _ = waiting.reply.send(Answer::Done {
                    outputs,
                    queued: started - waiting.since,
                    stages: stages.clone(),
                    batch_size: (index == 0).then_some(batch_size),
                });
            }
        }
        Err(cause) => {
            tracing::debug!(
                pipeline = %pipeline.name,
                requests = taken.len(),
                cause,
                "batch failed: running its requests alone"
            );
            for waiting in taken {
                let _ = waiting.reply.send(Answer::Alone(waiting.batch));
            }
        }
    }
}

/// The rows of a request: the first dimension its tensors share. `None` when a tensor is a
/// scalar or the tensors disagree; such a request runs alone.
pub fn rows(batch: &Batch) -> Option<u64> {
    let rows = *batch.tensors.first()?.shape.first()?;
    (batch.tensors.iter())
        .all(|t| t.shape.first() == Some(&rows))
        .then_some(rows)
}

/// Whether two requests may share a batch: the same tensors (name, datatype, shape past the
/// first dimension) in the same order, and the same parameters, which stages also read.
fn fits(a: &Batch, b: &Batch) -> bool {
    a.parameters == b.parameters
        && a.tensors.len() == b.tensors.len()
        && (a.tensors.iter().zip(&b.tensors)).all(|(x, y)| {
            x.name == y.name && x.datatype == y.datatype && x.shape[1..] == y.shape[1..]
        })
}

/// Concatenate requests that [`fits`] on their first dimension. Row-major data makes that a
/// concatenation of bytes, for BYTES elements too.
fn merge(requests: &[&Batch]) -> Batch {
    let first = requests[0];
    let tensors = (first.tensors.iter().enumerate())
        .map(|(index, tensor)| {
            let parts: Vec<&Tensor> = requests.iter().map(|r| &r.tensors[index]).collect();
            let mut shape = tensor.shape.clone();
            shape[0] = parts.iter().map(|t| t.shape[0]).sum();
            Tensor {
                name: tensor.name.clone(),
                datatype: tensor.datatype,
                shape,
                data: parts.iter().flat_map(|t| &t.data).copied().collect(),
            }
        })
        .collect();
    Batch {
        tensors,
        parameters: first.parameters.clone(),
    }
}

/// Cut a batch's outputs into one batch per request, `rows[i]` rows each. `None` when a
/// tensor's first dimension is not the rows' sum or its data does not match its shape.
fn split(batch: Batch, rows: &[u64]) -> Option<Vec<Batch>> {
    let total: u64 = rows.iter().sum();
    let mut parts: Vec<Batch> = (rows.iter())
        .map(|_| Batch {
            tensors: Vec::with_capacity(batch.tensors.len()),
            parameters: batch.parameters.clone(),
        })
        .collect();
    for tensor in &batch.tensors {
        if tensor.shape.first() != Some(&total) {
            return None;
        }
        let per_row = element_count(&tensor.shape[1..])?;
        let mut rest = tensor.data.as_slice();
        for (part, &count) in parts.iter_mut().zip(rows) {
            let length = byte_length(tensor.datatype, rest, count.checked_mul(per_row)?)?;
            let (data, tail) = rest.split_at(length);
            rest = tail;
            let mut shape = tensor.shape.clone();
            shape[0] = count;
            part.tensors.push(Tensor {
                name: tensor.name.clone(),
                datatype: tensor.datatype,
                shape,
                data: data.to_vec(),
            });
        }
        if !rest.is_empty() {
            return None;
        }
    }
    Some(parts)
}

/// The bytes the first `elements` elements of `data` take, if it holds that many.
fn byte_length(datatype: Datatype, data: &[u8], elements: u64) -> Option<usize> {
    let elements = usize::try_from(elements).ok()?;
    let length = match datatype.size() {
        Some(size) => elements.checked_mul(size)?,
        // Each BYTES element is a 4-byte little-endian length and that many bytes.
        None => (0..elements).try_fold(0usize, |at, _| {
            let prefix = data.get(at..at.checked_add(4)?)?;
            let length = u32::from_le_bytes(prefix.try_into().ok()?) as usize;
            at.checked_add(4)?.checked_add(length)
        })?,
    };
    (length <= data.len()).then_some(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(name: &str, shape: Vec<u64>, values: &[f32]) -> Tensor {
        Tensor {
            name: name.into(),
            datatype: Datatype::Fp32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn strings(name: &str, values: &[&str]) -> Tensor {
        let mut data = Vec::new();
        for value in values {
            data.extend((value.len() as u32).to_le_bytes());
            data.extend(value.as_bytes());
        }
        Tensor {
            name: name.into(),
            datatype: Datatype::Bytes,
            shape: vec![values.len() as u64],
            data,
        }
    }

    fn batch(tensors: Vec<Tensor>) -> Batch {
        Batch {
            tensors,
            parameters: Vec::new(),
        }
    }

    #[test]
    fn merged_requests_split_back_into_their_own_rows() {
        let a = batch(vec![
            floats("x", vec![1, 2], &[1.0, 2.0]),
            strings("s", &["one"]),
        ]);
        let b = batch(vec![
            floats("x", vec![2, 2], &[3.0, 4.0, 5.0, 6.0]),
            strings("s", &["two", "three"]),
        ]);
        assert!(fits(&a, &b));
        let merged = merge(&[&a, &b]);
        assert_eq!(merged.tensors[0].shape, vec![3, 2]);
        assert_eq!(merged.tensors[1], strings("s", &["one", "two", "three"]));
        let parts = split(merged, &[1, 2]).expect("splits by rows");
        assert_eq!(parts, vec![a, b]);
    }

    #[test]
    fn requests_of_other_tensors_or_parameters_do_not_share_a_batch() {
        let a = batch(vec![floats("x", vec![1, 2], &[1.0, 2.0])]);
        let wider = batch(vec![floats("x", vec![1, 3], &[1.0, 2.0, 3.0])]);
        let renamed = batch(vec![floats("y", vec![1, 2], &[1.0, 2.0])]);
        let mut with_parameter = a.clone();
        with_parameter
            .parameters
            .push(("fault".into(), "true".into()));
        assert!(!fits(&a, &wider));
        assert!(!fits(&a, &renamed));
        assert!(!fits(&a, &with_parameter));
    }

    #[test]
    fn outputs_that_do_not_keep_the_rows_do_not_split() {
        // One row for a batch of three: a stage that reduces over the batch.
        let reduced = batch(vec![floats("sum", vec![1], &[6.0])]);
        assert_eq!(split(reduced, &[1, 2]), None);
        // A shape the data does not fill.
        let short = batch(vec![floats("x", vec![3], &[1.0, 2.0])]);
        assert_eq!(split(short, &[1, 2]), None);
        let long = batch(vec![floats("x", vec![3], &[1.0, 2.0, 3.0, 4.0])]);
        assert_eq!(split(long, &[1, 2]), None);
    }

    #[test]
    fn a_request_has_rows_only_when_its_tensors_agree() {
        assert_eq!(
            rows(&batch(vec![floats("x", vec![2, 1], &[1.0, 2.0])])),
            Some(2)
        );
        let disagree = batch(vec![
            floats("x", vec![2, 1], &[1.0, 2.0]),
            floats("y", vec![1], &[1.0]),
        ]);
        assert_eq!(rows(&disagree), None);
        assert_eq!(rows(&batch(vec![floats("x", vec![], &[1.0])])), None);
        assert_eq!(rows(&batch(Vec::new())), None);
    }

    #[test]
    fn the_queue_takes_the_oldest_request_and_what_fits_with_it_within_the_rows() {
        let batcher = Batcher::new(&Batching { max_batch_size: 4 });
        let request = |name: &str, rows: u64| {
            let values = vec![0.0; rows as usize];
            batch(vec![floats(name, vec![rows], &values)])
        };
        let mut answers = Vec::new();
        for (name, count) in [("x", 2), ("y", 1), ("x", 3), ("x", 2), ("y", 1)] {
            let (reply, answer) = oneshot::channel();
            answers.push(answer);
            batcher.queue.lock().unwrap().waiting.push_back(Waiting {
                batch: request(name, count),
                rows: count,
                since: Instant::now(),
                reply,
            });
        }
        let rows_of = |taken: Vec<Waiting>| -> Vec<(String, u64)> {
            let named = taken
                .iter()
                .map(|w| (w.batch.tensors[0].name.clone(), w.rows));
            named.collect()
        };
        let x = |rows| ("x".to_owned(), rows);
        let y = |rows| ("y".to_owned(), rows);
        assert_eq!(rows_of(batcher.take().unwrap()), vec![x(2), x(2)]);
        assert_eq!(rows_of(batcher.take().unwrap()), vec![y(1), y(1)]);
        assert_eq!(rows_of(batcher.take().unwrap()), vec![x(3)]);
        batcher.queue.lock().unwrap().running = true;
        assert!(batcher.take().is_none());
        assert!(
            !batcher.queue.lock().unwrap().running,
            "an empty queue ends the runner"
        );
    }
}
