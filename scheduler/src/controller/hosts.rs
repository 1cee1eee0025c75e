//! Hosts as the scheduler sees them: which are live (by when their records last changed,
//! on this scheduler's clock), which just joined or were lost.

use super::*;

/// Local liveness of hosts, on this scheduler's clock: when did each host record last change.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    seen: HashMap<String, (u64, Instant)>,
}

impl Liveness {
    pub(super) fn observe(&mut self, hosts: &[Versioned<HostRecord>], now: Instant) {
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
    pub(super) fn grace(&mut self, now: Instant) {
        for (_, seen) in self.seen.values_mut() {
            *seen = now;
        }
    }

    /// How long each known host has been silent (since its record last changed).
    pub(super) fn silent_for(&self, now: Instant) -> HashMap<String, Duration> {
        self.seen
            .iter()
            .map(|(id, (_, at))| (id.clone(), now.duration_since(*at)))
            .collect()
    }

    /// The hosts heard from within their loss timeout: their own `lostAfter` when their
    /// record names one (a host on a slow link asks for more), else `timeout`.
    pub(super) fn live(
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

/// Says which hosts were lost or left since the last pass, and which joined (a new leader,
/// with no last pass, says nothing).
pub(super) async fn report_changes(
    lattice: &Lattice,
    source: &str,
    state: &State,
    live: &HashSet<String>,
    known: &HashSet<String>,
    lost_after: &HashMap<String, Duration>,
    host_timeout: Duration,
) {
    let Some(before) = &state.live_hosts else {
        return;
    };
    for host in before.difference(live) {
        let (reason, message) = if known.contains(host) {
            (
                "HostLost",
                format!(
                    "host {host} sent no heartbeat for {}: its replicas are placed elsewhere",
                    humantime::format_duration(
                        lost_after.get(host).copied().unwrap_or(host_timeout)
                    )
                ),
            )
        } else {
            ("HostLeft", format!("host {host} left the lattice"))
        };
        lattice
            .emit(Event::host(source, host, reason, message))
            .await;
    }
    for host in live.difference(before) {
        lattice
            .emit(Event::host(
                source,
                host,
                "HostJoined",
                format!("host {host} is live"),
            ))
            .await;
    }
}

/// The live hosts that may take replicas (a cordoned or draining one is marked draining, as
/// a host shutting down is) and the hosts an admin is draining (their replicas move).
pub(super) fn schedulable(
    state: &State,
    live: &HashSet<String>,
) -> (BTreeMap<String, HostRecord>, HashSet<String>) {
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
    (hosts, draining)
}
