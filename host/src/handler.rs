//! Calling a guest's HTTP handler, WASI 0.2 (`wasi:http/incoming-handler`, a response
//! out-parameter) or WASI 0.3 (`wasi:http/handler`, an async function returning the response
//! while its body streams from tasks of the same store), behind one shape: prepare a call in a
//! store, run it, get the instance back for reuse.

use std::pin::Pin;

use http::Request;
use wasmtime::Store;
use wasmtime::component::{InstancePre, Resource};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use crate::guest::GuestState;
use crate::http::{CappedBody, Holding, ResponseSender};

/// A component's HTTP handler, linked and pre-instantiated: what every replica of the
/// component shares.
pub enum HandlerPre {
    /// Exports `wasi:http/incoming-handler@0.2`.
    P2(ProxyPre<GuestState>),
    /// Exports `wasi:http/handler@0.3`.
    P3(ServicePre<GuestState>),
    /// Exports no HTTP handler, only a message handler (`wasi:messaging` or
    /// `wasmcloud:messaging`): an app of its triggers alone, which answers no request.
    Messages(InstancePre<GuestState>),
}

impl HandlerPre {
    /// The handler `pre` exports, when it exports one (0.3 first: a component exporting
    /// both is served as the newer; a message handler when it exports no HTTP one).
    pub fn new(pre: InstancePre<GuestState>) -> Option<Self> {
        if let Ok(service) = ServicePre::new(pre.clone()) {
            return Some(Self::P3(service));
        }
        if let Ok(proxy) = ProxyPre::new(pre.clone()) {
            return Some(Self::P2(proxy));
        }
        crate::messaging::handles_messages(&pre).then_some(Self::Messages(pre))
    }
}

impl HandlerPre {
    /// The component, linked and pre-instantiated, whatever it exports.
    pub fn instance_pre(&self) -> &InstancePre<GuestState> {
        match self {
            Self::P2(proxy) => proxy.instance_pre(),
            Self::P3(service) => service.instance_pre(),
            Self::Messages(pre) => pre,
        }
    }
}

/// An instance of a component's HTTP handler, in the store it was made in.
pub enum GuestHandler {
    /// A WASI 0.2 handler.
    P2(Proxy),
    /// A WASI 0.3 handler.
    P3(Service),
}

/// The URI a WASI 0.3 guest sees for a request that arrived with `parts`: the scheme it
/// arrived with (not one the client claims), the authority from the URI else the Host header
/// (as WASI 0.2's incoming request takes it), the path and query.
///
/// # Errors
/// No authority in the URI and no Host header, or one that is not an authority.
pub(crate) fn guest_uri(
    parts: &http::request::Parts,
    scheme: Scheme,
) -> wasmtime::Result<http::Uri> {
    let authority = match parts.uri.authority() {
        Some(authority) => authority.clone(),
        None => parts
            .headers
            .get(http::header::HOST)
            .ok_or_else(|| wasmtime::format_err!("no authority and no Host header"))?
            .to_str()?
            .parse::<http::uri::Authority>()?,
    };
    let scheme = match scheme {
        Scheme::Https => http::uri::Scheme::HTTPS,
        _ => http::uri::Scheme::HTTP,
    };
    Ok(http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        )
        .build()?)
}

/// One request, put into a store and ready to be handed to the guest.
pub(crate) enum Call {
    P2 {
        request: Resource<HostIncomingRequest>,
        out: Resource<HostResponseOutparam>,
    },
    P3 {
        request: wasmtime_wasi_http::p3::Request,
        /// Tells the host how reading the request body ended; given to the response so the
        /// guest learns of a failed upload.
        io: Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>>,
        sender: ResponseSender,
    },
}

impl Call {
    /// Puts `request` into `store` for `pre`'s kind of handler; the response goes to
    /// `sender`.
    ///
    /// # Errors
    /// A request the guest cannot be given (no authority, an unreadable Host header).
    pub(crate) fn new(
        store: &mut Store<GuestState>,
        pre: &HandlerPre,
        scheme: Scheme,
        request: Request<CappedBody>,
        sender: ResponseSender,
    ) -> wasmtime::Result<Self> {
        match pre {
            HandlerPre::P2(_) => {
                let mut http = store.data_mut().http();
                let request = http.new_incoming_request(scheme, request)?;
                let out = http.new_response_outparam(sender)?;
                Ok(Self::P2 { request, out })
            }
            HandlerPre::P3(_) => {
                let (mut parts, body) = request.into_parts();
                parts.uri = guest_uri(&parts, scheme)?;
                let (request, io) = wasmtime_wasi_http::p3::Request::from_http(
                    store.data_mut().http().hooks,
                    Request::from_parts(parts, body),
                );
                Ok(Self::P3 {
                    request,
                    io: Box::pin(io),
                    sender,
                })
            }
            HandlerPre::Messages(_) => Err(wasmtime::format_err!(
                "the component exports no wasi:http handler: it handles messages only"
            )),
        }
    }

    /// Hands the request to `handler` (an instance kept from an earlier request) or to a new
    /// instance of `pre`, and runs the guest until it has answered and its response body has
    /// been sent (or dropped by the client). Returns the instance, which may serve again.
    ///
    /// # Errors
    /// The guest trapped, or could not be instantiated.
    pub(crate) async fn run(
        self,
        store: &mut Store<GuestState>,
        pre: &HandlerPre,
        handler: Option<GuestHandler>,
    ) -> wasmtime::Result<GuestHandler> {
        match (self, pre) {
            (Self::P2 { request, out }, HandlerPre::P2(pre)) => {
                let proxy = match handler {
                    Some(GuestHandler::P2(proxy)) => proxy,
                    _ => pre.instantiate_async(&mut *store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut *store, request, out)
                    .await?;
                Ok(GuestHandler::P2(proxy))
            }
            (
                Self::P3 {
                    request,
                    io,
                    sender,
                },
                HandlerPre::P3(pre),
            ) => {
                let service = match handler {
                    Some(GuestHandler::P3(service)) => service,
                    _ => pre.instantiate_async(&mut *store).await?,
                };
                store
                    .run_concurrent(async |accessor| -> wasmtime::Result<()> {
                        match service.handle(accessor, request).await? {
                            Ok(response) => {
                                let response = accessor
                                    .with(|mut access| response.into_http(&mut access, io))?;
                                // The body holds the sender: dropped when hyper is done with
                                // the body (sent, or the client gone).
                                let (done, finished) = tokio::sync::oneshot::channel::<()>();
                                let response = response.map(|body| Holding::body(body, done));
                                // The guest writes the body from tasks of this store after it
                                // returned: the store runs until the body is sent or dropped.
                                if sender.send(Ok(response)).is_ok() {
                                    let _ = finished.await;
                                }
                            }
                            Err(code) => {
                                let _ = sender
                                    .send(Err(ErrorCode::InternalError(Some(format!("{code:?}")))));
                            }
                        }
                        Ok(())
                    })
                    .await??;
                Ok(GuestHandler::P3(service))
            }
            _ => Err(wasmtime::format_err!(
                "a request prepared for one WASI version was given to another"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> http::request::Parts {
        let mut request = Request::builder().uri(uri);
        if let Some(host) = host {
            request = request.header(http::header::HOST, host);
        }
        request.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_guest_sees_the_arrival_scheme_the_host_and_the_path_and_nothing_a_host_header_smuggles() {
        let uri = guest_uri(&parts("/a?b=1", Some("shop.example:8080")), Scheme::Http).unwrap();
        assert_eq!(uri.to_string(), "http://shop.example:8080/a?b=1");
        // A client claiming https over plain HTTP/2 is told what it arrived with.
        let uri = guest_uri(&parts("https://shop.example/x", None), Scheme::Http).unwrap();
        assert_eq!(uri.to_string(), "http://shop.example/x");
        let uri = guest_uri(&parts("/x", Some("shop.example")), Scheme::Https).unwrap();
        assert_eq!(uri.to_string(), "https://shop.example/x");
        // No authority anywhere, or a Host that is not one (it would move the path).
        assert!(guest_uri(&parts("/x", None), Scheme::Http).is_err());
        assert!(guest_uri(&parts("/x", Some("evil.example/admin?")), Scheme::Http).is_err());
    }
}
