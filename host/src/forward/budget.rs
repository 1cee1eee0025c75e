//! What a host holds of forwarded bodies: a byte budget shared by the requests it forwards
//! and the ones it answers, and a cap on the tasks answering other hosts.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::{ResponseBody, plain};

/// Most forwarded requests a host answers at once for other hosts; more get 503 at once, so
/// a flood of messages never becomes a flood of tasks.
pub const MAX_FORWARDED_TASKS: usize = 256;

/// Bytes of forwarded bodies a host holds at once, shared by the requests it forwards and
/// the ones it answers for other hosts: many concurrent large bodies get 503, not memory.
#[derive(Clone)]
pub struct BufferBudget {
    pub(super) kib: Arc<Semaphore>,
}

impl BufferBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: usize) -> Self {
        Self {
            kib: Arc::new(Semaphore::new(
                (bytes / 1024).clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Reserves `bytes` until the permit is dropped; `None` when the budget is spent.
    pub(super) fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        Arc::clone(&self.kib).try_acquire_many_owned(kib).ok()
    }

    /// The budget's size in bytes, for tests.
    #[cfg(test)]
    pub(super) fn unreserved(&self) -> usize {
        self.kib.available_permits() * 1024
    }
}

/// Why a body could not be read.
pub(super) enum Collect {
    Busy,
    Unreadable,
}

/// A body's first part, read into memory.
pub(super) struct Collected {
    pub(super) bytes: Bytes,
    /// The forward buffer reserved for `bytes`, which must live as long as they do.
    pub(super) _reserved: Vec<OwnedSemaphorePermit>,
    /// `None` when `bytes` is the whole body; else what was read past the limit, and the
    /// rest is still in the body.
    pub(super) rest: Option<Bytes>,
}

/// Reads `body` up to `limit` bytes, reserving each piece from `budget`. Past the budget
/// the rest is read and dropped, so the client that sent it reads a clean 503 instead of
/// a reset.
pub(super) async fn read_up_to<B>(
    body: &mut Pin<Box<B>>,
    limit: usize,
    budget: &BufferBudget,
) -> Result<Collected, Collect>
where
    B: http_body::Body<Data = Bytes> + ?Sized,
{
    let mut collected = bytes::BytesMut::new();
    let mut reserved = Vec::new();
    let mut read = 0usize;
    let mut reserved_kib = 0usize;
    let mut busy = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Collect::Unreadable);
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if busy {
            continue;
        }
        let room = limit.saturating_sub(read);
        let past = (data.len() > room).then(|| data.split_off(room));
        read = read.saturating_add(data.len());
        // Reserved by the running total, so many small frames cost what they weigh.
        let needed = read.div_ceil(1024).saturating_sub(reserved_kib) * 1024;
        match budget.take(needed) {
            Some(reservation) => {
                reserved_kib += needed / 1024;
                reserved.push(reservation);
                collected.extend_from_slice(&data);
            }
            None => {
                busy = true;
                reserved.clear();
                collected = bytes::BytesMut::new();
                continue;
            }
        }
        if let Some(past) = past {
            return Ok(Collected {
                bytes: collected.freeze(),
                _reserved: reserved,
                rest: Some(past),
            });
        }
    }
    if busy {
        return Err(Collect::Busy);
    }
    Ok(Collected {
        bytes: collected.freeze(),
        _reserved: reserved,
        rest: None,
    })
}

pub(super) fn busy() -> Response<ResponseBody> {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "this host holds as many forwarded bodies as it may; retry shortly\n",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}
