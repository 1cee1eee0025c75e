//! wasi:http from the guest side: answering a request in one call, reading its body and
//! query, and making outbound requests (to `allowedOutbound` URLs, or to another app of the
//! lattice as `http://<app>[.<namespace>]`).

use std::fmt;

use wasi::http::outgoing_handler;
pub use wasi::http::types::{Fields, IncomingRequest, ResponseOutparam};
use wasi::http::types::{Method, OutgoingBody, OutgoingRequest, OutgoingResponse, Scheme};
use wasi::io::streams::StreamError;

/// `blocking_write_and_flush` takes at most 4096 bytes a call.
const WRITE_CHUNK: usize = 4096;
/// How much one read of a body asks for.
const READ_CHUNK: u64 = 64 * 1024;

/// Answers with `status`, `headers` and a body made of `chunks`, written as they come (a
/// large body need not be in memory at once). A client that went away ends the writing:
/// there is no one left to tell.
///
/// ```no_run,standalone_crate
/// use shoal_sdk::http::{self, Fields, IncomingRequest, ResponseOutparam};
///
/// struct Numbers;
/// impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Numbers {
///     fn handle(_request: IncomingRequest, out: ResponseOutparam) {
///         let headers = Fields::from_list(&[("content-type".to_owned(), b"text/csv".to_vec())])
///             .unwrap_or_else(|_| Fields::new());
///         // A million lines, never all in memory.
///         http::respond(out, 200, headers, (0..1_000_000).map(|n| format!("{n}\n")));
///     }
/// }
/// shoal_sdk::wasi::http::proxy::export!(Numbers);
/// # fn main() {}
/// ```
pub fn respond<C: AsRef<[u8]>>(
    out: ResponseOutparam,
    status: u16,
    headers: Fields,
    chunks: impl IntoIterator<Item = C>,
) {
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        for chunk in chunks {
            for piece in chunk.as_ref().chunks(WRITE_CHUNK) {
                if stream.blocking_write_and_flush(piece).is_err() {
                    return;
                }
            }
        }
    }
    let _ = OutgoingBody::finish(body, None);
}

/// Answers with `status` and `body` as `text/plain; charset=utf-8`.
///
/// ```no_run,standalone_crate
/// use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};
///
/// struct Hello;
/// impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Hello {
///     fn handle(_request: IncomingRequest, out: ResponseOutparam) {
///         http::text(out, 200, "hello from Shoal\n");
///     }
/// }
/// shoal_sdk::wasi::http::proxy::export!(Hello);
/// # fn main() {}
/// ```
pub fn text(out: ResponseOutparam, status: u16, body: &str) {
    let headers = Fields::from_list(&[(
        "content-type".to_owned(),
        b"text/plain; charset=utf-8".to_vec(),
    )])
    .unwrap_or_else(|_| Fields::new());
    respond(out, status, headers, [body]);
}

/// The whole body of `request` (empty when it has none).
///
/// # Errors
/// [`Error::Body`] when the body stream fails part way.
///
/// ```no_run,standalone_crate
/// use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};
///
/// struct Length;
/// impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Length {
///     fn handle(request: IncomingRequest, out: ResponseOutparam) {
///         match http::body(request) {
///             Ok(bytes) => http::text(out, 200, &format!("{} bytes\n", bytes.len())),
///             Err(error) => http::text(out, 400, &format!("{error}\n")),
///         }
///     }
/// }
/// shoal_sdk::wasi::http::proxy::export!(Length);
/// # fn main() {}
/// ```
pub fn body(request: IncomingRequest) -> Result<Vec<u8>, Error> {
    let Ok(incoming) = request.consume() else {
        return Ok(Vec::new());
    };
    let Ok(stream) = incoming.stream() else {
        return Ok(Vec::new());
    };
    read_all(&stream)
}

/// The value of `key` in the query string of `path_with_query`, as sent (not decoded).
///
/// ```no_run,standalone_crate
/// assert_eq!(shoal_sdk::http::query("/greet?name=edge&x=1", "name"), Some("edge"));
/// assert_eq!(shoal_sdk::http::query("/greet", "name"), None);
/// ```
pub fn query<'a>(path_with_query: &'a str, key: &str) -> Option<&'a str> {
    let (_, query) = path_with_query.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

/// What an outbound request answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why an outbound request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The URL is not `http://…` or `https://…`.
    BadUrl(String),
    /// The host refused or could not make the request: not in `allowedOutbound`, no such
    /// app, unreachable. The text is the host's error code.
    Request(String),
    /// The body stream failed part way.
    Body(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl(url) => write!(f, "bad url {url}: only http:// and https:// URLs"),
            Self::Request(reason) | Self::Body(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for Error {}

/// GETs `url` and reads the whole answer. `http://<app>` or `http://<app>.<namespace>`
/// reaches another app of the lattice; anything else must be in the app's
/// `allowedOutbound`.
///
/// # Errors
/// [`Error`] says which step failed.
///
/// ```no_run,standalone_crate
/// use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};
///
/// struct Frontend;
/// impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Frontend {
///     fn handle(_request: IncomingRequest, out: ResponseOutparam) {
///         // Another app of the lattice, by name: no allowedOutbound entry needed.
///         match http::get("http://greeter/") {
///             Ok(answer) => http::text(out, 200, &format!("the greeter said: {}", answer.text())),
///             Err(error) => http::text(out, 502, &format!("{error}\n")),
///         }
///     }
/// }
/// shoal_sdk::wasi::http::proxy::export!(Frontend);
/// # fn main() {}
/// ```
pub fn get(url: &str) -> Result<Response, Error> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        _ => return Err(Error::BadUrl(url.to_owned())),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((authority, path)) => (authority, format!("/{path}")),
        None => (rest, "/".to_owned()),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(&path));
    let future = outgoing_handler::handle(request, None)
        .map_err(|error| Error::Request(format!("{error:?}")))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(error))) => return Err(Error::Request(format!("{error:?}"))),
        other => return Err(Error::Request(format!("{other:?}"))),
    };
    let status = response.status();
    let body = response
        .consume()
        .map_err(|()| Error::Body("the response body was already taken".to_owned()))?;
    let stream = body
        .stream()
        .map_err(|()| Error::Body("the response body stream was already taken".to_owned()))?;
    let body = read_all(&stream)?;
    Ok(Response { status, body })
}

fn read_all(stream: &wasi::io::streams::InputStream) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(error) => return Err(Error::Body(format!("{error:?}"))),
        }
    }
}
