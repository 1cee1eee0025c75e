//! Forwarding HTTP over the lattice: a host with no ready local replica of an app sends the
//! request to one of the app's endpoints (the hosts with a ready replica, as the scheduler
//! lists them in the app's routing record), on `shoal.<lattice>.v1.http.<host>.<namespace>.<app>`.
//! Each host listens only under its own id, which is all a host credential may subscribe
//! to: a host cannot take another app's requests. Endpoints are tried round robin; one that
//! has no replica of the app any more (`Shoal-Not-Here`) or is gone (no responders) passes
//! the request to the next, so a stale list costs a retry, not an error. With no endpoint
//! left the request waits up to a second for the list to change, then gets 503.
//!
//! On the wire a request is a NATS request: HTTP headers as NATS headers, plus
//! `Shoal-Method`, `Shoal-Uri` and `Shoal-From` (the forwarding host); the body is the
//! payload. The reply carries `Shoal-Status` and the response headers, with the body as
//! payload. A body up to [`INLINE_LIMIT`] travels in that one message; a larger one (either
//! way) starts there and streams in chunks with flow control ([`stream`]), so a host holds
//! a few chunks of it, never the whole body. Bodies are bounded by the app's
//! `limits.maxBody` at the host that runs it.

mod stream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::http::{ArrivedOverTls, HttpComponent, ResponseBody, plain};
use crate::router::Router;

const METHOD: &str = "Shoal-Method";
const URI: &str = "Shoal-Uri";
const STATUS: &str = "Shoal-Status";
/// `https` when the request reached the lattice over TLS.
const SCHEME: &str = "Shoal-Scheme";
/// In a reply: this host has no ready replica of the app; try another endpoint.
const NOT_HERE: &str = "Shoal-Not-Here";
/// How long a request with no endpoint that answers waits for the endpoints to change.
const ENDPOINT_WAIT: Duration = Duration::from_secs(1);

/// The largest body sent in the message with its head; a larger one streams. The NATS
/// server's `max_payload` may lower it.
pub const INLINE_LIMIT: usize = 1 << 20;

/// Headers that belong to one hop and are not forwarded.
fn hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
    ) || name.starts_with("proxy-")
        || name.eq_ignore_ascii_case(METHOD)
        || name.eq_ignore_ascii_case(URI)
        || name.eq_ignore_ascii_case(STATUS)
        || name.eq_ignore_ascii_case(SCHEME)
        || name.eq_ignore_ascii_case(NOT_HERE)
        || name.eq_ignore_ascii_case(stream::BODY)
        || name.eq_ignore_ascii_case(stream::STREAM)
        || name.eq_ignore_ascii_case(stream::FROM)
        || name.eq_ignore_ascii_case(stream::PART)
}

/// Most forwarded requests a host answers at once for other hosts; more get 503 at once, so
/// a flood of messages never becomes a flood of tasks.
pub const MAX_FORWARDED_TASKS: usize = 256;

/// Bytes of forwarded bodies a host holds at once, shared by the requests it forwards and
/// the ones it answers for other hosts: many concurrent large bodies get 503, not memory.
#[derive(Clone)]
pub struct BufferBudget {
    kib: Arc<Semaphore>,
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
    fn take(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        Arc::clone(&self.kib).try_acquire_many_owned(kib).ok()
    }

    /// The budget's size in bytes, for tests.
    #[cfg(test)]
    fn unreserved(&self) -> usize {
        self.kib.available_permits() * 1024
    }
}

/// Why a body could not be read.
enum Collect {
    Busy,
    Unreadable,
}

/// A body's first part, read into memory.
struct Collected {
    bytes: Bytes,
    /// The forward buffer reserved for `bytes`, which must live as long as they do.
    _reserved: Vec<OwnedSemaphorePermit>,
    /// `None` when `bytes` is the whole body; else what was read past the limit, and the
    /// rest is still in the body.
    rest: Option<Bytes>,
}

/// Reads `body` up to `limit` bytes, reserving each piece from `budget`. Past the budget
/// the rest is read and dropped, so the client that sent it reads a clean 503 instead of
/// a reset.
async fn read_up_to<B>(
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

fn busy() -> Response<ResponseBody> {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "this host holds as many forwarded bodies as it may; retry shortly\n",
    );
    response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Sends requests to other hosts.
#[derive(Clone)]
pub struct Forwarder {
    client: async_nats::Client,
    lattice: String,
    /// This host's id: never an endpoint of its own forwarded requests.
    host: String,
    router: Arc<Router>,
    next: Arc<AtomicUsize>,
    /// The largest body sent in one message; larger ones stream.
    inline: usize,
    budget: BufferBudget,
    tasks: Arc<Semaphore>,
    streams: stream::Streams,
}

/// A request body that streams after its head: what is left of it and its stream.
/// Dropped, however the request ended (an answer, a 503, a 504, a NATS error), it reads
/// what the client still sends and throws it away, so the client reads the answer rather
/// than a reset.
struct Outgoing<B>
where
    B: http_body::Body<Data = Bytes> + Send + ?Sized + 'static,
{
    registration: stream::Registration,
    id: String,
    leftover: Bytes,
    body: Option<Pin<Box<B>>>,
}

impl<B> Drop for Outgoing<B>
where
    B: http_body::Body<Data = Bytes> + Send + ?Sized + 'static,
{
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            stream::drain(body);
        }
    }
}

impl Forwarder {
    /// A forwarder over `client` for host `host` of `lattice`, finding endpoints in
    /// `router`; bodies up to `inline` bytes travel in one message (lowered to what the
    /// server accepts), larger ones stream.
    pub fn new(
        client: async_nats::Client,
        lattice: &str,
        host: &str,
        router: Arc<Router>,
        inline: usize,
        budget: BufferBudget,
    ) -> Self {
        let server_limit = client.server_info().max_payload.saturating_sub(64 * 1024);
        Self {
            client,
            lattice: lattice.to_owned(),
            host: host.to_owned(),
            router,
            next: Arc::new(AtomicUsize::new(0)),
            inline: inline.min(server_limit.max(64 * 1024)),
            budget,
            tasks: Arc::new(Semaphore::new(MAX_FORWARDED_TASKS)),
            streams: stream::Streams::default(),
        }
    }

    /// Where stream messages for `namespace/app` reach `host`.
    fn peer(&self, host: &str, namespace: &str, app: &str, id: &str) -> stream::Peer {
        stream::Peer {
            client: self.client.clone(),
            subject: shoal_lattice::names::http_subject(&self.lattice, host, namespace, app),
            id: id.to_owned(),
        }
    }

    /// Forwards `request` for `namespace/app` and returns the answer, or 502, 503, or 504
    /// when none comes within `timeout` (the request died with its host, or ran long).
    pub async fn forward<B>(
        &self,
        namespace: &str,
        app: &str,
        request: Request<B>,
        peer: Option<SocketAddr>,
        timeout: Duration,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let over_tls = request.extensions().get::<ArrivedOverTls>().is_some();
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok())
            .and_then(|length| length.parse::<u64>().ok());
        let (parts, body) = request.into_parts();
        let mut body = Box::pin(body);
        // A body declared larger than one message streams from the start: the replica's
        // host may refuse it (413) before any of it is read.
        let read = if declared.is_some_and(|length| length > self.inline as u64) {
            Ok(Collected {
                bytes: Bytes::new(),
                _reserved: Vec::new(),
                rest: Some(Bytes::new()),
            })
        } else {
            read_up_to(&mut body, self.inline, &self.budget).await
        };
        let collected = match read {
            Ok(collected) => collected,
            Err(Collect::Busy) => {
                stream::drain(body);
                return busy();
            }
            Err(Collect::Unreadable) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read\n",
                );
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(METHOD, parts.method.as_str());
        headers.insert(
            URI,
            parts.uri.path_and_query().map_or("/", |path| path.as_str()),
        );
        headers.insert(stream::FROM, self.host.as_str());
        for (name, value) in &parts.headers {
            if hop_by_hop(name.as_str()) {
                continue;
            }
            if let Ok(value) = value.to_str() {
                headers.append(name.as_str(), value);
            }
        }
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default();
        if !host.is_empty() {
            headers.insert("host", host);
        }
        if let Some(peer) = peer {
            let ip = peer.ip().to_string();
            let forwarded_for = match parts
                .headers
                .get("x-forwarded-for")
                .and_then(|value| value.to_str().ok())
            {
                Some(earlier) => format!("{earlier}, {ip}"),
                None => ip.clone(),
            };
            headers.insert("x-forwarded-for", forwarded_for);
            let ip = if peer.is_ipv6() {
                format!("\"[{ip}]\"")
            } else {
                ip
            };
            let proto = if over_tls { "https" } else { "http" };
            headers.append(
                "forwarded",
                format!("for={ip};host=\"{host}\";proto={proto}"),
            );
        }
        if over_tls {
            headers.insert(SCHEME, "https");
        }
        let outgoing = match collected.rest {
            None => None,
            Some(leftover) => {
                let Some(id) = stream::new_id() else {
                    stream::drain(body);
                    return busy();
                };
                let registration = match self.streams.open(&id, namespace, app, false, &self.budget)
                {
                    Ok(registration) => registration,
                    Err(stream::OpenError::Busy) => {
                        stream::drain(body);
                        return busy();
                    }
                    Err(stream::OpenError::BadId) => {
                        stream::drain(body);
                        return plain(
                            StatusCode::BAD_GATEWAY,
                            "the request could not be forwarded\n",
                        );
                    }
                };
                headers.insert(stream::BODY, "stream");
                headers.insert(stream::STREAM, id.as_str());
                Some(Outgoing {
                    registration,
                    id,
                    leftover,
                    body: Some(body),
                })
            }
        };
        self.send(namespace, app, headers, collected.bytes, timeout, outgoing)
            .await
    }

    /// Sends a request to the app's endpoints in turn until one answers; a streamed body
    /// goes to the first endpoint that grants it credit.
    async fn send<B>(
        &self,
        namespace: &str,
        app: &str,
        headers: async_nats::HeaderMap,
        body: Bytes,
        timeout: Duration,
        mut outgoing: Option<Outgoing<B>>,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + ?Sized + 'static,
    {
        let waiting_until = tokio::time::Instant::now() + ENDPOINT_WAIT.min(timeout);
        loop {
            let endpoints = self.router.endpoints(namespace, app);
            let candidates: Vec<&String> = endpoints
                .iter()
                .filter(|endpoint| **endpoint != self.host)
                .collect();
            let start = self.next.fetch_add(1, Ordering::Relaxed);
            for offset in 0..candidates.len() {
                let endpoint = candidates[(start + offset) % candidates.len()];
                let subject =
                    shoal_lattice::names::http_subject(&self.lattice, endpoint, namespace, app);
                let request = self.client.send_request(
                    subject,
                    async_nats::Request::new()
                        .headers(headers.clone())
                        .payload(body.clone())
                        .timeout(Some(timeout)),
                );
                let sent = match &outgoing {
                    None => request.await,
                    Some(streaming) => {
                        tokio::pin!(request);
                        // The endpoint takes the stream by granting credit; until then
                        // its answer may still send the request elsewhere.
                        let taken = tokio::select! {
                            reply = &mut request => Err(reply),
                            _ = streaming.registration.credits.acquire() => Ok(()),
                        };
                        match taken {
                            Err(reply) => reply,
                            Ok(()) => {
                                let Some(mut streaming) = outgoing.take() else {
                                    continue;
                                };
                                let peer = self.peer(endpoint, namespace, app, &streaming.id);
                                let leftover = std::mem::take(&mut streaming.leftover);
                                let reply = match streaming.body.as_mut() {
                                    Some(body) => {
                                        let sending = stream::send(
                                            leftover,
                                            body,
                                            &streaming.registration,
                                            &peer,
                                        );
                                        // The app may answer before it read the whole body
                                        // (dropping `streaming` drains the rest).
                                        tokio::select! {
                                            reply = &mut request => reply,
                                            () = sending => request.await,
                                        }
                                    }
                                    None => request.await,
                                };
                                return match reply {
                                    Ok(message) if !not_here(&message) => {
                                        self.response(message, namespace, app)
                                    }
                                    Ok(_) => plain(
                                        StatusCode::BAD_GATEWAY,
                                        "the request could not be forwarded\n",
                                    ),
                                    Err(error) => request_failed(&error, namespace, app),
                                };
                            }
                        }
                    }
                };
                match sent {
                    Ok(message) if not_here(&message) => {}
                    Ok(message) => return self.response(message, namespace, app),
                    // That host is gone: the next one.
                    Err(error) if error.kind() == async_nats::RequestErrorKind::NoResponders => {}
                    Err(error) => return request_failed(&error, namespace, app),
                }
            }
            // Nobody answered: the list may be changing (a rollout, a replica starting).
            if tokio::time::Instant::now() >= waiting_until {
                let mut response = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no ready replica of this app anywhere in the lattice\n",
                );
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The response a forwarded reply carries; its body streams when the reply says so.
    fn response(
        &self,
        message: async_nats::Message,
        namespace: &str,
        app: &str,
    ) -> Response<ResponseBody> {
        let streamed = message.headers.as_ref().and_then(|headers| {
            (headers.get(stream::BODY)?.as_str() == "stream").then(|| {
                (
                    headers.get(stream::STREAM).map(|id| id.as_str().to_owned()),
                    headers
                        .get(stream::FROM)
                        .map(|from| from.as_str().to_owned())
                        .filter(|from| shoal_lattice::names::check_host_id(from).is_ok()),
                )
            })
        });
        let (response, payload) = match response_head(message) {
            Some(head) => head,
            None => return plain(StatusCode::BAD_GATEWAY, "malformed forwarded response\n"),
        };
        let body = match streamed {
            None => full(payload),
            Some((Some(id), Some(from))) => {
                match self.streams.open(&id, namespace, app, true, &self.budget) {
                    Ok(registration) => {
                        let peer = self.peer(&from, namespace, app, &id);
                        stream::receive(payload, registration, peer)
                    }
                    Err(stream::OpenError::Busy) => return busy(),
                    Err(stream::OpenError::BadId) => {
                        return plain(StatusCode::BAD_GATEWAY, "malformed forwarded response\n");
                    }
                }
            }
            Some(_) => return plain(StatusCode::BAD_GATEWAY, "malformed forwarded response\n"),
        };
        response.map(|()| body)
    }
}

/// Whether a reply says its host has no ready replica of the app.
fn not_here(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(NOT_HERE).is_some())
}

/// The answer to a forwarded request that got no reply.
fn request_failed(
    error: &async_nats::RequestError,
    namespace: &str,
    app: &str,
) -> Response<ResponseBody> {
    match error.kind() {
        async_nats::RequestErrorKind::TimedOut => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the replica did not answer in time\n",
        ),
        _ => {
            tracing::warn!(%error, %namespace, %app, "forwarding failed");
            plain(
                StatusCode::BAD_GATEWAY,
                "the request could not be forwarded\n",
            )
        }
    }
}

/// The status and headers of a forwarded reply, and its payload; `None` when it is not a
/// response.
fn response_head(message: async_nats::Message) -> Option<(Response<()>, Bytes)> {
    let headers = message.headers?;
    let status = headers
        .get(STATUS)
        .and_then(|status| status.as_str().parse::<u16>().ok())
        .and_then(|status| StatusCode::from_u16(status).ok())?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    for (name, values) in headers.iter() {
        let name = name.to_string();
        if name.eq_ignore_ascii_case(STATUS)
            || hop_by_hop(&name.to_ascii_lowercase())
            || name.eq_ignore_ascii_case("content-length")
        {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(value) = HeaderValue::from_str(value.as_str()) {
                response.headers_mut().append(name.clone(), value);
            }
        }
    }
    Some((response, message.payload))
}

fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

/// The response header naming the host whose replica answered.
pub const SERVED_BY: &str = "x-served-by";

/// Serves the requests other hosts forward to this one (`…http.<host>.>`) until `stop`
/// fires; then unsubscribes and still answers what NATS had already delivered (draining).
/// Each is answered by a ready local replica of its app from `router`, or with
/// `Shoal-Not-Here`, which sends the forwarder to the next endpoint. Stream messages
/// (chunks of bodies and credits) go to their streams.
pub async fn listen(
    client: async_nats::Client,
    lattice: &str,
    host: &str,
    forwarder: Forwarder,
    router: Arc<Router>,
    metrics: Arc<crate::metrics::Metrics>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<tokio::task::JoinHandle<()>, async_nats::SubscribeError> {
    let prefix = shoal_lattice::names::http_subject(lattice, host, "", "");
    // `…http.<host>..` → `…http.<host>.`: what precedes `<namespace>.<app>`.
    let prefix = Arc::<str>::from(prefix.trim_end_matches('.').to_owned() + ".");
    let mut subscriber = client.subscribe(format!("{prefix}>")).await?;
    let host = Arc::<str>::from(host);
    Ok(tokio::spawn(async move {
        tokio::pin!(stop);
        let mut stopping = false;
        loop {
            let message = tokio::select! {
                message = subscriber.next() => message,
                _ = &mut stop, if !stopping => {
                    stopping = true;
                    if let Err(error) = subscriber.drain().await {
                        tracing::debug!(%error, "cannot drain a subscription");
                        break;
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                break;
            };
            let Some((namespace, app)) = message
                .subject
                .strip_prefix(&*prefix)
                .and_then(|rest| rest.split_once('.'))
            else {
                continue;
            };
            if let Some(headers) = &message.headers
                && headers.get(stream::PART).is_some()
            {
                forwarder
                    .streams
                    .deliver(namespace, app, headers, message.payload.clone());
                continue;
            }
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            // Answers go only to a forwarding host's inbox: a reply subject chosen freely
            // (a KV key, a JetStream API subject) would make this host write there.
            if !shoal_lattice::auth::is_inbox_of(&reply, "host", None) {
                let refused = metrics.refused_replies.fetch_add(1, Ordering::Relaxed);
                if refused == 0 {
                    tracing::warn!(%reply, subject = %message.subject, "dropped a forwarded request whose reply subject is not a host's inbox (logged once; counted in shoal_refused_replies_total)");
                }
                continue;
            }
            // Bounded: a task and the message's bytes are reserved, or it is refused now.
            let reserved = Arc::clone(&forwarder.tasks)
                .try_acquire_owned()
                .ok()
                .zip(forwarder.budget.take(message.payload.len()));
            let Some(reserved) = reserved else {
                let (headers, payload) = reply_busy();
                let _ = client.publish_with_headers(reply, headers, payload).await;
                continue;
            };
            let component = router.pick(namespace, app);
            let (namespace, app) = (namespace.to_owned(), app.to_owned());
            let client = client.clone();
            let host = Arc::clone(&host);
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                let _reserved = reserved;
                let (mut headers, payload, streaming) =
                    answer(&forwarder, component, message, &namespace, &app).await;
                headers.insert(SERVED_BY, &*host);
                if let Err(error) = client.publish_with_headers(reply, headers, payload).await {
                    tracing::debug!(%error, "cannot reply to a forwarded request");
                    return;
                }
                if let Some(mut streaming) = streaming {
                    stream::send(
                        streaming.leftover,
                        &mut streaming.body,
                        &streaming.registration,
                        &streaming.peer,
                    )
                    .await;
                }
            });
        }
    }))
}

/// A body rebuilt from a forwarded message: whole, or its first part and a stream.
type ForwardedBody = http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// Rebuilds the HTTP request a forwarded message carries, with `body`; `None` when the
/// message is not one (no headers, a method or URI that does not parse).
fn forwarded_request<B>(headers: Option<&async_nats::HeaderMap>, body: B) -> Option<Request<B>> {
    let headers = headers?;
    let method = headers.get(METHOD).map_or("GET", |method| method.as_str());
    let uri = headers.get(URI).map_or("/", |uri| uri.as_str());
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, values) in headers.iter() {
        let name = name.to_string();
        if name.eq_ignore_ascii_case(METHOD)
            || name.eq_ignore_ascii_case(URI)
            || name.eq_ignore_ascii_case(SCHEME)
            || name.eq_ignore_ascii_case(stream::BODY)
            || name.eq_ignore_ascii_case(stream::STREAM)
            || name.eq_ignore_ascii_case(stream::FROM)
        {
            continue;
        }
        for value in values {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    let mut request = builder.body(body).ok()?;
    if headers
        .get(SCHEME)
        .is_some_and(|scheme| scheme.as_str() == "https")
    {
        request.extensions_mut().insert(ArrivedOverTls);
    }
    Some(request)
}

/// The reply of a host past its forwarding budget or task limit.
fn reply_busy() -> (async_nats::HeaderMap, Bytes) {
    reply_plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the answering host is busy; retry shortly\n",
    )
}

fn reply_plain(status: StatusCode, text: &'static str) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS, status.as_u16().to_string());
    headers.insert("content-type", "text/plain; charset=utf-8");
    (headers, Bytes::from_static(text.as_bytes()))
}

/// A response body that streams after its reply: what is left of it and its stream.
struct ResponseStream {
    registration: stream::Registration,
    peer: stream::Peer,
    leftover: Bytes,
    body: Pin<Box<ResponseBody>>,
}

async fn answer(
    forwarder: &Forwarder,
    component: Option<Arc<HttpComponent>>,
    message: async_nats::Message,
    namespace: &str,
    app: &str,
) -> (async_nats::HeaderMap, Bytes, Option<ResponseStream>) {
    let whole = |(headers, payload)| (headers, payload, None);
    let Some(component) = component else {
        let (mut headers, payload) = reply_plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no ready replica of this app on this host\n",
        );
        headers.insert(NOT_HERE, "1");
        return (headers, payload, None);
    };
    // The forwarding host, where a streamed body's credits and chunks go.
    let from = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(stream::FROM))
        .map(|from| from.as_str().to_owned())
        .filter(|from| shoal_lattice::names::check_host_id(from).is_ok());
    let streamed = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(stream::BODY))
        .is_some_and(|body| body.as_str() == "stream");
    let body: ForwardedBody = if streamed {
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(stream::STREAM))
            .map(|id| id.as_str().to_owned());
        let (Some(id), Some(from)) = (id, &from) else {
            return whole(reply_plain(
                StatusCode::BAD_REQUEST,
                "malformed forwarded request\n",
            ));
        };
        match forwarder
            .streams
            .open(&id, namespace, app, true, &forwarder.budget)
        {
            Ok(registration) => {
                let peer = forwarder.peer(from, namespace, app, &id);
                stream::receive(message.payload.clone(), registration, peer)
            }
            Err(stream::OpenError::Busy) => return whole(reply_busy()),
            Err(stream::OpenError::BadId) => {
                return whole(reply_plain(
                    StatusCode::BAD_REQUEST,
                    "malformed forwarded request\n",
                ));
            }
        }
    } else {
        let never: fn(Infallible) -> wasmtime_wasi_http::Error = |never| match never {};
        Full::new(message.payload.clone())
            .map_err(never)
            .boxed_unsync()
    };
    let Some(request) = forwarded_request(message.headers.as_ref(), body) else {
        return whole(reply_plain(
            StatusCode::BAD_REQUEST,
            "malformed forwarded request\n",
        ));
    };
    let response = component.handle(request).await;
    let (parts, body) = response.into_parts();
    let mut body = Box::pin(body);
    let collected = match read_up_to(&mut body, forwarder.inline, &forwarder.budget).await {
        Ok(collected) => collected,
        Err(Collect::Busy) => return whole(reply_busy()),
        Err(Collect::Unreadable) => {
            return whole(reply_plain(
                StatusCode::BAD_GATEWAY,
                "the response could not be read\n",
            ));
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS, parts.status.as_u16().to_string());
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            headers.append(name.as_str(), value);
        }
    }
    let Some(leftover) = collected.rest else {
        return (headers, collected.bytes, None);
    };
    // Larger than one message: the rest streams to the forwarding host.
    let Some(from) = from else {
        return whole(reply_plain(
            StatusCode::BAD_GATEWAY,
            "the response is larger than the forwarding host can receive\n",
        ));
    };
    let Some(id) = stream::new_id() else {
        return whole(reply_busy());
    };
    let registration = match forwarder
        .streams
        .open(&id, namespace, app, false, &forwarder.budget)
    {
        Ok(registration) => registration,
        Err(_) => return whole(reply_busy()),
    };
    headers.insert(stream::BODY, "stream");
    headers.insert(stream::STREAM, id.as_str());
    headers.insert(stream::FROM, forwarder.host.as_str());
    let peer = forwarder.peer(&from, namespace, app, &id);
    (
        headers,
        collected.bytes.clone(),
        Some(ResponseStream {
            registration,
            peer,
            leftover,
            body,
        }),
    )
}

/// Fuzzing: forwarded messages with random headers, methods, URIs and statuses are answered
/// or refused, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn header_maps() -> impl Strategy<Value = async_nats::HeaderMap> {
        let name = prop_oneof![
            Just(METHOD.to_owned()),
            Just(URI.to_owned()),
            Just(STATUS.to_owned()),
            Just(NOT_HERE.to_owned()),
            Just("content-length".to_owned()),
            Just("host".to_owned()),
            "[!-9;-~]{1,12}",
        ];
        let value = prop_oneof![
            "[A-Z]{1,8}",
            "/[ -~]{0,40}",
            "[0-9]{1,12}",
            "[ -~]{0,40}",
            any::<String>(),
        ];
        prop::collection::vec((name, value), 0..8).prop_map(|pairs| {
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name.as_str(), value.as_str());
            }
            headers
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_forwarded_requests_never_panic(
            headers in header_maps(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = forwarded_request(Some(&headers), Bytes::from(payload));
        }

        #[test]
        fn random_forwarded_responses_never_panic(
            headers in header_maps(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let message = async_nats::Message {
                subject: "reply".into(),
                reply: None,
                payload: Bytes::from(payload),
                headers: Some(headers),
                status: None,
                description: None,
                length: 0,
            };
            let _ = response_head(message);
        }
    }

    #[tokio::test]
    async fn bodies_are_reserved_by_their_total_and_refused_past_the_budget() {
        let budget = BufferBudget::new(64 * 1024);
        // A thousand 10-byte frames weigh 10 KB, not a thousand KiB.
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..1000)
            .map(|_| Ok(http_body::Frame::data(Bytes::from_static(b"0123456789"))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let Ok(Collected {
            bytes,
            _reserved: reserved,
            rest: None,
        }) = read_up_to(&mut Box::pin(body), 1 << 20, &budget).await
        else {
            panic!("a 10 KB body fits a 64 KiB budget");
        };
        assert_eq!(bytes.len(), 10_000);
        assert_eq!(budget.unreserved(), (64 - 10) * 1024);
        drop(reserved);
        assert_eq!(budget.unreserved(), 64 * 1024);
        let large = Full::new(Bytes::from(vec![0u8; 65 * 1024]));
        assert!(matches!(
            read_up_to(&mut Box::pin(large), 1 << 20, &budget).await,
            Err(Collect::Busy)
        ));
        assert_eq!(budget.unreserved(), 64 * 1024);
    }

    #[test]
    fn a_message_without_headers_is_malformed() {
        assert!(forwarded_request(None, Bytes::new()).is_none());
    }
}
