//! Reading a request body within bounds: a declared length over the limit is refused before a
//! byte is read, the body must arrive within a timeout, and every byte buffered is reserved
//! from the server's body budget first, so slow, stalled or oversized uploads cannot hold
//! memory beyond what the settings state.

use std::borrow::Cow;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use bytes::BytesMut;
use http_body_util::BodyExt;

use super::admission::BodyReservation;
use crate::error::Error;

/// Where a body limit comes from, for the 413's message.
pub struct Limit {
    pub bytes: usize,
    /// The setting that sets it, e.g. `weir serve --max-body-bytes`.
    pub setting: Cow<'static, str>,
}

impl Limit {
    fn refusal(&self, size: impl std::fmt::Display) -> Error {
        Error::TooLarge(format!(
            "request body of {size} bytes is over the limit of {} bytes ({})",
            self.bytes, self.setting
        ))
    }
}

/// The body's declared `Content-Length`, if any; a 413 when it is over `limit`, before any of
/// the body is read.
pub fn declared_length(headers: &HeaderMap, limit: &Limit) -> Result<Option<usize>, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit.bytes as u64 => Err(limit.refusal(length)),
        other => Ok(other.map(|length| length as usize)),
    }
}

/// Read `body` whole, at most `limit` bytes (and no more than `declared`, its
/// `Content-Length`), within `timeout` (408 past it), reserving what the buffer holds from
/// `reservation` as it grows (503 when the budget is spent).
pub async fn read(
    body: Body,
    declared: Option<usize>,
    limit: &Limit,
    timeout: Duration,
    reservation: &mut BodyReservation<'_>,
) -> Result<Bytes, Error> {
    let most = declared.unwrap_or(limit.bytes).min(limit.bytes);
    let reading = collect(body, most, limit, reservation);
    match tokio::time::timeout(timeout, reading).await {
        Ok(result) => result,
        Err(_) => Err(Error::RequestTimeout(format!(
            "the request body did not arrive within {} s (weir serve --body-timeout)",
            timeout.as_secs_f64()
        ))),
    }
}

/// The body's bytes, in a buffer that at least doubles as it grows but never past `most`
/// (what the body declared, or the limit): a stalled upload holds at most twice what it sent,
/// and a body of a declared length no more than that length.
async fn collect(
    mut body: Body,
    most: usize,
    limit: &Limit,
    reservation: &mut BodyReservation<'_>,
) -> Result<Bytes, Error> {
    let mut buffer = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| Error::InvalidInput(format!("could not read the request body: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        let size = buffer.len() + chunk.len();
        if size > limit.bytes {
            return Err(limit.refusal(format!("over {size}")));
        }
        if size > buffer.capacity() {
            // What the buffer will hold after growing, reserved first.
            let capacity = size.max((2 * buffer.capacity()).min(most));
            reservation.grow_to(capacity as u64)?;
            buffer.reserve(capacity - buffer.len());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}
