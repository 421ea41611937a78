//! A guest's stdout and stderr, into the structured log a line at a time, tagged with the
//! stage, component and version, instead of onto the server's terminal. Bounded per instance,
//! so a chatty or hostile component cannot flood the log; the end of stderr is kept for the
//! error message when the instance traps (a Rust panic prints its message there).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::host::StageIdentity;

/// Bytes of output logged per instance; the rest is counted and dropped.
const LOGGED_BYTES: usize = 64 << 10;

/// Bytes of the end of stderr kept for a trap's error message.
const STDERR_TAIL: usize = 1024;

/// Which stream a [`GuestOutput`] is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One instance's stdout or stderr. Clones share the same buffer.
#[derive(Clone)]
pub struct GuestOutput {
    stage: Arc<StageIdentity>,
    stream: Stream,
    state: Arc<Mutex<OutputState>>,
}

#[derive(Default)]
struct OutputState {
    pending: Vec<u8>,
    logged: usize,
    dropped: usize,
    tail: Vec<u8>,
}

impl GuestOutput {
    pub fn new(stage: Arc<StageIdentity>, stream: Stream) -> GuestOutput {
        GuestOutput {
            stage,
            stream,
            state: Arc::default(),
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if self.stream == Stream::Stderr {
            state.tail.extend_from_slice(bytes);
            let excess = state.tail.len().saturating_sub(STDERR_TAIL);
            state.tail.drain(..excess);
        }
        let room = LOGGED_BYTES.saturating_sub(state.logged);
        let (kept, dropped) = bytes.split_at(bytes.len().min(room));
        state.logged += kept.len();
        state.dropped += dropped.len();
        state.pending.extend_from_slice(kept);
        while let Some(end) = state.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = state.pending.drain(..=end).collect();
            self.log(&line[..line.len() - 1]);
        }
    }

    fn log(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let stage = &self.stage;
        let (kind, component, version) = (stage.kind.name(), &stage.component, &stage.version);
        match self.stream {
            Stream::Stdout => {
                tracing::info!(
                    stage = kind,
                    component,
                    version,
                    stream = "stdout",
                    "{line}"
                )
            }
            Stream::Stderr => {
                tracing::warn!(
                    stage = kind,
                    component,
                    version,
                    stream = "stderr",
                    "{line}"
                )
            }
        }
    }

    /// Log what is left of an unfinished line and how much was dropped, and start the next
    /// call's budget afresh; called after each call of a reused instance and when an instance
    /// is dropped.
    pub fn end_call(&self) {
        let (pending, dropped) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.logged = 0;
            state.tail.clear();
            (
                std::mem::take(&mut state.pending),
                std::mem::take(&mut state.dropped),
            )
        };
        if !pending.is_empty() {
            self.log(&pending);
        }
        if dropped > 0 {
            let stage = &self.stage;
            tracing::warn!(
                stage = stage.kind.name(),
                component = %stage.component,
                version = %stage.version,
                dropped_bytes = dropped,
                "component output over {LOGGED_BYTES} bytes per request was dropped"
            );
        }
    }

    /// The last lines written (stderr only), for a trap's error message.
    pub fn tail(&self) -> String {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&state.tail).trim().to_owned()
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// Writes go straight to the buffer: no background task, no async runtime needed.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(LOGGED_BYTES)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
