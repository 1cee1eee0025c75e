//! Reconcile: a pure function from one app's desired state and what is observed to the
//! next bounded step. Level-triggered, like a Kubernetes controller: it looks only at the
//! present, so running it again after a crash, a lost write or a duplicate event is safe.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shoal_lattice::Versioned;
use shoal_lattice::records::{AppRecord, Assignment, Phase, ReconcileDisconnected, ReplicaStatus};

/// What to do next for one app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// New replicas of the current revision to place.
    pub place: u32,
    /// Assignment keys to delete, each with the revision it was read at.
    pub remove: Vec<(String, u64)>,
    /// Of `remove`, replicas replaced because their host was lost.
    pub lost: u32,
    /// Of `remove`, replicas replaced because they failed.
    pub failed: u32,
    /// Replicas on silent hosts kept by the app's `disconnect` policy.
    pub kept: u32,
}

/// What is observed of one app.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The app's assignments, on any host.
    pub assignments: &'a [Versioned<Assignment>],
    /// Hosts whose heartbeat is fresh.
    pub live_hosts: &'a HashSet<String>,
    /// Replica status by replica id.
    pub status: &'a HashMap<String, ReplicaStatus>,
    /// Whether failed replicas may be replaced now (false while backing off).
    pub replace_failed: bool,
    /// Hosts an admin is draining: their replicas are replaced as a rollout replaces an old
    /// revision's (a new one placed elsewhere first, within maxSurge; the old one removed
    /// once enough are ready).
    pub draining_hosts: &'a HashSet<String>,
    /// How long each known host that is not live has been silent: an app's `disconnect`
    /// policy keeps their replicas for a while.
    pub silent_for: &'a HashMap<String, Duration>,
}

/// `maxSurge` and `maxUnavailable` as replica counts for `desired` replicas: counts as
/// given, percentages of `desired` (surge rounded up, unavailable rounded down, as
/// Kubernetes does). Defaults: 25% surge, none unavailable. Both zero would never progress,
/// so the surge is then one.
pub fn rollout_bounds(app: &AppRecord, desired: usize) -> (usize, usize) {
    let resolve = |value: Option<&serde_json::Value>, default: &str, round_up: bool| {
        let value = value
            .cloned()
            .unwrap_or_else(|| serde_json::Value::String(default.to_owned()));
        match value {
            serde_json::Value::Number(number) => number.as_u64().map_or(0, |count| count as usize),
            serde_json::Value::String(text) => {
                let percent = text
                    .strip_suffix('%')
                    .and_then(|percent| percent.parse::<usize>().ok())
                    .unwrap_or(0);
                let scaled = desired * percent;
                if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                }
            }
            _ => 0,
        }
    };
    let rollout = app.spec.rollout.as_ref();
    let surge = resolve(
        rollout.and_then(|rollout| rollout.max_surge.as_ref()),
        "25%",
        true,
    );
    let unavailable = resolve(
        rollout.and_then(|rollout| rollout.max_unavailable.as_ref()),
        "0",
        false,
    );
    if surge == 0 && unavailable == 0 {
        (1, 0)
    } else {
        (surge, unavailable)
    }
}

/// Whether a replica's host reports it in `phase` for this very assignment.
pub fn in_phase(
    assignment: &Assignment,
    status: &HashMap<String, ReplicaStatus>,
    phase: Phase,
) -> bool {
    status.get(&assignment.replica).is_some_and(|status| {
        status.phase == phase && status.observed_generation == assignment.generation
    })
}

/// The next step for `app`.
pub fn reconcile(app: &AppRecord, observed: Observed<'_>) -> Step {
    let mut step = Step::default();
    let mut current = Vec::new();
    let mut old = Vec::new();
    for assignment in observed.assignments {
        let host = &assignment.value.host;
        // A silent host's replicas, within the app's `disconnect.lostAfter`: kept and
        // counted (nothing placed), or, with `replace`, kept while replacements run.
        let kept = !observed.live_hosts.contains(host)
            && app.spec.disconnect.as_ref().is_some_and(|policy| {
                let silent = observed.silent_for.get(host).copied();
                policy
                    .lost_after
                    .zip(silent)
                    .is_some_and(|(lost_after, silent)| silent < lost_after.0)
            });
        if kept {
            step.kept += 1;
            let replace = app
                .spec
                .disconnect
                .as_ref()
                .is_some_and(|policy| policy.replace);
            if replace {
                continue;
            }
        }
        if !kept && !observed.live_hosts.contains(host) {
            step.remove
                .push((assignment.key.clone(), assignment.revision));
            if assignment.value.revision == app.revision {
                step.lost += 1;
            }
        } else if assignment.value.revision != app.revision
            || observed.draining_hosts.contains(&assignment.value.host)
        {
            old.push(assignment);
        } else if observed.replace_failed
            && in_phase(&assignment.value, observed.status, Phase::Failed)
        {
            step.remove
                .push((assignment.key.clone(), assignment.revision));
            step.failed += 1;
        } else {
            current.push(assignment);
        }
    }
    let desired = app.spec.replicas as usize;
    let is_ready = |assignment: &&Versioned<Assignment>| {
        in_phase(&assignment.value, observed.status, Phase::Ready)
    };
    if old.is_empty() || desired == 0 {
        if current.len() < desired {
            step.place = u32::try_from(desired - current.len()).unwrap_or(u32::MAX);
        } else if current.len() > desired {
            // Remove the least useful first: not ready before ready, then the newest (the
            // oldest with `disconnect.reconcile: keepReplacement`, so replacements placed
            // while a host was silent stay when it returns).
            let keep_newest =
                app.spec.disconnect.as_ref().is_some_and(|policy| {
                    policy.reconcile == ReconcileDisconnected::KeepReplacement
                });
            current.sort_by_key(|assignment| {
                let created = assignment.value.created_at;
                (
                    is_ready(assignment),
                    if keep_newest {
                        created
                    } else {
                        u64::MAX - created
                    },
                    assignment.key.clone(),
                )
            });
            for assignment in &current[..current.len() - desired] {
                step.remove
                    .push((assignment.key.clone(), assignment.revision));
            }
        }
        for assignment in old {
            step.remove
                .push((assignment.key.clone(), assignment.revision));
        }
        return step;
    }

    // A paused rollout stays where it is; lost and failed replicas were handled above.
    if app.paused {
        return step;
    }
    // A rollout, recomputed from what is ready now (Kubernetes' rolling update): start new
    // replicas while the total stays within desired + maxSurge, and stop old ones while the
    // ready total stays at or above desired - maxUnavailable.
    let (surge, unavailable) = rollout_bounds(app, desired);
    let total = current.len() + old.len();
    let room = (desired + surge).saturating_sub(total);
    step.place = u32::try_from(room.min(desired.saturating_sub(current.len()))).unwrap_or(u32::MAX);
    let ready_new = current
        .iter()
        .filter(|assignment| is_ready(assignment))
        .count();
    let (ready_old, not_ready_old): (Vec<_>, Vec<_>) = old.into_iter().partition(is_ready);
    // Old replicas that are not ready serve nothing: they may always go.
    for assignment in not_ready_old {
        step.remove
            .push((assignment.key.clone(), assignment.revision));
    }
    let min_ready = desired.saturating_sub(unavailable);
    let removable = (ready_new + ready_old.len()).saturating_sub(min_ready);
    let mut ready_old = ready_old;
    ready_old.sort_by_key(|assignment| {
        (
            assignment.value.revision,
            assignment.value.created_at,
            assignment.key.clone(),
        )
    });
    for assignment in ready_old.iter().take(removable) {
        step.remove
            .push((assignment.key.clone(), assignment.revision));
    }
    step
}

#[cfg(test)]
mod tests {
    /// A rollout of six replicas with the defaults (25% surge → 2, none unavailable): never
    /// more than 8 replicas, never fewer than 6 ready, and it ends with 6 new ones.
    #[test]
    fn a_rollout_steps_within_its_bounds_until_done() {
        let hosts = live(&["h1"]);
        let mut assignments: Vec<Versioned<Assignment>> = (0..6)
            .map(|index| assigned(&format!("old{index}"), "h1", 1, index))
            .collect();
        let mut statuses: HashMap<String, ReplicaStatus> = (0..6)
            .map(|index| status(&format!("old{index}"), Phase::Ready))
            .collect();
        let app = app(6, 2);
        let mut next = 100;
        for _pass in 0..50 {
            let step = reconcile(
                &app,
                Observed {
                    assignments: &assignments,
                    live_hosts: &hosts,
                    status: &statuses,
                    replace_failed: true,
                    draining_hosts: no_hosts(),
                    silent_for: no_silence(),
                },
            );
            let removed: Vec<&String> = step.remove.iter().map(|(key, _)| key).collect();
            assignments.retain(|assignment| !removed.contains(&&assignment.key));
            for _ in 0..step.place {
                next += 1;
                let replica = format!("new{next}");
                assignments.push(assigned(&replica, "h1", 2, next));
            }
            assert!(assignments.len() <= 8, "{} replicas", assignments.len());
            let ready = assignments
                .iter()
                .filter(|assignment| in_phase(&assignment.value, &statuses, Phase::Ready))
                .count();
            assert!(ready >= 6, "only {ready} ready");
            // Every new replica becomes ready before the next pass.
            for assignment in &assignments {
                let mut ready = status(&assignment.value.replica, Phase::Ready).1;
                ready.revision = assignment.value.revision;
                statuses.insert(assignment.value.replica.clone(), ready);
            }
        }
        assert_eq!(assignments.len(), 6);
        assert!(
            assignments
                .iter()
                .all(|assignment| assignment.value.revision == 2)
        );
    }

    #[test]
    fn rollout_bounds_round_like_kubernetes() {
        let mut app = app(10, 2);
        assert_eq!(rollout_bounds(&app, 10), (3, 0));
        app.spec.rollout = Some(shoal_lattice::records::Rollout {
            max_surge: Some(serde_json::json!("10%")),
            max_unavailable: Some(serde_json::json!("25%")),
            min_ready: None,
            progress_deadline: None,
            auto_rollback: None,
        });
        assert_eq!(rollout_bounds(&app, 10), (1, 2));
        app.spec.rollout.as_mut().unwrap().max_surge = Some(serde_json::json!(0));
        app.spec.rollout.as_mut().unwrap().max_unavailable = Some(serde_json::json!(0));
        assert_eq!(rollout_bounds(&app, 10), (1, 0));
    }

    use super::*;
    use shoal_lattice::records::{AppLimits, AppSpec, Placement};
    use std::collections::BTreeMap;

    fn app(replicas: u32, revision: u64) -> AppRecord {
        AppRecord {
            name: "hello".into(),
            namespace: "default".into(),
            generation: 1,
            revision,
            digest: "sha256:00".into(),
            wasi: None,
            config_objects: Default::default(),
            secret_versions: Default::default(),
            spec: AppSpec {
                component: "r/hello:1".into(),
                replicas,
                placement: Placement::default(),
                limits: AppLimits::default(),
                routes: vec![],
                config: BTreeMap::new(),
                secrets: vec![],
                key_value: Vec::new(),
                publish: Vec::new(),
                triggers: Vec::new(),
                config_from: Vec::new(),
                env: Default::default(),
                allowed_outbound: vec![],
                health: None,
                rollout: None,
                revision_history_limit: None,
                expose: Default::default(),
                disconnect: None,
                autoscale: None,
            },
            created_at: 0,
            updated_at: 0,
            paused: false,
        }
    }

    fn assigned(
        replica: &str,
        host: &str,
        revision: u64,
        created_at: u64,
    ) -> Versioned<Assignment> {
        let app = app(0, revision);
        Versioned {
            key: format!("{host}.{replica}"),
            revision: created_at,
            value: Assignment {
                replica: replica.into(),
                app: app.name,
                namespace: app.namespace,
                revision,
                generation: 1,
                host: host.into(),
                digest: app.digest,
                config_objects: Default::default(),
                secrets: None,
                template: app.spec,
                created_at,
                job: None,
                trusted_keys: Vec::new(),
                private_egress: Vec::new(),
                store_access: None,
                store_access_expires: None,
            },
        }
    }

    fn status(replica: &str, phase: Phase) -> (String, ReplicaStatus) {
        (
            replica.to_owned(),
            ReplicaStatus {
                restarts: 0,
                last_restart: None,
                replica: replica.into(),
                app: "hello".into(),
                namespace: "default".into(),
                revision: 1,
                host: "h".into(),
                phase,
                reason: None,
                message: None,
                observed_generation: 1,
                since: 0,
                exit_code: None,
            },
        )
    }

    fn no_silence() -> &'static HashMap<String, Duration> {
        static NONE: std::sync::LazyLock<HashMap<String, Duration>> =
            std::sync::LazyLock::new(HashMap::new);
        &NONE
    }

    fn no_hosts() -> &'static HashSet<String> {
        static NONE: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(HashSet::new);
        &NONE
    }

    #[test]
    fn a_drained_host_s_replica_is_replaced_before_it_is_removed() {
        let hosts = live(&["h1", "h2"]);
        let draining = live(&["h1"]);
        let mut assignments = vec![assigned("r1", "h1", 1, 1), assigned("r2", "h2", 1, 2)];
        let mut statuses: HashMap<String, ReplicaStatus> =
            [status("r1", Phase::Ready), status("r2", Phase::Ready)]
                .into_iter()
                .collect();
        let app = app(2, 1);
        let observe = |assignments: &[Versioned<Assignment>],
                       statuses: &HashMap<String, ReplicaStatus>| {
            reconcile(
                &app,
                Observed {
                    assignments,
                    live_hosts: &hosts,
                    status: statuses,
                    replace_failed: true,
                    draining_hosts: &draining,
                    silent_for: no_silence(),
                },
            )
        };
        // First a replacement, and nothing removed while it is not ready.
        let step = observe(&assignments, &statuses);
        assert_eq!((step.place, step.remove.len()), (1, 0));
        assignments.push(assigned("r3", "h2", 1, 3));
        assert_eq!(observe(&assignments, &statuses).remove.len(), 0);
        // Once it is ready, the drained host's replica goes.
        statuses.extend([status("r3", Phase::Ready)]);
        let step = observe(&assignments, &statuses);
        assert_eq!(step.place, 0);
        assert_eq!(
            step.remove,
            vec![(assignments[0].key.clone(), assignments[0].revision)]
        );
    }

    fn live(hosts: &[&str]) -> HashSet<String> {
        hosts.iter().map(|host| (*host).to_owned()).collect()
    }

    #[test]
    fn places_what_is_missing_and_is_idempotent() {
        let hosts = live(&["h1"]);
        let observed = Observed {
            assignments: &[assigned("r1", "h1", 1, 1)],
            live_hosts: &hosts,
            status: &HashMap::new(),
            replace_failed: true,
            draining_hosts: no_hosts(),
            silent_for: no_silence(),
        };
        let step = reconcile(&app(3, 1), observed);
        assert_eq!(step.place, 2);
        assert_eq!(step, reconcile(&app(3, 1), observed));
    }

    #[test]
    fn replicas_on_lost_hosts_are_removed_and_replaced() {
        let hosts = live(&["h2"]);
        let assignments = [assigned("r1", "h1", 1, 1), assigned("r2", "h2", 1, 2)];
        let step = reconcile(
            &app(2, 1),
            Observed {
                assignments: &assignments,
                live_hosts: &hosts,
                status: &HashMap::new(),
                replace_failed: true,
                draining_hosts: no_hosts(),
                silent_for: no_silence(),
            },
        );
        assert_eq!(step.place, 1);
        assert_eq!(step.remove, [("h1.r1".to_owned(), 1)]);
        assert_eq!(step.lost, 1);
    }

    fn with_disconnect(replace: bool, reconcile: ReconcileDisconnected) -> AppRecord {
        let mut app = app(2, 1);
        app.spec.disconnect = Some(shoal_lattice::records::Disconnect {
            lost_after: Some(shoal_lattice::quantity::Span(Duration::from_secs(60))),
            replace,
            reconcile,
        });
        app
    }

    #[test]
    fn a_disconnect_policy_keeps_a_silent_host_s_replicas_until_lost_after() {
        let hosts = live(&["h2"]);
        let assignments = [assigned("r1", "h1", 1, 1), assigned("r2", "h2", 1, 2)];
        let silent = |seconds| HashMap::from([("h1".to_owned(), Duration::from_secs(seconds))]);
        let observe = |app: &AppRecord, silent_for: &HashMap<String, Duration>| {
            reconcile(
                app,
                Observed {
                    assignments: &assignments,
                    live_hosts: &hosts,
                    status: &HashMap::new(),
                    replace_failed: true,
                    draining_hosts: no_hosts(),
                    silent_for,
                },
            )
        };
        // Kept and counted: nothing placed, nothing removed.
        let keep = with_disconnect(false, ReconcileDisconnected::KeepOriginal);
        let step = observe(&keep, &silent(10));
        assert_eq!((step.place, step.remove.len(), step.kept), (0, 0, 1));
        // Kept while a replacement runs.
        let replace = with_disconnect(true, ReconcileDisconnected::KeepOriginal);
        let step = observe(&replace, &silent(10));
        assert_eq!((step.place, step.remove.len(), step.kept), (1, 0, 1));
        // Past lostAfter: lost, as without a policy.
        let step = observe(&keep, &silent(61));
        assert_eq!((step.place, step.lost), (1, 1));
        assert_eq!(step.remove, [("h1.r1".to_owned(), 1)]);
    }

    #[test]
    fn a_returning_host_s_duplicates_are_resolved_by_the_policy() {
        let hosts = live(&["h1", "h2"]);
        // r1 ran on h1 before it went silent; r3 replaced it on h2 meanwhile.
        let assignments = [
            assigned("r1", "h1", 1, 1),
            assigned("r2", "h2", 1, 2),
            assigned("r3", "h2", 1, 3),
        ];
        let status: HashMap<_, _> = ["r1", "r2", "r3"]
            .into_iter()
            .map(|replica| status(replica, Phase::Ready))
            .collect();
        let observe = |app: &AppRecord| {
            reconcile(
                app,
                Observed {
                    assignments: &assignments,
                    live_hosts: &hosts,
                    status: &status,
                    replace_failed: true,
                    draining_hosts: no_hosts(),
                    silent_for: no_silence(),
                },
            )
        };
        let original = observe(&with_disconnect(true, ReconcileDisconnected::KeepOriginal));
        assert_eq!(original.remove, [("h2.r3".to_owned(), 3)]);
        let replacement = observe(&with_disconnect(
            true,
            ReconcileDisconnected::KeepReplacement,
        ));
        assert_eq!(replacement.remove, [("h1.r1".to_owned(), 1)]);
    }

    #[test]
    fn scaling_down_removes_not_ready_then_newest() {
        let hosts = live(&["h1"]);
        let assignments = [
            assigned("r1", "h1", 1, 1),
            assigned("r2", "h1", 1, 2),
            assigned("r3", "h1", 1, 3),
        ];
        let status: HashMap<_, _> = [
            status("r1", Phase::Ready),
            status("r2", Phase::Pending),
            status("r3", Phase::Ready),
        ]
        .into_iter()
        .collect();
        let step = reconcile(
            &app(1, 1),
            Observed {
                assignments: &assignments,
                live_hosts: &hosts,
                status: &status,
                replace_failed: true,
                draining_hosts: no_hosts(),
                silent_for: no_silence(),
            },
        );
        assert_eq!(
            step.remove,
            [("h1.r2".to_owned(), 2), ("h1.r3".to_owned(), 3)]
        );
    }

    #[test]
    fn failed_replicas_are_replaced_unless_backing_off() {
        let hosts = live(&["h1"]);
        let assignments = [assigned("r1", "h1", 1, 1)];
        let status: HashMap<_, _> = [status("r1", Phase::Failed)].into_iter().collect();
        let mut observed = Observed {
            assignments: &assignments,
            live_hosts: &hosts,
            status: &status,
            replace_failed: true,
            draining_hosts: no_hosts(),
            silent_for: no_silence(),
        };
        let step = reconcile(&app(1, 1), observed);
        assert_eq!((step.place, step.failed, step.remove.len()), (1, 1, 1));
        observed.replace_failed = false;
        assert_eq!(reconcile(&app(1, 1), observed), Step::default());
    }

    #[test]
    fn an_old_revision_stays_until_the_new_one_is_ready() {
        let hosts = live(&["h1"]);
        let mut assignments = vec![assigned("old", "h1", 1, 1)];
        let observed = |assignments: &[Versioned<Assignment>],
                        status: &HashMap<String, ReplicaStatus>| {
            reconcile(
                &app(1, 2),
                Observed {
                    assignments,
                    live_hosts: &hosts,
                    status,
                    replace_failed: true,
                    draining_hosts: no_hosts(),
                    silent_for: no_silence(),
                },
            )
        };
        let old_ready: HashMap<_, _> = [status("old", Phase::Ready)].into_iter().collect();
        assert_eq!(observed(&assignments, &old_ready).place, 1);
        assignments.push(assigned("new", "h1", 2, 2));
        assert!(observed(&assignments, &old_ready).remove.is_empty());
        let mut ready: HashMap<_, _> = [status("new", Phase::Ready), status("old", Phase::Ready)]
            .into_iter()
            .collect();
        ready.get_mut("new").unwrap().revision = 2;
        assert_eq!(
            observed(&assignments, &ready).remove,
            [("h1.old".to_owned(), 1)]
        );
    }
}
