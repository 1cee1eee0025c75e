//! The lattice agent of `shoal host`: joins a lattice, keeps its host record fresh by
//! heartbeat, runs the replicas assigned to it (see [`supervisor`]), serves them on its
//! ingress (see [`ingress`]), and keeps on disk what it needs to serve without the lattice
//! (see [`crate::state`]).
//!
//! Edge autonomy: a host with saved state starts its last known replicas at once, before
//! and whatever the lattice answers, and joins in the background with backoff. Once joined
//! it converges level-triggered on its assignments, so replicas whose assignment still
//! stands keep running. A lattice that comes back with another identity, or none (its
//! state is gone), does not make it stop anything: it keeps serving what it saved, says so
//! loudly, and waits for new desired state or an operator's `--adopt-lattice`.

mod activator;
mod ingress;
mod probe;
mod report;
mod services;
mod stores;
mod supervisor;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use shoal_lattice::names::host_assignments;
use shoal_lattice::quantity::Span;
use shoal_lattice::records::{Assignment, Capacity, HostRecord, RouteRecord, now_millis};
use shoal_lattice::{Bucket, Event, Lattice, Mirror};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Runtime;
use crate::forward::{BufferBudget, Forwarder, INLINE_LIMIT, listen};
use crate::http::{ConnectionLimits, serve_with};
use crate::logs::{LogReceiver, log_queue, publish_logs};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::state::{HostState, StateFile};
use activator::Activator;
pub use activator::HoldLimits;
use ingress::{Uplink, ingress, routing_table};
use report::Reporter;
use supervisor::Supervisor;

/// How a host joins and behaves.
#[derive(Clone)]
pub struct AgentOptions {
    /// Host id, unique in the lattice.
    pub id: String,
    /// The lattice's name (saved state of another lattice is not used).
    pub lattice: String,
    /// Labels (the caller adds `arch` and `os`).
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Capacity,
    /// How often the host record is refreshed.
    pub heartbeat: Duration,
    /// How long the scheduler waits for a heartbeat before it counts this host lost;
    /// the scheduler's own timeout without it.
    pub lost_after: Option<Duration>,
    /// How long in-flight requests may take to finish on shutdown.
    pub drain: Duration,
    /// TLS for the ingress; plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How the ingress bounds connections (count, idle and slow clients, head size).
    pub connections: ConnectionLimits,
    /// Most bytes of forwarded bodies held at once.
    pub forward_buffer: usize,
    /// This host's listeners besides the ingress (metrics, the NATS servers), which guests
    /// may not call unless an allowlist entry names the address; the agent adds the ingress.
    pub own_listeners: Vec<SocketAddr>,
    /// Where the host keeps what it needs to serve offline; nothing is kept without it.
    pub state_dir: Option<PathBuf>,
    /// Take the lattice as it is even when its identity is not the one the saved state came
    /// from (an operator's decision after a lattice was rebuilt): saved replicas it does not
    /// assign here stop.
    pub adopt_lattice: bool,
    /// Keep trying to reach the lattice even without saved state (a site's host whose hub
    /// is not reachable yet); without it, the first failure is an error.
    pub wait_for_lattice: bool,
    /// How many requests for an app scaled to zero are held, and how long, while it wakes.
    pub hold: HoldLimits,
    /// The JWT of the host's credential, presented to the control plane when it joins: the
    /// labels and capacity it grants are what placement believes of this host.
    pub credential: Option<String>,
}

/// Fetches a component's bytes by pinned reference (`repository@sha256:…`), through a
/// verified cache, and checks its signature when the assignment names trusted keys.
pub trait Fetch: Send + Sync + 'static {
    /// Fetches `reference`; with `trusted` keys, only if a signature of its manifest digest
    /// by one of them is stored beside it (or cached from an earlier fetch).
    fn fetch(
        &self,
        reference: &str,
        trusted: &[shoal_lattice::trust::TrustedKey],
    ) -> impl Future<Output = Result<Fetched, FetchError>> + Send;
}

/// A fetched component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// The digest of its layer (`sha256:…`): what compiled code is cached and shared by.
    pub layer_digest: String,
}

/// Why a fetch failed, as a replica's status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    /// `PullFailed`, `SignatureMissing` or `SignatureInvalid`.
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl FetchError {
    /// The component could not be pulled.
    pub fn pull(message: impl Into<String>) -> Self {
        FetchError {
            reason: "PullFailed",
            message: message.into(),
        }
    }
}

/// A host id whose record changed this recently is held by a live host.
const ID_HOLD: Duration = Duration::from_secs(3);

/// The first and the longest wait between attempts to reach the lattice.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The most often a host writes its saved state: a change waits at most this long.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// How often a host serving another lattice's state says so in its log.
const MISMATCH_REMINDER: Duration = Duration::from_secs(60);

/// The agent.
pub struct Agent<F> {
    runtime: Arc<Runtime>,
    fetch: Arc<F>,
    options: AgentOptions,
    router: Arc<Router>,
    cached: Arc<Mutex<Vec<String>>>,
    in_use: Arc<tokio::sync::watch::Sender<std::collections::BTreeSet<String>>>,
    metrics: Arc<Metrics>,
    /// The key the lattice seals this host's secrets to (kept in the state directory).
    secrets_key: Arc<shoal_lattice::secrets::XKey>,
    /// When the load was last taken for a host record.
    load_taken: Mutex<std::time::Instant>,
    /// What the routing table was last built from: a pass with the same inputs (a
    /// heartbeat, most often) leaves the table as it is.
    routing_built: Mutex<Option<RoutingInputs>>,
}

/// What the routing table is built from, in brief: the routing records' highest KV
/// revision and a fingerprint of the ready local replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RoutingInputs {
    records: u64,
    ready: u64,
}

impl RoutingInputs {
    fn of(records: u64, replicas: &HashMap<String, supervisor::Replica>) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        // Order-free: a sum of each ready replica's hash (its id and the very component
        // that serves it, so a restart counts as a change).
        let ready = replicas
            .iter()
            .filter_map(|(id, replica)| match &replica.state {
                supervisor::ReplicaState::Serving {
                    component,
                    ready: true,
                    ..
                } => {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    id.hash(&mut hasher);
                    Arc::as_ptr(component).cast::<()>().hash(&mut hasher);
                    Some(hasher.finish())
                }
                _ => None,
            })
            .fold(0u64, u64::wrapping_add);
        Self { records, ready }
    }
}

/// A lattice connection as the host uses it.
struct Joined {
    lattice: Lattice,
    assignments: Mirror<Assignment>,
    routing: Mirror<RouteRecord>,
    forwarder: Forwarder,
    listening: tokio::task::JoinHandle<()>,
    stop_listening: oneshot::Sender<()>,
}

/// What the host knows about the lattice its replicas came from.
#[derive(Default)]
struct Provenance {
    /// The identity the running replicas were assigned under.
    expected: Option<String>,
    /// Set while the joined lattice's identity is not `expected`: what it has instead.
    mismatch: Option<Option<String>>,
    /// When the mismatch was last said in the log.
    reminded: Option<tokio::time::Instant>,
}

impl<F: Fetch> Agent<F> {
    /// An agent.
    pub fn new(runtime: Arc<Runtime>, fetch: F, options: AgentOptions) -> Self {
        let secrets_key = match &options.state_dir {
            Some(dir) => crate::state::StateFile::new(dir)
                .secrets_key()
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "cannot keep a secrets key; this one lasts until the host stops");
                    shoal_lattice::secrets::new_key()
                }),
            None => shoal_lattice::secrets::new_key(),
        };
        Self {
            secrets_key: Arc::new(secrets_key),
            load_taken: Mutex::new(std::time::Instant::now()),
            routing_built: Mutex::new(None),
            metrics: Arc::new(Metrics::default()),
            runtime,
            fetch: Arc::new(fetch),
            options,
            router: Arc::new(Router::default()),
            cached: Arc::new(Mutex::new(Vec::new())),
            in_use: Arc::new(tokio::sync::watch::Sender::new(
                std::collections::BTreeSet::new(),
            )),
        }
    }

    /// The component (manifest) digests the replicas run, changing as they do: what a
    /// cache budget keeps.
    pub fn in_use(&self) -> tokio::sync::watch::Receiver<std::collections::BTreeSet<String>> {
        self.in_use.subscribe()
    }

    /// This host's ingress counters and latency histograms, per app.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves `listener` as the ingress and runs the replicas assigned to this host until
    /// `shutdown` resolves; then leaves: drains, stops, and (when the lattice is reachable)
    /// removes its record and replica status, all within the drain deadline.
    ///
    /// `connect` reaches the lattice; it is called again, with backoff, while it fails. A
    /// host with saved state serves it meanwhile; one without fails on the first attempt.
    ///
    /// # Errors
    /// When the lattice refuses this host, or cannot be reached and there is no saved state.
    pub async fn run<C, Fut>(
        mut self,
        listener: TcpListener,
        connect: C,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), shoal_lattice::Error>
    where
        C: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Lattice, shoal_lattice::Error>> + Send,
    {
        let id = self.options.id.clone();
        let http = listener
            .local_addr()
            .map_err(|error| shoal_lattice::Error::Request {
                bucket: String::new(),
                reason: error.to_string(),
            })?;
        self.options.own_listeners.push(http);
        let started_at = now_millis();
        let state_file = self.options.state_dir.clone().map(StateFile::new);
        let mut saved = self.load_saved(state_file.as_ref());
        let mut provenance = Provenance {
            expected: saved.as_ref().and_then(|state| state.lattice_id.clone()),
            ..Provenance::default()
        };

        let reporter = Reporter::default();
        let uplink = Uplink::default();
        let activator = Arc::new(Activator::new(&id, self.options.hold));
        let (log_lines, unpublished) = log_queue();
        let mut unpublished: Option<LogReceiver> = Some(unpublished);
        let (started_tx, mut started_rx) = mpsc::channel(64);
        let (probed_tx, mut probed_rx) = mpsc::channel(64);
        let (dead_tx, mut dead_rx) = mpsc::channel(64);
        let mut supervisor = Supervisor {
            host: id.clone(),
            runtime: Arc::clone(&self.runtime),
            fetch: Arc::clone(&self.fetch),
            reporter: reporter.clone(),
            router: Arc::clone(&self.router),
            activator: Arc::clone(&activator),
            uplink: uplink.clone(),
            metrics: Arc::clone(&self.metrics),
            log_lines: log_lines.clone(),
            own_listeners: self.options.own_listeners.clone(),
            secrets_key: Arc::clone(&self.secrets_key),
            cached: Arc::clone(&self.cached),
            in_use: Arc::clone(&self.in_use),
            replicas: std::collections::HashMap::new(),
            started: started_tx,
            probed: probed_tx,
            dead: dead_tx,
        };

        // Without saved state there is nothing to serve offline: a lattice that cannot be
        // reached at start is an error, as it always was (a site's hosts wait instead).
        let mut joining = None;
        let mut joined: Option<Joined> = None;
        match &saved {
            None if !self.options.wait_for_lattice => {
                joined = Some(self.join(connect, false, 0, started_at, http).await?);
            }
            None => {
                joining = Some(tokio::spawn(self.join(connect, true, 0, started_at, http)));
            }
            Some(state) => {
                let serving = state.assignments.len();
                joining = Some(tokio::spawn(
                    self.join(connect, true, serving, started_at, http),
                ));
            }
        }

        let (stop_ingress, ingress_stopped) = oneshot::channel::<()>();
        let ingress = {
            let router = Arc::clone(&self.router);
            let uplink = uplink.clone();
            let metrics = Arc::clone(&self.metrics);
            let activator = Arc::clone(&activator);
            let served_by =
                http::HeaderValue::from_str(&id).unwrap_or(http::HeaderValue::from_static("host"));
            tokio::spawn(serve_with(
                listener,
                self.options.tls.clone(),
                self.options.connections,
                move |request| {
                    ingress(
                        Arc::clone(&router),
                        uplink.clone(),
                        Arc::clone(&activator),
                        Arc::clone(&metrics),
                        served_by.clone(),
                        request,
                    )
                },
                async move {
                    let _ = ingress_stopped.await;
                },
                self.options.drain,
            ))
        };
        if let Some(state) = &saved {
            tracing::info!(
                host = %id,
                replicas = state.assignments.len(),
                saved_at = state.saved_at,
                "serving the saved replicas while the lattice is reached"
            );
            supervisor
                .converge(&state.assignments, &HashSet::new())
                .await;
            self.router
                .set(routing_table(state.routes_to_serve(), &supervisor.replicas));
        }

        let mut publisher = None;
        let mut reported = HashSet::new();
        // What a pass asked to save and is not saved yet, and when the last save was: saves
        // are at most one every SAVE_EVERY, so a thousand changes in a burst (an apply of
        // many apps) write the file a few times, not a thousand.
        let mut unsaved: Option<HostState> = None;
        let mut last_save = tokio::time::Instant::now();
        let mut last_saved: Option<HostState> = saved.clone().map(|state| HostState {
            saved_at: 0,
            ..state
        });
        let mut heartbeat = tokio::time::interval(self.options.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut assignment_changes: Option<tokio::sync::watch::Receiver<u64>> = None;
        let mut routing_changes: Option<tokio::sync::watch::Receiver<u64>> = None;
        let mut newly_joined = joined.is_some();
        let mut was_connected = joined.is_some();
        // The work races the shutdown: a pass stuck on an unreachable lattice (writes wait
        // for acks) never holds up leaving; an interrupted pass is redone by the next one.
        let work = async {
            loop {
                if newly_joined {
                    newly_joined = false;
                    if let Some(link) = &joined {
                        was_connected = true;
                        // Guests may not call the NATS server this host reached (by the
                        // address it reports; the CLI adds the URLs' addresses at start).
                        let server = link.lattice.client().server_info();
                        if let Ok(ip) = server.host.parse::<std::net::IpAddr>() {
                            supervisor
                                .own_listeners
                                .push(SocketAddr::new(ip, server.port));
                        }
                        assignment_changes = Some(link.assignments.changes());
                        routing_changes = Some(link.routing.changes());
                        uplink.joined(link.forwarder.clone(), link.lattice.clone());
                        reporter.joined(link.lattice.clone()).await;
                        if let Some(lines) = unpublished.take() {
                            publisher =
                                Some(tokio::spawn(publish_logs(link.lattice.clone(), lines)));
                        }
                        tracing::info!(host = %id, lattice = %link.lattice.name(), %http, "host joined the lattice");
                        let _ = self
                            .check_lattice(&link.lattice, &mut provenance, &supervisor, &reporter)
                            .await;
                        if provenance.mismatch.is_none() {
                            supervisor.report_all().await;
                        }
                        let _ = self
                            .heartbeat(&link.lattice, started_at, http, false, &provenance)
                            .await;
                    }
                }
                tokio::select! {
                    _ = heartbeat.tick() => {
                        if let Some(link) = &joined {
                            let connected = link.lattice.client().connection_state()
                                == async_nats::connection::State::Connected;
                            if connected != was_connected {
                                was_connected = connected;
                                if connected {
                                    // Statuses were not written meanwhile; events were kept.
                                    tracing::info!("the lattice is reachable again: reporting");
                                    reporter.flush().await;
                                    if provenance.mismatch.is_none() {
                                        supervisor.report_all().await;
                                    }
                                } else {
                                    tracing::warn!("the lattice is unreachable: still serving what runs here");
                                }
                            }
                            if connected
                                && let Err(error) = self.heartbeat(&link.lattice, started_at, http, false, &provenance).await
                            {
                                tracing::warn!(%error, "heartbeat failed; still serving what runs here");
                            }
                        }
                        self.remind(&mut provenance, &supervisor);
                    }
                    Some(result) = async { match joining.as_mut() { Some(task) => Some(task.await), None => None } } => {
                        joining = None;
                        match result {
                            Ok(Ok(link)) => {
                                joined = Some(link);
                                newly_joined = true;
                                continue;
                            }
                            Ok(Err(error)) => {
                                tracing::error!(%error, "the lattice refused this host: stopping");
                                supervisor.stop_all(false).await;
                                return Err::<(), _>(error);
                            }
                            Err(_) => {
                                tracing::error!("joining the lattice failed unexpectedly: still serving the saved state");
                            }
                        }
                    }
                    _ = changed(assignment_changes.as_mut()) => {}
                    _ = changed(routing_changes.as_mut()) => {}
                    Some((replica, generation, result)) = started_rx.recv() => {
                        supervisor.started(replica, generation, result).await;
                        // Replicas that start together end their starts together: one
                        // pass for all that are done.
                        while let Ok((replica, generation, result)) = started_rx.try_recv() {
                            supervisor.started(replica, generation, result).await;
                        }
                    }
                    () = tokio::time::sleep_until(last_save + SAVE_EVERY), if unsaved.is_some() => {}
                    Some(probed) = probed_rx.recv() => supervisor.probed(probed).await,
                    Some(dead) = dead_rx.recv() => supervisor.liveness_failed(dead).await,
                }
                // A bug that panics on some record must not take down what this host serves:
                // the pass is dropped, the next one tries again.
                let pass = AssertUnwindSafe(self.pass(
                    joined.as_ref(),
                    &mut saved,
                    &mut provenance,
                    &mut supervisor,
                    &reporter,
                    &mut reported,
                ))
                .catch_unwind()
                .await;
                match pass {
                    Ok(Some(state)) => unsaved = Some(state),
                    Ok(None) => {}
                    Err(_) => tracing::error!(
                        "a convergence pass panicked; still serving, trying again next pass"
                    ),
                }
                if last_save.elapsed() >= SAVE_EVERY
                    && let Some(state) = unsaved.take()
                {
                    self.save(state_file.as_ref(), state, &mut last_saved).await;
                    last_save = tokio::time::Instant::now();
                }
            }
        };
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            result = work => result,
        };
        outcome?;
        // What the last passes asked to save goes to disk before leaving (saves wait up to
        // SAVE_EVERY): a restart, offline too, serves what ran, with its routes.
        if let Some(state) = unsaved.take() {
            self.save(state_file.as_ref(), state, &mut last_saved).await;
        }

        if let Some(task) = joining {
            task.abort();
        }
        self.leave(
            joined,
            supervisor,
            ingress,
            stop_ingress,
            publisher,
            started_at,
            http,
        )
        .await;
        drop(log_lines);
        Ok(())
    }

    /// The saved state, when it is this host's in this lattice and can be read.
    fn load_saved(&self, file: Option<&StateFile>) -> Option<HostState> {
        let file = file?;
        let swept = file.sweep();
        if swept > 0 {
            tracing::info!(
                files = swept,
                "removed temporary files an interrupted save left"
            );
        }
        match file.load() {
            Ok(Some(state))
                if state.host == self.options.id && state.lattice == self.options.lattice =>
            {
                Some(state)
            }
            Ok(Some(state)) => {
                tracing::warn!(
                    saved_for = %format!("{}/{}", state.lattice, state.host),
                    "the saved state is another host's or lattice's: not serving it"
                );
                None
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot use the saved state");
                None
            }
        }
    }

    /// Saves `state` when it differs from what was saved last.
    async fn save(&self, file: Option<&StateFile>, state: HostState, last: &mut Option<HostState>) {
        let Some(file) = file else {
            return;
        };
        if last.as_ref() == Some(&state) {
            return;
        }
        let writer = file.clone();
        let saving = HostState {
            saved_at: now_millis(),
            ..state.clone()
        };
        match tokio::task::spawn_blocking(move || writer.save(&saving)).await {
            Ok(Ok(())) => *last = Some(state),
            Ok(Err(error)) => tracing::warn!(%error, "cannot save the host state"),
            Err(_) => tracing::warn!("saving the host state panicked"),
        }
    }

    /// One convergence pass; returns the state to save, when the host follows the lattice.
    async fn pass(
        &self,
        joined: Option<&Joined>,
        saved: &mut Option<HostState>,
        provenance: &mut Provenance,
        supervisor: &mut Supervisor<F>,
        reporter: &Reporter,
        reported: &mut HashSet<(String, u64)>,
    ) -> Option<HostState> {
        let Some(link) = joined else {
            // Not joined yet: the saved replicas run, with the saved routes.
            self.serve_saved(saved.as_ref(), supervisor);
            return None;
        };
        self.report_invalid(link, reporter, reported).await;
        let desired: Vec<Assignment> = link
            .assignments
            .snapshot()
            .into_iter()
            .map(|record| record.value)
            .collect();
        if provenance.mismatch.is_some() {
            if desired.is_empty() {
                self.serve_saved(saved.as_ref(), supervisor);
                return None;
            }
            // Desired state written anew for this host: the new lattice is the one to follow.
            let found = provenance.mismatch.take().flatten();
            tracing::warn!(lattice_id = ?found, "the lattice assigns replicas here again: following it, the saved replicas it does not assign stop");
            self.tell(
                reporter,
                "LatticeAdopted",
                format!(
                    "host {} follows the lattice's new state: it assigned replicas here again",
                    self.options.id
                ),
            )
            .await;
            provenance.expected = found;
        }
        // An assignment this version cannot read keeps its replica running as it was.
        let keep: HashSet<String> = link
            .assignments
            .invalid()
            .into_iter()
            .filter_map(|refused| {
                refused
                    .key
                    .split_once('.')
                    .map(|(_, replica)| replica.to_owned())
            })
            .collect();
        let wanted: HashSet<&str> = desired.iter().map(|a| a.replica.as_str()).collect();
        let stopping = supervisor
            .replicas
            .keys()
            .any(|replica| !wanted.contains(replica.as_str()) && !keep.contains(replica));
        // Before stopping what runs, make sure the lattice is still the one that assigned it
        // (a wiped NATS server has no assignments at all); and learn its identity once.
        if stopping || provenance.expected.is_none() {
            let verified = self
                .check_lattice(&link.lattice, provenance, supervisor, reporter)
                .await;
            if stopping && (!verified || provenance.mismatch.is_some()) {
                supervisor.count();
                return None;
            }
        }
        supervisor.converge(&desired, &keep).await;
        let records = link.routing.last_revision();
        let routes: Vec<RouteRecord> = link
            .routing
            .snapshot()
            .into_iter()
            .map(|record| record.value)
            .collect();
        self.route(Some(records), &routes, &supervisor.replicas);
        supervisor.count();
        let served: HashSet<(&str, &str)> = supervisor
            .replicas
            .values()
            .map(|replica| {
                (
                    replica.assignment.namespace.as_str(),
                    replica.assignment.app.as_str(),
                )
            })
            .collect();
        // A job's run is not saved: a host restarted offline serves, it does not run a
        // job again that the lattice may have finished or placed elsewhere.
        let mut assignments: Vec<Assignment> = supervisor
            .replicas
            .values()
            .filter(|replica| replica.assignment.job.is_none())
            .map(|replica| replica.assignment.clone())
            .collect();
        assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
        // `saved_at` is stamped when written, so states compare by what they hold.
        let state = HostState {
            host: self.options.id.clone(),
            lattice: self.options.lattice.clone(),
            lattice_id: provenance.expected.clone(),
            saved_at: 0,
            assignments,
            routes: routes
                .into_iter()
                .filter(|route| served.contains(&(route.namespace.as_str(), route.app.as_str())))
                .collect(),
        };
        *saved = Some(state.clone());
        Some(state)
    }

    /// Serves what runs with the routes last followed (the saved state): before the host
    /// has joined, and while the lattice is not the one its replicas came from.
    fn serve_saved(&self, saved: Option<&HostState>, supervisor: &Supervisor<F>) {
        if let Some(state) = saved {
            self.route(None, &state.routes_to_serve(), &supervisor.replicas);
        }
        supervisor.count();
    }

    /// Builds the routing table, unless it was built from the same inputs (`records`, the
    /// routing mirror's revision; `None` for routes that did not come from it). The routes
    /// are copied only when it is built.
    fn route(
        &self,
        records: Option<u64>,
        routes: &[RouteRecord],
        replicas: &HashMap<String, supervisor::Replica>,
    ) {
        let inputs = records.map(|records| RoutingInputs::of(records, replicas));
        if let Ok(mut built) = self.routing_built.lock() {
            if inputs.is_some() && *built == inputs {
                return;
            }
            *built = inputs;
        }
        self.metrics
            .routing_rebuilds
            .fetch_add(1, Ordering::Relaxed);
        self.router.set(routing_table(routes.to_vec(), replicas));
    }

    /// Compares the joined lattice's identity with the one the running replicas came from;
    /// enters (and says) or keeps the mismatch when they differ. `false` when the identity
    /// could not be read: nothing should be stopped on that.
    async fn check_lattice(
        &self,
        lattice: &Lattice,
        provenance: &mut Provenance,
        supervisor: &Supervisor<F>,
        reporter: &Reporter,
    ) -> bool {
        let found = match lattice.identity().await {
            Ok(found) => found.map(|identity| identity.id),
            Err(error) => {
                tracing::debug!(%error, "cannot read the lattice's identity");
                return false;
            }
        };
        let matches = match (&provenance.expected, &found) {
            (None, _) => true,
            (Some(expected), Some(found)) => expected == found,
            (Some(_), None) => false,
        };
        if matches || self.options.adopt_lattice {
            if !matches {
                tracing::warn!(was = ?provenance.expected, now = ?found, "adopting the lattice as it is (--adopt-lattice)");
            }
            provenance.expected = found.or(provenance.expected.take());
            provenance.mismatch = None;
            return true;
        }
        let fresh = provenance.mismatch.as_ref() != Some(&found);
        provenance.mismatch = Some(found);
        if fresh {
            let message = self.mismatch_message(provenance, supervisor);
            tracing::warn!("{message}");
            provenance.reminded = Some(tokio::time::Instant::now());
            self.tell(reporter, "LatticeMismatch", message).await;
        }
        true
    }

    fn mismatch_message(&self, provenance: &Provenance, supervisor: &Supervisor<F>) -> String {
        let apps: std::collections::BTreeSet<String> = supervisor
            .replicas
            .values()
            .map(|replica| {
                format!(
                    "{}/{}",
                    replica.assignment.namespace, replica.assignment.app
                )
            })
            .collect();
        let now = match provenance.mismatch.as_ref() {
            Some(Some(found)) => format!("state {found}"),
            _ => "no state".to_owned(),
        };
        format!(
            "host {} keeps serving {} replicas ({}) assigned by lattice state {}, but the lattice now has {now}: it was wiped or replaced. Apply the apps again (their new replicas replace these), or restart the host with --adopt-lattice to drop them",
            self.options.id,
            supervisor.replicas.len(),
            apps.into_iter().collect::<Vec<_>>().join(", "),
            provenance.expected.as_deref().unwrap_or("unknown"),
        )
    }

    /// Says again, now and then, that the host serves another lattice's state.
    fn remind(&self, provenance: &mut Provenance, supervisor: &Supervisor<F>) {
        if provenance.mismatch.is_none() {
            return;
        }
        let due = provenance
            .reminded
            .is_none_or(|at| at.elapsed() >= MISMATCH_REMINDER);
        if due {
            tracing::warn!("{}", self.mismatch_message(provenance, supervisor));
            provenance.reminded = Some(tokio::time::Instant::now());
        }
    }

    /// Requests in flight per app since the last record (see [`Metrics::take_load`]).
    fn load(&self) -> BTreeMap<String, u64> {
        let Ok(mut taken) = self.load_taken.lock() else {
            return BTreeMap::new();
        };
        let now = std::time::Instant::now();
        let interval = now.duration_since(*taken);
        *taken = now;
        self.metrics.take_load(interval)
    }

    fn record(
        &self,
        started_at: u64,
        http: SocketAddr,
        draining: bool,
        mismatch: Option<String>,
    ) -> HostRecord {
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
            lost_after: self.options.lost_after.map(Span),
            load: self.load(),
            secrets_key: Some(self.secrets_key.public_key()),
            lattice_mismatch: mismatch,
            verifies_signatures: true,
            wasi: self.runtime.wasi_versions(),
        }
    }

    async fn heartbeat(
        &self,
        lattice: &Lattice,
        started_at: u64,
        http: SocketAddr,
        draining: bool,
        provenance: &Provenance,
    ) -> Result<u64, shoal_lattice::Error> {
        let mismatch = provenance.mismatch.as_ref().map(|found| {
            format!(
                "serves state {} of this lattice, which now has {}",
                provenance.expected.as_deref().unwrap_or("unknown"),
                found.as_deref().unwrap_or("none")
            )
        });
        let written = lattice
            .put(
                Bucket::Hosts,
                &self.options.id,
                &self.record(started_at, http, draining, mismatch),
            )
            .await?;
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(written)
    }

    /// Reaches the lattice, claims this host's id and opens what the host follows. With
    /// `retry`, failures other than a refusal are tried again with backoff (the host
    /// serves its saved state meanwhile); without, the first failure is returned.
    fn join<C, Fut>(
        &self,
        mut connect: C,
        retry: bool,
        serving: usize,
        started_at: u64,
        http: SocketAddr,
    ) -> impl Future<Output = Result<Joined, shoal_lattice::Error>> + Send + 'static
    where
        C: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Lattice, shoal_lattice::Error>> + Send,
    {
        let id = self.options.id.clone();
        let record = self.record(started_at, http, false, None);
        let router = Arc::clone(&self.router);
        let metrics = Arc::clone(&self.metrics);
        let forward_buffer = self.options.forward_buffer;
        let credential = self.options.credential.clone();
        async move {
            let mut wait = RETRY_FIRST;
            loop {
                let attempt = async {
                    let lattice = connect().await?;
                    join_lattice(
                        lattice,
                        &id,
                        &record,
                        Arc::clone(&router),
                        Arc::clone(&metrics),
                        forward_buffer,
                    )
                    .await
                };
                let error = match attempt.await {
                    Ok(joined) => {
                        present_credential(&joined.lattice, &id, credential.as_deref()).await;
                        return Ok(joined);
                    }
                    Err(error) => error,
                };
                let refused = matches!(
                    error,
                    shoal_lattice::Error::Unauthorized { .. }
                        | shoal_lattice::Error::InvalidName { .. }
                        | shoal_lattice::Error::HostIdTaken { .. }
                );
                if refused || !retry {
                    return Err(error);
                }
                let pause = wait.mul_f64(0.8 + f64::from(jitter()) / f64::from(u8::MAX) * 0.4);
                tracing::warn!(
                    %error,
                    serving,
                    retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "the lattice is unreachable: serving the saved replicas, trying again"
                );
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }

    /// Tells the lattice's events something about this host.
    async fn tell(&self, reporter: &Reporter, reason: &str, message: String) {
        let source = format!("host {}", self.options.id);
        reporter
            .emit(Event::host(&source, &self.options.id, reason, message))
            .await;
    }

    /// Tells of each record this host could not read, once: an assignment is not run (a
    /// replica it had keeps running), a routing record keeps its last readable routes.
    async fn report_invalid(
        &self,
        link: &Joined,
        reporter: &Reporter,
        reported: &mut HashSet<(String, u64)>,
    ) {
        let refused = link
            .assignments
            .invalid()
            .into_iter()
            .map(|refused| ("assignment", refused))
            .chain(
                link.routing
                    .invalid()
                    .into_iter()
                    .map(|refused| ("routing record", refused)),
            );
        for (kind, refused) in refused {
            if !reported.insert((refused.key.clone(), refused.revision)) {
                continue;
            }
            tracing::warn!(key = %refused.key, reason = %refused.reason, "skipping a record this host cannot use");
            self.tell(
                reporter,
                "InvalidRecord",
                format!(
                    "{kind} {} is skipped (what runs from it goes on): {}",
                    refused.key, refused.reason
                ),
            )
            .await;
        }
    }

    /// Leaves within the drain deadline: drains the ingress and forwarded requests, stops
    /// the replicas and, when the lattice is reachable, removes this host's record and
    /// replica status. The saved state stays, so a restart (offline too) serves again.
    #[allow(clippy::too_many_arguments)]
    async fn leave(
        &self,
        joined: Option<Joined>,
        mut supervisor: Supervisor<F>,
        ingress: tokio::task::JoinHandle<()>,
        stop_ingress: oneshot::Sender<()>,
        publisher: Option<tokio::task::JoinHandle<()>>,
        started_at: u64,
        http: SocketAddr,
    ) {
        let id = &self.options.id;
        let deadline = tokio::time::Instant::now() + self.options.drain;
        let reachable = joined.as_ref().is_some_and(|link| {
            link.lattice.client().connection_state() == async_nats::connection::State::Connected
        });
        tracing::info!(host = %id, reachable, "leaving the lattice: draining");
        if reachable && let Some(link) = &joined {
            let _ = tokio::time::timeout_at(
                deadline,
                self.heartbeat(
                    &link.lattice,
                    started_at,
                    http,
                    true,
                    &Provenance::default(),
                ),
            )
            .await;
        }
        let _ = stop_ingress.send(());
        let _ = tokio::time::timeout_at(deadline, ingress).await;
        if let Some(link) = joined {
            // Forwarded requests are answered while the ingress drains; then no more arrive
            // (forwarders pass them to other endpoints).
            let _ = link.stop_listening.send(());
            if reachable {
                let _ = tokio::time::timeout_at(deadline, link.listening).await;
            } else {
                // No forwarded request can arrive, and the unsubscribe cannot be confirmed.
                link.listening.abort();
            }
            let _ = tokio::time::timeout_at(deadline, supervisor.stop_all(reachable)).await;
            // The last lines the replicas wrote go out before the host leaves (when they can).
            self.router.set(Vec::new());
            if let Ok(mut built) = self.routing_built.lock() {
                *built = None;
            }
            drop(supervisor);
            if reachable && let Some(publisher) = publisher {
                let _ = tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + Duration::from_secs(2)),
                    publisher,
                )
                .await;
            }
            if reachable {
                match tokio::time::timeout_at(deadline, link.lattice.delete(Bucket::Hosts, id))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "cannot remove the host record"),
                    Err(_) => {
                        tracing::warn!("the lattice did not answer before the drain deadline")
                    }
                }
            }
        } else {
            supervisor.stop_all(false).await;
        }
        tracing::info!(host = %id, "host left the lattice");
    }
}

/// Resolves when `changes` (if any) changes; never without.
async fn changed(changes: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    match changes {
        Some(changes) => {
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// A byte of randomness for jitter (hosts that lost the lattice together do not all come
/// back in the same instant).
fn jitter() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    (nanos ^ (nanos >> 8) ^ std::process::id()).to_le_bytes()[0]
}

/// Writes the JWT of this host's credential where the control plane reads what it grants
/// (its labels and capacity count for placement only within it). A failure is logged: the
/// host still serves, and is placed by its arch and os alone.
async fn present_credential(lattice: &Lattice, id: &str, jwt: Option<&str>) {
    let Some(jwt) = jwt else { return };
    let record = shoal_lattice::records::HostCredential {
        jwt: jwt.to_owned(),
    };
    let key = shoal_lattice::names::host_credential_key(id);
    if let Err(error) = lattice.put(Bucket::Status, &key, &record).await {
        tracing::warn!(%error, "cannot present this host's credential to the control plane: placement matches it by arch and os only");
    }
}

/// Claims the host id in a reached lattice and opens what the host follows there.
async fn join_lattice(
    lattice: Lattice,
    id: &str,
    record: &HostRecord,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    forward_buffer: usize,
) -> Result<Joined, shoal_lattice::Error> {
    claim_id(&lattice, id, record).await?;
    let assignments = lattice
        .mirror::<Assignment>(Bucket::Assignments, &host_assignments(id))
        .await?;
    // Every app's routes and endpoints, as the scheduler publishes them for hosts (never
    // the apps' specs: a host credential reads no app's configuration).
    let routing = lattice
        .mirror::<RouteRecord>(Bucket::Status, "routes.>")
        .await?;
    let forwarder = Forwarder::new(
        lattice.client().clone(),
        lattice.name(),
        id,
        Arc::clone(&router),
        INLINE_LIMIT,
        BufferBudget::new(forward_buffer),
    );
    let (stop_listening, listening_stopped) = oneshot::channel();
    let listening = listen(
        lattice.client().clone(),
        lattice.name(),
        id,
        forwarder.clone(),
        router,
        metrics,
        listening_stopped,
    )
    .await
    .map_err(|error| shoal_lattice::Error::Request {
        bucket: String::new(),
        reason: format!("cannot listen for forwarded requests: {error}"),
    })?;
    Ok(Joined {
        lattice,
        assignments,
        routing,
        forwarder,
        listening,
        stop_listening,
    })
}

/// Writes this host's first record, refusing an id a live host holds: one whose record
/// changes within [`ID_HOLD`] (a host that crashed leaves a record that does not).
async fn claim_id(
    lattice: &Lattice,
    id: &str,
    record: &HostRecord,
) -> Result<(), shoal_lattice::Error> {
    loop {
        let Some(held) = lattice.get::<HostRecord>(Bucket::Hosts, id).await? else {
            match lattice.create(Bucket::Hosts, id, record).await {
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
            match lattice.get::<HostRecord>(Bucket::Hosts, id).await? {
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
                id: id.to_owned(),
                holder,
            });
        }
        match lattice
            .update(Bucket::Hosts, id, record, held.revision)
            .await
        {
            Ok(_) => return Ok(()),
            Err(shoal_lattice::Error::Conflict { .. }) => continue,
            Err(error) => return Err(error),
        }
    }
}
