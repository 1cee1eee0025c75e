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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use shoal_lattice::names::{host_assignments, replica_status_key};
use shoal_lattice::records::{Assignment, Capacity, HostRecord, Phase, ReplicaStatus, now_millis};
use shoal_lattice::{Bucket, Lattice, Versioned};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::engine::Runtime;
use crate::guest::{GuestOptions, OutboundPolicy};
use crate::http::{HttpComponent, ResponseBody, plain, serve_with};
use crate::limits::Limits;
use crate::router::{AppRoutes, Lookup, Router};

/// How a host joins and behaves.
#[derive(Debug, Clone)]
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

/// The agent.
pub struct Agent<F> {
    lattice: Lattice,
    runtime: Arc<Runtime>,
    fetch: Arc<F>,
    options: AgentOptions,
    router: Arc<Router>,
    cached: Arc<Mutex<Vec<String>>>,
}

enum ReplicaState {
    Starting(tokio::task::JoinHandle<()>),
    Ready(Arc<HttpComponent>),
    Failed,
}

struct Replica {
    assignment: Assignment,
    state: ReplicaState,
}

type Started = (String, u64, Result<Arc<HttpComponent>, (String, String)>);

impl<F: Fetch> Agent<F> {
    /// An agent for `lattice`.
    pub fn new(lattice: Lattice, runtime: Arc<Runtime>, fetch: F, options: AgentOptions) -> Self {
        Self {
            lattice,
            runtime,
            fetch: Arc::new(fetch),
            options,
            router: Arc::new(Router::default()),
            cached: Arc::new(Mutex::new(Vec::new())),
        }
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
        self,
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
        let started_at = now_millis();
        self.lattice
            .put(Bucket::Hosts, &id, &self.record(started_at, http, false))
            .await?;
        let assignments = self
            .lattice
            .mirror::<Assignment>(Bucket::Assignments, &host_assignments(&id))
            .await?;
        tracing::info!(host = %id, lattice = %self.lattice.name(), %http, "host joined the lattice");

        let (stop_ingress, ingress_stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Arc::clone(&self.router);
        let ingress = tokio::spawn(serve_with(
            listener,
            64 * 1024,
            move |request| ingress(Arc::clone(&router), request),
            async move {
                let _ = ingress_stopped.await;
            },
            self.options.drain,
        ));

        let mut changes = assignments.changes();
        let (started_tx, mut started_rx) = mpsc::channel::<Started>(64);
        let mut replicas: HashMap<String, Replica> = HashMap::new();
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
                Some((replica, generation, result)) = started_rx.recv() => {
                    self.started(&mut replicas, replica, generation, result).await;
                }
            }
            self.converge(&assignments.snapshot(), &mut replicas, &started_tx)
                .await;
        }

        tracing::info!(host = %id, "leaving the lattice: draining");
        let _ = self
            .lattice
            .put(Bucket::Hosts, &id, &self.record(started_at, http, true))
            .await;
        let _ = stop_ingress.send(());
        let _ = ingress.await;
        for (replica, state) in replicas.drain() {
            if let ReplicaState::Starting(task) = state.state {
                task.abort();
            }
            let _ = self
                .lattice
                .delete(Bucket::Status, &replica_status_key(&id, &replica))
                .await;
        }
        self.lattice.delete(Bucket::Hosts, &id).await?;
        tracing::info!(host = %id, "host left the lattice");
        Ok(())
    }

    async fn converge(
        &self,
        desired: &[Versioned<Assignment>],
        replicas: &mut HashMap<String, Replica>,
        started: &mpsc::Sender<Started>,
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
            if let Some(Replica {
                state: ReplicaState::Starting(task),
                ..
            }) = replicas.remove(&replica)
            {
                task.abort();
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
            let task = tokio::spawn(start(
                self.lattice.clone(),
                Arc::clone(&self.runtime),
                Arc::clone(&self.fetch),
                Arc::clone(&self.cached),
                (*assignment).clone(),
                started.clone(),
            ));
            replicas.insert(
                replica.to_owned(),
                Replica {
                    assignment: (*assignment).clone(),
                    state: ReplicaState::Starting(task),
                },
            );
        }
        if changed {
            self.publish_routes(replicas);
        }
    }

    async fn started(
        &self,
        replicas: &mut HashMap<String, Replica>,
        replica: String,
        generation: u64,
        result: Result<Arc<HttpComponent>, (String, String)>,
    ) {
        let Some(entry) = replicas.get_mut(&replica) else {
            return;
        };
        if entry.assignment.generation != generation {
            return;
        }
        let (phase, reason, message) = match result {
            Ok(component) => {
                entry.state = ReplicaState::Ready(component);
                tracing::info!(%replica, app = %entry.assignment.app, "replica ready");
                (Phase::Ready, None, None)
            }
            Err((reason, message)) => {
                entry.state = ReplicaState::Failed;
                tracing::warn!(%replica, app = %entry.assignment.app, %reason, %message, "replica failed to start");
                (Phase::Failed, Some(reason), Some(message))
            }
        };
        report(&self.lattice, &entry.assignment, phase, reason, message).await;
        self.publish_routes(replicas);
    }

    fn publish_routes(&self, replicas: &HashMap<String, Replica>) {
        let mut apps: BTreeMap<String, AppRoutes> = BTreeMap::new();
        for replica in replicas.values() {
            let key = format!(
                "{}/{}",
                replica.assignment.namespace, replica.assignment.app
            );
            let entry = apps.entry(key.clone()).or_insert_with(|| AppRoutes {
                app: key,
                routes: replica.assignment.template.routes.clone(),
                replicas: Vec::new(),
            });
            if let ReplicaState::Ready(component) = &replica.state {
                entry.replicas.push(Arc::clone(component));
            }
        }
        self.router.set(apps.into_values().collect());
    }
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
    done: mpsc::Sender<Started>,
) {
    report(&lattice, &assignment, Phase::Pulling, None, None).await;
    let reference = assignment.pinned_reference();
    let result = async {
        let (bytes, layer_digest) = fetch
            .fetch(&reference)
            .await
            .map_err(|message| ("PullFailed".to_owned(), message))?;
        if let Ok(mut cached) = cached.lock()
            && !cached.contains(&assignment.digest)
        {
            cached.push(assignment.digest.clone());
        }
        let template = assignment.template.clone();
        let name = format!("{}/{}", assignment.namespace, assignment.app);
        tokio::task::spawn_blocking(move || {
            let loaded = runtime
                .load(&bytes, &layer_digest)
                .map_err(|error| ("CompileFailed".to_owned(), error.to_string()))?;
            let outbound = OutboundPolicy::new(&template.allowed_outbound)
                .map_err(|message| ("InvalidSpec".to_owned(), message))?;
            let defaults = Limits::default();
            let limits = Limits {
                memory: template.limits.memory.map(|memory| memory.0),
                cpu_millicores: template.limits.cpu.map(|cpu| cpu.0),
                timeout: template
                    .limits
                    .timeout
                    .map_or(defaults.timeout, |timeout| timeout.0),
                concurrency: template
                    .limits
                    .concurrency
                    .map_or(defaults.concurrency, |concurrency| concurrency as usize),
                ..defaults
            };
            let options = GuestOptions {
                env: template.config.clone().into_iter().collect(),
                dirs: Vec::new(),
                outbound,
                args: Vec::new(),
                name,
            };
            HttpComponent::new(&runtime, &loaded.component, options, limits)
                .map(Arc::new)
                .map_err(|error| ("NotServable".to_owned(), error.to_string()))
        })
        .await
        .map_err(|error| ("StartFailed".to_owned(), error.to_string()))?
    }
    .await;
    let _ = done
        .send((assignment.replica.clone(), assignment.generation, result))
        .await;
}

/// Answers one ingress request from the routing table.
async fn ingress(router: Arc<Router>, request: Request<Incoming>) -> Response<ResponseBody> {
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().host())
        .map(str::to_owned);
    match router.lookup(host.as_deref(), request.uri().path()) {
        Lookup::Replica(component) => component.handle(request).await,
        Lookup::NotReady(_) => {
            let mut response = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "no ready replica of this app yet\n",
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
            response
        }
        Lookup::NoRoute => plain(StatusCode::NOT_FOUND, "no app serves this route\n"),
    }
}

/// The ids of replicas in a set of assignments, for tests and status.
pub fn replica_ids(assignments: &[Versioned<Assignment>]) -> HashSet<String> {
    assignments
        .iter()
        .map(|record| record.value.replica.clone())
        .collect()
}
