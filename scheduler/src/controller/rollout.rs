//! Rollouts and status: a rollout's progress deadline and automatic rollback, and each
//! app's status record (observed generation, counts, conditions).

use super::plan::{Op, Plan};
use super::*;

/// How long a rollout may take when the app says nothing.
pub(super) const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(120);

/// Watches a rollout's progress deadline: a revision whose replicas are not all ready
/// within it has failed; with `autoRollback` (the default) the plan rolls the app back to
/// the revision it was replacing, as a new revision.
pub(super) fn check_progress(
    plan: &mut Plan,
    source: &str,
    state: &mut State,
    app: &AppRecord,
    mine: &[Versioned<Assignment>],
    status: &HashMap<String, ReplicaStatus>,
    now: Instant,
) {
    let key = app_key(&app.namespace, &app.name);
    let mine: Vec<&Assignment> = mine.iter().map(|assignment| &assignment.value).collect();
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
        Some(clock) if clock.revision == app.revision && !app.paused => clock.since,
        _ => {
            state.rollouts.insert(
                key.clone(),
                RolloutClock {
                    revision: app.revision,
                    since: now,
                    since_ms: now_millis(),
                },
            );
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
        return;
    }
    let Some(old_revision) = old_revision else {
        return;
    };
    let rollout = app.spec.rollout.as_ref();
    let deadline = rollout
        .and_then(|rollout| rollout.progress_deadline)
        .map_or(DEFAULT_PROGRESS_DEADLINE, |deadline| deadline.0);
    if now.duration_since(started) < deadline {
        return;
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
    let failed = FailedRollout {
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
    let reason = failed.reason.clone();
    match state.failed.get_mut(&key) {
        // Told already (once per failed revision, not on every pass past the deadline):
        // the reason is brought up to date, a rollback done stays on record.
        Some(earlier) if earlier.revision == failed.revision => {
            earlier.reason = failed.reason;
        }
        // Recorded when it is told: a plan stopped before it tells it next pass.
        _ => plan.push(Op::RolloutFailed {
            key,
            event: Event::app(
                source,
                &app.namespace,
                &app.name,
                "RolloutFailed",
                failed.reason.clone(),
            ),
            failed,
        }),
    }
    // Asked on every pass past the deadline until it is done: the rollback reads the app
    // again and does nothing once someone (or an earlier rollback) changed it.
    if rollout
        .and_then(|rollout| rollout.auto_rollback)
        .unwrap_or(true)
    {
        plan.push(Op::Rollback {
            app: Box::new(app.clone()),
            to: old_revision,
            reason,
            source: source.to_owned(),
        });
    }
}

/// Applies a planned rollback: the app goes back to the template of revision `to` as a new
/// revision, if it is still at the revision the plan saw and `to` is still kept.
pub(super) async fn roll_back(
    lattice: &Lattice,
    state: &mut State,
    source: &str,
    app: &AppRecord,
    to: u64,
    reason: &str,
) -> Result<(), Error> {
    let key = app_key(&app.namespace, &app.name);
    let Some(previous) = lattice
        .get::<RevisionRecord>(
            Bucket::Revisions,
            &revision_key(&app.namespace, &app.name, to),
        )
        .await?
    else {
        return Ok(());
    };
    let current = lattice.get::<AppRecord>(Bucket::Apps, &key).await?;
    let Some(current) = current.filter(|current| current.value.revision == app.revision) else {
        return Ok(());
    };
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
    let cause = format!("automatic rollback to revision {to}: {reason}");
    match apply::store(lattice, &record, Some(current.revision), Some(cause)).await {
        Ok(_) => {
            tracing::warn!(app = %key, to, as_revision = record.revision, "rolled back");
            lattice
                .emit(Event::app(
                    source,
                    &app.namespace,
                    &app.name,
                    "RolledBack",
                    format!(
                        "back to the template of revision {to}, as revision {}",
                        record.revision
                    ),
                ))
                .await;
            if let Some(failed) = state.failed.get_mut(&key) {
                failed.rolled_back_to = Some(to);
            }
            Ok(())
        }
        // Someone changed the app meanwhile: their change wins.
        Err(Error::Conflict { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// A record of the status bucket an app's step writes when the pass ends.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum StatusWrite {
    /// Where other hosts forward the app's requests.
    Route(RouteRecord),
    /// The app's status.
    App(AppStatus),
}

/// The app's routing record and status as they follow from what is placed, each only when
/// it changed: keyed writes for the end of the pass.
pub(super) fn status_writes(
    state: &State,
    app: &AppRecord,
    mine: &[Versioned<Assignment>],
    status: &HashMap<String, ReplicaStatus>,
    live: &HashSet<String>,
    unplaced: Option<String>,
) -> Vec<(String, StatusWrite)> {
    let mut writes = Vec::new();
    // Where other hosts forward the app's requests: live hosts with a ready replica of any
    // revision (an old one serves until it is removed).
    let mut endpoints: Vec<String> = mine
        .iter()
        .map(|assignment| &assignment.value)
        .filter(|assignment| {
            live.contains(&assignment.host) && reconcile::in_phase(assignment, status, Phase::Ready)
        })
        .map(|assignment| assignment.host.clone())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    let routing = RouteRecord::for_app(&app.namespace, &app.name, &app.spec, endpoints);
    let routes_key = route_key(&app.namespace, &app.name);
    if state.routes.get(&routes_key).map(|record| record.value) != Some(routing.clone()) {
        writes.push((routes_key, StatusWrite::Route(routing)));
    }
    let mine: Vec<&Assignment> = mine
        .iter()
        .map(|assignment| &assignment.value)
        .filter(|assignment| assignment.revision == app.revision)
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
        autoscale: state
            .autoscaling
            .get(&key_of(app))
            .and_then(|autoscaling| autoscaling.status.clone()),
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
            .filter(|clock| clock.revision == app.revision && !app.paused)
            .map(|clock| clock.since_ms),
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
        writes.push((key, StatusWrite::App(next)));
    }
    writes
}
