//! The autoscaler controller: each pass, every autoscaled app's load (the sum of what the
//! live hosts' records say is in flight at its replicas) goes into its window, and when the
//! window calls for another count, the app is scaled to it (an event says why). The pure
//! part is [`crate::autoscale`].
//!
//! An app scaled to zero is woken by the first host that holds a request for it: the host
//! publishes on its wake subject, and the leader scales the app to one, placed on that host
//! when it fits.

use super::*;

pub(super) async fn step(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    hosts: &BTreeMap<String, HostRecord>,
    apps: &[Versioned<AppRecord>],
    now: Instant,
) {
    let scaled: HashSet<String> = apps
        .iter()
        .filter(|app| app.value.spec.autoscale.is_some())
        .map(|app| app.key.clone())
        .collect();
    state.autoscaling.retain(|key, _| scaled.contains(key));
    if scaled.is_empty() {
        return;
    }
    // Each app's load over every live host, summed in one walk over the hosts.
    let mut load: HashMap<&str, u64> = HashMap::new();
    for (app, milli) in hosts.values().flat_map(|host| &host.load) {
        let total = load.entry(app.as_str()).or_default();
        *total = total.saturating_add(*milli);
    }
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
        let (window, status) = state.autoscaling.entry(key.clone()).or_default();
        window.observe(now, milli);
        let decision = window.decide(spec, app.spec.replicas, now);
        *status = Some(decision.status.clone());
        let Some(to) = decision.scale_to else {
            continue;
        };
        match apply::scale(lattice, &app.namespace, &app.name, to).await {
            Ok(Some(from)) => {
                tracing::info!(app = %key, from, to, reason = %decision.reason, "autoscaled");
                lattice
                    .emit(Event::app(
                        source,
                        &app.namespace,
                        &app.name,
                        "Scaled",
                        format!("scaled from {from} to {to}: {}", decision.reason),
                    ))
                    .await;
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(app = %key, %error, "cannot scale; trying again next pass");
            }
        }
    }
}

/// How long a wake's host stays the preferred place for the app's first replica.
pub(super) const WAKE_PREFERENCE: Duration = Duration::from_secs(10);

/// Handles a wake published on `subject`; returns whether it changed anything (a pass
/// should follow). Anything malformed, for an app that cannot scale to zero, or repeated
/// within a second is ignored: a host may publish wakes, not make the scheduler work.
pub(super) async fn wake(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    subject: &str,
    now: Instant,
) -> bool {
    let Some((host, namespace, name)) =
        shoal_lattice::names::parse_wake_subject(lattice.name(), subject)
    else {
        return false;
    };
    let key = app_key(namespace, name);
    let Some(app) = state.apps.get(&key).map(|app| app.value) else {
        return false;
    };
    if app
        .spec
        .autoscale
        .as_ref()
        .is_none_or(|spec| spec.min() != 0)
    {
        return false;
    }
    if state
        .wakes
        .get(&key)
        .is_some_and(|(_, at)| now.duration_since(*at) < Duration::from_secs(1))
    {
        return false;
    }
    state.wakes.insert(key.clone(), (host.to_owned(), now));
    state
        .autoscaling
        .entry(key.clone())
        .or_default()
        .0
        .woken(now);
    if app.spec.replicas > 0 {
        return false;
    }
    match apply::scale(lattice, namespace, name, 1).await {
        Ok(Some(0)) => {
            tracing::info!(app = %key, %host, "woken from zero");
            lattice
                .emit(Event::app(
                    source,
                    namespace,
                    name,
                    "Scaled",
                    format!("scaled from 0 to 1: host {host} holds a request for it"),
                ))
                .await;
            true
        }
        Ok(_) => false,
        Err(error) => {
            tracing::warn!(app = %key, %error, "cannot wake the app");
            false
        }
    }
}
