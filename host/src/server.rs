//! The HTTP server in front of components: hyper-util (HTTP/1.1 and HTTP/2) on a listener,
//! TLS when configured, the bounds on each connection (`ConnectionLimits`: a cap, header and
//! body timeouts), the client's address and TLS as request extensions, and a graceful drain.
//! What a request then does is the handler's (the ingress, `shoal run`'s component, the
//! metrics listener).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::http::ResponseBody;

/// The address of the client that sent a request, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// In a request's extensions: the request arrived over TLS (directly, or at the host that
/// forwarded it), so the guest is told its scheme is `https`.
#[derive(Debug, Clone, Copy)]
pub struct ArrivedOverTls;

/// How the ingress bounds each connection, so idle, slow or too many clients cannot hold a
/// host's sockets and memory.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Largest request head (request line and headers), in bytes; beyond that, 431.
    pub max_header: usize,
    /// Most open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take to send its first byte, a whole request head, or the next
    /// request on a kept-alive connection; then the connection is closed.
    pub header_timeout: Duration,
    /// How long a request body may go without sending a byte; then the request fails.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_header: 64 * 1024,
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// A request body that fails when the client sends nothing for a while (slow-body attacks).
pub struct TimedBody {
    inner: Incoming,
    idle: Duration,
    /// Armed the first time the body has nothing to give: most requests (a GET, a small
    /// body that came with the head) never wait and never pay for a timer.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TimedBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Ready(frame) => {
                // The next wait starts its own clock.
                this.deadline = None;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match deadline.as_mut().poll(context) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// How long a drain tells clients to reconnect before it closes idle connections.
const CLOSE_NOTICE: Duration = Duration::from_millis(250);

/// Serves `handler` on `listener` (HTTP/1.1 and HTTP/2) within `limits` (431 past the head
/// size; connections past the cap, idle or slow ones closed), until `shutdown` resolves;
/// then drains for up to `drain`.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    H: Fn(Request<TimedBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // hyper answers 431 when an HTTP/1 head outgrows its read buffer; HTTP/2 refuses header
    // lists past the advertised size. The header timeout also closes kept-alive connections
    // that send no next request; HTTP/2 clients that stop answering pings are dropped.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(limits.header_timeout)
        .keep_alive_timeout(limits.header_timeout)
        .max_header_list_size(u32::try_from(limits.max_header).unwrap_or(u32::MAX));
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refused = AtomicU64::new(0);
    // Set when the drain begins: HTTP/1 answers then say `Connection: close`, so clients
    // open their next request on a new connection instead of one about to close under them.
    let closing = Arc::new(AtomicBool::new(false));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        // Out of file descriptors, most likely: give connections time to close.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
                    let count = refused.fetch_add(1, Ordering::Relaxed);
                    if count.is_multiple_of(1000) {
                        tracing::warn!(max = limits.max_connections, refused = count + 1, "too many open connections; closing new ones");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let over_tls = tls.is_some();
                let body_timeout = limits.body_timeout;
                let closing = Arc::clone(&closing);
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let mut request = request.map(|body| TimedBody::new(body, body_timeout));
                    request.extensions_mut().insert(Peer(peer));
                    if over_tls {
                        request.extensions_mut().insert(ArrivedOverTls);
                    }
                    let http1 = request.version() < http::Version::HTTP_2;
                    let response = handler(request);
                    let closing = Arc::clone(&closing);
                    async move {
                        let mut response = response.await;
                        if http1 && closing.load(Ordering::Relaxed) {
                            response.headers_mut().insert(
                                http::header::CONNECTION,
                                http::HeaderValue::from_static("close"),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let acceptor = tls.as_ref().map(|tls| tokio_rustls::TlsAcceptor::from(Arc::clone(tls)));
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let header_timeout = limits.header_timeout;
                // Everything before the first request runs in the connection's task, under
                // the header timeout: a client that connects and sends nothing (or stalls in
                // the TLS handshake) is closed and holds up nobody else.
                tokio::spawn(async move {
                    let _permit = permit;
                    // A peek, not `readable()`: a new socket counts as readable until a read
                    // says otherwise.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                        Ok(Ok(read)) if read > 0 => {}
                        _ => {
                            tracing::debug!(%peer, "connection sent nothing; closed");
                            return;
                        }
                    }
                    let served = match acceptor {
                        None => {
                            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            watcher.watch(connection).await
                        }
                        Some(acceptor) => {
                            let stream = match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, %peer, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                            watcher.watch(connection).await
                        }
                    };
                    if let Err(error) = served {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    // Busy clients learn to reconnect from their next answer before idle connections close.
    closing.store(true, Ordering::Relaxed);
    tokio::time::sleep(CLOSE_NOTICE.min(drain)).await;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(?drain, "in-flight requests still running after the drain deadline; stopping anyway");
        }
    }
}
