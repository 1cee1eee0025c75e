//! Forwarding HTTP over the lattice: a host with no ready local replica of an app sends the
//! request to one of the app's endpoints (the hosts with a ready replica, as the scheduler
//! lists them in the app's routing record), on `shoal.<lattice>.v1.http.<host>.<namespace>.<app>`.
//! Each host listens only under its own id, which is all a host credential may subscribe
//! to: a host cannot take another app's requests. Endpoints are tried round robin; one that
//! has no replica of the app any more (`Shoal-Not-Here`) or is gone (no responders) passes
//! the request to the next, so a stale list costs a retry, not an error. With no endpoint
//! left the request waits up to a second for the list to change, then gets 503.
//!
//! On the wire a request is one NATS message: HTTP headers as NATS headers, plus
//! `Shoal-Method` and `Shoal-Uri`; the body is the payload. The reply carries
//! `Shoal-Status` and the response headers, with the body as payload. Bodies are buffered:
//! a request body over the forwarding limit is refused with 413 before it is sent, and a
//! response over it becomes 502, never a truncated answer.

use std::convert::Infallible;
use std::net::SocketAddr;
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

/// Default cap on forwarded bodies; the NATS server's `max_payload` may lower it.
pub const DEFAULT_FORWARD_LIMIT: usize = 8 << 20;

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

/// Why a body could not be buffered.
enum Collect {
    TooLarge,
    Busy,
    Unreadable,
}

/// Reads `body` whole, up to `limit` bytes, reserving each piece from `budget`: the bytes
/// and the reservations, which must live as long as the bytes do. Past the budget the rest
/// is read and dropped, so the client that sent it reads a clean 503 instead of a reset.
async fn collect_within<B>(
    body: B,
    limit: usize,
    budget: &BufferBudget,
) -> Result<(Bytes, Vec<OwnedSemaphorePermit>), Collect>
where
    B: http_body::Body<Data = Bytes>,
{
    let mut body = std::pin::pin!(body);
    let mut collected = bytes::BytesMut::new();
    let mut reserved = Vec::new();
    let mut read = 0usize;
    let mut reserved_kib = 0usize;
    let mut busy = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Collect::Unreadable);
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        read = read.saturating_add(data.len());
        if read > limit {
            return Err(Collect::TooLarge);
        }
        if busy {
            continue;
        }
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
            }
        }
    }
    if busy {
        return Err(Collect::Busy);
    }
    Ok((collected.freeze(), reserved))
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
    limit: usize,
    budget: BufferBudget,
    tasks: Arc<Semaphore>,
}

impl Forwarder {
    /// A forwarder over `client` for host `host` of `lattice`, finding endpoints in
    /// `router`; bodies up to `limit` bytes (lowered to what the server accepts).
    pub fn new(
        client: async_nats::Client,
        lattice: &str,
        host: &str,
        router: Arc<Router>,
        limit: usize,
        budget: BufferBudget,
    ) -> Self {
        let server_limit = client.server_info().max_payload.saturating_sub(64 * 1024);
        Self {
            client,
            lattice: lattice.to_owned(),
            host: host.to_owned(),
            router,
            next: Arc::new(AtomicUsize::new(0)),
            limit: limit.min(server_limit.max(64 * 1024)),
            budget,
            tasks: Arc::new(Semaphore::new(MAX_FORWARDED_TASKS)),
        }
    }

    /// The largest body forwarded.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Forwards `request` for `namespace/app` and returns the answer, or 413, 502, 503, or
    /// 504 when none comes within `timeout` (the request died with its host, or ran long).
    pub async fn forward<B>(
        &self,
        namespace: &str,
        app: &str,
        request: Request<B>,
        peer: Option<SocketAddr>,
        timeout: Duration,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let too_large = || {
            plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than the lattice forwards\n",
            )
        };
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|length| length.to_str().ok())
            .and_then(|length| length.parse::<usize>().ok());
        if declared.is_some_and(|length| length > self.limit) {
            return too_large();
        }
        let over_tls = request.extensions().get::<ArrivedOverTls>().is_some();
        let (parts, body) = request.into_parts();
        let (body, _reserved) = match collect_within(body, self.limit, &self.budget).await {
            Ok(collected) => collected,
            Err(Collect::TooLarge) => return too_large(),
            Err(Collect::Busy) => return busy(),
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
        self.send(namespace, app, headers, body, timeout).await
    }

    /// Sends a request to the app's endpoints in turn until one answers.
    async fn send(
        &self,
        namespace: &str,
        app: &str,
        headers: async_nats::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Response<ResponseBody> {
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
                let sent = self
                    .client
                    .send_request(
                        subject,
                        async_nats::Request::new()
                            .headers(headers.clone())
                            .payload(body.clone())
                            .timeout(Some(timeout)),
                    )
                    .await;
                match sent {
                    Ok(message)
                        if message
                            .headers
                            .as_ref()
                            .is_some_and(|headers| headers.get(NOT_HERE).is_some()) => {}
                    Ok(message) => return into_response(message),
                    Err(error) => match error.kind() {
                        // That host is gone: the next one.
                        async_nats::RequestErrorKind::NoResponders => {}
                        async_nats::RequestErrorKind::TimedOut => {
                            return plain(
                                StatusCode::GATEWAY_TIMEOUT,
                                "the replica did not answer in time\n",
                            );
                        }
                        _ => {
                            tracing::warn!(%error, %namespace, %app, "forwarding failed");
                            return plain(
                                StatusCode::BAD_GATEWAY,
                                "the request could not be forwarded\n",
                            );
                        }
                    },
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
}

fn into_response(message: async_nats::Message) -> Response<ResponseBody> {
    let Some(headers) = message.headers else {
        return plain(StatusCode::BAD_GATEWAY, "malformed forwarded response\n");
    };
    let status = headers
        .get(STATUS)
        .and_then(|status| status.as_str().parse::<u16>().ok())
        .and_then(|status| StatusCode::from_u16(status).ok());
    let Some(status) = status else {
        return plain(StatusCode::BAD_GATEWAY, "malformed forwarded response\n");
    };
    let mut response = Response::new(full(message.payload));
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
    response
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
/// `Shoal-Not-Here`, which sends the forwarder to the next endpoint.
pub async fn listen(
    client: async_nats::Client,
    lattice: &str,
    host: &str,
    forwarder: Forwarder,
    router: Arc<Router>,
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
            let Some(reply) = message.reply.clone() else {
                continue;
            };
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
            let component = message
                .subject
                .strip_prefix(&*prefix)
                .and_then(|rest| rest.split_once('.'))
                .and_then(|(namespace, app)| router.pick(namespace, app));
            let client = client.clone();
            let host = Arc::clone(&host);
            let forwarder = forwarder.clone();
            tokio::spawn(async move {
                let _reserved = reserved;
                let (mut headers, payload) = answer(&forwarder, component, message).await;
                headers.insert(SERVED_BY, &*host);
                if let Err(error) = client.publish_with_headers(reply, headers, payload).await {
                    tracing::debug!(%error, "cannot reply to a forwarded request");
                }
            });
        }
    }))
}

/// The body of a request rebuilt from a forwarded message.
type ForwardedBody =
    http_body_util::combinators::MapErr<Full<Bytes>, fn(Infallible) -> wasmtime_wasi_http::Error>;

/// Rebuilds the HTTP request a forwarded message carries; `None` when the message is not
/// one (no headers, a method or URI that does not parse).
fn forwarded_request(
    headers: Option<&async_nats::HeaderMap>,
    payload: Bytes,
) -> Option<Request<ForwardedBody>> {
    let headers = headers?;
    let method = headers.get(METHOD).map_or("GET", |method| method.as_str());
    let uri = headers.get(URI).map_or("/", |uri| uri.as_str());
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, values) in headers.iter() {
        let name = name.to_string();
        if name.eq_ignore_ascii_case(METHOD)
            || name.eq_ignore_ascii_case(URI)
            || name.eq_ignore_ascii_case(SCHEME)
        {
            continue;
        }
        for value in values {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    let never: fn(Infallible) -> wasmtime_wasi_http::Error = |never| match never {};
    let mut request = builder.body(Full::new(payload).map_err(never)).ok()?;
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

async fn answer(
    forwarder: &Forwarder,
    component: Option<Arc<HttpComponent>>,
    message: async_nats::Message,
) -> (async_nats::HeaderMap, Bytes) {
    let Some(component) = component else {
        let (mut headers, payload) = reply_plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "no ready replica of this app on this host\n",
        );
        headers.insert(NOT_HERE, "1");
        return (headers, payload);
    };
    let Some(request) = forwarded_request(message.headers.as_ref(), message.payload) else {
        return reply_plain(StatusCode::BAD_REQUEST, "malformed forwarded request\n");
    };
    let response = component.handle(request).await;
    let (parts, body) = response.into_parts();
    let body = match collect_within(body, forwarder.limit, &forwarder.budget).await {
        Ok((body, _reserved)) => body,
        Err(Collect::Busy) => return reply_busy(),
        Err(Collect::TooLarge | Collect::Unreadable) => {
            return reply_plain(
                StatusCode::BAD_GATEWAY,
                "the response is larger than the lattice forwards\n",
            );
        }
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS, parts.status.as_u16().to_string());
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            headers.append(name.as_str(), value);
        }
    }
    (headers, body)
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
            let _ = into_response(message);
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
        let Ok((bytes, reserved)) = collect_within(body, 1 << 20, &budget).await else {
            panic!("a 10 KB body fits a 64 KiB budget");
        };
        assert_eq!(bytes.len(), 10_000);
        assert_eq!(budget.unreserved(), (64 - 10) * 1024);
        drop(reserved);
        assert_eq!(budget.unreserved(), 64 * 1024);
        let large = Full::new(Bytes::from(vec![0u8; 65 * 1024]));
        assert!(matches!(
            collect_within(large, 1 << 20, &budget).await,
            Err(Collect::Busy)
        ));
        assert_eq!(budget.unreserved(), 64 * 1024);
    }

    #[test]
    fn a_message_without_headers_is_malformed() {
        assert!(forwarded_request(None, Bytes::new()).is_none());
    }
}
