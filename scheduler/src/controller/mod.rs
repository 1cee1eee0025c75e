//! The scheduler process: mirrors the lattice's state, holds (or waits for) the lease, and
//! while leading runs reconcile passes: on every change it sees, and on a short tick so a
//! silent host is noticed. Each pass reads fresh state and takes one bounded step per app.
//!
//! `hosts` says which hosts are live and which may take replicas; `apps` plans each app's
//! step (remove, place, and with `rollout`, a failed rollout's rollback) and `rollout`
//! derives app statuses; `plan` is the one writer of plans, each write fenced; `harness`
//! runs controllers over records in memory for tests. This module holds the loop, the
//! mirrors and what a scheduler keeps while it leads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use shoal_lattice::names::{
    app_key, app_status_key, assignment_key, replica_status_key, revision_key, route_key,
};
use shoal_lattice::records::{
    AppRecord, AppSpec, AppStatus, Assignment, AutoscaleStatus, BackoffRecord, Condition,
    FailedRollout, HostControl, HostRecord, Phase, ReplicaStatus, RevisionRecord, RouteRecord,
    now_millis,
};
use shoal_lattice::{Bucket, Error, Event, Lattice, Mirror, Versioned};

use crate::apply;
use crate::lease::LeaseKeeper;
use crate::placement::{self, HostView, Request, Usage};
use crate::reconcile::{self, Observed};

mod apps;
mod autoscaler;
mod cron;
mod fleet;
#[cfg(test)]
mod harness;
mod health;
mod hosts;
mod jobs;
mod placed;
mod plan;
mod rollout;
mod stores;

pub use stores::{LIFETIME as STORE_CREDENTIAL_LIFETIME, StoreMinter};

use apps::{Backoff, Pending, step_app};
use hosts::Liveness;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// This scheduler's id (lease holder name).
    pub id: String,
    /// A host whose record has not been refreshed for this long is lost.
    pub host_timeout: Duration,
    /// Lease period: a dead leader is replaced after about this long.
    pub lease: Duration,
    /// The lattice's secrets key: what secrets are sealed to. Without it, apps that list
    /// secrets cannot be placed.
    pub secrets_key: Option<shoal_lattice::secrets::XKey>,
    /// The time cron schedules are read by.
    pub clock: crate::cron::Clock,
    /// The lattice's account (which signed this scheduler's credential), on a secure
    /// lattice: hosts are believed only as far as their credentials, signed by it, grant
    /// (labels, capacity). `None` on an open lattice, where hosts' records are taken as
    /// they are.
    pub account: Option<String>,
    /// What store credentials are minted with, on a secure lattice: without it, apps with
    /// key-value stores are not placed there (a host's own credential reaches no store).
    pub stores: Option<StoreMinter>,
    /// Where nats-server says hosts' connections open and close, on a secure lattice: a
    /// host whose process died is then lost after `Presence::grace`, not `host_timeout`.
    pub presence: Option<Presence>,
    /// How the leader keeps the lattice's copy of pinned components (for hosts that cannot
    /// reach the registry); `None`: no copy is kept.
    pub components: Option<crate::components::Copier>,
}

/// A connection to nats-server's system account that may hear hosts' connections open and
/// close (`shoal auth init` writes a credential for it, presence.creds).
#[derive(Debug, Clone)]
pub struct Presence {
    /// The connection, as the presence credential's holder (no buckets opened).
    pub connection: Lattice,
    /// The clients' account, whose hosts' connections count.
    pub clients_account: String,
    /// How long a host whose connection closed has to open another before it is lost.
    pub grace: Duration,
}

#[derive(Default)]
struct State {
    apps: Mirror<AppRecord>,
    hosts: Mirror<HostRecord>,
    assignments: Mirror<Assignment>,
    replicas: Mirror<ReplicaStatus>,
    app_status: Mirror<AppStatus>,
    /// What hosts read to route each app.
    routes: Mirror<RouteRecord>,
    /// Admins' decisions about hosts: cordoned, draining.
    controls: Mirror<HostControl>,
    /// The fleet's host upgrade, and the orders it gave hosts.
    fleet: Mirror<shoal_lattice::fleet::FleetUpgrade>,
    upgrade_orders: Mirror<shoal_lattice::fleet::UpgradeOrder>,
    /// Secrets, sealed to the lattice's key.
    secrets: Mirror<shoal_lattice::records::SecretObject>,
    /// Jobs, and their statuses as this scheduler (or the last leader) wrote them.
    jobs: Mirror<shoal_lattice::jobs::JobRecord>,
    job_status: Mirror<shoal_lattice::jobs::JobStatus>,
    /// Trust policies: the keys new replicas need a signature by.
    trust: Mirror<shoal_lattice::trust::TrustPolicy>,
    /// The lattice's egress policy: the special ranges new replicas' guests may reach.
    egress: Mirror<shoal_lattice::records::EgressPolicy>,
    /// Hosts' credentials (their JWTs), and what each grants as last checked, by host.
    credentials: Mirror<shoal_lattice::records::HostCredential>,
    grants: HashMap<String, CheckedGrant>,
    /// Cron jobs and their statuses.
    cron_jobs: Mirror<shoal_lattice::jobs::CronJobRecord>,
    cron_status: Mirror<shoal_lattice::jobs::CronJobStatus>,
    /// The lattice's secrets key, from `Options`.
    secrets_key: Option<shoal_lattice::secrets::XKey>,
    liveness: Liveness,
    pending: Pending,
    backoff: HashMap<String, Backoff>,
    /// Per app, the revision being rolled out and when this scheduler first saw it.
    rollouts: HashMap<String, RolloutClock>,
    /// Per app, the last failed rollout, until a later revision completes.
    failed: HashMap<String, FailedRollout>,
    /// Per autoscaled app, the load this scheduler has seen and what it last decided.
    autoscaling: HashMap<String, Autoscaling>,
    /// Per app scaled to zero, the last wake.
    wakes: HashMap<String, Wake>,
    /// The live hosts of the last pass, to tell joins and losses as events; `None` before
    /// the first pass (a new leader reports changes, not the hosts it finds).
    live_hosts: Option<HashSet<String>>,
    /// Invalid records already reported, by key and KV revision: told once, not every pass.
    reported: HashSet<(String, u64)>,
    /// Apps whose rollout clock, backoff and failed rollout were read back from their
    /// status in this term as leader.
    seeded: HashSet<String>,
    /// The assignments bucket's revision this scheduler's writes must follow: the view a pass
    /// plans against, moved on by each of its own writes. Only schedulers write assignments,
    /// so a leader that was deposed while it slept finds the bucket moved and writes nothing.
    fence: u64,
    /// Writes of this pass that wait for nothing and nothing waits for (apps' statuses and
    /// routing records), made many at once when the pass ends.
    deferred: Deferred,
    /// When this scheduler last wrote the control plane's health.
    health_written: Option<Instant>,
    /// The leader's copying of pinned components into the lattice.
    copying: crate::components::Copying,
    /// The job statuses this leader wrote, by key: newer than the mirror until the mirror
    /// catches up (passes follow each other faster than a write comes back through the
    /// watch, and a pass that started from the older status lost what the last one
    /// recorded: a job's start time, so its deadline never came).
    job_status_written: HashMap<String, shoal_lattice::jobs::JobStatus>,
    /// Assignments whose store credential this leader renewed, with the revision written,
    /// until the mirror shows it.
    store_renewals: HashMap<String, Renewal>,
    /// When this leader last looked for store credentials due.
    stores_checked: Option<Instant>,
}

/// When this leader started timing a rollout: the revision, by its own clock and on the
/// wall clock (kept in the app's status, so a new leader goes on where it was).
#[derive(Debug, Clone, Copy)]
struct RolloutClock {
    revision: u64,
    since: Instant,
    since_ms: u64,
}

/// What the autoscaler keeps per app: the load it has seen and what it last decided.
#[derive(Debug, Default)]
struct Autoscaling {
    window: crate::autoscale::Window,
    status: Option<AutoscaleStatus>,
    /// Its JetStream triggers' backlog as last read, and when (`autoscale.targetPending`).
    backlog: Option<(Instant, u64)>,
}

/// A host's credential as last checked: the JWT, and what it grants (`None` when it did not
/// verify).
#[derive(Debug, Clone)]
struct CheckedGrant {
    jwt: String,
    grant: Option<shoal_lattice::auth::HostGrant>,
}

/// A store credential renewal written (or failed): the assignment revision that will show
/// it, and when.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    written: u64,
    at: Instant,
}

/// The last wake of an app at zero: the host that holds a request for it (empty when that
/// host may not run it) and when.
#[derive(Debug, Clone)]
struct Wake {
    host: String,
    at: Instant,
}

impl State {
    /// The special address ranges the egress policy opens to new replicas; none when there
    /// is no policy or it cannot be read (nothing is opened by a record nobody can read).
    fn private_egress(&self) -> Vec<String> {
        self.egress
            .get(shoal_lattice::names::EGRESS_POLICY)
            .map(|policy| policy.value.private)
            .unwrap_or_default()
    }

    /// The keys a new replica in `namespace` needs a signature by (the lattice's policy and
    /// the namespace's); `Err` when a policy record is unreadable: nothing is placed then,
    /// rather than placed without the policy it may hold.
    fn trusted_keys(
        &self,
        namespace: &str,
    ) -> Result<Vec<shoal_lattice::trust::TrustedKey>, String> {
        let namespace_key = shoal_lattice::trust::namespace_key(namespace);
        let keys = [shoal_lattice::trust::LATTICE_KEY, namespace_key.as_str()];
        if let Some(refused) = self
            .trust
            .invalid()
            .into_iter()
            .find(|refused| keys.contains(&refused.key.as_str()))
        {
            return Err(format!(
                "the trust policy {:?} is unreadable ({}): set it again with shoal trust",
                refused.key, refused.reason
            ));
        }
        let policies: Vec<_> = keys.iter().filter_map(|key| self.trust.get(key)).collect();
        Ok(shoal_lattice::trust::effective(
            policies.iter().map(|policy| policy.value.keys.as_slice()),
        ))
    }
}

/// The most often host record changes alone (heartbeats) start a pass.
const HOSTS_ONLY_EVERY: Duration = Duration::from_millis(250);

/// Writes a pass makes at its end, many at once, rather than one round trip after another
/// as it goes: with a thousand new apps, a thousand statuses and routing records cost about
/// what a few do. Each key is written at most once a pass, and the next pass starts after
/// they are all done, so no write overtakes a newer one. One that fails is logged; the next
/// pass, still seeing the old value in its mirror, writes it again.
#[derive(Default)]
pub(super) struct Deferred {
    writes: std::sync::Mutex<Vec<futures_util::future::BoxFuture<'static, ()>>>,
}

/// Deferred writes in flight at once.
const DEFERRED_AT_ONCE: usize = 64;

impl Deferred {
    /// Puts `value` at `key` of `bucket` when the pass ends.
    pub(super) fn put<T>(&self, lattice: &Lattice, bucket: Bucket, key: String, value: T)
    where
        T: serde::Serialize + Send + Sync + 'static,
    {
        let lattice = lattice.clone();
        let write = async move {
            if let Err(error) = lattice.put(bucket, &key, &value).await {
                tracing::warn!(%key, error = %shoal_lattice::Chain(&error), "a write failed; the next pass makes it again");
            }
        };
        if let Ok(mut writes) = self.writes.lock() {
            writes.push(Box::pin(write));
        }
    }

    /// Makes every deferred write.
    async fn flush(&self) {
        use futures_util::StreamExt as _;
        let writes = match self.writes.lock() {
            Ok(mut writes) => std::mem::take(&mut *writes),
            Err(_) => return,
        };
        futures_util::stream::iter(writes)
            .buffer_unordered(DEFERRED_AT_ONCE)
            .collect::<Vec<()>>()
            .await;
    }
}

impl State {
    /// Forgets what this scheduler kept in memory while leading: the next leader term reads
    /// it back from the lattice, where the leader in between may have changed it.
    fn step_down(&mut self) {
        self.fence = 0;
        self.job_status_written.clear();
        self.seeded.clear();
        self.rollouts.clear();
        self.backoff.clear();
        self.failed.clear();
        self.autoscaling.clear();
        self.wakes.clear();
        self.copying.stop();
    }

    /// Takes the rollout clock, backoff and failed rollout of `app` from its stored status,
    /// once per leader term: a new leader goes on where the last one was.
    fn seed(&mut self, app: &AppRecord, now: Instant) {
        let key = key_of(app);
        if !self.seeded.insert(key.clone()) {
            return;
        }
        let Some(status) = self
            .app_status
            .get(&app_status_key(&app.namespace, &app.name))
            .map(|status| status.value)
        else {
            return;
        };
        let wall = now_millis();
        let instant_of = |millis: u64| {
            let ago = Duration::from_millis(wall.saturating_sub(millis));
            now.checked_sub(ago).unwrap_or(now)
        };
        if let Some(started) = status.rollout_started_at
            && status.revision == app.revision
        {
            self.rollouts.insert(
                key.clone(),
                RolloutClock {
                    revision: app.revision,
                    since: instant_of(started),
                    since_ms: started,
                },
            );
        }
        if let Some(backoff) = status.backoff {
            let ahead = Duration::from_millis(backoff.not_before.saturating_sub(wall));
            self.backoff.insert(
                key.clone(),
                Backoff {
                    failures: backoff.failures,
                    not_before: now.checked_add(ahead).unwrap_or(now),
                    not_before_ms: backoff.not_before,
                },
            );
        }
        if let Some(failed) = status.failed_rollout {
            self.failed.insert(key, failed);
        }
    }
}

/// Runs the scheduler until `shutdown` resolves, then gives up the lease.
///
/// # Errors
/// When the lattice's state cannot be read at startup.
pub async fn run(
    lattice: Lattice,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let mut state = State {
        apps: lattice.mirror(Bucket::Apps, ">").await?,
        hosts: lattice.mirror(Bucket::Hosts, ">").await?,
        assignments: lattice.mirror(Bucket::Assignments, ">").await?,
        replicas: lattice.mirror(Bucket::Status, "replicas.>").await?,
        app_status: lattice.mirror(Bucket::Status, "apps.>").await?,
        routes: lattice.mirror(Bucket::Status, "routes.>").await?,
        controls: lattice.mirror(Bucket::Status, "hosts.>").await?,
        fleet: lattice
            .mirror(Bucket::Status, shoal_lattice::names::FLEET_UPGRADE)
            .await?,
        upgrade_orders: lattice
            .mirror(
                Bucket::Status,
                &format!("{}>", shoal_lattice::names::UPGRADE_ORDERS),
            )
            .await?,
        secrets: lattice.mirror(Bucket::Secrets, ">").await?,
        jobs: lattice.mirror(Bucket::Jobs, ">").await?,
        job_status: lattice.mirror(Bucket::Status, "jobs.>").await?,
        trust: lattice.mirror(Bucket::Trust, ">").await?,
        egress: lattice
            .mirror(Bucket::Status, shoal_lattice::names::EGRESS_POLICY)
            .await?,
        credentials: lattice.mirror(Bucket::Status, "credentials.>").await?,
        cron_jobs: lattice.mirror(Bucket::CronJobs, ">").await?,
        cron_status: lattice.mirror(Bucket::Status, "cronjobs.>").await?,
        secrets_key: options.secrets_key.clone(),
        ..State::default()
    };
    let mut lease = LeaseKeeper::new(lattice.clone(), options.id.clone(), options.lease);
    let mut changes = [
        state.apps.changes(),
        state.hosts.changes(),
        state.assignments.changes(),
        state.replicas.changes(),
        state.jobs.changes(),
    ];
    let mut leading = false;
    // Hosts holding requests for apps scaled to zero; only the leader acts on them.
    let mut wakes = lattice
        .client()
        .subscribe(shoal_lattice::names::wake_subjects(lattice.name()))
        .await
        .map_err(|error| Error::Request {
            bucket: "wake subjects".to_owned(),
            source: error.into(),
        })?;
    // Hosts' connections closing, as nats-server tells (nothing without a presence
    // credential: hosts are then lost by their heartbeats alone).
    let mut presence = match &options.presence {
        Some(presence) => hosts::connection_events(presence).await?,
        None => futures_util::stream::pending().boxed(),
    };
    let grace = options
        .presence
        .as_ref()
        .map_or(Duration::MAX, |presence| presence.grace);
    // Every scheduler answers the control API, leader or not.
    let api = tokio::spawn(crate::api::serve(lattice.clone(), std::future::pending()));
    tracing::info!(id = %options.id, lattice = %lattice.name(), "scheduler started");
    tokio::pin!(shutdown);
    let mut last_pass = Instant::now();
    loop {
        let [apps, hosts, assignments, replicas, jobs] = &mut changes;
        let mut woken = None;
        let mut connection = None;
        // Heartbeats change only liveness: with thousands of hosts they would start a pass
        // after every pass. A host record change alone starts one at most every
        // HOSTS_ONLY_EVERY (the 200 ms tick covers the rest); any other change at once.
        let hosts_due = last_pass.elapsed() >= HOSTS_ONLY_EVERY;
        tokio::select! {
            () = &mut shutdown => break,
            // A host publishes its wake empty, with no reply subject and no headers. Anything
            // else on a wake subject was not published by a host in its own name: a JetStream
            // push consumer's delivery or an API answer, sent there by whoever chose the
            // deliver or reply subject (nats-server checks neither against permissions).
            Some(message) = wakes.next() => {
                if message.reply.is_none() && message.headers.is_none() && message.payload.is_empty() {
                    woken = Some(message.subject);
                }
            }
            Some(event) = presence.next() => connection = Some(event),
            _ = apps.changed() => {}
            _ = hosts.changed(), if hosts_due => {}
            _ = assignments.changed() => {}
            _ = replicas.changed() => {}
            _ = jobs.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let now = Instant::now();
        last_pass = now;
        state.liveness.observe(&state.hosts.snapshot(), now);
        if let Some(event) = connection {
            // Hosts' connections come and go by the thousand in a large lattice: one alone
            // starts no pass (the next tick sees its grace run out).
            state.liveness.connection(event, now);
            continue;
        }
        if !lease.tick().await {
            if leading {
                state.step_down();
            }
            leading = false;
            continue;
        }
        if !leading {
            // A lattice without an identity is new or lost its state: the leader gives it
            // one, so hosts can tell (see `LatticeIdentity`).
            if let Err(error) = lattice.ensure_identity().await {
                tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot read or make the lattice's identity");
                continue;
            }
            if let Some(key) = &options.secrets_key
                && let Err(error) = crate::secrets::publish_key(&lattice, key).await
            {
                tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot publish the lattice's secrets key");
                continue;
            }
            leading = true;
            state.liveness.grace(now);
        }
        if let Some(subject) = woken {
            let source = format!("scheduler {}", options.id);
            let secure = options.account.is_some();
            if !autoscaler::wake(&lattice, &source, &mut state, &subject, secure, now).await {
                continue;
            }
        }
        // Only a pass that went through counts as the control plane acting.
        match pass(&lattice, &options, &mut state, &lease, grace, now).await {
            Ok(()) => {
                health::report(&lattice, &options, &mut state, now);
                if let Some(copier) = &options.components {
                    let revisions = [
                        state.apps.last_revision(),
                        state.jobs.last_revision(),
                        state.cron_jobs.last_revision(),
                        state.assignments.last_revision(),
                    ];
                    let pinned = || {
                        let wanted = crate::components::wanted(
                            &values(state.apps.snapshot()),
                            &values(state.jobs.snapshot()),
                            &values(state.cron_jobs.snapshot()),
                            &values(state.assignments.snapshot()),
                        );
                        let hosts = values(state.hosts.snapshot());
                        (wanted, crate::precompile::targets(&hosts))
                    };
                    state.copying.tick(&lattice, copier, revisions, pinned, now);
                }
            }
            Err(error) => {
                tracing::warn!(error = %shoal_lattice::Chain(&error), "reconcile pass failed; retrying")
            }
        }
        state.deferred.flush().await;
    }
    api.abort();
    lease.release().await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// The records of a mirror's snapshot, without their keys and revisions.
fn values<T>(records: Vec<shoal_lattice::store::Versioned<T>>) -> Vec<T> {
    records.into_iter().map(|record| record.value).collect()
}

fn key_of(app: &AppRecord) -> String {
    app_key(&app.namespace, &app.name)
}

fn replica_id(app: &str) -> String {
    let unique = nuid::next().to_string().to_ascii_lowercase();
    format!("{app}-{}", &unique[unique.len().saturating_sub(10)..])
}

async fn pass(
    lattice: &Lattice,
    options: &Options,
    state: &mut State,
    lease: &LeaseKeeper,
    grace: Duration,
    now: Instant,
) -> Result<(), Error> {
    // A host that names its own loss timeout goes by its heartbeats alone, and so does one
    // restarting into a new binary (its connection closes on purpose; the new process
    // writes its record as soon as it is back).
    let upgrade_timeout = state
        .fleet
        .get(shoal_lattice::names::FLEET_UPGRADE)
        .map_or(Duration::from_secs(60), |upgrade| upgrade.value.timeout.0);
    let lost_after: HashMap<String, Duration> = state
        .hosts
        .snapshot()
        .into_iter()
        .filter_map(|host| {
            let restarting = host.value.upgrade.as_ref().is_some_and(|report| {
                report.phase == shoal_lattice::fleet::ReportPhase::Restarting
            });
            // The new binary has the upgrade's timeout to rejoin, after the old one drained.
            let restart = options.host_timeout + upgrade_timeout;
            let timeout = host
                .value
                .lost_after
                .map(|span| span.0)
                .or(restarting.then_some(restart))?;
            Some((host.key, timeout))
        })
        .collect();
    let live = state
        .liveness
        .live(options.host_timeout, &lost_after, grace, now);
    let source = format!("scheduler {}", options.id);
    let known: HashSet<String> = state
        .hosts
        .snapshot()
        .into_iter()
        .map(|host| host.key)
        .collect();
    let changes = hosts::plan_changes(
        &source,
        state,
        &live,
        &known,
        &lost_after,
        options.host_timeout,
    );
    plan::apply(lattice, state, changes, now).await;
    state.live_hosts = Some(live.clone());
    // Every host silent at once is the lattice failing (a NATS server lost, a partition on
    // the scheduler's side), not every machine dying: replacing replicas would have nowhere
    // to put them, so everything stays where it is until hosts are heard from again.
    if live.is_empty() && !known.is_empty() {
        tracing::warn!(
            hosts = known.len(),
            "no host is live: holding every replica where it is"
        );
        return Ok(());
    }
    hosts::check_grants(state, options.account.as_deref());
    let (hosts, draining) = hosts::schedulable(state, &live, options.account.is_some());
    // The fence is read before the snapshot: a write by anyone else after it makes this
    // pass's writes fail instead of landing on a stale plan.
    state.fence = state.fence.max(state.assignments.last_revision());
    let assigned = state.assignments.snapshot();
    let status: HashMap<String, ReplicaStatus> = shoal_lattice::records::trusted_statuses(
        state.replicas.snapshot(),
        assigned.iter().map(|record| &record.value),
    );
    let mut placed = placed::Placed::new(state.pending.view(assigned, now));
    let apps = state.apps.snapshot();
    // An app whose record breaks the rules is reported and left as it is: its replicas are
    // neither removed (as if it were deleted) nor replaced until someone fixes the record.
    let invalid_apps = state.apps.invalid();
    for report in apps::plan_invalid_apps(&source, state, &invalid_apps) {
        if let Some(error) = plan::apply(lattice, state, report, now).await.stopped {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot write the status of an invalid app");
        }
    }
    let app_keys: HashSet<String> = apps
        .iter()
        .map(|app| app.key.clone())
        .chain(invalid_apps.iter().map(|refused| refused.key.clone()))
        .collect();
    let cleanup = apps::plan_cleanup(&source, state, &app_keys, &mut placed);
    if let Some(error) = plan::apply(lattice, state, cleanup, now).await.stopped {
        return Err(error);
    }

    autoscaler::step(lattice, &source, state, &hosts, &apps, now).await;

    let silent_for = state.liveness.silent_for(now);
    let observed = PassView {
        lattice: lattice.name(),
        silent_for: &silent_for,
        source: &source,
        live: &live,
        draining: &draining,
        hosts: &hosts,
        status: &status,
        now,
        stores: options.stores.as_ref(),
        secure: options.account.is_some(),
    };
    for app in apps {
        // Fenced by the lease: a leader that was paused mid-pass (long enough for another to
        // take over) stops writing as soon as it notices, not at the end of the pass.
        if !lease.is_leader() {
            tracing::warn!("lost the lease during a pass; stopping it");
            return Ok(());
        }
        let key = app.key.clone();
        // One app's failure, even a panic, is its own: the pass goes on with the others.
        let step = AssertUnwindSafe(step_app(lattice, state, &observed, app.value, &mut placed))
            .catch_unwind()
            .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(app = %key, error = %shoal_lattice::Chain(&error), "this app's step failed; the others go on");
            }
            Err(_) => {
                tracing::error!(app = %key, "this app's step panicked; the others go on");
            }
        }
    }
    if !lease.is_leader() {
        return Ok(());
    }
    jobs::pass(lattice, state, &observed, &mut placed).await?;
    fleet::pass(lattice, &source, state, &hosts, observed.now).await;
    stores::renew(lattice, state, options.stores.as_ref()).await;
    cron::pass(lattice, state, &source, options.clock.now()).await
}

/// What one pass sees, shared by every app's step.
struct PassView<'a> {
    /// The lattice's name.
    lattice: &'a str,
    source: &'a str,
    live: &'a HashSet<String>,
    /// Hosts an admin is draining.
    draining: &'a HashSet<String>,
    hosts: &'a BTreeMap<String, HostRecord>,
    status: &'a HashMap<String, ReplicaStatus>,
    /// How long each known host has been silent.
    silent_for: &'a HashMap<String, Duration>,
    /// What store credentials are minted with.
    stores: Option<&'a StoreMinter>,
    /// Whether the lattice is secure (hosts reach stores only with a store credential).
    secure: bool,
    now: Instant,
}
