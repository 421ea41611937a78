//! Admission control: at most `concurrency` requests run their stages at once, at most
//! `queue` more wait for a turn, and any beyond that are answered 503 with `Retry-After` at
//! once. Overload then costs a fast refusal, never an unbounded queue whose latency grows
//! without limit. A batching pipeline's requests are admitted the same way but take no
//! running turn each: the pipeline runs one batch at a time, for all of them.

use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::Error;

/// The bounds on running and waiting requests.
pub struct Admission {
    /// Permits for running or waiting: `concurrency + queue`.
    admitted: Semaphore,
    /// Permits for running: `concurrency`.
    running: Semaphore,
    concurrency: usize,
    queue: usize,
}

impl Admission {
    /// Run at most `concurrency` at once, with at most `queue` waiting.
    pub fn new(concurrency: usize, queue: usize) -> Admission {
        let concurrency = concurrency.max(1);
        Admission {
            admitted: Semaphore::new(concurrency + queue),
            running: Semaphore::new(concurrency),
            concurrency,
            queue,
        }
    }

    /// Run `work` when a turn comes; refuse at once when the queue is full.
    pub async fn run<T>(&self, work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let _admitted = self.admit()?;
        let _running = self
            .running
            .acquire()
            .await
            .expect("the semaphore is never closed");
        work.await
    }

    /// Run `work`, a request of a batching pipeline, at once; refuse it when the queue is
    /// full. It waits for its batch instead of a turn.
    pub async fn run_batched<T>(
        &self,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let _admitted = self.admit()?;
        work.await
    }

    /// A place among the running and waiting requests, or a 503 when there is none.
    fn admit(&self) -> Result<SemaphorePermit<'_>, Error> {
        self.admitted.try_acquire().map_err(|_| {
            Error::Overloaded(format!(
                "server at capacity: {} requests running and {} waiting \
                 (--max-concurrency, --max-queue); retry shortly",
                self.concurrency, self.queue
            ))
        })
    }

    /// Requests running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.concurrency + self.queue - self.admitted.available_permits()
    }
}
