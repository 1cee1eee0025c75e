//! The lattice agent of `shoal host`: joins a lattice, keeps its host record fresh by
//! heartbeat, converges on its assignments (pull by digest, compile through the cache,
//! start, stop), reports each replica's status, and serves ready replicas on its ingress.
//!
//! Converging is level-triggered: each pass compares the assignments it reads with the
//! replicas it runs, so a restart or a reconnect needs no replay of missed events. While
//! the lattice is unreachable the host keeps serving what it runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use shoal_lattice::names::{host_assignments, replica_status_key};
use shoal_lattice::records::{
    Assignment, Capacity, HostRecord, Phase, ReplicaStatus, RouteRecord, now_millis,
};
use shoal_lattice::validate::MAX_CACHED;
use shoal_lattice::{Bucket, Event, Lattice, Versioned};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::engine::Runtime;
use crate::forward::{BufferBudget, DEFAULT_FORWARD_LIMIT, Forwarder, SERVED_BY, listen};
use crate::guest::{GuestOptions, OutboundPolicy, ServiceLink, Services};
use crate::http::{
    ConnectionLimits, HttpComponent, Peer, ResponseBody, TimedBody, plain, serve_with,
};
use crate::limits::Limits;
use crate::logs::{LogQueue, ReplicaLogs, log_queue, publish_logs};
use crate::metrics::{Metrics, Path as MetricsPath};
use crate::output::GuestOutput;
use crate::router::{AppRoutes, Lookup, Router};

/// How a host joins and behaves.
#[derive(Clone)]
pub struct AgentOptions {
    /// Host id, unique in the lattice.
    pub id: String,
    /// Labels (the caller adds `arch` and `os`).
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Capacity,
    /// How often the host record is refreshed.
    pub heartbeat: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Duration,
    /// TLS for the ingress; plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How the ingress bounds connections (count, idle and slow clients, head size).
    pub connections: ConnectionLimits,
    /// Most bytes of forwarded bodies held at once.
    pub forward_buffer: usize,
    /// This host's listeners besides the ingress (metrics), which guests may not call unless
    /// an allowlist entry names the address; the ingress and NATS are added by the agent.
    pub own_listeners: Vec<SocketAddr>,
}

/// Fetches a component's bytes by pinned reference (`repository@sha256:…`), through a
/// verified cache. Returns the bytes and the digest of the component layer.
pub trait Fetch: Send + Sync + 'static {
    /// Fetches `reference`.
    fn fetch(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<(Vec<u8>, String), String>> + Send;
}

/// A host id whose record changed this recently is held by a live host.
const ID_HOLD: Duration = Duration::from_secs(3);

/// The agent.
pub struct Agent<F> {
    lattice: Lattice,
    runtime: Arc<Runtime>,
    fetch: Arc<F>,
    options: AgentOptions,
    router: Arc<Router>,
    cached: Arc<Mutex<Vec<String>>>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
}

enum ReplicaState {
    Starting(tokio::task::JoinHandle<()>),
    /// Started; `ready` while its health path (if any) answers 2xx. The prober keeps asking.
    Serving {
        component: Arc<HttpComponent>,
        ready: bool,
        prober: Option<tokio::task::JoinHandle<()>>,
    },
    Failed,
}

impl ReplicaState {
    /// Stops the work this state runs in the background.
    fn stop(&self) {
        match self {
            ReplicaState::Starting(task) => task.abort(),
            ReplicaState::Serving {
                prober: Some(prober),
                ..
            } => prober.abort(),
            _ => {}
        }
    }
}

/// A readiness change found by a prober: replica, generation, healthy, what the path said.
type Probed = (String, u64, bool, String);

struct Replica {
    assignment: Assignment,
    state: ReplicaState,
}

type Started = (String, u64, Result<Arc<HttpComponent>, (String, String)>);

impl<F: Fetch> Agent<F> {
    /// An agent for `lattice`.
    pub fn new(lattice: Lattice, runtime: Arc<Runtime>, fetch: F, options: AgentOptions) -> Self {
        let router = Arc::new(Router::default());
        let forwarder = Forwarder::new(
            lattice.client().clone(),
            lattice.name(),
            &options.id,
            Arc::clone(&router),
            DEFAULT_FORWARD_LIMIT,
            BufferBudget::new(options.forward_buffer),
        );
        Self {
            forwarder,
            metrics: Arc::new(Metrics::default()),
            lattice,
            runtime,
            fetch: Arc::new(fetch),
            options,
            router,
            cached: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// This host's ingress counters and latency histograms, per app.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    fn record(&self, started_at: u64, http: SocketAddr, draining: bool) -> HostRecord {
        HostRecord {
            id: self.options.id.clone(),
            labels: self.options.labels.clone(),
            capacity: self.options.capacity,
            http: Some(http.to_string()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at,
            heartbeat_at: now_millis(),
            cached: self
                .cached
                .lock()
                .map(|cached| cached.clone())
                .unwrap_or_default(),
            draining,
        }
    }

    /// Joins the lattice, serves `listener` as the ingress, converges until `shutdown`
    /// resolves; then leaves: drains, stops, removes its record and replica status.
    ///
    /// # Errors
    /// When the host cannot register or read its assignments at startup.
    pub async fn run(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), shoal_lattice::Error> {
        let id = self.options.id.clone();
        let http = listener
            .local_addr()
            .map_err(|error| shoal_lattice::Error::Request {
                bucket: String::new(),
                reason: error.to_string(),
            })?;
        self.options.own_listeners.push(http);
        let server = self.lattice.client().server_info();
        if let Ok(ip) = server.host.parse::<std::net::IpAddr>() {
            self.options
                .own_listeners
                .push(SocketAddr::new(ip, server.port));
        }
        let started_at = now_millis();
        self.claim_id(&self.record(started_at, http, false)).await?;
        let assignments = self
            .lattice
            .mirror::<Assignment>(Bucket::Assignments, &host_assignments(&id))
            .await?;
        // Every app's routes and endpoints, as the scheduler publishes them for hosts (never
        // the apps' specs: a host credential reads no app's configuration).
        let routing = self
            .lattice
            .mirror::<RouteRecord>(Bucket::Status, "routes.>")
            .await?;
        let (stop_listening, listening_stopped) = tokio::sync::oneshot::channel();
        let listening = listen(
            self.lattice.client().clone(),
            self.lattice.name(),
            &id,
            self.forwarder.clone(),
            Arc::clone(&self.router),
            listening_stopped,
        )
        .await
        .map_err(|error| shoal_lattice::Error::Request {
            bucket: String::new(),
            reason: format!("cannot listen for forwarded requests: {error}"),
        })?;
        tracing::info!(host = %id, lattice = %self.lattice.name(), %http, "host joined the lattice");

        let (stop_ingress, ingress_stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Arc::clone(&self.router);
        let forwarder = self.forwarder.clone();
        let metrics = Arc::clone(&self.metrics);
        let served_by =
            http::HeaderValue::from_str(&id).unwrap_or(http::HeaderValue::from_static("host"));
        let ingress = tokio::spawn(serve_with(
            listener,
            self.options.tls.clone(),
            self.options.connections,
            move |request| {
                ingress(
                    Arc::clone(&router),
                    forwarder.clone(),
                    Arc::clone(&metrics),
                    served_by.clone(),
                    request,
                )
            },
            async move {
                let _ = ingress_stopped.await;
            },
            self.options.drain,
        ));

        let (log_lines, unpublished) = log_queue();
        let publisher = tokio::spawn(publish_logs(self.lattice.clone(), unpublished));
        let mut changes = assignments.changes();
        let mut routing_changes = routing.changes();
        let (started_tx, mut started_rx) = mpsc::channel::<Started>(64);
        let (probed_tx, mut probed_rx) = mpsc::channel::<Probed>(64);
        let mut replicas: HashMap<String, Replica> = HashMap::new();
        let mut reported = HashSet::new();
        let mut heartbeat = tokio::time::interval(self.options.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = heartbeat.tick() => {
                    if let Err(error) = self.lattice.put(Bucket::Hosts, &id, &self.record(started_at, http, false)).await {
                        tracing::warn!(%error, "heartbeat failed; still serving what runs here");
                    }
                }
                _ = changes.changed() => {}
                _ = routing_changes.changed() => {}
                Some((replica, generation, result)) = started_rx.recv() => {
                    self.started(&mut replicas, replica, generation, result, &probed_tx).await;
                }
                Some((replica, generation, healthy, message)) = probed_rx.recv() => {
                    self.probed(&mut replicas, &replica, generation, healthy, message).await;
                }
            }
            // A bug that panics on some record must not take down what this host serves:
            // the pass is dropped, the next one tries again.
            let pass = AssertUnwindSafe(async {
                self.report_invalid(&assignments, &mut reported).await;
                self.converge(
                    &assignments.snapshot(),
                    &mut replicas,
                    &started_tx,
                    &log_lines,
                )
                .await;
                let records: Vec<RouteRecord> = routing
                    .snapshot()
                    .into_iter()
                    .map(|record| record.value)
                    .collect();
                self.publish_routes(records, &replicas);
                self.count_replicas(&replicas);
            })
            .catch_unwind()
            .await;
            if pass.is_err() {
                tracing::error!(
                    "a convergence pass panicked; still serving, trying again next pass"
                );
            }
        }

        tracing::info!(host = %id, "leaving the lattice: draining");
        let _ = self
            .lattice
            .put(Bucket::Hosts, &id, &self.record(started_at, http, true))
            .await;
        let _ = stop_ingress.send(());
        let _ = ingress.await;
        // Forwarded requests are answered while the ingress drains; then no more arrive
        // (forwarders pass them to other endpoints).
        let _ = stop_listening.send(());
        let _ = tokio::time::timeout(self.options.drain, listening).await;
        for (replica, state) in replicas.drain() {
            state.state.stop();
            let _ = self
                .lattice
                .delete(Bucket::Status, &replica_status_key(&id, &replica))
                .await;
        }
        // The last lines the replicas wrote go out before the host leaves.
        drop(log_lines);
        let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
        self.lattice.delete(Bucket::Hosts, &id).await?;
        tracing::info!(host = %id, "host left the lattice");
        Ok(())
    }

    /// Writes this host's first record, refusing an id a live host holds: one whose record
    /// changes within [`ID_HOLD`] (a host that crashed leaves a record that does not).
    async fn claim_id(&self, record: &HostRecord) -> Result<(), shoal_lattice::Error> {
        let id = &self.options.id;
        loop {
            let Some(held) = self.lattice.get::<HostRecord>(Bucket::Hosts, id).await? else {
                match self.lattice.create(Bucket::Hosts, id, record).await {
                    Ok(_) => return Ok(()),
                    // Someone registered it meanwhile: look again.
                    Err(shoal_lattice::Error::Conflict { .. }) => continue,
                    Err(error) => return Err(error),
                }
            };
            let holder = format!(
                "ingress {}, started {} ms ago",
                held.value.http.as_deref().unwrap_or("none"),
                now_millis().saturating_sub(held.value.started_at)
            );
            tracing::info!(host = %id, %holder, "a record holds this host id; checking whether its host is alive");
            let deadline = tokio::time::Instant::now() + ID_HOLD;
            let mut alive = false;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(250)).await;
                match self.lattice.get::<HostRecord>(Bucket::Hosts, id).await? {
                    Some(now) if now.revision != held.revision && !now.value.draining => {
                        alive = true;
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            if alive {
                return Err(shoal_lattice::Error::HostIdTaken {
                    id: id.clone(),
                    holder,
                });
            }
            match self
                .lattice
                .update(Bucket::Hosts, id, record, held.revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(shoal_lattice::Error::Conflict { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Tells of each assignment that breaks the lattice's rules, once: it is not run.
    async fn report_invalid(
        &self,
        assignments: &shoal_lattice::Mirror<Assignment>,
        reported: &mut HashSet<(String, u64)>,
    ) {
        for refused in assignments.invalid() {
            if !reported.insert((refused.key.clone(), refused.revision)) {
                continue;
            }
            tracing::warn!(key = %refused.key, reason = %refused.reason, "not running an invalid assignment");
            self.lattice
                .emit(Event::host(
                    &format!("host {}", self.options.id),
                    &self.options.id,
                    "InvalidRecord",
                    format!("assignment {} is not run: {}", refused.key, refused.reason),
                ))
                .await;
        }
    }

    async fn converge(
        &self,
        desired: &[Versioned<Assignment>],
        replicas: &mut HashMap<String, Replica>,
        started: &mpsc::Sender<Started>,
        log_lines: &LogQueue,
    ) {
        let wanted: HashMap<&str, &Assignment> = desired
            .iter()
            .map(|record| (record.value.replica.as_str(), &record.value))
            .collect();
        let gone: Vec<String> = replicas
            .keys()
            .filter(|replica| !wanted.contains_key(replica.as_str()))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for replica in gone {
            if let Some(removed) = replicas.remove(&replica) {
                removed.state.stop();
            }
            tracing::info!(%replica, "replica stopped: no longer assigned here");
            let _ = self
                .lattice
                .delete(
                    Bucket::Status,
                    &replica_status_key(&self.options.id, &replica),
                )
                .await;
        }
        for (replica, assignment) in wanted {
            if replicas.contains_key(replica) {
                continue;
            }
            changed = true;
            let services: Arc<dyn Services> = Arc::new(LatticeServices {
                namespace: assignment.namespace.clone(),
                router: Arc::clone(&self.router),
                forwarder: self.forwarder.clone(),
            });
            let output = GuestOutput(Arc::new(ReplicaLogs::new(
                log_lines.clone(),
                &self.options.id,
                assignment,
                Arc::clone(&self.metrics),
            )));
            let start = start(
                self.lattice.clone(),
                Arc::clone(&self.runtime),
                Arc::clone(&self.fetch),
                Arc::clone(&self.cached),
                (*assignment).clone(),
                Links {
                    services,
                    output,
                    own_listeners: self.options.own_listeners.clone(),
                },
                started.clone(),
            );
            let (id, generation, done) =
                (replica.to_owned(), assignment.generation, started.clone());
            let task = tokio::spawn(async move {
                // A start that panics fails its own replica, reported like any failure.
                if AssertUnwindSafe(start).catch_unwind().await.is_err() {
                    let failure = (
                        "StartFailed".to_owned(),
                        "starting the replica panicked; see the host's log".to_owned(),
                    );
                    let _ = done.send((id, generation, Err(failure))).await;
                }
            });
            replicas.insert(
                replica.to_owned(),
                Replica {
                    assignment: (*assignment).clone(),
                    state: ReplicaState::Starting(task),
                },
            );
        }
        if changed {
            tracing::debug!(replicas = replicas.len(), "converged");
        }
    }

    async fn started(
        &self,
        replicas: &mut HashMap<String, Replica>,
        replica: String,
        generation: u64,
        result: Result<Arc<HttpComponent>, (String, String)>,
        probed: &mpsc::Sender<Probed>,
    ) {
        let Some(entry) = replicas.get_mut(&replica) else {
            return;
        };
        if entry.assignment.generation != generation {
            return;
        }
        let (phase, reason, message) = match result {
            Ok(component) => {
                let prober = entry.assignment.template.health.as_ref().map(|health| {
                    tokio::spawn(keep_probing(
                        Arc::clone(&component),
                        health.path.clone(),
                        replica.clone(),
                        generation,
                        probed.clone(),
                    ))
                });
                entry.state = ReplicaState::Serving {
                    component,
                    ready: true,
                    prober,
                };
                tracing::info!(%replica, app = %entry.assignment.app, "replica ready");
                self.emit(
                    &entry.assignment,
                    "Ready",
                    format!(
                        "replica {replica} ready on host {} (revision {})",
                        self.options.id, entry.assignment.revision
                    ),
                )
                .await;
                (Phase::Ready, None, None)
            }
            Err((reason, message)) => {
                entry.state = ReplicaState::Failed;
                tracing::warn!(%replica, app = %entry.assignment.app, %reason, %message, "replica failed to start");
                self.emit(
                    &entry.assignment,
                    "Failed",
                    format!(
                        "replica {replica} failed to start on host {} ({reason}): {message}",
                        self.options.id
                    ),
                )
                .await;
                (Phase::Failed, Some(reason), Some(message))
            }
        };
        report(&self.lattice, &entry.assignment, phase, reason, message).await;
    }

    /// Tells the lattice's events what happened to `assignment`'s replica here.
    async fn emit(&self, assignment: &Assignment, reason: &str, message: String) {
        self.lattice
            .emit(Event::replica(
                &format!("host {}", self.options.id),
                assignment,
                reason,
                message,
            ))
            .await;
    }

    /// A serving replica's health changed: it gets traffic only while healthy.
    async fn probed(
        &self,
        replicas: &mut HashMap<String, Replica>,
        replica: &str,
        generation: u64,
        healthy: bool,
        message: String,
    ) {
        let Some(entry) = replicas.get_mut(replica) else {
            return;
        };
        if entry.assignment.generation != generation {
            return;
        }
        if let ReplicaState::Serving { ready, .. } = &mut entry.state {
            *ready = healthy;
        }
        if healthy {
            tracing::info!(%replica, "replica healthy again");
            self.emit(
                &entry.assignment,
                "Healthy",
                format!("replica {replica} answers its health path again: it gets traffic"),
            )
            .await;
            report(&self.lattice, &entry.assignment, Phase::Ready, None, None).await;
        } else {
            tracing::warn!(%replica, %message, "replica unhealthy: no traffic until its health path answers 2xx");
            self.emit(
                &entry.assignment,
                "Unhealthy",
                format!("replica {replica} gets no traffic: {message}"),
            )
            .await;
            report(
                &self.lattice,
                &entry.assignment,
                Phase::Pending,
                Some("ProbeFailed".to_owned()),
                Some(message),
            )
            .await;
        }
    }

    /// Sets the replica gauges of the metrics endpoint.
    fn count_replicas(&self, replicas: &HashMap<String, Replica>) {
        let ready = replicas
            .values()
            .filter(|replica| matches!(replica.state, ReplicaState::Serving { ready: true, .. }))
            .count();
        let running = replicas
            .values()
            .filter(|replica| !matches!(replica.state, ReplicaState::Failed))
            .count();
        let set = |gauge: &std::sync::atomic::AtomicU64, value: usize| {
            gauge.store(
                u64::try_from(value).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        };
        set(&self.metrics.replicas, running);
        set(&self.metrics.ready_replicas, ready);
    }

    /// Rebuilds the routing table from every app's routes, endpoints and ready local
    /// replicas.
    fn publish_routes(&self, apps: Vec<RouteRecord>, replicas: &HashMap<String, Replica>) {
        let mut table: BTreeMap<(String, String), AppRoutes> = apps
            .into_iter()
            .map(|record| {
                let limits = shoal_lattice::records::AppLimits {
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
        self.router.set(table.into_values().collect());
    }
}

/// What a replica's guests are connected to: other apps, and where their output goes.
struct Links {
    services: Arc<dyn Services>,
    output: GuestOutput,
    own_listeners: Vec<SocketAddr>,
}

async fn report(
    lattice: &Lattice,
    assignment: &Assignment,
    phase: Phase,
    reason: Option<String>,
    message: Option<String>,
) {
    let status = ReplicaStatus {
        replica: assignment.replica.clone(),
        app: assignment.app.clone(),
        namespace: assignment.namespace.clone(),
        revision: assignment.revision,
        host: assignment.host.clone(),
        phase,
        reason,
        message,
        observed_generation: assignment.generation,
        since: now_millis(),
    };
    if let Err(error) = lattice
        .put(
            Bucket::Status,
            &replica_status_key(&assignment.host, &assignment.replica),
            &status,
        )
        .await
    {
        tracing::warn!(%error, replica = %assignment.replica, "cannot report replica status");
    }
}

/// Pulls, compiles and instantiates one replica, reporting progress; sends the outcome.
async fn start<F: Fetch>(
    lattice: Lattice,
    runtime: Arc<Runtime>,
    fetch: Arc<F>,
    cached: Arc<Mutex<Vec<String>>>,
    assignment: Assignment,
    links: Links,
    done: mpsc::Sender<Started>,
) {
    report(&lattice, &assignment, Phase::Pulling, None, None).await;
    let reference = assignment.pinned_reference();
    let result = async {
        let (bytes, layer_digest) = fetch
            .fetch(&reference)
            .await
            .map_err(|message| ("PullFailed".to_owned(), message))?;
        // The newest digests only: the host record must not grow with every component
        // this host ever ran.
        if let Ok(mut cached) = cached.lock() {
            cached.retain(|digest| *digest != assignment.digest);
            cached.push(assignment.digest.clone());
            let excess = cached.len().saturating_sub(MAX_CACHED);
            cached.drain(..excess);
        }
        let template = assignment.template.clone();
        let name = format!("{}/{}", assignment.namespace, assignment.app);
        tokio::task::spawn_blocking(move || {
            let loaded = runtime
                .load(&bytes, &layer_digest)
                .map_err(|error| ("CompileFailed".to_owned(), error.to_string()))?;
            let outbound = OutboundPolicy::new(&template.allowed_outbound)
                .map_err(|message| ("InvalidSpec".to_owned(), message))?
                .with_own_listeners(links.own_listeners);
            let limits = Limits::for_app(&template.limits);
            let options = GuestOptions {
                env: template.config.clone().into_iter().collect(),
                dirs: Vec::new(),
                outbound,
                args: Vec::new(),
                name,
                services: Some(ServiceLink(links.services)),
                output: Some(links.output),
            };
            HttpComponent::new(&runtime, &loaded.component, options, limits)
                .map(Arc::new)
                .map_err(|error| ("NotServable".to_owned(), error.to_string()))
        })
        .await
        .map_err(|error| ("StartFailed".to_owned(), error.to_string()))?
    }
    .await;
    // With a health path, the replica is ready only once that path answers 2xx through it.
    if let (Ok(component), Some(health)) = (&result, &assignment.template.health) {
        wait_healthy(&lattice, &assignment, component, &health.path).await;
    }
    let _ = done
        .send((assignment.replica.clone(), assignment.generation, result))
        .await;
}

/// How often a replica's health path is asked while it is not ready.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How often a ready replica's health path is asked.
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// GETs `path` through `component`: `Ok` on 2xx, else what it answered.
async fn probe(component: &Arc<HttpComponent>, path: &str) -> Result<(), String> {
    let request = Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new().map_err(
            |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
        ));
    let answer = match request {
        Ok(request) => Arc::clone(component).handle(request).await.status(),
        Err(_) => StatusCode::BAD_REQUEST,
    };
    if answer.is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {answer}"))
    }
}

/// Probes `path` through `component` until it answers 2xx, reporting the replica as pending
/// with reason `ProbeFailed` (and what it answered) while it does not. A replica that never
/// passes never becomes ready and never gets traffic; the scheduler's progress deadline
/// decides what happens to its rollout.
async fn wait_healthy(
    lattice: &Lattice,
    assignment: &Assignment,
    component: &Arc<HttpComponent>,
    path: &str,
) {
    let mut reported = None;
    while let Err(message) = probe(component, path).await {
        if reported.as_ref() != Some(&message) {
            tracing::info!(replica = %assignment.replica, %message, "replica not ready yet");
            report(
                lattice,
                assignment,
                Phase::Pending,
                Some("ProbeFailed".to_owned()),
                Some(message.clone()),
            )
            .await;
            reported = Some(message);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Keeps probing a serving replica and reports each change of health.
async fn keep_probing(
    component: Arc<HttpComponent>,
    path: String,
    replica: String,
    generation: u64,
    probed: mpsc::Sender<Probed>,
) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(if healthy {
            READY_PROBE_INTERVAL
        } else {
            PROBE_INTERVAL
        })
        .await;
        let result = probe(&component, &path).await;
        if result.is_ok() != healthy {
            healthy = result.is_ok();
            let message = result.err().unwrap_or_default();
            if probed
                .send((replica.clone(), generation, healthy, message))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Answers one ingress request: a ready local replica when there is one, else forwarded
/// over the lattice.
async fn ingress(
    router: Arc<Router>,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    served_by: http::HeaderValue,
    request: Request<TimedBody>,
) -> Response<ResponseBody> {
    let started = std::time::Instant::now();
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
            response
        }
        Lookup::Remote(app) => {
            let peer = request.extensions().get::<Peer>().map(|peer| peer.0);
            let response = forwarder
                .forward(&app.namespace, &app.app, request, peer, app.timeout)
                .await;
            metrics.record(
                &app.key,
                MetricsPath::Forwarded,
                response.status().as_u16(),
                started.elapsed(),
            );
            response
        }
        Lookup::NoRoute => plain(StatusCode::NOT_FOUND, "no app serves this route\n"),
    }
}

/// Service discovery for guests: `http://<app>` (in the caller's namespace) or
/// `http://<app>.<namespace>` reaches that app through the lattice, a local replica first.
/// Namespaces are a boundary: another namespace's app is reachable only when its
/// `spec.expose` names the caller's namespace (or the lattice); otherwise the name is not a
/// lattice app for the caller, and the request is refused like any outbound one not allowed.
struct LatticeServices {
    namespace: String,
    router: Arc<Router>,
    forwarder: Forwarder,
}

impl Services for LatticeServices {
    fn resolve(&self, uri: &http::Uri) -> Option<(String, String)> {
        if uri.scheme_str().is_some_and(|scheme| scheme != "http") || uri.port().is_some() {
            return None;
        }
        let host = uri.host()?;
        let (app, namespace) = match host.split_once('.') {
            None => (host, self.namespace.as_str()),
            Some((app, namespace)) if !namespace.contains('.') => (app, namespace),
            Some(_) => return None,
        };
        self.router
            .reachable(&self.namespace, namespace, app)
            .then(|| (namespace.to_owned(), app.to_owned()))
    }

    fn call(
        &self,
        namespace: String,
        app: String,
        request: Request<wasmtime_wasi_http::WasiBody>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Response<wasmtime_wasi_http::WasiBody>> + Send>,
    > {
        let local = self.router.pick(&namespace, &app);
        let forwarder = self.forwarder.clone();
        let timeout = self.router.timeout_of(&namespace, &app);
        Box::pin(async move {
            match local {
                Some(component) => component.handle(request).await,
                None => {
                    forwarder
                        .forward(&namespace, &app, request, None, timeout)
                        .await
                }
            }
        })
    }
}

/// The ids of replicas in a set of assignments, for tests and status.
pub fn replica_ids(assignments: &[Versioned<Assignment>]) -> HashSet<String> {
    assignments
        .iter()
        .map(|record| record.value.replica.clone())
        .collect()
}
