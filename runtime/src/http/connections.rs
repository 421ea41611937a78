//! Connections: accepted within a cap, each closed when it holds its place without using it.
//!
//! A connection costs a file descriptor, a task and up to [`READ_BUFFER`] of buffered input,
//! so the server accepts at most `max_connections` at once; beyond that it answers 503 at once
//! and closes, logging the refusals (once a second at most). A connection waiting for its next
//! request is closed after `idle_timeout`; one that has started a request must send all of its
//! headers within `header_timeout` of the first byte (a slow-header client, "slowloris",
//! otherwise holds a connection for free). The body's own deadline is the handler's
//! ([`super::body`]). On shutdown the listener closes, idle connections close at once, and
//! requests in flight may finish within the grace period.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tower::ServiceExt;

/// The most a connection buffers of its input (headers included: larger headers get 431).
pub const READ_BUFFER: usize = 64 << 10;

/// File descriptors kept for everything but connections: the store, logs, blobs, the epoch
/// ticker, the runtime.
const RESERVED_FDS: u64 = 64;

/// How long connections may take and how many may be open.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// From the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// Waiting for the next request (or the first) on an open connection.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// `weir serve`'s defaults.
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The connection metrics the accept loop updates.
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    pub open: Gauge,
    pub refused: Counter,
}

/// Raise the soft limit on open files to the hard one, and lower `limits.max_connections` to
/// fit under it, warning when it had to.
pub fn fit_file_limit(limits: &mut ConnectionLimits) {
    let wanted = limits.max_connections as u64 + RESERVED_FDS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(available) if available < wanted => {
            let fitting = available.saturating_sub(RESERVED_FDS).max(1) as usize;
            tracing::warn!(
                open_files = available,
                max_connections = fitting,
                "the open-file limit (ulimit -n) fits only {fitting} connections; \
                 --max-connections lowered to it"
            );
            limits.max_connections = fitting;
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("could not read or raise the open-file limit: {e}"),
    }
}

/// Serve `router` on `listener` within `limits` until `shutdown` completes; then stop
/// accepting and let in-flight requests finish, for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(READ_BUFFER);
    let mut refusals = Refusals::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&stream, limits.max_connections);
            metrics.refused.inc();
            refusals.count(limits.max_connections);
            continue;
        };
        // Small responses go out at once rather than waiting on Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let tracker = Tracker::new();
        let io = TokioIo::new(Timed::new(stream, tracker.clone(), &limits));
        let service = PhaseService {
            router: router.clone(),
            tracker,
        };
        let connection = graceful.watch(http.serve_connection(io, service));
        let open = metrics.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection closed: {e}");
            }
            open.dec();
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_s = grace.as_secs(), "in-flight requests did not finish in time");
        }
    }
}

/// An accept error: a connection that died before it was accepted is nothing; anything else
/// (out of file descriptors, say) is logged, and the loop pauses rather than spin.
async fn accept_failed(error: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {error}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Answer a connection over the cap with a 503, without reading it, and close it.
fn refuse(stream: &TcpStream, max_connections: usize) {
    let body = format!(
        "{{\"error\":\"server at its connection limit ({max_connections}, \
         --max-connections); retry shortly\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Best effort: a full socket buffer just means the client sees the close.
    let _ = stream.try_write(response.as_bytes());
}

/// Refused connections since the last warning, logged at most once a second.
#[derive(Default)]
struct Refusals {
    since: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn count(&mut self, max_connections: usize) {
        self.since += 1;
        if self
            .logged
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(
            refused = self.since,
            max_connections,
            "refused connections at the connection limit (--max-connections)"
        );
        self.since = 0;
        self.logged = Some(Instant::now());
    }
}

/// Where a connection is between requests: what its reads wait for.
#[derive(Clone, Copy)]
enum Phase {
    /// Waiting for a request to start, since then.
    Idle(Instant),
    /// A request's first bytes came then; its headers are not all there yet.
    Head(Instant),
    /// A request is being served: no connection deadline (the body has its own).
    Busy,
}

/// A connection's phase, shared by its reads and its service.
struct Tracker {
    state: Mutex<(Phase, Option<Waker>)>,
}

impl Tracker {
    fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            state: Mutex::new((Phase::Idle(Instant::now()), None)),
        })
    }

    /// The service took a request.
    fn busy(&self) {
        self.state.lock().unwrap().0 = Phase::Busy;
    }

    /// The response is ready: the connection waits for its next request from now. A read
    /// that went to sleep while the request was served is woken to start the idle clock.
    fn idle(&self) {
        let waiting = {
            let mut state = self.state.lock().unwrap();
            state.0 = Phase::Idle(Instant::now());
            state.1.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// A read got bytes: an idle connection has started a request.
    fn heard(&self) {
        let mut state = self.state.lock().unwrap();
        if let Phase::Idle(_) = state.0 {
            state.0 = Phase::Head(Instant::now());
        }
    }

    /// The phase a waiting read is in; while busy, the read's waker is kept for [`idle`].
    fn waiting(&self, cx: &Context<'_>) -> Phase {
        let mut state = self.state.lock().unwrap();
        if let Phase::Busy = state.0 {
            state.1 = Some(cx.waker().clone());
        }
        state.0
    }
}

/// The router as one connection's service: it marks the connection busy while it serves a
/// request, and idle from the moment the response is ready.
#[derive(Clone)]
struct PhaseService {
    router: Router,
    tracker: Arc<Tracker>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for PhaseService {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        self.tracker.busy();
        let router = self.router.clone();
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            tracker.idle();
            response
        })
    }
}

/// A TCP stream whose reads end the connection when it is idle too long (as an end of
/// stream: hyper closes quietly) or sends its headers too slowly (as an error).
struct Timed {
    stream: TcpStream,
    tracker: Arc<Tracker>,
    header_timeout: Duration,
    idle_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Timed {
    fn new(stream: TcpStream, tracker: Arc<Tracker>, limits: &ConnectionLimits) -> Timed {
        Timed {
            stream,
            tracker,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            timer: None,
        }
    }

    /// A read is waiting: wait no longer than the phase allows. Ready with the outcome once
    /// its deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (deadline, expired): (Instant, fn() -> io::Result<()>) = match self.tracker.waiting(cx)
        {
            Phase::Idle(since) => (since + self.idle_timeout, || Ok(())),
            Phase::Head(since) => (since + self.header_timeout, || {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request headers not complete within --header-timeout",
                ))
            }),
            Phase::Busy => {
                self.timer = None;
                return Poll::Pending;
            }
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(expired())
    }
}

impl AsyncRead for Timed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.tracker.heard();
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx),
            other => other,
        }
    }
}

impl AsyncWrite for Timed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
