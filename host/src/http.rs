//! Serving a wasi:http component, WASI 0.2 (`wasi:http/incoming-handler`) or 0.3
//! (`wasi:http/handler`): one `InstancePre`, a fresh `Store` per request, limits enforced around
//! it, failures confined to their own request.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Full};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, Trap};
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::{HyperIncomingBody, HyperOutgoingBody};

use crate::engine::Runtime;
use crate::error::{FailureCause, HostError, TimedOut};
use crate::guest::{GuestOptions, GuestState, new_store, rearm};
use crate::handler::{GuestHandler, HandlerPre};
use crate::limits::{CpuQuota, Limits};
use crate::server::ArrivedOverTls;

/// A linker with everything guests of `runtime` get: WASI 0.2, and 0.3 where it runs it
/// (the table is `capabilities::CAPABILITIES`).
fn linker(runtime: &Runtime) -> Result<Linker<GuestState>, HostError> {
    let mut linker = Linker::new(runtime.engine());
    for capability in crate::capabilities::offered(runtime.runs_wasi_03()) {
        (capability.add)(&mut linker).map_err(|error| {
            HostError::Engine(format!("cannot offer {}: {error:#}", capability.name))
        })?;
    }
    Ok(linker)
}

/// Links `component` with what guests of `runtime` get and pre-instantiates it, naming the
/// imports Shoal cannot satisfy when that fails.
pub(crate) fn instantiate_pre(
    runtime: &Runtime,
    component: &Component,
) -> Result<wasmtime::component::InstancePre<GuestState>, HostError> {
    let linker = linker(runtime)?;
    let wasi_03 = runtime.runs_wasi_03();
    linker.instantiate_pre(component).map_err(|error| {
        let imports: Vec<String> = component
            .component_type()
            .imports(linker.engine())
            .map(|(name, _)| name.to_owned())
            .collect();
        let missing = crate::capabilities::missing(imports.iter().map(String::as_str), wasi_03);
        if missing.is_empty() {
            HostError::Instantiate(format!("{error:#}"))
        } else {
            HostError::UnsupportedImports {
                missing,
                provided: crate::capabilities::names(wasi_03),
            }
        }
    })
}

/// The names a component exports, for error messages.
pub(crate) fn exports(engine: &Engine, component: &Component) -> Vec<String> {
    component
        .component_type()
        .exports(engine)
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// Whether a component is an HTTP handler (WASI 0.2 or 0.3).
pub fn is_http(engine: &Engine, component: &Component) -> bool {
    exports(engine, component).iter().any(|name| {
        name.starts_with("wasi:http/incoming-handler@") || name.starts_with("wasi:http/handler@")
    })
}

/// Counters of what a replica served.
#[derive(Debug, Default)]
pub struct Stats {
    served: AtomicU64,
    failed: [AtomicU64; FailureCause::ALL.len()],
}

impl Stats {
    /// Requests answered by the guest.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Requests that failed for `cause`.
    pub fn failed(&self, cause: FailureCause) -> u64 {
        let index = FailureCause::ALL
            .iter()
            .position(|candidate| *candidate == cause)
            .unwrap_or(0);
        self.failed[index].load(Ordering::Relaxed)
    }

    fn count(&self, cause: FailureCause) {
        if let Some(index) = FailureCause::ALL
            .iter()
            .position(|candidate| *candidate == cause)
        {
            self.failed[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How long an instance kept for reuse waits for its next request before it is dropped
/// (as `wasmtime serve --idle-instance-timeout`'s default): an idle app holds no instance.
const IDLE_INSTANCE: Duration = Duration::from_secs(1);

/// One replica of a wasi:http component.
pub struct HttpComponent {
    pre: Arc<HandlerPre>,
    engine: Engine,
    options: GuestOptions,
    limits: Limits,
    cpu: Option<Arc<CpuQuota>>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    stats: Stats,
    /// Instances that served a request and may serve more (`limits.instance_reuse` > 1);
    /// at most one per concurrency slot.
    idle: Mutex<Vec<IdleInstance>>,
    /// Whether a task is dropping idle instances that waited past [`IDLE_INSTANCE`].
    sweeping: AtomicBool,
    /// A WASI 0.3 component's instances that serve several requests at once
    /// (`limits.instance_concurrency` > 1).
    shared: Option<crate::shared::Shared>,
    /// Its `wasi:messaging` handler, when it exports one (messages of its app's triggers).
    messages: Option<crate::messaging::MessageHandlerPre<GuestState>>,
}

/// An instance between two requests of the same replica.
struct IdleInstance {
    store: Store<GuestState>,
    handler: GuestHandler,
    /// Requests it served.
    served: u32,
    since: Instant,
}

/// The body of every response the host sends.
pub type ResponseBody = HyperOutgoingBody;

/// Where a guest's response (or the error code it answered with) goes.
pub(crate) type ResponseSender =
    tokio::sync::oneshot::Sender<Result<Response<ResponseBody>, ErrorCode>>;

impl HttpComponent {
    /// Links and pre-instantiates `component` once; requests then only instantiate.
    ///
    /// # Errors
    /// [`HostError::UnsupportedImports`] or [`HostError::NotRunnable`] when Shoal cannot serve it.
    pub fn new(
        runtime: &Runtime,
        component: &Component,
        options: GuestOptions,
        limits: Limits,
    ) -> Result<Self, HostError> {
        let pre = Arc::new(Self::prepare(runtime, component)?);
        Self::with_pre(runtime, pre, options, limits)
    }

    /// Links and pre-instantiates `component`: what every replica of it can share.
    ///
    /// # Errors
    /// [`HostError::UnsupportedImports`] or [`HostError::NotRunnable`] when Shoal cannot serve it.
    pub fn prepare(runtime: &Runtime, component: &Component) -> Result<HandlerPre, HostError> {
        let engine = runtime.engine();
        let pre = instantiate_pre(runtime, component)?;
        HandlerPre::new(pre).ok_or_else(|| HostError::NotRunnable(exports(engine, component)))
    }

    /// A replica of an already pre-instantiated component, with its own grants and limits.
    ///
    /// # Errors
    /// [`HostError`] when the options are not valid.
    pub fn with_pre(
        runtime: &Runtime,
        pre: Arc<HandlerPre>,
        options: GuestOptions,
        limits: Limits,
    ) -> Result<Self, HostError> {
        options.validate()?;
        let cpu = limits
            .cpu_millicores
            .map(|millicores| Arc::new(CpuQuota::new(millicores)));
        let shared =
            (limits.instance_concurrency > 1 && matches!(*pre, HandlerPre::P3(_))).then(|| {
                crate::shared::new(
                    runtime.engine().clone(),
                    Arc::clone(&pre),
                    options.clone(),
                    limits.clone(),
                    cpu.clone(),
                )
            });
        let messages = crate::messaging::MessageHandlerPre::new(pre.instance_pre());
        Ok(Self {
            messages,
            pre,
            engine: runtime.engine().clone(),
            cpu,
            shared,
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            waiting: AtomicUsize::new(0),
            stats: Stats::default(),
            idle: Mutex::new(Vec::new()),
            sweeping: AtomicBool::new(false),
            options,
            limits,
        })
    }

    /// Whether the component exports a `wasi:messaging` handler.
    pub fn handles_messages(&self) -> bool {
        self.messages.is_some()
    }

    /// How many requests (or messages) it handles at once.
    pub fn concurrency(&self) -> usize {
        self.limits.concurrency.max(1)
    }

    /// Hands `message` to the component's `wasi:messaging` handler in an instance of its
    /// own, within the replica's limits (a concurrency slot, memory, CPU, fuel, timeout) as
    /// a request is: `Err` says why it was not handled (the guest's error, a trap, the
    /// limit it hit).
    ///
    /// # Errors
    /// As said.
    pub async fn handle_message(&self, message: crate::messaging::Message) -> Result<(), String> {
        let Some(pre) = &self.messages else {
            return Err("the component exports no message handler".to_owned());
        };
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "the replica is stopping".to_owned())?;
        let mut store = crate::guest::new_store(
            &self.engine,
            &self.options,
            &self.limits,
            self.cpu.as_ref(),
            false,
        )
        .map_err(|error| error.to_string())?;
        // The epoch deadline stops running guest code; this, a handler waiting in a host
        // call.
        let handled =
            tokio::time::timeout(self.limits.timeout, pre.handle(&mut store, message)).await;
        match handled {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(format!("the handler answered {error}")),
            Ok(Err(error)) => {
                let (cause, message) = classify(&error, store.data());
                Err(format!("{cause}: {message}"))
            }
            Err(_) => Err(format!(
                "timed out after {}",
                shoal_lattice::quantity::Span(self.limits.timeout)
            )),
        }
    }

    /// An instance kept from an earlier request, readied for the next one.
    fn take_idle(&self) -> Option<IdleInstance> {
        let mut instance = self.idle.lock().ok()?.pop()?;
        rearm(&mut instance.store, &self.limits);
        Some(instance)
    }

    /// Keeps an instance that served well for the next request, and makes sure a task drops
    /// it when no request comes for [`IDLE_INSTANCE`].
    fn keep_idle(self: &Arc<Self>, instance: IdleInstance) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        idle.push(instance);
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(idle);
        let component = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE_INSTANCE).await;
                let Some(component) = component.upgrade() else {
                    return;
                };
                let Ok(mut idle) = component.idle.lock() else {
                    return;
                };
                idle.retain(|instance| instance.since.elapsed() < IDLE_INSTANCE);
                if idle.is_empty() {
                    // Under the lock: a keep that comes next starts a sweeper of its own.
                    component.sweeping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// What this replica served and why requests failed.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Guest execution time charged against the CPU quota, when there is one.
    pub fn cpu_consumed(&self) -> Option<Duration> {
        self.cpu.as_ref().map(|cpu| cpu.consumed())
    }

    /// Handles one request in a fresh instance. Never fails: every failure is a status.
    ///
    /// The body may be hyper's (a request on the ingress) or one built from a forwarded
    /// message.
    pub async fn handle<B>(self: Arc<Self>, request: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.limits.max_body) {
            return self.refuse(FailureCause::BodyTooLarge);
        }

        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.queue {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return self.refuse(FailureCause::Overloaded);
                }
                let waited = tokio::time::timeout(
                    self.limits.timeout,
                    Arc::clone(&self.slots).acquire_owned(),
                )
                .await;
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                match waited {
                    Ok(Ok(permit)) => permit,
                    _ => return self.refuse(FailureCause::Overloaded),
                }
            }
        };

        let too_large = Arc::new(AtomicBool::new(false));
        let limit = self.limits.max_body;
        let flag = Arc::clone(&too_large);
        let request = request.map(move |body| CappedBody {
            inner: body.map_err(Into::into).boxed_unsync(),
            left: limit,
            too_large: flag,
        });
        if let Some(shared) = &self.shared {
            return self
                .handle_shared(shared, request, permit, &too_large)
                .await;
        }
        let reused = if self.limits.instance_reuse > 1 {
            self.take_idle()
        } else {
            None
        };
        let (mut store, handler, served) = match reused {
            Some(instance) => (instance.store, Some(instance.handler), instance.served),
            None => match new_store(
                &self.engine,
                &self.options,
                &self.limits,
                self.cpu.as_ref(),
                false,
            ) {
                Ok(store) => (store, None, 0),
                Err(error) => {
                    tracing::error!(component = %self.options.name, %error, "cannot prepare an instance");
                    return plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the component could not start\n",
                    );
                }
            },
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let scheme = if request.extensions().get::<ArrivedOverTls>().is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let call = match crate::handler::Call::new(&mut store, &self.pre, scheme, request, sender) {
            Ok(call) => call,
            Err(error) => {
                tracing::debug!(%error, "malformed request");
                return plain(StatusCode::BAD_REQUEST, "malformed request\n");
            }
        };

        // The guest runs in its own task so it can keep streaming the body after the response
        // head is sent; it holds the concurrency slot until it is done.
        let this = Arc::clone(&self);
        let task = tokio::spawn(async move {
            let _permit = permit;
            let pre = Arc::clone(&this.pre);
            let run =
                tokio::time::timeout(this.limits.timeout, call.run(&mut store, &pre, handler))
                    .await;
            let failure = match run {
                Ok(Ok(handler)) => {
                    // An instance that served well may serve again (opt-in); one that
                    // trapped, timed out or hit its memory cap never does.
                    let served = served.saturating_add(1);
                    if served < this.limits.instance_reuse && !store.data().out_of_memory() {
                        this.keep_idle(IdleInstance {
                            store,
                            handler,
                            served,
                            since: Instant::now(),
                        });
                    }
                    None
                }
                Err(_elapsed) => Some((
                    FailureCause::Timeout,
                    "the request ran past its timeout".to_owned(),
                )),
                Ok(Err(error)) => Some(classify(&error, store.data())),
            };
            match &failure {
                Some((cause, message)) => {
                    this.stats.count(*cause);
                    tracing::warn!(component = %this.options.name, %cause, message, "request failed");
                }
                None => {
                    this.stats.served.fetch_add(1, Ordering::Relaxed);
                }
            }
            failure
        });

        match receiver.await {
            // The guest answered after its body was cut off at the limit (a WASI 0.3 guest
            // sees only the end of the stream unless it reads the trailers): 413 whatever it
            // said, as for a body declared too large.
            Ok(Ok(_)) if too_large.load(Ordering::Relaxed) => {
                self.refuse(FailureCause::BodyTooLarge)
            }
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                tracing::debug!(component = %self.options.name, ?code, "the component answered with an error code");
                if too_large.load(Ordering::Relaxed) {
                    return self.refuse(FailureCause::BodyTooLarge);
                }
                plain(StatusCode::INTERNAL_SERVER_ERROR, "the component failed\n")
            }
            Err(_) => {
                let failure = task.await.ok().flatten();
                let cause = match failure {
                    Some((cause, _)) => cause,
                    None => {
                        self.stats.count(FailureCause::NoResponse);
                        FailureCause::NoResponse
                    }
                };
                if too_large.load(Ordering::Relaxed) {
                    return self.refuse(FailureCause::BodyTooLarge);
                }
                failure_response(cause)
            }
        }
    }

    /// Handles one request in an instance that may be serving others
    /// (`limits.instance_concurrency`); the concurrency slot is held until the response body
    /// ends.
    async fn handle_shared(
        &self,
        shared: &crate::shared::Shared,
        request: Request<CappedBody>,
        permit: tokio::sync::OwnedSemaphorePermit,
        too_large: &AtomicBool,
    ) -> Response<ResponseBody> {
        let scheme = if request.extensions().get::<ArrivedOverTls>().is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        };
        let (mut parts, body) = request.into_parts();
        parts.uri = match crate::handler::guest_uri(&parts, scheme) {
            Ok(uri) => uri,
            Err(error) => {
                tracing::debug!(%error, "malformed request");
                return plain(StatusCode::BAD_REQUEST, "malformed request\n");
            }
        };
        let request = Request::from_parts(parts, body.boxed_unsync());
        let started = Instant::now();
        let handled = tokio::time::timeout(self.limits.timeout, shared.handle((), request)).await;
        let cause = match handled {
            Ok(Ok(_)) if too_large.load(Ordering::Relaxed) => FailureCause::BodyTooLarge,
            Ok(Ok(response)) => {
                self.stats.served.fetch_add(1, Ordering::Relaxed);
                return response.map(|body| Holding::body(body, permit));
            }
            Ok(Err(_)) if too_large.load(Ordering::Relaxed) => FailureCause::BodyTooLarge,
            // Expired, or its instance stopped once the request was past its timeout (on a
            // busy machine the stop can come before this task's own timer).
            Ok(Err(error))
                if error.is::<wasmtime_wasi_http::handler::ExpirationError>()
                    || started.elapsed() >= self.limits.timeout =>
            {
                FailureCause::Timeout
            }
            Ok(Err(error)) => {
                tracing::warn!(component = %self.options.name, %error, "request failed in a shared instance");
                FailureCause::Trap
            }
            Err(_elapsed) => FailureCause::Timeout,
        };
        self.refuse(cause)
    }

    fn refuse(&self, cause: FailureCause) -> Response<ResponseBody> {
        self.stats.count(cause);
        failure_response(cause)
    }
}

/// Why a guest call failed, from what the store recorded and the error's type.
pub(crate) fn classify(error: &wasmtime::Error, state: &GuestState) -> (FailureCause, String) {
    let message = format!("{error}");
    if state.timed_out() || error.downcast_ref::<TimedOut>().is_some() {
        return (FailureCause::Timeout, message);
    }
    if state.out_of_memory() {
        return (FailureCause::OutOfMemory, message);
    }
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return (FailureCause::Overloaded, message);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => (FailureCause::StackOverflow, message),
        Some(Trap::OutOfFuel) => (FailureCause::OutOfFuel, message),
        _ => (FailureCause::Trap, message),
    }
}

fn failure_response(cause: FailureCause) -> Response<ResponseBody> {
    match cause {
        FailureCause::Timeout => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "the component ran past its timeout\n",
        ),
        FailureCause::BodyTooLarge => {
            plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n")
        }
        // 508 (Loop Detected): the request ran out of instructions, as a loop would; the
        // same request would again.
        FailureCause::OutOfFuel => plain(
            StatusCode::LOOP_DETECTED,
            "the component used its whole fuel budget\n",
        ),
        FailureCause::Overloaded => {
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded, retry shortly\n",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            response
        }
        FailureCause::OutOfMemory => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the component ran out of memory\n",
        ),
        FailureCause::StackOverflow | FailureCause::Trap | FailureCause::NoResponse => {
            plain(StatusCode::INTERNAL_SERVER_ERROR, "the component failed\n")
        }
    }
}

/// A short plain-text response the host itself answers with.
pub fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never: Infallible| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response body that holds something (a concurrency slot; a sender whose drop says the
/// body is done) until hyper drops it, sent or abandoned.
pub(crate) struct Holding<T> {
    inner: ResponseBody,
    _held: T,
}

impl<T: Send + Unpin + 'static> Holding<T> {
    /// `inner`, holding `held`.
    pub(crate) fn body(inner: ResponseBody, held: T) -> ResponseBody {
        Self { inner, _held: held }.boxed_unsync()
    }
}

impl<T: Send + Unpin + 'static> Body for Holding<T> {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that errors past the size limit and remembers that it did.
pub(crate) struct CappedBody {
    inner: HyperIncomingBody,
    left: u64,
    too_large: Arc<AtomicBool>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.left {
                        this.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(None),
                        )));
                    }
                    this.left -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `component` on `listener` (HTTP/1.1 and HTTP/2) until `shutdown` resolves, then
/// stops accepting and lets in-flight requests finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    component: Arc<HttpComponent>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let limits = crate::server::ConnectionLimits {
        max_header: component.limits.max_header,
        ..crate::server::ConnectionLimits::default()
    };
    crate::server::serve_with(
        listener,
        None,
        limits,
        move |request| Arc::clone(&component).handle(request),
        shutdown,
        drain,
    )
    .await;
}
