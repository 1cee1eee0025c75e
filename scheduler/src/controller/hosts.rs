//! Hosts as the scheduler sees them: which are live (by when their records last changed,
//! on this scheduler's clock), which just joined or were lost.

use super::plan::{Op, Plan};
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

/// Plans telling which hosts were lost or left since the last pass, and which joined (a
/// new leader, with no last pass, says nothing).
pub(super) fn plan_changes(
    source: &str,
    state: &State,
    live: &HashSet<String>,
    known: &HashSet<String>,
    lost_after: &HashMap<String, Duration>,
    host_timeout: Duration,
) -> Plan {
    let mut plan = Plan::default();
    let Some(before) = &state.live_hosts else {
        return plan;
    };
    let mut gone: Vec<&String> = before.difference(live).collect();
    gone.sort();
    for host in gone {
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
        plan.push(Op::Emit(Event::host(source, host, reason, message)));
    }
    let mut joined: Vec<&String> = live.difference(before).collect();
    joined.sort();
    for host in joined {
        plan.push(Op::Emit(Event::host(
            source,
            host,
            "HostJoined",
            format!("host {host} is live"),
        )));
    }
    plan
}

/// Checks the credentials hosts presented (only those that changed since the last pass:
/// a signature check per host per pass would cost the control plane at 10,000 hosts).
/// Nothing on an open lattice (`account` `None`).
pub(super) fn check_grants(state: &mut State, account: Option<&str>) {
    let Some(account) = account else {
        return;
    };
    let presented: HashMap<String, String> = state
        .credentials
        .snapshot()
        .into_iter()
        .filter_map(|record| {
            let host = record.key.strip_prefix("credentials.")?.to_owned();
            Some((host, record.value.jwt))
        })
        .collect();
    state.grants.retain(|host, _| presented.contains_key(host));
    for (host, jwt) in presented {
        if state
            .grants
            .get(&host)
            .is_some_and(|checked| checked.jwt == jwt)
        {
            continue;
        }
        let grant = match shoal_lattice::auth::host_grant(&jwt, account, &host) {
            Ok(grant) => Some(grant),
            Err(error) => {
                tracing::warn!(%host, %error, "a host's credential does not verify: it takes no new replicas");
                None
            }
        };
        state.grants.insert(host, CheckedGrant { jwt, grant });
    }
}

/// What placement believes of a host on a secure lattice: its `arch` and `os` as it reports
/// them, the labels its credential grants (no other), and its capacity within the grant.
pub(super) fn bounded(
    mut record: HostRecord,
    grant: Option<&shoal_lattice::auth::HostGrant>,
) -> HostRecord {
    let mut labels: BTreeMap<String, String> = record
        .labels
        .iter()
        .filter(|(key, _)| matches!(key.as_str(), "arch" | "os"))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if let Some(grant) = grant {
        labels.extend(grant.labels.clone());
        let capacity = &mut record.capacity;
        if let Some(memory) = grant.memory {
            capacity.memory.0 = capacity.memory.0.min(memory);
        }
        if let Some(cpu) = grant.cpu {
            capacity.cpu.0 = capacity.cpu.0.min(cpu);
        }
        if let Some(max) = grant.max_replicas {
            capacity.max_replicas = capacity.max_replicas.min(max);
        }
    }
    record.labels = labels;
    record
}

/// The live hosts that may take replicas (a cordoned or draining one is marked draining, as
/// a host shutting down is) and the hosts an admin is draining (their replicas move). On a
/// secure lattice (`secure`), each host as [`bounded`] by its credential's grant, and one
/// whose credential does not verify marked draining.
pub(super) fn schedulable(
    state: &State,
    live: &HashSet<String>,
    secure: bool,
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
            // The key is the host's (a host writes only its own); the id inside is its word.
            record.id.clone_from(&host.key);
            if secure {
                let grant = state
                    .grants
                    .get(&host.key)
                    .and_then(|checked| checked.grant.as_ref());
                // Without a credential that verifies (never presented, unreadable, removed
                // by the host itself), nothing bounds what it claims: it takes no new
                // replicas, as a host shutting down does, and keeps those it runs.
                if grant.is_none() {
                    record.draining = true;
                }
                record = bounded(record, grant);
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_host_is_believed_only_within_its_grant() {
        let record: HostRecord = serde_json::from_value(serde_json::json!({
            "id": "h1", "version": "0", "startedAt": 0, "heartbeatAt": 0,
            "labels": {"arch": "x86_64", "os": "linux", "zone": "vault", "gpu": "yes"},
            "capacity": {"memory": "64Gi", "cpu": "64", "maxReplicas": 1000}
        }))
        .unwrap();
        // No grant: arch and os only, capacity as reported.
        let plain = bounded(record.clone(), None);
        assert_eq!(
            plain.labels.keys().map(String::as_str).collect::<Vec<_>>(),
            ["arch", "os"]
        );
        assert_eq!(plain.capacity, record.capacity);
        // A grant: its labels (overriding what the host says), capacity within it.
        let grant = shoal_lattice::auth::HostGrant {
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            memory: Some(2 << 30),
            cpu: Some(2000),
            max_replicas: Some(20),
        };
        let held = bounded(record, Some(&grant));
        assert_eq!(held.labels.get("zone").map(String::as_str), Some("a"));
        assert!(!held.labels.contains_key("gpu"));
        assert_eq!(held.labels.get("arch").map(String::as_str), Some("x86_64"));
        assert_eq!(held.capacity.memory.0, 2 << 30);
        assert_eq!(held.capacity.cpu.0, 2000);
        assert_eq!(held.capacity.max_replicas, 20);
    }
}
