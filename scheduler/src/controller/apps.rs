//! The apps controller: one bounded step per app and pass, planned from what the pass
//! sees (remove what must go, place what is missing over the live hosts, with the writes
//! this scheduler made and may not see yet, and the backoff for replacing failed
//! replicas), then applied by the one writer (`plan`).

use super::placed::{Owner, Placed};
use super::plan::{Op, Plan, Rewrite};
use super::rollout::{StatusWrite, check_progress, status_writes};
use super::*;

/// Writes this scheduler made that its mirror may not show yet: without them, a pass right
/// after a write would place the same replica twice.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) created: HashMap<String, (Versioned<Assignment>, Instant)>,
    pub(super) deleted: HashMap<String, Instant>,
}

pub(super) const PENDING_PATIENCE: Duration = Duration::from_secs(5);

impl Pending {
    pub(super) fn view(
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
pub(super) struct Backoff {
    pub(super) failures: u32,
    pub(super) not_before: Instant,
    /// `not_before` on the wall clock, as stored in the app's status.
    pub(super) not_before_ms: u64,
}

/// With `rollout.minReady`, a new replica counts as ready for the rollout only once it has
/// been ready that long (by its host's clock in `since`); until then reconcile sees it as
/// pending. `None` when there is nothing to adjust.
pub(super) fn min_ready_view(
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

/// Tells of each invalid app record once (an event) and says so in its status: a plan per
/// app, so one status that cannot be written does not keep the others untold.
pub(super) fn plan_invalid_apps(
    source: &str,
    state: &mut State,
    invalid: &[shoal_lattice::Refused],
) -> Vec<Plan> {
    let mut plans = Vec::new();
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
            message: message.clone(),
            last_transition: now_millis(),
        });
        plans.push(Plan {
            ops: vec![
                Op::Emit(Event::app(source, namespace, name, "InvalidSpec", message)),
                Op::PutAppStatus(key, Box::new(status)),
            ],
        });
    }
    plans
}

/// Plans what no app's step does: an assignment that breaks the rules written back (or
/// removed when none was readable before), replicas of deleted apps removed, and the
/// statuses and routing records of deleted apps. `placed` forgets the deleted apps'
/// replicas (jobs' runs are the jobs controller's).
pub(super) fn plan_cleanup(
    source: &str,
    state: &mut State,
    app_keys: &HashSet<String>,
    placed: &mut Placed,
) -> Plan {
    let mut plan = Plan::default();
    // What this leader remembers of deleted apps goes with them: an app applied again under
    // the same name starts at revision 1, and must not inherit a failed rollout, a rollout
    // clock or a backoff.
    state.failed.retain(|key, _| app_keys.contains(key));
    state.rollouts.retain(|key, _| app_keys.contains(key));
    state.backoff.retain(|key, _| app_keys.contains(key));
    // Only schedulers write assignments: one that breaks the rules was not written by one.
    // Where the key held a readable assignment before (overwritten by a client, or by
    // nats-server with an answer whose reply subject someone aimed there), that one is
    // written back, so its replica goes on; an unreadable assignment of its own is removed.
    for refused in state.assignments.invalid() {
        let last = state.assignments.get(&refused.key);
        if state
            .reported
            .insert((refused.key.clone(), refused.revision))
        {
            let done = if last.is_some() {
                "restored"
            } else {
                "removed"
            };
            tracing::warn!(key = %refused.key, reason = %refused.reason, "an invalid assignment was {done}");
            let host = refused.key.split('.').next().unwrap_or_default();
            plan.push(Op::Emit(Event::host(
                source,
                host,
                "InvalidRecord",
                format!("assignment {} was {done}: {}", refused.key, refused.reason),
            )));
        }
        match last {
            Some(last) => plan.push(Op::Rewrite {
                key: last.key,
                value: Box::new(last.value),
                revision: refused.revision,
                why: Rewrite::Restore,
            }),
            None => plan.push(Op::RemoveUnreadable {
                key: refused.key.clone(),
                revision: refused.revision,
            }),
        }
    }
    // Replicas of deleted apps go.
    let of_deleted_apps: Vec<Versioned<Assignment>> = placed
        .iter()
        .filter(|assignment| {
            assignment.value.job.is_none()
                && !app_keys.contains(&app_key(&assignment.value.namespace, &assignment.value.app))
        })
        .cloned()
        .collect();
    plan.ops.extend(of_deleted_apps.into_iter().map(Op::Remove));
    // Their status and routing record go too (keys `apps.<ns>.<app>`, `routes.<ns>.<app>`).
    let orphaned = state
        .app_status
        .snapshot()
        .into_iter()
        .map(|record| record.key)
        .chain(state.routes.snapshot().into_iter().map(|record| record.key))
        .filter(|key| {
            key.split_once('.')
                .is_some_and(|(_, app)| !app_keys.contains(app))
        });
    plan.ops.extend(orphaned.map(Op::DeleteStatus));
    placed.retain(|assignment| {
        assignment.value.job.is_some()
            || app_keys.contains(&app_key(&assignment.value.namespace, &assignment.value.app))
    });
    plan
}

/// One app's bounded step: plans it ([`plan_app`]), applies the plan, then writes the
/// app's status and routing record (when the pass ends) from what is placed now.
pub(super) async fn step_app(
    lattice: &Lattice,
    state: &mut State,
    observed: &PassView<'_>,
    app: AppRecord,
    placed: &mut Placed,
) -> Result<(), Error> {
    let owner = Owner::app(&app);
    let (plan, unplaced) = plan_app(state, observed, &app, placed);
    let applied = super::plan::apply(lattice, state, plan, observed.now).await;
    placed.settle(&owner, &applied);
    if let Some(error) = applied.stopped {
        return Err(error);
    }
    let writes = status_writes(
        state,
        &app,
        placed.of(&owner),
        observed.status,
        observed.live,
        unplaced,
    );
    for (key, write) in writes {
        match write {
            StatusWrite::Route(record) => state.deferred.put(lattice, Bucket::Status, key, record),
            StatusWrite::App(status) => state.deferred.put(lattice, Bucket::Status, key, status),
        }
    }
    Ok(())
}

/// Plans one app's step from what the pass sees: remove what must go, place what is
/// missing, watch the rollout's deadline. `placed` follows the plan (what it removes goes,
/// what it places comes, provisionally, until the plan is applied). Returns the plan and
/// why replicas stay unplaced, if they do.
pub(super) fn plan_app(
    state: &mut State,
    observed: &PassView<'_>,
    app: &AppRecord,
    placed: &mut Placed,
) -> (Plan, Option<String>) {
    let PassView {
        source,
        live,
        draining,
        hosts,
        status,
        silent_for,
        now,
        secure,
        ..
    } = *observed;
    let mut plan = Plan::default();
    state.seed(app, now);
    let key = app_key(&app.namespace, &app.name);
    let owner = Owner::app(app);
    let mine: Vec<Versioned<Assignment>> = placed.of(&owner).to_vec();
    let backoff = state.backoff.get(&key).copied();
    let rollout_status = min_ready_view(app, &mine, status);
    let step = reconcile::reconcile(
        app,
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
        let (_, unavailable) = reconcile::rollout_bounds(app, app.spec.replicas as usize);
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
        // Reconcile removes only what it was shown.
        let Some(assignment) = mine
            .iter()
            .find(|assignment| &assignment.key == assignment_key)
        else {
            continue;
        };
        plan.push(Op::Remove(Versioned {
            revision: *revision,
            ..assignment.clone()
        }));
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
        plan.push(Op::Emit(Event::replica(
            source, removed, "Removed", message,
        )));
        // A lost host cannot clean up its own replica status.
        if host_lost {
            plan.push(Op::DeleteStatus(replica_status_key(
                &removed.host,
                &removed.replica,
            )));
        }
    }
    placed.remove_of(&owner, &removed);

    let mut unplaced = None;
    // An unreadable trust policy places nothing: placing without it could run what it
    // forbids.
    let trusted_keys = if step.place > 0 {
        match state.trusted_keys(&app.namespace) {
            Ok(keys) => Some(keys),
            Err(why) => {
                tracing::warn!(app = %key, %why, "not placed");
                unplaced = Some(why);
                None
            }
        }
    } else {
        None
    };
    if let Some(trusted_keys) = trusted_keys {
        // A woken app's first replica goes where its requests are held.
        let prefer = state
            .wakes
            .get(&key)
            .filter(|wake| {
                !wake.host.is_empty()
                    && now.duration_since(wake.at) < super::autoscaler::WAKE_PREFERENCE
            })
            .map(|wake| wake.host.clone());
        // An app with secrets runs only where they can be sealed (and, on a secure
        // lattice, one with stores where its store credential can), and one under a
        // trust policy only where signatures are checked: feasibility filters.
        let sealed_to_host =
            !app.spec.secrets.is_empty() || (secure && app.spec.needs_app_credential());
        let feasible = |host: &HostRecord| {
            (!sealed_to_host || host.secrets_key.is_some())
                && (trusted_keys.is_empty() || host.verifies_signatures)
        };
        let placement = placement::place(
            &placed.host_views(hosts, &owner, (&app.digest, app.wasi.as_deref()), feasible),
            &request(app, step.place, hosts, feasible, placed.of(&owner), prefer),
        );
        for host in &placement.hosts {
            let secrets = match sealed_secrets(state, app, hosts.get(host)) {
                Ok(secrets) => secrets,
                Err(why) => {
                    tracing::warn!(app = %key, %host, %why, "cannot give the app's secrets");
                    unplaced = Some(format!("the app's secrets cannot be given: {why}"));
                    continue;
                }
            };
            let template = app.spec.template();
            let access = match super::stores::access_for(
                super::stores::Issuer::of(observed, state),
                (&app.namespace, &app.name),
                &template,
                (host, hosts.get(host)),
                now_millis() / 1000,
            ) {
                Ok(access) => access,
                Err(why) => {
                    tracing::warn!(app = %key, %host, %why, "cannot give the app's store credential");
                    unplaced = Some(format!("the app's key-value stores cannot be given: {why}"));
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
                template,
                created_at: now_millis(),
                job: None,
                trusted_keys: trusted_keys.clone(),
                private_egress: state.private_egress(),
                store_access: access.as_ref().map(|(sealed, _)| sealed.clone()),
                store_access_expires: access.map(|(_, expires)| expires),
            };
            let message = format!(
                "replica {} placed on host {host} (revision {})",
                assignment.replica, app.revision
            );
            // Provisionally placed: the rest of the pass sees it, and applying the plan
            // settles it.
            placed.push(Versioned {
                key: assignment_key(host, &assignment.replica),
                revision: 0,
                value: assignment.clone(),
            });
            let placed_event = Event::replica(source, &assignment, "Placed", message);
            plan.push(Op::Place(assignment));
            plan.push(Op::Emit(placed_event));
        }
        if let Some(report) = placement.report.filter(|_| unplaced.is_none()) {
            tracing::info!(app = %key, unplaced = placement.unplaced, %report, "cannot place every replica");
            unplaced = Some(format!(
                "{} replica(s) unplaced: {report}",
                placement.unplaced
            ));
        }
    }
    check_progress(
        &mut plan,
        source,
        state,
        app,
        placed.of(&owner),
        status,
        now,
    );
    (plan, unplaced)
}

/// The app's secrets sealed to `host`'s key, or `None` for an app without secrets.
pub(super) fn sealed_secrets(
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

pub(super) fn request(
    app: &AppRecord,
    count: u32,
    hosts: &BTreeMap<String, HostRecord>,
    feasible: impl Fn(&HostRecord) -> bool,
    mine: &[Versioned<Assignment>],
    prefer: Option<String>,
) -> Request {
    let mut spread_counts = HashMap::new();
    if let Some(label) = &app.spec.placement.spread_by {
        for assignment in mine {
            let value = hosts
                .get(&assignment.value.host)
                .filter(|host| feasible(host))
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
        prefer,
        wasi: app.wasi.clone(),
    }
}
