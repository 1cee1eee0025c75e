//! The front tier of the two-tier example. `GET /` calls `http://greeter/` (another app,
//! reached through the lattice by name, no DNS) and answers with what it said;
//! `GET …/external?url=U` tries an outbound request to `U`, which the host refuses unless
//! the app's `allowedOutbound` lists it.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

struct Frontend;

fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = body.write() {
        let _ = stream.blocking_write_and_flush(text.as_bytes());
    }
    let _ = OutgoingBody::finish(body, None);
}

/// GETs `url` and returns the status and body.
fn get(url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        _ => return Err(format!("bad url {url}")),
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(authority, path)| {
            (authority, format!("/{path}"))
        });
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(&path));
    let future = outgoing_handler::handle(request, None).map_err(|error| format!("{error:?}"))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(error))) => return Err(format!("{error:?}")),
        other => return Err(format!("{other:?}")),
    };
    let status = response.status();
    let body = response.consume().map_err(|()| "no body".to_owned())?;
    let stream = body.stream().map_err(|()| "no body stream".to_owned())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(error) => return Err(format!("{error:?}")),
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

impl wasi::exports::http::incoming_handler::Guest for Frontend {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        // Routes keep the whole path: `/two-tier/external?url=U` arrives as it was sent.
        if let Some((_, url)) = path.split_once("/external?url=") {
            match get(url) {
                Ok((status, _)) => respond(out, 200, &format!("{url} answered {status}\n")),
                Err(error) => respond(
                    out,
                    502,
                    &format!("outbound request to {url} failed: {error}\n"),
                ),
            }
            return;
        }
        match get("http://greeter/") {
            Ok((200, greeting)) => respond(
                out,
                200,
                &format!("the frontend asked the greeter: {greeting}"),
            ),
            Ok((status, body)) => {
                respond(out, 502, &format!("the greeter answered {status}: {body}"))
            }
            Err(error) => respond(out, 502, &format!("cannot reach the greeter: {error}\n")),
        }
    }
}

wasi::http::proxy::export!(Frontend);
