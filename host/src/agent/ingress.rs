//! The host's HTTP ingress: a request goes to a ready local replica of the app whose route
//! it matches, else over the lattice to a host that has one. Also builds the routing table
//! from the apps' routing records and the ready local replicas.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use shoal_lattice::records::{AppLimits, RouteRecord};

use super::activator::Activator;
use super::supervisor::{Replica, ReplicaState};
use crate::forward::{Forwarder, SERVED_BY};
use crate::http::{ResponseBody, plain};
use crate::limits::Limits;
use crate::metrics::{Metrics, Path as MetricsPath};
use crate::router::{AppRoutes, Lookup, Router};
use crate::server::{Peer, TimedBody};

/// The way to other hosts and to the lattice's state: a forwarder and the connection once
/// the host has joined its lattice. Before (a host started offline serves its own replicas
/// from its saved state), requests for apps with no ready replica here get 503 with
/// Retry-After, and guests' key-value stores are unreachable.
#[derive(Clone, Default)]
pub(crate) struct Uplink {
    forwarder: Arc<OnceLock<Forwarder>>,
    lattice: Arc<OnceLock<shoal_lattice::Lattice>>,
}

impl Uplink {
    /// The host has joined: requests may be forwarded from now on.
    pub(crate) fn joined(&self, forwarder: Forwarder, lattice: shoal_lattice::Lattice) {
        let _ = self.forwarder.set(forwarder);
        let _ = self.lattice.set(lattice);
    }

    /// The lattice connection, once joined.
    pub(crate) fn lattice(&self) -> Option<&shoal_lattice::Lattice> {
        self.lattice.get()
    }

    /// Whether the host has joined its lattice.
    pub(crate) fn is_joined(&self) -> bool {
        self.forwarder.get().is_some()
    }

    /// Forwards a request over the lattice, or answers 503 before the host has joined it.
    pub(crate) async fn forward<B>(
        &self,
        namespace: &str,
        app: &str,
        request: Request<B>,
        peer: Option<SocketAddr>,
        timeout: Duration,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.forwarder.get() {
            Some(forwarder) => {
                forwarder
                    .forward(namespace, app, request, peer, timeout)
                    .await
            }
            None => unreachable_lattice(),
        }
    }
}

/// The answer for what only the lattice could serve while it is out of reach.
fn unreachable_lattice() -> Response<ResponseBody> {
    let mut response = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "this host has not reached its lattice yet: it serves only the apps it runs\n",
    );
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("5"),
    );
    response
}

/// Answers one ingress request: a ready local replica when there is one, else forwarded
/// over the lattice; an app at zero is woken while the request waits (see `activator`).
pub(crate) async fn ingress(
    router: Arc<Router>,
    uplink: Uplink,
    activator: Arc<Activator>,
    metrics: Arc<Metrics>,
    served_by: http::HeaderValue,
    request: Request<TimedBody>,
) -> Response<ResponseBody> {
    let started = std::time::Instant::now();
    let mut woken = false;
    loop {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| request.uri().host());
        match router.lookup(host, request.uri().path()) {
            Lookup::Replica { app, component } => {
                let mut response = component.handle(request).await;
                response.headers_mut().insert(SERVED_BY, served_by);
                metrics.record(
                    &app.key,
                    MetricsPath::Local,
                    response.status().as_u16(),
                    started.elapsed(),
                );
                return response;
            }
            // An app at zero: wait for it to wake, then look again (once: it has a replica
            // or an endpoint by then, or it is gone).
            Lookup::Remote(app) if app.scale_to_zero && app.endpoints.is_empty() && !woken => {
                let Some(lattice) = uplink.lattice() else {
                    return unreachable_lattice();
                };
                if let Err(response) = activator
                    .until_awake(&router, lattice, &app.namespace, &app.app)
                    .await
                {
                    return response;
                }
                woken = true;
            }
            Lookup::Remote(app) => {
                let peer = request.extensions().get::<Peer>().map(|peer| peer.0);
                let response = uplink
                    .forward(&app.namespace, &app.app, request, peer, app.timeout)
                    .await;
                metrics.record(
                    &app.key,
                    MetricsPath::Forwarded,
                    response.status().as_u16(),
                    started.elapsed(),
                );
                return response;
            }
            // Offline, the host knows only its own apps' routes: another may well exist.
            Lookup::NoRoute if !uplink.is_joined() => return unreachable_lattice(),
            Lookup::NoRoute => return plain(StatusCode::NOT_FOUND, "no app serves this route\n"),
        }
    }
}

/// The routing table from every app's routes and endpoints and the ready local replicas.
pub(crate) fn routing_table(
    apps: Vec<RouteRecord>,
    replicas: &HashMap<String, Replica>,
) -> Vec<AppRoutes> {
    let mut table: BTreeMap<(String, String), AppRoutes> = apps
        .into_iter()
        .map(|record| {
            let limits = AppLimits {
                timeout: record.timeout,
                ..Default::default()
            };
            let mut routes = AppRoutes::new(
                &record.namespace,
                &record.app,
                record.routes,
                // The app's own timeout, plus room for the trip over NATS.
                Limits::for_app(&limits)
                    .timeout
                    .saturating_add(Duration::from_secs(5)),
            );
            routes.endpoints = Arc::from(record.endpoints);
            routes.scale_to_zero = record.scale_to_zero;
            routes.expose = record.expose;
            ((record.namespace, record.app), routes)
        })
        .collect();
    for replica in replicas.values() {
        if let ReplicaState::Serving {
            component,
            ready: true,
            ..
        } = &replica.state
            && let Some(entry) = table.get_mut(&(
                replica.assignment.namespace.clone(),
                replica.assignment.app.clone(),
            ))
        {
            entry.replicas.push(Arc::clone(component));
        }
    }
    table.into_values().collect()
}
