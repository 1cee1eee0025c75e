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
mod identity;
mod ingress;
mod membership;
mod pass;
mod precompiled;
mod probe;
mod report;
mod saving;
mod services;
mod stores;
mod supervisor;
mod triggers;
mod upgrade;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use shoal_lattice::Lattice;
use shoal_lattice::records::{Capacity, now_millis};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::engine::Runtime;
use crate::forward::{BufferBudget, Forwarder, INLINE_LIMIT, listen};
use crate::logs::{LogReceiver, log_queue, publish_logs};
use crate::metrics::Metrics;
use crate::router::Router;
use crate::server::{ConnectionLimits, serve_with};
use crate::state::{HostState, StateFile};
use activator::Activator;
pub use activator::HoldLimits;
use identity::Provenance;
use ingress::{Uplink, ingress, routing_table};
use membership::Joined;
use pass::RoutingInputs;
use report::Reporter;
use saving::SAVE_EVERY;
use supervisor::Supervisor;
use upgrade::Upgrades;
pub use upgrade::{Prepared, Stopped, Upgrader};

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
    /// The version the host reports.
    pub version: String,
    /// The digest of the binary the host runs (`sha256:…`), once the caller has read it.
    pub binary: Arc<std::sync::OnceLock<String>>,
    /// What prepares a new binary when the control plane orders an upgrade; without it,
    /// orders are not read.
    pub upgrader: Option<Arc<dyn Upgrader>>,
    /// Accept on the ingress only once joined (or after this long, to serve the saved state
    /// with the lattice out of reach): for a socket handed over by the process this one
    /// replaced, whose clients wait in its backlog.
    pub accept_after_join: Option<Duration>,
    /// What the last incarnation told of an upgrade (one that failed and was rolled back).
    pub failed_upgrade: Option<shoal_lattice::fleet::UpgradeReport>,
}

/// Fetches a component's bytes by pinned reference (`repository@sha256:…`), through a
/// verified cache, and checks its signature when the assignment names trusted keys.
pub trait Fetch: Send + Sync + 'static {
    /// Fetches `reference`; with `trusted` keys, only if a signature of its manifest digest
    /// by one of them is stored beside it (or cached from an earlier fetch). With the
    /// `lattice` (once joined), from the lattice's copy of components when the registry
    /// cannot serve it.
    fn fetch(
        &self,
        reference: &str,
        trusted: &[shoal_lattice::trust::TrustedKey],
        lattice: Option<&Lattice>,
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

/// Why a host agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The ingress listener's address could not be read.
    #[error("cannot read the ingress listener's address")]
    Listener(#[source] std::io::Error),
    /// The lattice refused this host (its id is held by a live host, its credential was
    /// refused), or could not be reached and there was no saved state to serve meanwhile.
    #[error(transparent)]
    Lattice(#[from] shoal_lattice::Error),
}

/// What wakes the agent's loop; each is handled, then a convergence pass runs.
enum AgentEvent {
    /// Time for a heartbeat (and a look at the connection).
    Heartbeat,
    /// Joining the lattice ended: joined, refused, or the task failed.
    Joined(Box<Result<Result<Joined, shoal_lattice::Error>, tokio::task::JoinError>>),
    /// The assignments or the routing records changed.
    Changed,
    /// Replicas' starts ended.
    Started(Vec<supervisor::Started>),
    /// A new binary is ready, or could not be made ready.
    Prepared(Result<Prepared, (shoal_lattice::fleet::UpgradeOrder, String)>),
    /// The saved state waited long enough: it is written after the pass.
    SaveDue,
    /// A replica's health changed.
    Probed(probe::Probed),
    /// A replica failed its liveness probe too often.
    Dead(probe::Dead),
}

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
    /// What the host's record tells of an upgrade.
    upgrade_report: Arc<Mutex<Option<shoal_lattice::fleet::UpgradeReport>>>,
    /// Whether the host has joined the lattice (and reported what it runs).
    joined_signal: Arc<tokio::sync::watch::Sender<bool>>,
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
            upgrade_report: Arc::new(Mutex::new(options.failed_upgrade.clone())),
            joined_signal: Arc::new(tokio::sync::watch::Sender::new(false)),
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

    /// Becomes true once the host has joined the lattice and reported what it runs.
    pub fn joined(&self) -> tokio::sync::watch::Receiver<bool> {
        self.joined_signal.subscribe()
    }

    /// This host's ingress counters and latency histograms, per app.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves `listener` as the ingress and runs the replicas assigned to this host until
    /// `shutdown` resolves; then leaves: drains, stops, and (when the lattice is reachable)
    /// removes its record and replica status, all within the drain deadline. Or until a new
    /// binary is ready for an upgrade: then it drains and stops the same way but keeps its
    /// record (marked restarting), for the new binary to take over ([`Stopped::Upgrade`]).
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
    ) -> Result<Stopped, AgentError>
    where
        C: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Lattice, shoal_lattice::Error>> + Send,
    {
        let id = self.options.id.clone();
        let http = listener.local_addr().map_err(AgentError::Listener)?;
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
        let (prepared_tx, mut prepared_rx) = mpsc::channel(1);
        let mut upgrades = Upgrades::new(
            self.options.credential.is_some(),
            self.options.upgrader.clone(),
            Arc::clone(&self.options.binary),
            Arc::clone(&self.upgrade_report),
            prepared_tx,
        );
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
            precompiled: self.options.credential.is_some(),
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
            let mut has_joined = self.joined_signal.subscribe();
            let hold = self.options.accept_after_join;
            let serve = serve_with(
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
            );
            tokio::spawn(async move {
                // Clients wait in the socket's backlog meanwhile (a socket handed over by
                // the binary this one replaced), rather than get 503s from a host that can
                // route nothing but its own replicas yet.
                if let Some(hold) = hold {
                    let _ = tokio::time::timeout(hold, has_joined.wait_for(|joined| *joined)).await;
                }
                serve.await;
            })
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
                        assignment_changes = Some(link.assignments.changes());
                        routing_changes = Some(link.routing.changes());
                        let started = self
                            .on_joined(
                                link,
                                &mut unpublished,
                                &mut provenance,
                                &mut supervisor,
                                (&reporter, &uplink),
                                (started_at, http),
                            )
                            .await;
                        if started.is_some() {
                            publisher = started;
                        }
                        self.joined_signal.send_replace(true);
                    }
                }
                let event = tokio::select! {
                    _ = heartbeat.tick() => AgentEvent::Heartbeat,
                    Some(result) = async { match joining.as_mut() { Some(task) => Some(task.await), None => None } } => {
                        joining = None;
                        AgentEvent::Joined(Box::new(result))
                    }
                    _ = changed(assignment_changes.as_mut()) => AgentEvent::Changed,
                    _ = changed(routing_changes.as_mut()) => AgentEvent::Changed,
                    Some(first) = started_rx.recv() => {
                        // Replicas that start together end their starts together: one
                        // pass for all that are done.
                        let mut all = vec![first];
                        while let Ok(more) = started_rx.try_recv() {
                            all.push(more);
                        }
                        AgentEvent::Started(all)
                    }
                    () = tokio::time::sleep_until(last_save + SAVE_EVERY), if unsaved.is_some() => AgentEvent::SaveDue,
                    Some(probed) = probed_rx.recv() => AgentEvent::Probed(probed),
                    Some(dead) = dead_rx.recv() => AgentEvent::Dead(dead),
                    Some(prepared) = prepared_rx.recv() => AgentEvent::Prepared(prepared),
                };
                match event {
                    AgentEvent::Heartbeat => {
                        if let Some(link) = &joined {
                            self.on_heartbeat(
                                link,
                                &mut was_connected,
                                &provenance,
                                &mut supervisor,
                                &reporter,
                                (started_at, http),
                            )
                            .await;
                        }
                        self.remind(&mut provenance, &supervisor);
                        if let Some(link) = &joined {
                            upgrades.check(&link.lattice, &self.options.id).await;
                        }
                    }
                    AgentEvent::Prepared(Ok(prepared)) => {
                        let stands = match &joined {
                            Some(link) => {
                                upgrades
                                    .still_ordered(&link.lattice, &self.options.id, &prepared.order)
                                    .await
                            }
                            None => false,
                        };
                        if stands {
                            upgrades.restarting(&prepared.order);
                            return Ok(Some(prepared));
                        }
                    }
                    AgentEvent::Prepared(Err((order, message))) => {
                        upgrades.failed(&order, message);
                    }
                    AgentEvent::Joined(result) => match *result {
                        Ok(Ok(link)) => {
                            joined = Some(link);
                            newly_joined = true;
                            continue;
                        }
                        Ok(Err(error)) => {
                            tracing::error!(error = %shoal_lattice::Chain(&error), "the lattice refused this host: stopping");
                            supervisor.stop_all(false).await;
                            return Err::<Option<Prepared>, _>(AgentError::Lattice(error));
                        }
                        Err(_) => {
                            tracing::error!(
                                "joining the lattice failed unexpectedly: still serving the saved state"
                            );
                        }
                    },
                    AgentEvent::Started(all) => {
                        for started in all {
                            supervisor.started(started).await;
                        }
                        // Starts that ended meanwhile join this pass too.
                        while let Ok(started) = started_rx.try_recv() {
                            supervisor.started(started).await;
                        }
                    }
                    AgentEvent::Probed(probed) => supervisor.probed(probed).await,
                    AgentEvent::Dead(dead) => supervisor.liveness_failed(dead).await,
                    AgentEvent::Changed | AgentEvent::SaveDue => {}
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
            () = shutdown => Ok(None),
            result = work => result,
        };
        let upgrade = outcome?;
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
            upgrade.is_some(),
        )
        .await;
        drop(log_lines);
        Ok(upgrade.map_or(Stopped::Shutdown, Stopped::Upgrade))
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
