//! The forwarding side: sends a request to one of an app's endpoints, round robin, past
//! endpoints that no longer serve it, streaming a large body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::Semaphore;

use super::{budget::*, stream, wire::*};
use crate::http::{ResponseBody, plain};
use crate::router::Router;
use crate::server::ArrivedOverTls;

/// How long a request with no endpoint that answers waits for the endpoints to change.
pub(super) const ENDPOINT_WAIT: Duration = Duration::from_secs(1);

/// Sends requests to other hosts.
#[derive(Clone)]
pub struct Forwarder {
    pub(super) client: async_nats::Client,
    pub(super) lattice: String,
    /// This host's id: never an endpoint of its own forwarded requests.
    pub(super) host: String,
    pub(super) router: Arc<Router>,
    pub(super) next: Arc<AtomicUsize>,
    /// The largest body sent in one message; larger ones stream.
    pub(super) inline: usize,
    pub(super) budget: BufferBudget,
    pub(super) tasks: Arc<Semaphore>,
    pub(super) streams: stream::Streams,
}

/// A request body that streams after its head: what is left of it and its stream.
/// Dropped, however the request ended (an answer, a 503, a 504, a NATS error), it reads
/// what the client still sends and throws it away, so the client reads the answer rather
/// than a reset.
pub(super) struct Outgoing<B>
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
    pub(super) fn peer(&self, host: &str, namespace: &str, app: &str, id: &str) -> stream::Peer {
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
    pub(super) async fn send<B>(
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
    pub(super) fn response(
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

/// The answer to a forwarded request that got no reply.
pub(super) fn request_failed(
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

pub(super) fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}
