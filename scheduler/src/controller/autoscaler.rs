//! The autoscaler controller: each pass, every autoscaled app's load (the sum of what the
//! live hosts' records say is in flight at its replicas) goes into its window, and when the
//! window calls for another count, the plan scales the app to it (an event says why). The
//! window's arithmetic is [`crate::autoscale`].
//!
//! An app scaled to zero is woken by the first host that holds a request for it: the host
//! publishes on its wake subject, and the leader scales the app to one, placed on that host
//! when it fits.

use super::plan::{Op, Plan};
use super::*;

/// Plans and applies the autoscaler's step; an app that cannot be scaled now is tried
/// again next pass, and the others go on.
pub(super) async fn step(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    hosts: &BTreeMap<String, HostRecord>,
    apps: &[Versioned<AppRecord>],
    now: Instant,
) {
    read_backlogs(lattice, state, apps, now).await;
    for plan in plan_autoscale(source, state, hosts, apps, now) {
        let applied = super::plan::apply(lattice, state, plan, now).await;
        if let Some(error) = applied.stopped {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot scale; trying again next pass");
        }
    }
}

/// How often an app's backlog is read.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// How long a backlog read counts when no newer one could be made.
const BACKLOG_STALE: Duration = Duration::from_secs(30);

/// Reads, at most once a [`BACKLOG_EVERY`], the backlog of each app that scales on it
/// (`autoscale.targetPending`). One that cannot be read keeps its last value.
async fn read_backlogs(
    lattice: &Lattice,
    state: &mut State,
    apps: &[Versioned<AppRecord>],
    now: Instant,
) {
    for app in apps {
        let app = &app.value;
        if app
            .spec
            .autoscale
            .as_ref()
            .is_none_or(|spec| spec.target_pending.is_none())
        {
            continue;
        }
        let autoscaling = state.autoscaling.entry(key_of(app)).or_default();
        if autoscaling
            .backlog
            .is_some_and(|(at, _)| now.duration_since(at) < BACKLOG_EVERY)
        {
            continue;
        }
        match lattice
            .app_backlog(&app.namespace, &app.name, &app.spec.triggers)
            .await
        {
            Ok(backlog) => autoscaling.backlog = Some((now, backlog)),
            Err(error) => {
                tracing::debug!(app = %key_of(app), error = %shoal_lattice::Chain(&error), "cannot read the app's backlog");
            }
        }
    }
}

/// The load, in thousandths of requests in flight, that `backlog` messages stand for when
/// each replica should have `target_pending` of them: the replicas it calls for at the
/// app's `targetConcurrency` are those the backlog calls for.
fn backlog_load(backlog: u64, target_pending: u32, target_concurrency: u32) -> u64 {
    backlog
        .saturating_mul(u64::from(target_concurrency))
        .saturating_mul(1000)
        .div_ceil(u64::from(target_pending).max(1))
}

/// Each autoscaled app's load (over the live `hosts` that run it) goes into its window;
/// a plan per app whose window calls for another count.
pub(super) fn plan_autoscale(
    source: &str,
    state: &mut State,
    hosts: &BTreeMap<String, HostRecord>,
    apps: &[Versioned<AppRecord>],
    now: Instant,
) -> Vec<Plan> {
    let scaled: HashSet<String> = apps
        .iter()
        .filter(|app| app.value.spec.autoscale.is_some())
        .map(|app| app.key.clone())
        .collect();
    state.autoscaling.retain(|key, _| scaled.contains(key));
    if scaled.is_empty() {
        return Vec::new();
    }
    // Each app's load over the live hosts that run it, summed in one walk over the hosts: a
    // host's word about an app it runs no replica of is not heard (one host could hold any
    // app at its max, or keep a `min: 0` app awake).
    let assignments = state.assignments.snapshot();
    let load = load_of_running(hosts, assignments.iter().map(|record| &record.value));
    let mut plans = Vec::new();
    for app in apps {
        let app = &app.value;
        let Some(spec) = &app.spec.autoscale else {
            continue;
        };
        let key = key_of(app);
        let milli = load
            .get(format!("{}/{}", app.namespace, app.name).as_str())
            .copied()
            .unwrap_or(0);
        let autoscaling = state.autoscaling.entry(key.clone()).or_default();
        // The backlog counts as load too: the replicas it calls for, when more.
        // A backlog not read for a while (its consumer gone, the lattice slow) counts no more.
        let fresh = autoscaling
            .backlog
            .filter(|(at, _)| now.duration_since(*at) <= BACKLOG_STALE);
        let (milli, waiting) = match (spec.target_pending, fresh) {
            (Some(target), Some((_, backlog))) => (
                milli.max(backlog_load(backlog, target, spec.target())),
                format!("; {backlog} messages waiting, target {target} a replica"),
            ),
            _ => (milli, String::new()),
        };
        autoscaling.window.observe(now, milli);
        let decision = autoscaling.window.decide(spec, app.spec.replicas, now);
        autoscaling.status = Some(decision.status.clone());
        if let Some(to) = decision.scale_to {
            plans.push(Plan {
                ops: vec![Op::Scale {
                    namespace: app.namespace.clone(),
                    name: app.name.clone(),
                    to,
                    why: format!("{}{waiting}", decision.reason),
                    source: source.to_owned(),
                    from_zero: false,
                }],
            });
        }
    }
    plans
}

/// Per app (`namespace/name`), the load the live `hosts` report for it, counting only the
/// hosts that `assignments` place a replica of it on.
fn load_of_running<'a>(
    hosts: &'a BTreeMap<String, HostRecord>,
    assignments: impl Iterator<Item = &'a Assignment>,
) -> HashMap<&'a str, u64> {
    let running: HashSet<(&str, &str, &str)> = assignments
        .filter(|assignment| assignment.job.is_none())
        .map(|assignment| {
            (
                assignment.host.as_str(),
                assignment.namespace.as_str(),
                assignment.app.as_str(),
            )
        })
        .collect();
    let mut load: HashMap<&str, u64> = HashMap::new();
    for (id, host) in hosts {
        for (app, milli) in &host.load {
            let runs = app
                .split_once('/')
                .is_some_and(|(namespace, name)| running.contains(&(id.as_str(), namespace, name)));
            if runs {
                let total = load.entry(app.as_str()).or_default();
                *total = total.saturating_add(*milli);
            }
        }
    }
    load
}

/// How long a wake's host stays the preferred place for the app's first replica.
pub(super) const WAKE_PREFERENCE: Duration = Duration::from_secs(10);

/// Handles a wake published on `subject`; returns whether it changed anything (a pass
/// should follow). Anything malformed, for an app that cannot scale to zero, or repeated
/// within a second is ignored: a host may publish wakes, not make the scheduler work. The
/// waking host becomes the app's first choice only when it may run it (its labels, on a
/// secure lattice those its credential grants, meet the app's `requires`): a host that
/// holds a request for an app it may not run wakes it elsewhere.
pub(super) async fn wake(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    subject: &str,
    secure: bool,
    now: Instant,
) -> bool {
    let Some(plan) = plan_wake(lattice.name(), source, state, subject, secure, now) else {
        return false;
    };
    let applied = super::plan::apply(lattice, state, plan, now).await;
    if let Some(error) = &applied.stopped {
        tracing::warn!(error = %shoal_lattice::Chain(&error), %subject, "cannot wake the app");
    }
    applied.scaled > 0
}

/// Plans what a wake on `subject` does: `None` when it is ignored or the app already has
/// replicas (the waking host may still become its first choice).
pub(super) fn plan_wake(
    lattice: &str,
    source: &str,
    state: &mut State,
    subject: &str,
    secure: bool,
    now: Instant,
) -> Option<Plan> {
    let (host, namespace, name) = shoal_lattice::names::parse_wake_subject(lattice, subject)?;
    let key = app_key(namespace, name);
    let app = state.apps.get(&key)?.value;
    if app
        .spec
        .autoscale
        .as_ref()
        .is_none_or(|spec| spec.min() != 0)
    {
        return None;
    }
    // A wake from a host the lattice does not know is not a host's.
    let record = state.hosts.get(host)?.value;
    let record = if secure {
        let grant = state
            .grants
            .get(host)
            .and_then(|checked| checked.grant.as_ref());
        super::hosts::bounded(record, grant)
    } else {
        record
    };
    let may_run = app
        .spec
        .placement
        .requires
        .iter()
        .all(|(label, value)| record.labels.get(label) == Some(value));
    if state
        .wakes
        .get(&key)
        .is_some_and(|wake| now.duration_since(wake.at) < Duration::from_secs(1))
    {
        return None;
    }
    let preferred = if may_run { host } else { "" };
    state.wakes.insert(
        key.clone(),
        Wake {
            host: preferred.to_owned(),
            at: now,
        },
    );
    state
        .autoscaling
        .entry(key.clone())
        .or_default()
        .window
        .woken(now);
    if app.spec.replicas > 0 {
        return None;
    }
    Some(Plan {
        ops: vec![Op::Scale {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            to: 1,
            why: format!("host {host} holds a request for it"),
            source: source.to_owned(),
            from_zero: true,
        }],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn host(id: &str, load: &[(&str, u64)]) -> (String, HostRecord) {
        let mut record: HostRecord = serde_json::from_value(serde_json::json!({
            "id": id, "labels": {}, "version": "0", "startedAt": 0, "heartbeatAt": 0,
            "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 10}
        }))
        .unwrap();
        record.load = load
            .iter()
            .map(|(app, milli)| ((*app).to_owned(), *milli))
            .collect();
        (id.to_owned(), record)
    }

    fn placed(host: &str, namespace: &str, app: &str) -> Assignment {
        serde_json::from_value(serde_json::json!({
            "replica": format!("{app}-{host}"), "app": app, "namespace": namespace,
            "revision": 1, "generation": 1, "host": host, "digest": "sha256:ab",
            "createdAt": 0, "template": {"component": "r/a:1"}
        }))
        .unwrap()
    }

    #[test]
    fn load_counts_only_from_hosts_that_run_the_app() {
        let hosts: BTreeMap<String, HostRecord> = [
            host("h1", &[("default/web", 3000)]),
            host("h2", &[("default/web", 2000), ("team/api", 500)]),
            // Runs nothing of either: claims a flood of both, and one for a malformed key.
            host(
                "evil",
                &[
                    ("default/web", 1_000_000),
                    ("team/api", 1_000_000),
                    ("x", 9),
                ],
            ),
        ]
        .into_iter()
        .collect();
        let assignments = [
            placed("h1", "default", "web"),
            placed("h2", "default", "web"),
            placed("h2", "team", "api"),
        ];
        let load = load_of_running(&hosts, assignments.iter());
        assert_eq!(load.get("default/web"), Some(&5000));
        assert_eq!(load.get("team/api"), Some(&500));
        assert_eq!(load.len(), 2);
    }
}
