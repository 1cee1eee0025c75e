//! The scheduler process: mirrors the lattice's state, holds (or waits for) the lease, and
//! while leading runs reconcile passes: on every change it sees, and on a short tick so a
//! silent host is noticed. Each pass reads fresh state and takes one bounded step per app.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use shoal_lattice::names::{
    app_key, app_status_key, assignment_key, replica_status_key, revision_key, route_key,
};
use shoal_lattice::records::{
    AppRecord, AppSpec, AppStatus, Assignment, BackoffRecord, Condition, FailedRollout,
    HostControl, HostRecord, Phase, ReplicaStatus, RevisionRecord, RouteRecord, now_millis,
};
use shoal_lattice::{Bucket, Error, Event, Lattice, Mirror, Versioned};

use crate::apply;
use crate::lease::LeaseKeeper;
use crate::placement::{self, HostView, Request, Usage};
use crate::reconcile::{self, Observed};

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
}

/// Local liveness of hosts, on this scheduler's clock: when did each host record last change.
#[derive(Debug, Default)]
struct Liveness {
    seen: HashMap<String, (u64, Instant)>,
}

impl Liveness {
    fn observe(&mut self, hosts: &[Versioned<HostRecord>], now: Instant) {
        let present: HashSet<&str> = hosts.iter().map(|host| host.key.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        for host in hosts {
            match self.seen.get(&host.key) {
                Some((revision, _)) if *revision == host.revision => {}
                _ => {
                    self.seen.insert(host.key.clone(), (host.revision, now));
                }
            }
        }
    }

    /// Counts every known host as seen `now`: a scheduler that just took the lease, or got
    /// it back after losing the lattice for a while, has not been watching, and a host whose
    /// heartbeats could not be written meanwhile is not lost for that.
    fn grace(&mut self, now: Instant) {
        for (_, seen) in self.seen.values_mut() {
            *seen = now;
        }
    }

    /// How long each known host has been silent (since its record last changed).
    fn silent_for(&self, now: Instant) -> HashMap<String, Duration> {
        self.seen
            .iter()
            .map(|(id, (_, at))| (id.clone(), now.duration_since(*at)))
            .collect()
    }

    /// The hosts heard from within their loss timeout: their own `lostAfter` when their
    /// record names one (a host on a slow link asks for more), else `timeout`.
    fn live(
        &self,
        timeout: Duration,
        lost_after: &HashMap<String, Duration>,
        now: Instant,
    ) -> HashSet<String> {
        self.seen
            .iter()
            .filter(|(id, (_, at))| {
                now.duration_since(*at) <= lost_after.get(*id).copied().unwrap_or(timeout)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// Writes this scheduler made that its mirror may not show yet: without them, a pass right
/// after a write would place the same replica twice.
#[derive(Debug, Default)]
struct Pending {
    created: HashMap<String, (Versioned<Assignment>, Instant)>,
    deleted: HashMap<String, Instant>,
}

const PENDING_PATIENCE: Duration = Duration::from_secs(5);

impl Pending {
    fn view(
        &mut self,
        mirrored: Vec<Versioned<Assignment>>,
        now: Instant,
    ) -> Vec<Versioned<Assignment>> {
        let keys: HashSet<String> = mirrored.iter().map(|record| record.key.clone()).collect();
        self.created.retain(|key, (_, at)| {
            !keys.contains(key) && now.duration_since(*at) < PENDING_PATIENCE
        });
        self.deleted
            .retain(|key, at| keys.contains(key) && now.duration_since(*at) < PENDING_PATIENCE);
        mirrored
            .into_iter()
            .filter(|record| !self.deleted.contains_key(&record.key))
            .chain(self.created.values().map(|(record, _)| record.clone()))
            .collect()
    }
}

/// Backoff for replacing failed replicas of one app.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: Instant,
    /// `not_before` on the wall clock, as stored in the app's status.
    not_before_ms: u64,
}

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
    /// Secrets, sealed to the lattice's key.
    secrets: Mirror<shoal_lattice::records::SecretObject>,
    /// The lattice's secrets key, from `Options`.
    secrets_key: Option<shoal_lattice::secrets::XKey>,
    liveness: Liveness,
    pending: Pending,
    backoff: HashMap<String, Backoff>,
    /// Per app, the revision being rolled out and when this scheduler first saw it.
    rollouts: HashMap<String, (u64, Instant, u64)>,
    /// Per app, the last failed rollout, until a later revision completes.
    failed: HashMap<String, FailedRollout>,
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
}

impl State {
    /// Forgets what this scheduler kept in memory while leading: the next leader term reads
    /// it back from the lattice, where the leader in between may have changed it.
    fn step_down(&mut self) {
        self.fence = 0;
        self.seeded.clear();
        self.rollouts.clear();
        self.backoff.clear();
        self.failed.clear();
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
            self.rollouts
                .insert(key.clone(), (app.revision, instant_of(started), started));
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

/// How long a rollout may take when the app says nothing.
const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(120);

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
        secrets: lattice.mirror(Bucket::Secrets, ">").await?,
        secrets_key: options.secrets_key.clone(),
        liveness: Liveness::default(),
        pending: Pending::default(),
        backoff: HashMap::new(),
        rollouts: HashMap::new(),
        failed: HashMap::new(),
        live_hosts: None,
        reported: HashSet::new(),
        seeded: HashSet::new(),
        fence: 0,
    };
    let mut lease = LeaseKeeper::new(lattice.clone(), options.id.clone(), options.lease);
    let mut changes = [
        state.apps.changes(),
        state.hosts.changes(),
        state.assignments.changes(),
        state.replicas.changes(),
    ];
    let mut leading = false;
    // Every scheduler answers the control API, leader or not.
    let api = tokio::spawn(crate::api::serve(lattice.clone(), std::future::pending()));
    tracing::info!(id = %options.id, lattice = %lattice.name(), "scheduler started");
    tokio::pin!(shutdown);
    loop {
        let [apps, hosts, assignments, replicas] = &mut changes;
        tokio::select! {
            () = &mut shutdown => break,
            _ = apps.changed() => {}
            _ = hosts.changed() => {}
            _ = assignments.changed() => {}
            _ = replicas.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let now = Instant::now();
        state.liveness.observe(&state.hosts.snapshot(), now);
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
                tracing::warn!(%error, "cannot read or make the lattice's identity");
                continue;
            }
            if let Some(key) = &options.secrets_key
                && let Err(error) = crate::secrets::publish_key(&lattice, key).await
            {
                tracing::warn!(%error, "cannot publish the lattice's secrets key");
                continue;
            }
            leading = true;
            state.liveness.grace(now);
        }
        if let Err(error) = pass(&lattice, &options, &mut state, &lease, now).await {
            tracing::warn!(%error, "reconcile pass failed; retrying");
        }
    }
    api.abort();
    lease.release().await;
    tracing::info!("scheduler stopped");
    Ok(())
}

/// With `rollout.minReady`, a new replica counts as ready for the rollout only once it has
/// been ready that long (by its host's clock in `since`); until then reconcile sees it as
/// pending. `None` when there is nothing to adjust.
fn min_ready_view(
    app: &AppRecord,
    mine: &[Versioned<Assignment>],
    status: &HashMap<String, ReplicaStatus>,
) -> Option<HashMap<String, ReplicaStatus>> {
    let min_ready = app.spec.rollout.as_ref()?.min_ready?.0;
    let min_ready_ms = u64::try_from(min_ready.as_millis()).unwrap_or(u64::MAX);
    let now = now_millis();
    let mut adjusted = status.clone();
    for assignment in mine
        .iter()
        .filter(|assignment| assignment.value.revision == app.revision)
    {
        if let Some(replica) = adjusted.get_mut(&assignment.value.replica)
            && replica.phase == Phase::Ready
            && now.saturating_sub(replica.since) < min_ready_ms
        {
            replica.phase = Phase::Pending;
        }
    }
    Some(adjusted)
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
    now: Instant,
) -> Result<(), Error> {
    let lost_after: HashMap<String, Duration> = state
        .hosts
        .snapshot()
        .into_iter()
        .filter_map(|host| Some((host.key, host.value.lost_after?.0)))
        .collect();
    let live = state.liveness.live(options.host_timeout, &lost_after, now);
    let source = format!("scheduler {}", options.id);
    let known: HashSet<String> = state
        .hosts
        .snapshot()
        .into_iter()
        .map(|host| host.key)
        .collect();
    if let Some(before) = &state.live_hosts {
        for host in before.difference(&live) {
            let (reason, message) = if known.contains(host) {
                (
                    "HostLost",
                    format!(
                        "host {host} sent no heartbeat for {}: its replicas are placed elsewhere",
                        humantime::format_duration(
                            lost_after
                                .get(host)
                                .copied()
                                .unwrap_or(options.host_timeout)
                        )
                    ),
                )
            } else {
                ("HostLeft", format!("host {host} left the lattice"))
            };
            lattice
                .emit(Event::host(&source, host, reason, message))
                .await;
        }
        for host in live.difference(before) {
            lattice
                .emit(Event::host(
                    &source,
                    host,
                    "HostJoined",
                    format!("host {host} is live"),
                ))
                .await;
        }
    }
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
    // A cordoned or drained host takes no new replicas, as a host shutting down does; a
    // drained one's replicas are replaced elsewhere.
    let controls: HashMap<String, HostControl> = state
        .controls
        .snapshot()
        .into_iter()
        .map(|control| {
            let host = control.key.trim_start_matches("hosts.").to_owned();
            (host, control.value)
        })
        .collect();
    let draining: HashSet<String> = controls
        .iter()
        .filter(|(_, control)| control.draining)
        .map(|(host, _)| host.clone())
        .collect();
    let hosts: BTreeMap<String, HostRecord> = state
        .hosts
        .snapshot()
        .into_iter()
        .filter(|host| live.contains(&host.key))
        .map(|host| {
            let mut record = host.value;
            if controls
                .get(&host.key)
                .is_some_and(|control| control.cordoned || control.draining)
            {
                record.draining = true;
            }
            (host.key, record)
        })
        .collect();
    // The fence is read before the snapshot: a write by anyone else after it makes this
    // pass's writes fail instead of landing on a stale plan.
    state.fence = state.fence.max(state.assignments.last_revision());
    let mut assignments = state.pending.view(state.assignments.snapshot(), now);
    let status: HashMap<String, ReplicaStatus> = state
        .replicas
        .snapshot()
        .into_iter()
        .map(|status| (status.value.replica.clone(), status.value))
        .collect();
    let apps = state.apps.snapshot();
    // An app whose record breaks the rules is reported and left as it is: its replicas are
    // neither removed (as if it were deleted) nor replaced until someone fixes the record.
    let invalid_apps = state.apps.invalid();
    report_invalid_apps(lattice, &source, state, &invalid_apps).await;
    let app_keys: HashSet<String> = apps
        .iter()
        .map(|app| app.key.clone())
        .chain(invalid_apps.iter().map(|refused| refused.key.clone()))
        .collect();
    // Only schedulers write assignments: one that breaks the rules was not written by one.
    for refused in state.assignments.invalid() {
        if state
            .reported
            .insert((refused.key.clone(), refused.revision))
        {
            tracing::warn!(key = %refused.key, reason = %refused.reason, "removing an invalid assignment");
            let host = refused.key.split('.').next().unwrap_or_default();
            lattice
                .emit(Event::host(
                    &source,
                    host,
                    "InvalidRecord",
                    format!("assignment {} was removed: {}", refused.key, refused.reason),
                ))
                .await;
        }
        remove(lattice, state, &refused.key, refused.revision, now).await?;
    }

    // Replicas of deleted apps go.
    for assignment in &assignments {
        if !app_keys.contains(&app_key(&assignment.value.namespace, &assignment.value.app)) {
            remove(lattice, state, &assignment.key, assignment.revision, now).await?;
        }
    }
    // Their status and routing record go too (keys `apps.<ns>.<app>`, `routes.<ns>.<app>`).
    let orphaned: Vec<String> = state
        .app_status
        .snapshot()
        .into_iter()
        .map(|record| record.key)
        .chain(state.routes.snapshot().into_iter().map(|record| record.key))
        .filter(|key| {
            key.split_once('.')
                .is_some_and(|(_, app)| !app_keys.contains(app))
        })
        .collect();
    for key in orphaned {
        lattice.delete(Bucket::Status, &key).await?;
    }
    assignments.retain(|assignment| {
        app_keys.contains(&app_key(&assignment.value.namespace, &assignment.value.app))
    });

    let silent_for = state.liveness.silent_for(now);
    let observed = PassView {
        silent_for: &silent_for,
        source: &source,
        live: &live,
        draining: &draining,
        hosts: &hosts,
        status: &status,
        now,
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
        let step = AssertUnwindSafe(step_app(
            lattice,
            state,
            &observed,
            app.value,
            &mut assignments,
        ))
        .catch_unwind()
        .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(app = %key, %error, "this app's step failed; the others go on");
            }
            Err(_) => {
                tracing::error!(app = %key, "this app's step panicked; the others go on");
            }
        }
    }
    Ok(())
}

/// What one pass sees, shared by every app's step.
struct PassView<'a> {
    source: &'a str,
    live: &'a HashSet<String>,
    /// Hosts an admin is draining.
    draining: &'a HashSet<String>,
    hosts: &'a BTreeMap<String, HostRecord>,
    status: &'a HashMap<String, ReplicaStatus>,
    /// How long each known host has been silent.
    silent_for: &'a HashMap<String, Duration>,
    now: Instant,
}

/// Tells of each invalid app record once (an event) and says so in its status.
async fn report_invalid_apps(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    invalid: &[shoal_lattice::Refused],
) {
    for refused in invalid {
        if !state
            .reported
            .insert((refused.key.clone(), refused.revision))
        {
            continue;
        }
        let Some((namespace, name)) = refused.key.split_once('.') else {
            continue;
        };
        tracing::warn!(app = %refused.key, reason = %refused.reason, "ignoring an invalid app record");
        let message = format!(
            "the stored app breaks the lattice's rules and is left as it is until fixed: {}",
            refused.reason
        );
        lattice
            .emit(Event::app(
                source,
                namespace,
                name,
                "InvalidSpec",
                message.clone(),
            ))
            .await;
        let key = app_status_key(namespace, name);
        let mut status = state
            .app_status
            .get(&key)
            .map(|status| status.value)
            .unwrap_or_default();
        status
            .conditions
            .retain(|condition| condition.kind != "Valid");
        status.conditions.push(Condition {
            kind: "Valid".to_owned(),
            status: false,
            reason: "InvalidSpec".to_owned(),
            message,
            last_transition: now_millis(),
        });
        if let Err(error) = lattice.put(Bucket::Status, &key, &status).await {
            tracing::warn!(%error, app = %refused.key, "cannot write the status of an invalid app");
        }
    }
}

/// One app's bounded step: remove what must go, place what is missing, watch the rollout's
/// deadline, write the app's status.
async fn step_app(
    lattice: &Lattice,
    state: &mut State,
    observed: &PassView<'_>,
    app: AppRecord,
    assignments: &mut Vec<Versioned<Assignment>>,
) -> Result<(), Error> {
    let PassView {
        source,
        live,
        draining,
        hosts,
        status,
        silent_for,
        now,
    } = *observed;
    state.seed(&app, now);
    {
        let key = app_key(&app.namespace, &app.name);
        let mine: Vec<Versioned<Assignment>> = assignments
            .iter()
            .filter(|assignment| assignment.value.is_of(&app))
            .cloned()
            .collect();
        let backoff = state.backoff.get(&key).copied();
        let rollout_status = min_ready_view(&app, &mine, status);
        let step = reconcile::reconcile(
            &app,
            Observed {
                assignments: &mine,
                live_hosts: live,
                status: rollout_status.as_ref().unwrap_or(status),
                replace_failed: backoff.is_none_or(|backoff| now >= backoff.not_before),
                draining_hosts: draining,
                silent_for,
            },
        );
        if step.failed > 0 {
            let failures = backoff
                .map_or(0, |backoff| backoff.failures)
                .saturating_add(1);
            let delay = Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60));
            tracing::warn!(app = %key, failed = step.failed, retry_in = ?delay, "replacing failed replicas");
            state.backoff.insert(
                key.clone(),
                Backoff {
                    failures,
                    not_before: now.checked_add(delay).unwrap_or(now),
                    not_before_ms: now_millis()
                        .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)),
                },
            );
        }
        if step.lost > 0 {
            tracing::warn!(app = %key, replicas = step.lost, "replicas on lost hosts are placed again");
        }
        let removed: HashSet<String> = step.remove.iter().map(|(key, _)| key.clone()).collect();
        // During a rollout, what stays ready after this step must not fall below
        // replicas - maxUnavailable unless replicas were lost or failed: say so if it does.
        if step.lost == 0
            && step.failed == 0
            && mine
                .iter()
                .any(|assignment| assignment.value.revision != app.revision)
        {
            let staying_ready = mine
                .iter()
                .filter(|assignment| !removed.contains(&assignment.key))
                .filter(|assignment| reconcile::in_phase(&assignment.value, status, Phase::Ready))
                .count();
            let (_, unavailable) = reconcile::rollout_bounds(&app, app.spec.replicas as usize);
            let floor = (app.spec.replicas as usize).saturating_sub(unavailable);
            let ready_before = mine
                .iter()
                .filter(|assignment| reconcile::in_phase(&assignment.value, status, Phase::Ready))
                .count();
            if staying_ready < floor && staying_ready < ready_before {
                tracing::error!(app = %key, staying_ready, floor, "rollout step would leave fewer ready replicas than replicas - maxUnavailable");
            }
        }
        for (assignment_key, revision) in &step.remove {
            remove(lattice, state, assignment_key, *revision, now).await?;
            let Some(assignment) = mine
                .iter()
                .find(|assignment| &assignment.key == assignment_key)
            else {
                continue;
            };
            let removed = &assignment.value;
            let host_lost = !live.contains(&removed.host);
            let why = if host_lost {
                "its host is lost".to_owned()
            } else if reconcile::in_phase(removed, status, Phase::Failed) {
                "it failed".to_owned()
            } else if draining.contains(&removed.host) {
                "its host is being drained".to_owned()
            } else if removed.revision != app.revision {
                format!("revision {} replaces it", app.revision)
            } else {
                "the app has fewer replicas".to_owned()
            };
            let message = format!(
                "replica {} removed from host {}: {why}",
                removed.replica, removed.host
            );
            lattice
                .emit(Event::replica(source, removed, "Removed", message))
                .await;
            // A lost host cannot clean up its own replica status.
            if host_lost {
                lattice
                    .delete(
                        Bucket::Status,
                        &replica_status_key(&removed.host, &removed.replica),
                    )
                    .await?;
            }
        }
        assignments.retain(|assignment| !removed.contains(&assignment.key));

        let mut unplaced = None;
        if step.place > 0 {
            // An app with secrets runs only where they can be sealed: a feasibility filter.
            let with_key;
            let feasible = if app.spec.secrets.is_empty() {
                hosts
            } else {
                with_key = hosts
                    .iter()
                    .filter(|(_, host)| host.secrets_key.is_some())
                    .map(|(id, host)| (id.clone(), host.clone()))
                    .collect();
                &with_key
            };
            let plan = placement::place(
                &host_views(feasible, assignments, &app),
                &request(&app, step.place, feasible, assignments),
            );
            for host in &plan.hosts {
                let secrets = match sealed_secrets(state, &app, feasible.get(host)) {
                    Ok(secrets) => secrets,
                    Err(why) => {
                        tracing::warn!(app = %key, %host, %why, "cannot give the app's secrets");
                        unplaced = Some(format!("the app's secrets cannot be given: {why}"));
                        continue;
                    }
                };
                let assignment = Assignment {
                    replica: replica_id(&app.name),
                    app: app.name.clone(),
                    namespace: app.namespace.clone(),
                    revision: app.revision,
                    generation: app.generation,
                    host: host.clone(),
                    digest: app.digest.clone(),
                    config_objects: app.config_objects.clone(),
                    secrets,
                    template: app.spec.template(),
                    created_at: now_millis(),
                };
                let record_key = assignment_key(host, &assignment.replica);
                let revision = lattice
                    .create_fenced(Bucket::Assignments, &record_key, &assignment, state.fence)
                    .await?;
                state.fence = revision;
                tracing::info!(app = %key, replica = %assignment.replica, %host, "placed");
                let message = format!(
                    "replica {} placed on host {host} (revision {})",
                    assignment.replica, app.revision
                );
                lattice
                    .emit(Event::replica(source, &assignment, "Placed", message))
                    .await;
                let record = Versioned {
                    key: record_key.clone(),
                    revision,
                    value: assignment,
                };
                state
                    .pending
                    .created
                    .insert(record_key, (record.clone(), now));
                assignments.push(record);
            }
            if let Some(report) = plan.report.filter(|_| unplaced.is_none()) {
                tracing::info!(app = %key, unplaced = plan.unplaced, %report, "cannot place every replica");
                unplaced = Some(format!("{} replica(s) unplaced: {report}", plan.unplaced));
            }
        }
        check_progress(lattice, source, state, &app, assignments, status, now).await?;
        write_status(lattice, state, &app, assignments, status, live, unplaced).await?;
    }
    Ok(())
}

/// The app's secrets sealed to `host`'s key, or `None` for an app without secrets.
fn sealed_secrets(
    state: &State,
    app: &AppRecord,
    host: Option<&HostRecord>,
) -> Result<Option<shoal_lattice::secrets::Sealed>, String> {
    if app.spec.secrets.is_empty() {
        return Ok(None);
    }
    let recipient = host
        .and_then(|host| host.secrets_key.as_deref())
        .ok_or("the host has no secrets key")?;
    crate::secrets::seal_for(
        state.secrets_key.as_ref(),
        &app.namespace,
        &app.spec.secrets,
        |key| state.secrets.get(key).map(|secret| secret.value),
        recipient,
    )
    .map(Some)
}

async fn remove(
    lattice: &Lattice,
    state: &mut State,
    key: &str,
    revision: u64,
    now: Instant,
) -> Result<(), Error> {
    // A conflict means the bucket moved since this pass's view (another leader, or the key
    // itself changed): the pass stops here and the next one plans from what is there.
    state.fence = lattice
        .delete_fenced(Bucket::Assignments, key, revision, state.fence)
        .await?;
    state.pending.created.remove(key);
    state.pending.deleted.insert(key.to_owned(), now);
    Ok(())
}

fn host_views(
    hosts: &BTreeMap<String, HostRecord>,
    assignments: &[Versioned<Assignment>],
    app: &AppRecord,
) -> Vec<HostView> {
    hosts
        .values()
        .map(|host| {
            let mut used = Usage::default();
            let mut same_app = 0;
            for assignment in assignments
                .iter()
                .filter(|assignment| assignment.value.host == host.id)
            {
                // Saturating: what hosts run is whatever the assignments say.
                used.memory = used
                    .memory
                    .saturating_add(assignment.value.template.memory_request().0);
                used.cpu = used
                    .cpu
                    .saturating_add(assignment.value.template.cpu_request().0);
                used.replicas = used.replicas.saturating_add(1);
                if assignment.value.is_of(app) {
                    same_app += 1;
                }
            }
            HostView {
                id: host.id.clone(),
                labels: host.labels.clone(),
                capacity: host.capacity,
                used,
                same_app,
                cached: host.cached.contains(&app.digest),
                draining: host.draining,
            }
        })
        .collect()
}

fn request(
    app: &AppRecord,
    count: u32,
    hosts: &BTreeMap<String, HostRecord>,
    assignments: &[Versioned<Assignment>],
) -> Request {
    let mut spread_counts = HashMap::new();
    if let Some(label) = &app.spec.placement.spread_by {
        for assignment in assignments
            .iter()
            .filter(|assignment| assignment.value.is_of(app))
        {
            let value = hosts
                .get(&assignment.value.host)
                .and_then(|host| host.labels.get(label).cloned())
                .unwrap_or_default();
            *spread_counts.entry(value).or_insert(0) += 1;
        }
    }
    Request {
        count,
        memory: app.spec.memory_request().0,
        cpu: app.spec.cpu_request().0,
        requires: app.spec.placement.requires.clone(),
        spread_by: app.spec.placement.spread_by.clone(),
        spread_counts,
    }
}

/// Watches a rollout's progress deadline: a revision whose replicas are not all ready
/// within it has failed; with `autoRollback` (the default) the app goes back to the
/// revision it was replacing, as a new revision.
async fn check_progress(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    app: &AppRecord,
    assignments: &[Versioned<Assignment>],
    status: &HashMap<String, ReplicaStatus>,
    now: Instant,
) -> Result<(), Error> {
    let key = app_key(&app.namespace, &app.name);
    let mine: Vec<&Assignment> = assignments
        .iter()
        .map(|assignment| &assignment.value)
        .filter(|assignment| assignment.is_of(app))
        .collect();
    let old_revision = mine
        .iter()
        .filter(|assignment| assignment.revision != app.revision)
        .map(|assignment| assignment.revision)
        .max();
    let ready = mine
        .iter()
        .filter(|assignment| {
            assignment.revision == app.revision
                && reconcile::in_phase(assignment, status, Phase::Ready)
        })
        .count();
    let started = match state.rollouts.get(&key) {
        // A paused rollout's clock does not run.
        Some((revision, since, _)) if *revision == app.revision && !app.paused => *since,
        _ => {
            state
                .rollouts
                .insert(key.clone(), (app.revision, now, now_millis()));
            now
        }
    };
    if old_revision.is_none() && ready >= app.spec.replicas as usize {
        // Done: a later success clears an earlier failure.
        // (The rollback's own revision, failed + 1, completing keeps the failure on record.)
        if state
            .failed
            .get(&key)
            .is_some_and(|failed| failed.revision + 1 < app.revision)
        {
            state.failed.remove(&key);
        }
        return Ok(());
    }
    let Some(old_revision) = old_revision else {
        return Ok(());
    };
    let rollout = app.spec.rollout.as_ref();
    let deadline = rollout
        .and_then(|rollout| rollout.progress_deadline)
        .map_or(DEFAULT_PROGRESS_DEADLINE, |deadline| deadline.0);
    if now.duration_since(started) < deadline {
        return Ok(());
    }
    let why = mine
        .iter()
        .filter(|assignment| assignment.revision == app.revision)
        .find_map(|assignment| {
            status
                .get(&assignment.replica)
                .filter(|status| status.phase != Phase::Ready)
                .and_then(|status| status.message.clone().or_else(|| status.reason.clone()))
        })
        .unwrap_or_else(|| "its replicas did not become ready".to_owned());
    let mut failed = FailedRollout {
        revision: app.revision,
        reason: format!(
            "revision {} was not ready within {} ({ready} of {} ready): {why}",
            app.revision,
            humantime::format_duration(deadline),
            app.spec.replicas
        ),
        rolled_back_to: None,
    };
    tracing::warn!(app = %key, reason = %failed.reason, "rollout failed");
    // Told once per failed revision, not on every pass past the deadline.
    if state
        .failed
        .get(&key)
        .is_none_or(|earlier| earlier.revision != failed.revision)
    {
        lattice
            .emit(Event::app(
                source,
                &app.namespace,
                &app.name,
                "RolloutFailed",
                failed.reason.clone(),
            ))
            .await;
    }
    if rollout
        .and_then(|rollout| rollout.auto_rollback)
        .unwrap_or(true)
        && let Some(previous) = lattice
            .get::<RevisionRecord>(
                Bucket::Revisions,
                &revision_key(&app.namespace, &app.name, old_revision),
            )
            .await?
    {
        let current = lattice.get::<AppRecord>(Bucket::Apps, &key).await?;
        if let Some(current) = current.filter(|current| current.value.revision == app.revision) {
            let record = AppRecord {
                generation: app.generation + 1,
                revision: app.revision + 1,
                digest: previous.value.digest.clone(),
                config_objects: previous.value.config_objects.clone(),
                // Secret values are not kept per revision: the current ones stay.
                secret_versions: app.secret_versions.clone(),
                spec: AppSpec {
                    replicas: app.spec.replicas,
                    revision_history_limit: app.spec.revision_history_limit,
                    ..previous.value.template.clone()
                },
                updated_at: now_millis(),
                ..app.clone()
            };
            let cause = format!(
                "automatic rollback to revision {old_revision}: {}",
                failed.reason
            );
            match apply::store(lattice, &record, Some(current.revision), Some(cause)).await {
                Ok(_) => {
                    tracing::warn!(app = %key, to = old_revision, as_revision = record.revision, "rolled back");
                    lattice
                        .emit(Event::app(
                            source,
                            &app.namespace,
                            &app.name,
                            "RolledBack",
                            format!(
                                "back to the template of revision {old_revision}, as revision {}",
                                record.revision
                            ),
                        ))
                        .await;
                    failed.rolled_back_to = Some(old_revision);
                }
                // Someone changed the app meanwhile: their change wins.
                Err(Error::Conflict { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
    state.failed.insert(key, failed);
    Ok(())
}

async fn write_status(
    lattice: &Lattice,
    state: &State,
    app: &AppRecord,
    assignments: &[Versioned<Assignment>],
    status: &HashMap<String, ReplicaStatus>,
    live: &HashSet<String>,
    unplaced: Option<String>,
) -> Result<(), Error> {
    // Where other hosts forward the app's requests: live hosts with a ready replica of any
    // revision (an old one serves until it is removed).
    let mut endpoints: Vec<String> = assignments
        .iter()
        .map(|assignment| &assignment.value)
        .filter(|assignment| {
            assignment.is_of(app)
                && live.contains(&assignment.host)
                && reconcile::in_phase(assignment, status, Phase::Ready)
        })
        .map(|assignment| assignment.host.clone())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    let routing = RouteRecord {
        namespace: app.namespace.clone(),
        app: app.name.clone(),
        routes: app.spec.routes.clone(),
        expose: app.spec.expose.clone(),
        timeout: app.spec.limits.timeout,
        endpoints,
    };
    let routes_key = route_key(&app.namespace, &app.name);
    if state.routes.get(&routes_key).map(|record| record.value) != Some(routing.clone()) {
        lattice.put(Bucket::Status, &routes_key, &routing).await?;
    }
    let mine: Vec<&Assignment> = assignments
        .iter()
        .map(|assignment| &assignment.value)
        .filter(|assignment| assignment.is_of(app) && assignment.revision == app.revision)
        .collect();
    let ready = mine
        .iter()
        .filter(|assignment| reconcile::in_phase(assignment, status, Phase::Ready))
        .count();
    let key = app_status_key(&app.namespace, &app.name);
    let previous = state.app_status.get(&key).map(|status| status.value);
    // Placement failures persist until a pass places everything.
    let unplaced = match unplaced {
        Some(reason) => Some(reason),
        None if (mine.len() as u32) < app.spec.replicas => {
            previous.as_ref().and_then(|status| status.unplaced.clone())
        }
        None => None,
    };
    let condition = |kind: &str, holds: bool, reason: &str, message: String| {
        let last_transition = previous
            .as_ref()
            .and_then(|status| {
                status
                    .conditions
                    .iter()
                    .find(|condition| condition.kind == kind)
            })
            .filter(|condition| condition.status == holds)
            .map_or_else(now_millis, |condition| condition.last_transition);
        Condition {
            kind: kind.to_owned(),
            status: holds,
            reason: reason.to_owned(),
            message,
            last_transition,
        }
    };
    let placed = u32::try_from(mine.len()).unwrap_or(u32::MAX);
    let ready = u32::try_from(ready).unwrap_or(u32::MAX);
    let next = AppStatus {
        observed_generation: app.generation,
        revision: app.revision,
        desired: app.spec.replicas,
        placed,
        ready,
        conditions: vec![
            match &unplaced {
                Some(reason) => condition("Placed", false, "Unschedulable", reason.clone()),
                None => condition(
                    "Placed",
                    true,
                    "AllPlaced",
                    format!("{placed} of {} replicas placed", app.spec.replicas),
                ),
            },
            if ready >= app.spec.replicas {
                condition(
                    "Available",
                    true,
                    "AllReady",
                    format!("{ready} of {} replicas ready", app.spec.replicas),
                )
            } else {
                condition(
                    "Available",
                    false,
                    "NotAllReady",
                    format!("{ready} of {} replicas ready", app.spec.replicas),
                )
            },
        ],
        unplaced,
        failed_rollout: state.failed.get(&key_of(app)).cloned(),
        // While paused the clock does not run: nothing to keep.
        rollout_started_at: state
            .rollouts
            .get(&key_of(app))
            .filter(|(revision, _, _)| *revision == app.revision && !app.paused)
            .map(|(_, _, started_ms)| *started_ms),
        backoff: state
            .backoff
            .get(&key_of(app))
            .map(|backoff| BackoffRecord {
                failures: backoff.failures,
                not_before: backoff.not_before_ms,
            }),
    };
    // Write status only when it changed.
    if previous.as_ref() != Some(&next) {
        lattice.put(Bucket::Status, &key, &next).await?;
    }
    Ok(())
}
