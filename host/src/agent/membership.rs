//! Membership: joining the lattice (with backoff while it cannot be reached), claiming the
//! host id, presenting the host's credential, the heartbeat that keeps the host record
//! fresh, and leaving (drain, stop, remove the record).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shoal_lattice::names::host_assignments;
use shoal_lattice::quantity::Span;
use shoal_lattice::records::{Assignment, HostRecord, RouteRecord, now_millis};
use shoal_lattice::{Bucket, Lattice, Mirror};
use tokio::sync::oneshot;

use super::*;

/// A host id whose record changed this recently is held by a live host.
pub(super) const ID_HOLD: Duration = Duration::from_secs(3);

/// The first and the longest wait between attempts to reach the lattice.
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(250);

pub(super) const RETRY_MAX: Duration = Duration::from_secs(5);

/// A lattice connection as the host uses it.
pub(super) struct Joined {
    pub(super) lattice: Lattice,
    pub(super) assignments: Mirror<Assignment>,
    pub(super) routing: Mirror<RouteRecord>,
    pub(super) forwarder: Forwarder,
    pub(super) listening: tokio::task::JoinHandle<()>,
    pub(super) stop_listening: oneshot::Sender<()>,
}

/// A byte of randomness for jitter (hosts that lost the lattice together do not all come
/// back in the same instant).
pub(super) fn jitter() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    (nanos ^ (nanos >> 8) ^ std::process::id()).to_le_bytes()[0]
}

/// Writes the JWT of this host's credential where the control plane reads what it grants
/// (its labels and capacity count for placement only within it). A failure is logged: the
/// host still serves, and is placed by its arch and os alone.
pub(super) async fn present_credential(lattice: &Lattice, id: &str, jwt: Option<&str>) {
    let Some(jwt) = jwt else { return };
    let record = shoal_lattice::records::HostCredential {
        jwt: jwt.to_owned(),
    };
    let key = shoal_lattice::names::host_credential_key(id);
    if let Err(error) = lattice.put(Bucket::Status, &key, &record).await {
        tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot present this host's credential to the control plane: placement matches it by arch and os only");
    }
}

/// Claims the host id in a reached lattice and opens what the host follows there.
pub(super) async fn join_lattice(
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
        source: format!("cannot listen for forwarded requests: {error}").into(),
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
pub(super) async fn claim_id(
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
        // The process this one replaced in an upgrade left its record, marked restarting,
        // for it: same id, same ingress (the listening socket was handed over).
        let predecessor = held.value.draining
            && held.value.http == record.http
            && held.value.upgrade.as_ref().is_some_and(|report| {
                report.phase == shoal_lattice::fleet::ReportPhase::Restarting
            });
        if !predecessor && held_by_live_host(lattice, id, held.revision).await? {
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

/// Whether the record of `id` at `revision` belongs to a live host: it changes within
/// [`ID_HOLD`], and not to say the host is leaving.
async fn held_by_live_host(
    lattice: &Lattice,
    id: &str,
    revision: u64,
) -> Result<bool, shoal_lattice::Error> {
    tracing::info!(host = %id, "a record holds this host id; checking whether its host is alive");
    let deadline = tokio::time::Instant::now() + ID_HOLD;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match lattice.get::<HostRecord>(Bucket::Hosts, id).await? {
            Some(now) if now.revision != revision && !now.value.draining => return Ok(true),
            Some(_) => {}
            None => return Ok(false),
        }
    }
    Ok(false)
}

impl<F: Fetch> Agent<F> {
    /// Requests in flight per app since the last record (see [`Metrics::take_load`]).
    pub(super) fn load(&self) -> BTreeMap<String, u64> {
        let Ok(mut taken) = self.load_taken.lock() else {
            return BTreeMap::new();
        };
        let now = std::time::Instant::now();
        let interval = now.duration_since(*taken);
        *taken = now;
        self.metrics.take_load(interval)
    }

    pub(super) fn record(
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
            version: self.options.version.clone(),
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
            // Filled in by whoever writes it, from the connection it is written on.
            connection: None,
            // Only on a secure lattice is code in the lattice the control plane's alone (see
            // `super::precompiled`): elsewhere none is asked for.
            compile_target: self
                .options
                .credential
                .as_ref()
                .and_then(|_| self.runtime.compile_target()),
            binary: self.options.binary.get().cloned(),
            upgrade: self
                .upgrade_report
                .lock()
                .ok()
                .and_then(|report| report.clone()),
        }
    }

    pub(super) async fn heartbeat(
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
        let mut record = self.record(started_at, http, draining, mismatch);
        record.connection = lattice.connection();
        let written = lattice
            .put(Bucket::Hosts, &self.options.id, &record)
            .await?;
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        Ok(written)
    }

    /// Reaches the lattice, claims this host's id and opens what the host follows. With
    /// `retry`, failures other than a refusal are tried again with backoff (the host
    /// serves its saved state meanwhile); without, the first failure is returned.
    pub(super) fn join<C, Fut>(
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
                    let mut record = record.clone();
                    record.connection = lattice.connection();
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
                    error = %shoal_lattice::Chain(&error),
                    serving,
                    retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "the lattice is unreachable: serving the saved replicas, trying again"
                );
                tokio::time::sleep(pause).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }

    /// Leaves within the drain deadline: drains the ingress and forwarded requests, stops
    /// the replicas and, when the lattice is reachable, removes this host's record and
    /// replica status. The saved state stays, so a restart (offline too) serves again.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn leave(
        &self,
        joined: Option<Joined>,
        mut supervisor: Supervisor<F>,
        ingress: tokio::task::JoinHandle<()>,
        stop_ingress: oneshot::Sender<()>,
        publisher: Option<tokio::task::JoinHandle<()>>,
        started_at: u64,
        http: SocketAddr,
        restarting: bool,
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
            // A host restarting into a new binary keeps its record (marked restarting): the
            // new process takes it over, and its replicas are not placed elsewhere meanwhile.
            if reachable && !restarting {
                match tokio::time::timeout_at(deadline, link.lattice.delete(Bucket::Hosts, id))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot remove the host record")
                    }
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

impl<F: Fetch> Agent<F> {
    /// The host has just joined `link`'s lattice: what reaches the lattice learns it, the
    /// logs kept meanwhile start going out (returns that publisher), the lattice's identity
    /// is checked, replicas' statuses are reported and the record written.
    pub(super) async fn on_joined(
        &self,
        link: &Joined,
        unpublished: &mut Option<LogReceiver>,
        provenance: &mut Provenance,
        supervisor: &mut Supervisor<F>,
        (reporter, uplink): (&Reporter, &Uplink),
        (started_at, http): (u64, SocketAddr),
    ) -> Option<tokio::task::JoinHandle<()>> {
        // Guests may not call the NATS server this host reached (by the address it
        // reports; the CLI adds the URLs' addresses at start).
        let server = link.lattice.client().server_info();
        if let Ok(ip) = server.host.parse::<std::net::IpAddr>() {
            supervisor
                .own_listeners
                .push(SocketAddr::new(ip, server.port));
        }
        uplink.joined(link.forwarder.clone(), link.lattice.clone());
        reporter.joined(link.lattice.clone()).await;
        let publisher = unpublished
            .take()
            .map(|lines| tokio::spawn(publish_logs(link.lattice.clone(), lines)));
        tracing::info!(host = %self.options.id, lattice = %link.lattice.name(), %http, "host joined the lattice");
        let _ = self
            .check_lattice(&link.lattice, provenance, supervisor, reporter)
            .await;
        if provenance.mismatch.is_none() {
            supervisor.report_all().await;
        }
        let _ = self
            .heartbeat(&link.lattice, started_at, http, false, provenance)
            .await;
        publisher
    }

    /// A heartbeat's turn: notices the connection coming back (statuses were not written
    /// meanwhile; events were kept) or going, and refreshes the host record while connected.
    pub(super) async fn on_heartbeat(
        &self,
        link: &Joined,
        was_connected: &mut bool,
        provenance: &Provenance,
        supervisor: &mut Supervisor<F>,
        reporter: &Reporter,
        (started_at, http): (u64, SocketAddr),
    ) {
        let connected =
            link.lattice.client().connection_state() == async_nats::connection::State::Connected;
        if connected != *was_connected {
            *was_connected = connected;
            if connected {
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
            && let Err(error) = self
                .heartbeat(&link.lattice, started_at, http, false, provenance)
                .await
        {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "heartbeat failed; still serving what runs here");
        }
    }
}
