//! The autoscaler controller: each pass, every autoscaled app's load (the sum of what the
//! live hosts' records say is in flight at its replicas) goes into its window, and when the
//! window calls for another count, the app is scaled to it (an event says why). The pure
//! part is [`crate::autoscale`].

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
