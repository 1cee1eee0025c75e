//! Bodies too large for one NATS message, streamed between two hosts in bounded chunks
//! with credit-based flow control, so a 100 MiB upload through a host that does not run
//! the app holds a few chunks in memory, not the upload.
//!
//! A streamed body starts in the request (or reply) message that carries the head, with
//! `Shoal-Body: stream`, a random `Shoal-Stream` id and `Shoal-From` (the sending host);
//! that message's payload is the body's first part. The rest travels as messages on the
//! http subject of the receiving host (`…http.<host>.<namespace>.<app>`, where hosts may
//! publish and only that host listens), each with the stream id and a `Shoal-Part`:
//! `data` (a chunk), `end`, `abort`. The receiver grants `credit`s the same way, on the
//! sender's http subject: [`WINDOW`] at the start, one more per chunk it passes on. A
//! sender never has more than the window in flight; a receiver that is sent more (a
//! sender ignoring credits) ends the stream as broken. A stream silent for [`IDLE`] ends
//! as broken too, so a host that died mid-stream costs a bounded wait.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::BufferBudget;

/// `stream` when the message's payload is only the first part of its body.
pub(super) const BODY: &str = "Shoal-Body";
/// The stream's id, random: only the two hosts that use it know it.
pub(super) const STREAM: &str = "Shoal-Stream";
/// The host that sent the message, where the other side sends credits and chunks.
pub(super) const FROM: &str = "Shoal-From";
/// What a stream message is: `data`, `end`, `abort` or `credit`.
pub(super) const PART: &str = "Shoal-Part";
/// How many chunks a `credit` message grants.
const CREDIT: &str = "Shoal-Credit";

/// The most bytes of one chunk.
pub(super) const CHUNK: usize = 256 * 1024;
/// Chunks a sender may have in flight before a credit comes back.
pub(super) const WINDOW: usize = 4;
/// How long a stream may go without a chunk or a credit before it is given up.
pub(super) const IDLE: Duration = Duration::from_secs(30);

/// What one stream message carries, as the receiving side's queue holds it.
#[derive(Debug)]
pub(super) enum Part {
    Data(Bytes),
    End,
    Abort,
}

/// The streams one host is part of, by id.
#[derive(Clone, Default)]
pub(super) struct Streams {
    open: Arc<Mutex<HashMap<String, Slot>>>,
}

struct Slot {
    namespace: String,
    app: String,
    /// Credits granted to this side's sending half.
    credits: Arc<Semaphore>,
    /// Where this side's receiving half gets its chunks; `None` when it receives none.
    incoming: Option<mpsc::Sender<Part>>,
}

/// A stream this host takes part in, open until dropped.
pub(super) struct Registration {
    streams: Streams,
    id: String,
    /// Credits for chunks this side sends.
    pub(super) credits: Arc<Semaphore>,
    /// Chunks this side receives.
    pub(super) incoming: Option<mpsc::Receiver<Part>>,
    /// The bytes the window may hold, reserved from the host's forward buffer.
    _reserved: OwnedSemaphorePermit,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OpenError {
    /// The forward buffer cannot hold another window.
    Busy,
    /// The id is malformed or already in use.
    BadId,
}

/// A fresh stream id: 128 bits from the operating system's generator, as hex (a NATS
/// token). Unguessable, so no other host can slip chunks into a stream it is not part of.
pub(super) fn new_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Whether `id` can be a stream id (what [`new_id`] makes: a short alphanumeric token).
fn valid_id(id: &str) -> bool {
    (8..=64).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

impl Streams {
    /// Opens stream `id` for `namespace/app`, with a queue for chunks when `receiving`;
    /// reserves the window from `budget`.
    pub(super) fn open(
        &self,
        id: &str,
        namespace: &str,
        app: &str,
        receiving: bool,
        budget: &BufferBudget,
    ) -> Result<Registration, OpenError> {
        if !valid_id(id) {
            return Err(OpenError::BadId);
        }
        let reserved = budget.take(WINDOW * CHUNK).ok_or(OpenError::Busy)?;
        let credits = Arc::new(Semaphore::new(0));
        // The window, and room for the `end` or `abort` after it.
        let (sender, receiver) = if receiving {
            let (sender, receiver) = mpsc::channel(WINDOW + 1);
            (Some(sender), Some(receiver))
        } else {
            (None, None)
        };
        let mut open = self.open.lock().map_err(|_| OpenError::BadId)?;
        if open.contains_key(id) {
            return Err(OpenError::BadId);
        }
        open.insert(
            id.to_owned(),
            Slot {
                namespace: namespace.to_owned(),
                app: app.to_owned(),
                credits: Arc::clone(&credits),
                incoming: sender,
            },
        );
        Ok(Registration {
            streams: self.clone(),
            id: id.to_owned(),
            credits,
            incoming: receiver,
            _reserved: reserved,
        })
    }

    /// Hands a stream message that arrived on `namespace/app`'s subject to its stream.
    /// Messages for streams this host does not have (ended, or never) are dropped.
    pub(super) fn deliver(
        &self,
        namespace: &str,
        app: &str,
        headers: &async_nats::HeaderMap,
        payload: Bytes,
    ) {
        let (Some(id), Some(part)) = (headers.get(STREAM), headers.get(PART)) else {
            return;
        };
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        let Some(slot) = open.get(id.as_str()) else {
            return;
        };
        if slot.namespace != namespace || slot.app != app {
            return;
        }
        let part = match part.as_str() {
            "credit" => {
                let granted = headers
                    .get(CREDIT)
                    .and_then(|credit| credit.as_str().parse::<usize>().ok())
                    .unwrap_or(0)
                    .min(WINDOW);
                slot.credits.add_permits(granted);
                return;
            }
            "data" => Part::Data(payload),
            "end" => Part::End,
            _ => Part::Abort,
        };
        let Some(incoming) = &slot.incoming else {
            return;
        };
        if incoming.try_send(part).is_err() {
            // More than the window: the sender ignores credits. The receiver sees the
            // stream end unfinished.
            tracing::debug!(stream = %id, "a stream sent past its window; ended");
            if let Some(slot) = open.get_mut(id.as_str()) {
                slot.incoming = None;
            }
        }
    }
}

/// One side's view of the other end of a stream: where its messages go.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) client: async_nats::Client,
    /// The other host's http subject for the app.
    pub(super) subject: String,
    pub(super) id: String,
}

impl Peer {
    async fn send(
        &self,
        part: &'static str,
        extra: Option<(&'static str, String)>,
        payload: Bytes,
    ) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(STREAM, self.id.as_str());
        headers.insert(PART, part);
        if let Some((name, value)) = extra {
            headers.insert(name, value);
        }
        if let Err(error) = self
            .client
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
        {
            tracing::debug!(%error, "cannot send a stream message");
        }
    }

    /// Grants the sender `chunks` more.
    async fn grant(&self, chunks: usize) {
        self.send("credit", Some((CREDIT, chunks.to_string())), Bytes::new())
            .await;
    }
}

/// The body the receiving side reads: `first`, then the chunks as they come (granting a
/// credit for each), failing when the stream breaks or goes silent for [`IDLE`].
pub(super) fn receive(
    first: Bytes,
    registration: Registration,
    peer: Peer,
) -> http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error> {
    struct State {
        first: Option<Bytes>,
        registration: Registration,
        peer: Peer,
        granted: bool,
        done: bool,
    }
    let state = State {
        first: Some(first).filter(|first| !first.is_empty()),
        registration,
        peer,
        granted: false,
        done: false,
    };
    let chunks = futures_util::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        if let Some(first) = state.first.take() {
            return Some((Ok(http_body::Frame::data(first)), state));
        }
        if !state.granted {
            state.granted = true;
            state.peer.grant(WINDOW).await;
        }
        let incoming = state.registration.incoming.as_mut()?;
        let next = tokio::time::timeout(IDLE, incoming.recv()).await;
        match next {
            Ok(Some(Part::Data(data))) => {
                state.peer.grant(1).await;
                Some((Ok(http_body::Frame::data(data)), state))
            }
            Ok(Some(Part::End)) => None,
            Ok(Some(Part::Abort) | None) => {
                state.done = true;
                Some((Err(wasmtime_wasi_http::Error::ConnectionTerminated), state))
            }
            Err(_) => {
                state.done = true;
                Some((Err(wasmtime_wasi_http::Error::ConnectionReadTimeout), state))
            }
        }
    });
    http_body_util::StreamBody::new(chunks).boxed_unsync()
}

/// Sends `leftover`, then what is left of `body`, as chunks within the credits granted to
/// `registration`, then `end` (or `abort` when the body fails or no credit comes for
/// [`IDLE`]).
pub(super) async fn send<B>(
    leftover: Bytes,
    body: &mut Pin<Box<B>>,
    registration: &Registration,
    peer: &Peer,
) where
    B: Body<Data = Bytes> + ?Sized,
{
    if !send_data(leftover, registration, peer).await {
        return;
    }
    loop {
        let frame = match tokio::time::timeout(IDLE, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => {
                peer.send("end", None, Bytes::new()).await;
                return;
            }
            Ok(Some(Err(_))) | Err(_) => {
                peer.send("abort", None, Bytes::new()).await;
                return;
            }
        };
        if let Ok(data) = frame.into_data()
            && !send_data(data, registration, peer).await
        {
            return;
        }
    }
}

/// Reads what is left of a request body and drops it, in the background: the app answered
/// before it read all of it, and a client still sending reads that answer, not a reset.
/// Stops at the body's end, an error, or [`IDLE`] without a byte.
pub(super) fn drain<B>(mut body: Pin<Box<B>>)
where
    B: Body<Data = Bytes> + Send + ?Sized + 'static,
{
    tokio::spawn(async move {
        while let Ok(Some(Ok(_))) = tokio::time::timeout(IDLE, body.frame()).await {}
    });
}

/// Sends `data` in chunks, each when a credit allows; `false` (after an `abort`) when no
/// credit came for [`IDLE`].
async fn send_data(mut data: Bytes, registration: &Registration, peer: &Peer) -> bool {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(CHUNK));
        match tokio::time::timeout(IDLE, registration.credits.acquire()).await {
            Ok(Ok(permit)) => permit.forget(),
            _ => {
                peer.send("abort", None, Bytes::new()).await;
                return false;
            }
        }
        peer.send("data", None, piece).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_tokens_and_open_once() {
        let fresh = new_id().unwrap();
        assert!(valid_id(&fresh), "{fresh}");
        assert_ne!(new_id(), Some(fresh));
        assert!(valid_id("AbC123xyz0"));
        assert!(!valid_id("short"));
        assert!(!valid_id("has.dot.in.it"));
        assert!(!valid_id("wild*card*1"));
        let streams = Streams::default();
        let budget = BufferBudget::new(4 * WINDOW * CHUNK);
        let first = streams.open("AbC123xyz0", "default", "a", true, &budget);
        assert!(first.is_ok());
        assert_eq!(
            streams
                .open("AbC123xyz0", "default", "a", true, &budget)
                .err(),
            Some(OpenError::BadId)
        );
        drop(first);
        assert!(
            streams
                .open("AbC123xyz0", "default", "a", true, &budget)
                .is_ok()
        );
    }

    #[test]
    fn a_window_is_reserved_from_the_buffer_and_past_it_is_busy() {
        let streams = Streams::default();
        let budget = BufferBudget::new(WINDOW * CHUNK);
        let held = streams.open("Stream0001", "default", "a", false, &budget);
        assert!(held.is_ok());
        assert_eq!(
            streams
                .open("Stream0002", "default", "a", false, &budget)
                .err(),
            Some(OpenError::Busy)
        );
    }

    #[test]
    fn parts_reach_their_stream_only_from_its_app_and_never_past_the_window() {
        let streams = Streams::default();
        let budget = BufferBudget::new(WINDOW * CHUNK);
        let mut registration = streams
            .open("Stream0001", "default", "a", true, &budget)
            .ok()
            .unwrap();
        let part = |part: &str| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(STREAM, "Stream0001");
            headers.insert(PART, part);
            headers
        };
        // Another app's subject: ignored.
        streams.deliver("default", "b", &part("data"), Bytes::from_static(b"x"));
        let incoming = registration.incoming.as_mut().unwrap();
        assert!(incoming.try_recv().is_err());
        let mut credit = part("credit");
        credit.insert(CREDIT, "1000000");
        streams.deliver("default", "a", &credit, Bytes::new());
        assert_eq!(registration.credits.available_permits(), WINDOW);
        for _ in 0..=WINDOW + 1 {
            streams.deliver("default", "a", &part("data"), Bytes::from_static(b"x"));
        }
        let incoming = registration.incoming.as_mut().unwrap();
        let mut received = 0;
        while let Ok(Part::Data(_)) = incoming.try_recv() {
            received += 1;
        }
        assert_eq!(received, WINDOW + 1);
        // The sender overflowed: the stream is cut, the receiver sees it end.
        assert!(matches!(
            incoming.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
    }
}
