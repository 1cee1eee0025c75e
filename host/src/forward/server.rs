//! The answering side: serves the requests other hosts forward here with a ready local
//! replica, or says `Shoal-Not-Here`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt;
use http::StatusCode;
use http_body_util::{BodyExt as _, Full};

use super::{budget::*, client::*, stream, wire::*};
use crate::http::{HttpComponent, ResponseBody};
use crate::router::Router;

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
pub(super) type ForwardedBody =
    http_body_util::combinators::UnsyncBoxBody<Bytes, wasmtime_wasi_http::Error>;

/// A response body that streams after its reply: what is left of it and its stream.
pub(super) struct ResponseStream {
    pub(super) registration: stream::Registration,
    pub(super) peer: stream::Peer,
    pub(super) leftover: Bytes,
    pub(super) body: Pin<Box<ResponseBody>>,
}

pub(super) async fn answer(
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
