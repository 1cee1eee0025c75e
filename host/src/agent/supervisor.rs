//! The replicas a host runs: converging them on a set of assignments (start what is new,
//! stop what is gone, keep what stands), starting each (pull by digest through the cache,
//! compile through the compiled-code cache, instantiate, probe), and reporting each change.
//!
//! Converging is level-triggered: each pass compares the assignments it is given with the
//! replicas it runs, so a restart, a reconnect or a pass on the saved state needs no replay
//! of missed events, and a replica whose assignment still stands is never restarted.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt as _;
use shoal_lattice::Event;
use shoal_lattice::records::{Assignment, Phase};
use shoal_lattice::validate::MAX_CACHED;
use tokio::sync::mpsc;

use super::Fetch;
use super::ingress::Uplink;
use super::probe::{Dead, Probed, keep_alive, keep_probing, wait_healthy};
use super::report::Reporter;
use super::services::LatticeServices;
use crate::engine::Runtime;
use crate::guest::{GuestOptions, OutboundPolicy, ServiceLink, Services};
use crate::http::HttpComponent;
use crate::limits::Limits;
use crate::logs::{LogQueue, ReplicaLogs};
use crate::metrics::Metrics;
use crate::output::GuestOutput;
use crate::router::Router;

pub(crate) enum ReplicaState {
    Starting(tokio::task::JoinHandle<()>),
    /// Started; `ready` while its health path (if any) answers 2xx. The prober keeps asking.
    Serving {
        component: Arc<HttpComponent>,
        ready: bool,
        prober: Option<tokio::task::JoinHandle<()>>,
        /// Asks the liveness path, when the app has one.
        liveness: Option<tokio::task::JoinHandle<()>>,
        /// Hands its app's triggering messages to it, when the app has triggers.
        triggers: Option<tokio::task::JoinHandle<()>>,
    },
    Failed {
        reason: String,
        message: String,
    },
    /// A job's run that ended: its command exited (or trapped).
    Exited {
        code: i32,
        /// Why it failed, when it trapped or timed out.
        failure: Option<String>,
    },
}

impl ReplicaState {
    /// Stops the work this state runs in the background.
    fn stop(&self) {
        match self {
            ReplicaState::Starting(task) => task.abort(),
            ReplicaState::Serving {
                prober,
                liveness,
                triggers,
                ..
            } => {
                for task in [prober, liveness, triggers].into_iter().flatten() {
                    task.abort();
                }
            }
            _ => {}
        }
    }
}

pub(crate) struct Replica {
    pub(crate) assignment: Assignment,
    pub(crate) state: ReplicaState,
    /// Its app's key-value stores, when it has any (a renewed store credential goes there).
    pub(crate) stores: Option<Arc<super::stores::AppStores>>,
}

/// The first wait before restarting a replica that failed its liveness probe; it doubles
/// with each restart, up to [`MAX_RESTART_BACKOFF`].
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(60);

/// What a start came to: an app's replica that serves, or a job's run that ended.
pub(crate) enum Outcome {
    Serving(Arc<HttpComponent>),
    Exited { code: i32, failure: Option<String> },
}

/// Why a replica did not start: a reason for its status (`PullFailed`, `CompileFailed`, …)
/// and what happened, for people.
#[derive(Debug, Clone)]
pub(crate) struct StartFailure {
    pub(crate) reason: String,
    pub(crate) message: String,
}

impl StartFailure {
    fn new(reason: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// A replica's start that ended.
pub(crate) struct Started {
    pub(crate) replica: String,
    /// The assignment generation started: an end for an older one is stale.
    pub(crate) generation: u64,
    pub(crate) result: Result<Outcome, StartFailure>,
}

/// What replicas are connected to: other apps, their output's way out, this host's own
/// listeners (which guests may not call unless allowed by address).
pub(crate) struct Supervisor<F> {
    pub(crate) host: String,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) fetch: Arc<F>,
    pub(crate) reporter: Reporter,
    pub(crate) router: Arc<Router>,
    /// Holds requests for apps at zero while they wake (shared with the ingress).
    pub(crate) activator: Arc<super::activator::Activator>,
    pub(crate) uplink: Uplink,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) log_lines: LogQueue,
    pub(crate) own_listeners: Vec<SocketAddr>,
    /// This host's secrets key: what the secrets in its assignments are sealed to.
    pub(crate) secrets_key: Arc<shoal_lattice::secrets::XKey>,
    /// Component digests pulled here, newest last (for the host record).
    pub(crate) cached: Arc<Mutex<Vec<String>>>,
    /// The component digests the replicas run: a cache budget never evicts them.
    pub(crate) in_use: Arc<tokio::sync::watch::Sender<std::collections::BTreeSet<String>>>,
    /// Load code the control plane compiled for this host (`super::precompiled`): only on a
    /// secure lattice, where nothing but the control plane can write it.
    pub(crate) precompiled: bool,
    pub(crate) replicas: HashMap<String, Replica>,
    pub(crate) started: mpsc::Sender<Started>,
    pub(crate) probed: mpsc::Sender<Probed>,
    pub(crate) dead: mpsc::Sender<Dead>,
}

impl<F: Fetch> Supervisor<F> {
    /// Runs exactly `desired` (plus the replicas in `keep`, whose assignment could not be
    /// read this time): starts the new, stops the gone, leaves the rest running.
    pub(crate) async fn converge(&mut self, desired: &[Assignment], keep: &HashSet<String>) {
        let wanted: HashMap<&str, &Assignment> = desired
            .iter()
            .map(|assignment| (assignment.replica.as_str(), assignment))
            .collect();
        let gone: Vec<String> = self
            .replicas
            .keys()
            .filter(|replica| !wanted.contains_key(replica.as_str()) && !keep.contains(*replica))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for replica in gone {
            if let Some(removed) = self.replicas.remove(&replica) {
                removed.state.stop();
            }
            tracing::info!(%replica, "replica stopped: no longer assigned here");
            self.reporter.forget(&self.host, &replica).await;
        }
        for (replica, assignment) in wanted {
            if let Some(running) = self.replicas.get_mut(replica) {
                // The same replica under a newer fencing generation, or with a renewed store
                // credential (its assignment was written again): it goes on running what it
                // runs.
                if running.assignment != *assignment
                    && running.assignment.digest == assignment.digest
                    && running.assignment.template == assignment.template
                {
                    if running.assignment.store_access != assignment.store_access
                        && let Some(stores) = &running.stores
                    {
                        stores.set_access(super::stores::access_of(assignment, &self.secrets_key));
                    }
                    running.assignment = assignment.clone();
                }
                continue;
            }
            changed = true;
            self.spawn_start(replica, assignment, Duration::ZERO);
        }
        if changed {
            tracing::debug!(replicas = self.replicas.len(), "converged");
        }
    }

    /// Starts `replica` after `delay` (a restart's backoff; zero for a new replica).
    fn spawn_start(&mut self, replica: &str, assignment: &Assignment, delay: Duration) {
        let stores = assignment.template.needs_app_credential().then(|| {
            Arc::new(super::stores::AppStores {
                namespace: assignment.namespace.clone(),
                app: assignment.app.clone(),
                granted: assignment
                    .template
                    .key_value
                    .iter()
                    .map(|store| store.name.clone())
                    .collect(),
                publish: assignment.template.publish.clone(),
                uplink: self.uplink.clone(),
                access: std::sync::Mutex::new(super::stores::access_of(
                    assignment,
                    &self.secrets_key,
                )),
                opened: tokio::sync::Mutex::default(),
            })
        });
        let services: Arc<dyn Services> = Arc::new(LatticeServices {
            namespace: assignment.namespace.clone(),
            router: Arc::clone(&self.router),
            uplink: self.uplink.clone(),
            activator: Arc::clone(&self.activator),
        });
        let output = GuestOutput(Arc::new(ReplicaLogs::new(
            self.log_lines.clone(),
            &self.host,
            assignment,
            Arc::clone(&self.metrics),
        )));
        let start = start(
            self.reporter.clone(),
            Arc::clone(&self.runtime),
            Arc::clone(&self.fetch),
            Arc::clone(&self.cached),
            assignment.clone(),
            Links {
                services,
                output,
                own_listeners: self.own_listeners.clone(),
                secrets_key: Arc::clone(&self.secrets_key),
                stores: stores
                    .clone()
                    .map(|stores| crate::keyvalue::StoresLink(stores)),
                publisher: stores
                    .clone()
                    .map(|stores| crate::messaging::PublisherLink(stores)),
                uplink: self.uplink.clone(),
                precompiled: self.precompiled,
            },
            self.started.clone(),
        );
        let (id, generation, done) = (
            replica.to_owned(),
            assignment.generation,
            self.started.clone(),
        );
        let task = tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // A start that panics fails its own replica, reported like any failure.
            if AssertUnwindSafe(start).catch_unwind().await.is_err() {
                let failure = StartFailure::new(
                    "StartFailed",
                    "starting the replica panicked; see the host's log",
                );
                let _ = done
                    .send(Started {
                        replica: id,
                        generation,
                        result: Err(failure),
                    })
                    .await;
            }
        });
        self.replicas.insert(
            replica.to_owned(),
            Replica {
                assignment: assignment.clone(),
                state: ReplicaState::Starting(task),
                stores,
            },
        );
    }

    /// A replica's start finished: it serves, or it failed.
    pub(crate) async fn started(&mut self, started: Started) {
        let Started {
            replica,
            generation,
            result,
        } = started;
        let host = self.host.clone();
        let probed = self.probed.clone();
        let dead = self.dead.clone();
        let Some(entry) = self.replicas.get_mut(&replica) else {
            return;
        };
        if entry.assignment.generation != generation {
            return;
        }
        let mut exit_code = None;
        let (phase, reason, message, event) = match result {
            Ok(Outcome::Exited { code, failure }) => {
                entry.state = ReplicaState::Exited {
                    code,
                    failure: failure.clone(),
                };
                exit_code = Some(code);
                let (phase, reason, message) = exited(code, failure);
                tracing::info!(%replica, job = %entry.assignment.app, code, "job run ended");
                let told = format!("run {replica} on host {host} ended: {message}");
                let event = if phase == Phase::Succeeded {
                    "Completed"
                } else {
                    "Failed"
                };
                (phase, Some(reason), Some(message), (event, told))
            }
            Ok(Outcome::Serving(component)) => {
                let prober = entry.assignment.template.health.as_ref().map(|health| {
                    tokio::spawn(keep_probing(
                        Arc::clone(&component),
                        health.path.clone(),
                        replica.clone(),
                        generation,
                        probed,
                    ))
                });
                let liveness = entry
                    .assignment
                    .template
                    .health
                    .as_ref()
                    .and_then(|health| health.liveness.clone())
                    .map(|liveness| {
                        tokio::spawn(keep_alive(
                            Arc::clone(&component),
                            liveness,
                            replica.clone(),
                            generation,
                            dead,
                        ))
                    });
                let triggers = match &entry.stores {
                    Some(grants) if !entry.assignment.template.triggers.is_empty() => {
                        Some(super::triggers::spawn(
                            Arc::clone(&component),
                            Arc::clone(grants),
                            entry.assignment.template.triggers.clone(),
                            replica.to_owned(),
                            Arc::clone(&self.metrics),
                        ))
                    }
                    _ => None,
                };
                entry.state = ReplicaState::Serving {
                    component,
                    ready: true,
                    prober,
                    liveness,
                    triggers,
                };
                tracing::info!(%replica, app = %entry.assignment.app, "replica ready");
                let message = format!(
                    "replica {replica} ready on host {host} (revision {})",
                    entry.assignment.revision
                );
                (Phase::Ready, None, None, ("Ready", message))
            }
            Err(StartFailure { reason, message }) => {
                entry.state = ReplicaState::Failed {
                    reason: reason.clone(),
                    message: message.clone(),
                };
                tracing::warn!(%replica, app = %entry.assignment.app, %reason, %message, "replica failed to start");
                let told = format!(
                    "replica {replica} failed to start on host {host} ({reason}): {message}"
                );
                (Phase::Failed, Some(reason), Some(message), ("Failed", told))
            }
        };
        let assignment = entry.assignment.clone();
        self.emit(&assignment, event.0, event.1).await;
        self.reporter
            .status_with_exit(&assignment, phase, reason, message, exit_code)
            .await;
    }

    /// A serving replica failed its liveness probe `failureThreshold` times in a row: it is
    /// restarted in place (same replica id, a fresh instance set) after a backoff that
    /// doubles with each restart.
    pub(crate) async fn liveness_failed(&mut self, dead: Dead) {
        let Dead {
            replica,
            generation,
            message,
        } = dead;
        let replica = replica.as_str();
        let Some(entry) = self.replicas.get_mut(replica) else {
            return;
        };
        if entry.assignment.generation != generation
            || !matches!(entry.state, ReplicaState::Serving { .. })
        {
            return;
        }
        entry.state.stop();
        let restarts = self.reporter.restarts(replica).saturating_add(1);
        let backoff = RESTART_BACKOFF
            .saturating_mul(1 << restarts.saturating_sub(1).min(6))
            .min(MAX_RESTART_BACKOFF);
        let assignment = entry.assignment.clone();
        tracing::warn!(%replica, %message, restarts, ?backoff, "replica failed its liveness probe: restarting it");
        self.reporter.restarted(replica, restarts, &message);
        self.emit(
            &assignment,
            "Restarting",
            format!(
                "replica {replica} failed its liveness probe ({message}): restart {restarts} in {}",
                shoal_lattice::quantity::Span(backoff)
            ),
        )
        .await;
        self.reporter
            .status(
                &assignment,
                Phase::Pending,
                Some("LivenessFailed".to_owned()),
                Some(message),
            )
            .await;
        self.spawn_start(replica, &assignment, backoff);
    }

    /// A serving replica's health changed: it gets traffic only while healthy.
    pub(crate) async fn probed(&mut self, probed: Probed) {
        let Probed {
            replica,
            generation,
            healthy,
            message,
        } = probed;
        let replica = replica.as_str();
        let Some(entry) = self.replicas.get_mut(replica) else {
            return;
        };
        if entry.assignment.generation != generation {
            return;
        }
        if let ReplicaState::Serving { ready, .. } = &mut entry.state {
            *ready = healthy;
        }
        let assignment = entry.assignment.clone();
        if healthy {
            tracing::info!(%replica, "replica healthy again");
            self.emit(
                &assignment,
                "Healthy",
                format!("replica {replica} answers its health path again: it gets traffic"),
            )
            .await;
            self.reporter
                .status(&assignment, Phase::Ready, None, None)
                .await;
        } else {
            tracing::warn!(%replica, %message, "replica unhealthy: no traffic until its health path answers 2xx");
            self.emit(
                &assignment,
                "Unhealthy",
                format!("replica {replica} gets no traffic: {message}"),
            )
            .await;
            self.reporter
                .status(
                    &assignment,
                    Phase::Pending,
                    Some("ProbeFailed".to_owned()),
                    Some(message),
                )
                .await;
        }
    }

    /// Reports every replica's current state: after joining the lattice (statuses could not
    /// be written before), or after it came back.
    pub(crate) async fn report_all(&self) {
        for replica in self.replicas.values() {
            let (phase, reason, message) = match &replica.state {
                ReplicaState::Starting(_) => (Phase::Pulling, None, None),
                ReplicaState::Serving { ready: true, .. } => (Phase::Ready, None, None),
                ReplicaState::Serving { ready: false, .. } => {
                    (Phase::Pending, Some("ProbeFailed".to_owned()), None)
                }
                ReplicaState::Failed { reason, message } => {
                    (Phase::Failed, Some(reason.clone()), Some(message.clone()))
                }
                ReplicaState::Exited { code, failure } => {
                    let (phase, reason, message) = exited(*code, failure.clone());
                    self.reporter
                        .status_with_exit(
                            &replica.assignment,
                            phase,
                            Some(reason),
                            Some(message),
                            Some(*code),
                        )
                        .await;
                    continue;
                }
            };
            self.reporter
                .status(&replica.assignment, phase, reason, message)
                .await;
        }
    }

    /// Stops every replica; with `report`, removes its status too.
    pub(crate) async fn stop_all(&mut self, report: bool) {
        for (replica, state) in self.replicas.drain() {
            state.state.stop();
            if report {
                self.reporter.forget(&self.host, &replica).await;
            }
        }
    }

    /// Sets the replica gauges of the metrics endpoint, and the digests in use.
    pub(crate) fn count(&self) {
        let digests: std::collections::BTreeSet<String> = self
            .replicas
            .values()
            .map(|replica| replica.assignment.digest.clone())
            .collect();
        self.in_use.send_if_modified(|in_use| {
            let changed = *in_use != digests;
            *in_use = digests;
            changed
        });
        let ready = self
            .replicas
            .values()
            .filter(|replica| matches!(replica.state, ReplicaState::Serving { ready: true, .. }))
            .count();
        let running = self
            .replicas
            .values()
            .filter(|replica| {
                !matches!(
                    replica.state,
                    ReplicaState::Failed { .. } | ReplicaState::Exited { .. }
                )
            })
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

    /// Tells the lattice's events what happened to `assignment`'s replica here.
    async fn emit(&self, assignment: &Assignment, reason: &str, message: String) {
        self.reporter
            .emit(Event::replica(
                &format!("host {}", self.host),
                assignment,
                reason,
                message,
            ))
            .await;
    }
}

/// What a replica's guests are connected to: other apps, and where their output goes.
struct Links {
    services: Arc<dyn Services>,
    output: GuestOutput,
    own_listeners: Vec<SocketAddr>,
    secrets_key: Arc<shoal_lattice::secrets::XKey>,
    stores: Option<crate::keyvalue::StoresLink>,
    publisher: Option<crate::messaging::PublisherLink>,
    /// The lattice, once joined: where a component the registry cannot serve is fetched.
    uplink: Uplink,
    /// Whether code the control plane compiled for this host is loaded.
    precompiled: bool,
}

/// A replica ready to serve, or a job's run ready to run.
enum Prepared {
    Http(Arc<HttpComponent>),
    Command(
        Box<(
            wasmtime::component::Component,
            GuestOptions,
            crate::limits::Limits,
        )>,
    ),
}

/// How a job's run that exited is reported: phase, reason and message.
fn exited(code: i32, failure: Option<String>) -> (Phase, String, String) {
    match failure {
        Some(failure) => (
            Phase::Failed,
            "Trapped".to_owned(),
            format!("trapped (exit code {code}): {failure}"),
        ),
        None if code == 0 => (
            Phase::Succeeded,
            "Completed".to_owned(),
            "exit code 0".to_owned(),
        ),
        None => (
            Phase::Failed,
            "Exited".to_owned(),
            format!("exit code {code}"),
        ),
    }
}

/// Pulls, compiles and instantiates one replica, reporting progress; sends the outcome. A
/// job's run then runs to its end here, in the replica's start task: stopping the replica
/// aborts it.
async fn start<F: Fetch>(
    reporter: Reporter,
    runtime: Arc<Runtime>,
    fetch: Arc<F>,
    cached: Arc<Mutex<Vec<String>>>,
    assignment: Assignment,
    links: Links,
    done: mpsc::Sender<Started>,
) {
    reporter
        .status(&assignment, Phase::Pulling, None, None)
        .await;
    // An app with a fuel budget runs on the runtime that counts fuel.
    let runtime = match runtime.for_fuel(&Limits::for_app(&assignment.template.limits)) {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = done
                .send(Started {
                    replica: assignment.replica.clone(),
                    generation: assignment.generation,
                    result: Err(StartFailure::new("NotServable", error.to_string())),
                })
                .await;
            return;
        }
    };
    let reference = assignment.pinned_reference();
    let result = async {
        let super::Fetched {
            bytes,
            layer_digest,
        } = fetch
            .fetch(&reference, &assignment.trusted_keys, links.uplink.lattice())
            .await
            .map_err(|error| StartFailure::new(error.reason, error.message))?;
        // The newest digests only: the host record must not grow with every component
        // this host ever ran.
        if let Ok(mut cached) = cached.lock() {
            cached.retain(|digest| *digest != assignment.digest);
            cached.push(assignment.digest.clone());
            let excess = cached.len().saturating_sub(MAX_CACHED);
            cached.drain(..excess);
        }
        if let Some(lattice) = links.uplink.lattice().filter(|_| links.precompiled) {
            super::precompiled::adopt(&runtime, lattice, &assignment.digest, &layer_digest).await;
        }
        // What the guest reads through wasi:config: its config, then its secrets (opened
        // here, in memory only; apply refuses a key that both define).
        let mut config = assignment
            .template
            .config_values(&assignment.config_objects);
        if let Some(sealed) = &assignment.secrets {
            let secrets = sealed.open(&links.secrets_key).map_err(|error| {
                StartFailure::new(
                    "SecretsUnavailable",
                    format!("the app's secrets do not open with this host's key: {error}"),
                )
            })?;
            config.extend(
                secrets
                    .values()
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            );
        }
        let config = Arc::new(crate::config::ConfigMap::new(config));
        let template = assignment.template.clone();
        let private_egress = assignment.private_egress.clone();
        let job = assignment.job.clone();
        let assignment_name = assignment.app.clone();
        let runtime = Arc::clone(&runtime);
        let name = format!("{}/{}", assignment.namespace, assignment.app);
        tokio::task::spawn_blocking(move || {
            // Another replica of the same component shares its code and linking: nothing
            // to load. (A job's run is a command: it always loads, from the compile cache.)
            let load = || {
                runtime
                    .load(&bytes, &layer_digest)
                    .map_err(|error| StartFailure::new("CompileFailed", error.to_string()))
            };
            let not_servable =
                |error: crate::HostError| StartFailure::new("NotServable", error.to_string());
            let outbound = OutboundPolicy::new(&template.allowed_outbound)
                .map_err(|message| StartFailure::new("InvalidSpec", message))?
                .within_private_ranges(&private_egress)
                .with_own_listeners(links.own_listeners);
            let limits = Limits::for_app(&template.limits);
            let options = GuestOptions {
                env: template.environment().clone().into_iter().collect(),
                config,
                stores: links.stores,
                publisher: links.publisher,
                dirs: Vec::new(),
                outbound,
                // A job's run gets its program name (the job's) and arguments.
                args: match &job {
                    Some(job) => std::iter::once(assignment_name.clone())
                        .chain(job.args.iter().cloned())
                        .collect(),
                    None => Vec::new(),
                },
                name,
                services: Some(ServiceLink(links.services)),
                output: Some(links.output),
            };
            if job.is_some() {
                let loaded = load()?;
                return Ok(Prepared::Command(Box::new((
                    loaded.component,
                    options,
                    limits,
                ))));
            }
            // Replicas of one component share its code and linking: loaded once.
            let pre = runtime.shared_pre_or(&layer_digest, || {
                HttpComponent::prepare(&runtime, &load()?.component).map_err(not_servable)
            })?;
            HttpComponent::with_pre(&runtime, pre, options, limits)
                .map(|component| Prepared::Http(Arc::new(component)))
                .map_err(not_servable)
        })
        .await
        .map_err(|error| StartFailure::new("StartFailed", error.to_string()))?
    }
    .await;
    let result = match result {
        Ok(Prepared::Http(component)) => Ok(Outcome::Serving(component)),
        Ok(Prepared::Command(command)) => {
            let (component, options, limits) = *command;
            reporter
                .status(&assignment, Phase::Running, None, None)
                .await;
            match crate::command::run(&runtime, &component, &options, &limits, false).await {
                Ok(outcome) => Ok(Outcome::Exited {
                    code: outcome.code,
                    failure: outcome
                        .failure
                        .map(|(cause, message)| format!("{cause}: {message}")),
                }),
                Err(error) => Err(StartFailure::new("NotRunnable", error.to_string())),
            }
        }
        Err(error) => Err(error),
    };
    // With a health path, the replica is ready only once that path answers 2xx through it.
    if let (Ok(Outcome::Serving(component)), Some(health)) = (&result, &assignment.template.health)
    {
        wait_healthy(&reporter, &assignment, component, &health.path).await;
    }
    let _ = done
        .send(Started {
            replica: assignment.replica.clone(),
            generation: assignment.generation,
            result,
        })
        .await;
}
