//! Admission control: what a request must get before the server spends memory or CPU on it.
//!
//! - A **place** among the running and waiting requests, both across the server (`concurrency`
//!   plus `queue`) and within its pipeline's share: taken before the body is read, refused at
//!   once with 503 and `Retry-After` when there is none, so overload costs a fast refusal, never
//!   an unbounded queue. A batching pipeline's requests hold a place but no running turn: the
//!   pipeline runs one batch at a time, for all of them.
//! - **Body bytes** from one budget for every admitted request, reserved as the body arrives:
//!   what bodies hold at once is bounded by a setting, and a stalled upload holds only what it
//!   sent. A body's first [`UNRESERVED_BODY`] bytes come with its place, so uploads that fill
//!   the budget cannot turn away the small requests most traffic is.
//! - A **running turn**, within its pipeline's share and across the server, before its stages
//!   run. A pipeline's share is smaller than the server's, so a slow or hostile pipeline fills
//!   its own share and leaves the rest to the others.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use crate::error::Error;

/// The most requests that may wait: far beyond any machine's needs, and a bound that keeps
/// every count within what a semaphore holds.
pub const MAX_QUEUE: u32 = 1_000_000;

/// The bytes of each body that its place covers, beyond the budget: most requests are smaller.
pub const UNRESERVED_BODY: u64 = 64 << 10;

/// The bounds admission enforces.
#[derive(Clone, Debug)]
pub struct Bounds {
    /// Requests running their stages at once, across the server.
    pub concurrency: usize,
    /// Requests waiting for a turn (or for their body to arrive), across the server.
    pub queue: usize,
    /// Requests of one pipeline running at once.
    pub pipeline_concurrency: usize,
    /// Requests of one pipeline waiting at once.
    pub pipeline_queue: usize,
    /// Request body bytes admitted requests hold at once.
    pub body_bytes: u64,
}

impl Bounds {
    /// `concurrency` running and `queue` waiting, each pipeline at most half of both (at
    /// least one), and `body_bytes` of bodies.
    pub fn new(concurrency: usize, queue: usize, body_bytes: u64) -> Bounds {
        Bounds {
            concurrency,
            queue,
            pipeline_concurrency: concurrency.div_ceil(2),
            pipeline_queue: queue.div_ceil(2),
            body_bytes,
        }
    }
}

/// The places, turns and body budget of the server and of each pipeline.
pub struct Admission {
    bounds: Bounds,
    /// Places for running or waiting: `concurrency + queue`.
    places: Semaphore,
    /// Turns for running: `concurrency`.
    running: Semaphore,
    /// Body bytes, in KiB.
    body_kib: Semaphore,
    /// Each pipeline's share, by name, made on its first request.
    shares: RwLock<HashMap<String, Arc<Share>>>,
}

/// One pipeline's places and turns.
struct Share {
    places: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

/// An admitted request's places; released when it is done.
pub struct Ticket<'a> {
    admission: &'a Admission,
    share: Arc<Share>,
    _place: SemaphorePermit<'a>,
    _pipeline_place: OwnedSemaphorePermit,
}

/// Body bytes reserved for one request, given back when it is dropped.
pub struct BodyReservation<'a> {
    budget: &'a Semaphore,
    kib: u32,
    /// The server's budget in bytes, for the refusal's message.
    limit: u64,
}

impl Admission {
    /// Admission within `bounds` (running turns at least 1, queues at most [`MAX_QUEUE`]).
    pub fn new(bounds: Bounds) -> Admission {
        let bounds = Bounds {
            concurrency: bounds.concurrency.max(1),
            pipeline_concurrency: bounds
                .pipeline_concurrency
                .clamp(1, bounds.concurrency.max(1)),
            queue: bounds.queue.min(MAX_QUEUE as usize),
            pipeline_queue: bounds.pipeline_queue.min(bounds.queue),
            ..bounds
        };
        let body_kib = usize::try_from(bounds.body_bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Admission {
            places: Semaphore::new(bounds.concurrency + bounds.queue),
            running: Semaphore::new(bounds.concurrency),
            body_kib: Semaphore::new(body_kib),
            shares: RwLock::default(),
            bounds,
        }
    }

    /// A place for a request to `pipeline`, or a 503 naming the bound that is full.
    pub fn admit(&self, pipeline: &str) -> Result<Ticket<'_>, Error> {
        let share = self.share(pipeline);
        let Ok(pipeline_place) = share.places.clone().try_acquire_owned() else {
            return Err(Error::Overloaded(format!(
                "pipeline '{pipeline}' is at its share of the server: {} requests running and {} \
                 waiting (--max-concurrency-per-pipeline, --max-queue-per-pipeline); retry shortly",
                self.bounds.pipeline_concurrency, self.bounds.pipeline_queue
            )));
        };
        let Ok(place) = self.places.try_acquire() else {
            return Err(Error::Overloaded(format!(
                "server at capacity: {} requests running and {} waiting \
                 (--max-concurrency, --max-queue); retry shortly",
                self.bounds.concurrency, self.bounds.queue
            )));
        };
        Ok(Ticket {
            admission: self,
            share,
            _place: place,
            _pipeline_place: pipeline_place,
        })
    }

    /// `pipeline`'s share, made on first use.
    fn share(&self, pipeline: &str) -> Arc<Share> {
        if let Some(share) = self.shares.read().unwrap().get(pipeline) {
            return share.clone();
        }
        let mut shares = self.shares.write().unwrap();
        shares
            .entry(pipeline.to_owned())
            .or_insert_with(|| {
                let b = &self.bounds;
                Arc::new(Share {
                    places: Arc::new(Semaphore::new(b.pipeline_concurrency + b.pipeline_queue)),
                    running: Arc::new(Semaphore::new(b.pipeline_concurrency)),
                })
            })
            .clone()
    }

    /// An empty reservation of body bytes, grown as the body arrives.
    pub fn reserve_body(&self) -> BodyReservation<'_> {
        BodyReservation {
            budget: &self.body_kib,
            kib: 0,
            limit: self.bounds.body_bytes,
        }
    }

    /// Requests running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.bounds.concurrency + self.bounds.queue - self.places.available_permits()
    }
}

impl Ticket<'_> {
    /// Run `work` when its pipeline and the server both have a turn for it.
    pub async fn run<T>(self, work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        let _pipeline_turn = self
            .share
            .running
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let _turn = self
            .admission
            .running
            .acquire()
            .await
            .expect("the semaphore is never closed");
        work.await
    }

    /// Run `work`, a request of a batching pipeline, at once: it waits for its batch instead
    /// of a turn.
    pub async fn run_batched<T>(
        self,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        work.await
    }
}

impl BodyReservation<'_> {
    /// Hold `bytes` of body in all; a 503 when the server's budget has no room for those
    /// beyond the first [`UNRESERVED_BODY`].
    pub fn grow_to(&mut self, bytes: u64) -> Result<(), Error> {
        let beyond = bytes.saturating_sub(UNRESERVED_BODY);
        let kib = u32::try_from(beyond.div_ceil(1024)).unwrap_or(u32::MAX);
        if kib <= self.kib {
            return Ok(());
        }
        let permit = self.budget.try_acquire_many(kib - self.kib).map_err(|_| {
            Error::Overloaded(format!(
                "the server holds as many request bodies as it may ({} MiB, \
                 --max-inflight-body-bytes); retry shortly",
                self.limit >> 20
            ))
        })?;
        permit.forget();
        self.kib = kib;
        Ok(())
    }
}

impl Drop for BodyReservation<'_> {
    fn drop(&mut self) {
        self.budget.add_permits(self.kib as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipeline_fills_its_share_and_leaves_the_rest_to_others() {
        let admission = Admission::new(Bounds::new(4, 4, 1 << 20));
        let slow: Vec<Ticket> = (0..4).map(|_| admission.admit("slow").unwrap()).collect();
        let refused = admission.admit("slow").err().unwrap();
        assert!(
            refused
                .to_string()
                .contains("pipeline 'slow' is at its share")
        );
        let others: Vec<Ticket> = (0..4).map(|_| admission.admit("iris").unwrap()).collect();
        assert!(admission.admit("third").is_err(), "the server is full");
        drop(slow);
        assert!(admission.admit("third").is_ok());
        drop(others);
        assert_eq!(admission.in_flight(), 0);
    }

    #[test]
    fn body_bytes_beyond_the_first_are_reserved_as_they_arrive_and_given_back() {
        let admission = Admission::new(Bounds::new(4, 4, 10 << 10));
        let mut first = admission.reserve_body();
        first.grow_to(UNRESERVED_BODY + (6 << 10)).unwrap();
        let mut second = admission.reserve_body();
        second.grow_to(UNRESERVED_BODY + (4 << 10)).unwrap();
        let refused = second.grow_to(UNRESERVED_BODY + (5 << 10)).err().unwrap();
        assert!(refused.to_string().contains("--max-inflight-body-bytes"));
        let mut small = admission.reserve_body();
        small.grow_to(UNRESERVED_BODY).unwrap();
        drop(first);
        second.grow_to(UNRESERVED_BODY + (9 << 10)).unwrap();
    }
}
