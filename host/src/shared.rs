//! Several requests in one WASI 0.3 instance at once (`limits.instanceConcurrency` > 1), the
//! component model's async way of serving: wasmtime-wasi-http's `ProxyHandler` keeps a few
//! instances (workers), gives each up to the set number of requests at a time, and retires
//! an instance after its total, when it idles, or when a request in it expires.
//!
//! What that costs in isolation, and why it is opt-in: requests in one instance share its
//! memory (globals, heap, anything one leaves behind), its memory cap, and its fate: a
//! request that traps, or runs past its timeout in a busy loop, ends every request then in
//! the same instance. A fuel budget counts one request's instructions and cannot be given.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::component::GuestTaskId;
use wasmtime::{Engine, Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, Proxy, ProxyHandler, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};

use crate::guest::{GuestOptions, GuestState, new_store};
use crate::handler::HandlerPre;
use crate::limits::{CpuQuota, Limits};

/// Requests one instance serves in all when `limits.instanceReuse` does not say (as
/// `wasmtime serve` does for WASI 0.3 components).
pub const DEFAULT_TOTAL: usize = 128;

/// How long an instance with nothing to do is kept for the next request.
const IDLE: Duration = Duration::from_secs(1);

/// How long after a request's timeout its instance is stopped if still busy.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// The instances of one replica that serve several requests each.
pub(crate) type Shared = ProxyHandler<Replica>;

/// Makes a replica's shared instances, with the replica's grants and limits.
pub(crate) fn new(
    engine: Engine,
    pre: Arc<HandlerPre>,
    options: GuestOptions,
    limits: Limits,
    cpu: Option<Arc<CpuQuota>>,
) -> Shared {
    ProxyHandler::new(Replica {
        engine,
        pre,
        options,
        limits,
        cpu,
    })
}

/// What every shared instance of a replica is made from.
pub(crate) struct Replica {
    engine: Engine,
    pre: Arc<HandlerPre>,
    options: GuestOptions,
    limits: Limits,
    cpu: Option<Arc<CpuQuota>>,
}

impl HandlerState for Replica {
    type StoreData = GuestState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<GuestState, Expiry, Worker>> {
        let mut store = new_store(
            &self.engine,
            &self.options,
            &self.limits,
            self.cpu.as_ref(),
            false,
        )?;
        let proxy = match &*self.pre {
            HandlerPre::P3(pre) => Proxy::P3(
                tokio::time::timeout(self.limits.timeout, pre.instantiate_async(&mut store))
                    .await
                    .map_err(|_| wasmtime::format_err!("instantiation ran past the timeout"))??,
            ),
            HandlerPre::P2(pre) => Proxy::P2(pre.instantiate_async(&mut store).await?),
            // Only WASI 0.3 HTTP handlers share instances.
            HandlerPre::Messages(_) => {
                return Err(wasmtime::format_err!(
                    "the component exports no wasi:http handler"
                ));
            }
        };
        let total = if self.limits.instance_reuse > 1 {
            self.limits.instance_reuse as usize
        } else {
            DEFAULT_TOTAL
        };
        Ok(Instance {
            store,
            proxy,
            view: <GuestState as WasiHttpView>::http,
            expiration: Expiry {
                timeout: self.limits.timeout,
                timer: None,
            },
            state: Worker {
                concurrent: self.limits.instance_concurrency.max(1),
                total,
                timeout: self.limits.timeout,
            },
        })
    }
}

/// How many requests an instance takes, and how long each may run.
pub(crate) struct Worker {
    concurrent: usize,
    total: usize,
    timeout: Duration,
}

impl WorkerState for Worker {
    type StoreData = GuestState;
    type RequestData = ();

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.total {
            ShouldAccept::Never
        } else if concurrent >= self.concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, GuestState>,
        (): (),
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        // The store's deadline (which stops a guest stuck in a loop) follows the newest
        // request: an instance busy past it has had no request start for a whole timeout.
        // A moment after the request's own timeout, so that request is answered 504 first.
        store
            .data_mut()
            .extend_deadline(self.timeout + DEADLINE_GRACE);
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, store: Store<GuestState>, result: wasmtime::Result<()>) {
        if let Err(error) = result {
            let cause = crate::http::classify(&error, store.data()).0;
            tracing::debug!(%cause, %error, "a shared instance ended");
        }
    }
}

/// When an instance is retired: idle for [`IDLE`], or a request in it past its timeout
/// (checked from outside the store, which a busy guest holds).
pub(crate) struct Expiry {
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        state: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let limit = match state {
            WorkerStatus::Idle => IDLE,
            WorkerStatus::Requests | WorkerStatus::PostReturn => self.timeout + DEADLINE_GRACE,
        };
        let deadline = start.checked_add(limit).unwrap_or(start);
        if Instant::now() >= deadline {
            return Poll::Ready(());
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        timer.as_mut().reset(deadline.into());
        match timer.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }
}
