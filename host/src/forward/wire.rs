//! The wire format of a forwarded request and its reply: HTTP heads as NATS headers
//! (`Shoal-Method`, `Shoal-Uri`, `Shoal-Status`, …) and what is not carried between hops.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};

use super::stream;
use crate::server::ArrivedOverTls;

pub(super) const METHOD: &str = "Shoal-Method";
pub(super) const URI: &str = "Shoal-Uri";
pub(super) const STATUS: &str = "Shoal-Status";
/// `https` when the request reached the lattice over TLS.
pub(super) const SCHEME: &str = "Shoal-Scheme";
/// In a reply: this host has no ready replica of the app; try another endpoint.
pub(super) const NOT_HERE: &str = "Shoal-Not-Here";
/// The largest body sent in the message with its head; a larger one streams. The NATS
/// server's `max_payload` may lower it.
pub const INLINE_LIMIT: usize = 1 << 20;

/// Headers that belong to one hop and are not forwarded.
pub(super) fn hop_by_hop(name: &str) -> bool {
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

/// Whether a reply says its host has no ready replica of the app.
pub(super) fn not_here(message: &async_nats::Message) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|headers| headers.get(NOT_HERE).is_some())
}

/// The status and headers of a forwarded reply, and its payload; `None` when it is not a
/// response.
pub(super) fn response_head(message: async_nats::Message) -> Option<(Response<()>, Bytes)> {
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

/// The response header naming the host whose replica answered.
pub const SERVED_BY: &str = "x-served-by";

/// Rebuilds the HTTP request a forwarded message carries, with `body`; `None` when the
/// message is not one (no headers, a method or URI that does not parse).
pub(super) fn forwarded_request<B>(
    headers: Option<&async_nats::HeaderMap>,
    body: B,
) -> Option<Request<B>> {
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
pub(super) fn reply_busy() -> (async_nats::HeaderMap, Bytes) {
    reply_plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the answering host is busy; retry shortly\n",
    )
}

pub(super) fn reply_plain(
    status: StatusCode,
    text: &'static str,
) -> (async_nats::HeaderMap, Bytes) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(STATUS, status.as_u16().to_string());
    headers.insert("content-type", "text/plain; charset=utf-8");
    (headers, Bytes::from_static(text.as_bytes()))
}
