//! Hosts as the scheduler sees them: which are live (by when their records last changed,
//! on this scheduler's clock), which just joined or were lost.

use shoal_lattice::presence::ConnectionEvent;

use super::plan::{Op, Plan};
use super::*;

/// Local liveness of hosts, on this scheduler's clock: when did each host record last
/// change, and which hosts' connections nats-server said closed.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    seen: HashMap<String, (u64, Instant)>,
    /// Per host, the newest of its connections nats-server said opened.
    connections: HashMap<String, (String, u64)>,
    /// Per host whose connection nats-server said closed, with none opened since: when.
    closed: HashMap<String, Instant>,
}

impl Liveness {
    pub(super) fn observe(&mut self, hosts: &[Versioned<HostRecord>], now: Instant) {
        let present: HashSet<&str> = hosts.iter().map(|host| host.key.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        self.connections
            .retain(|id, _| present.contains(id.as_str()));
        self.closed.retain(|id, _| present.contains(id.as_str()));
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

    /// A host's connection opened or closed, as nats-server said at `now`. A close of a
    /// connection older than one that opened since is not the host going (it reconnected,
    /// and the server noticed the old socket late).
    pub(super) fn connection(&mut self, event: ConnectionEvent, now: Instant) {
        let ConnectionEvent {
            host,
            connection,
            opened,
        } = event;
        if opened {
            self.closed.remove(&host);
            self.connections.insert(host, connection);
        } else if self
            .connections
            .get(&host)
            .is_none_or(|newest| *newest == connection)
        {
            self.connections.remove(&host);
            self.closed.insert(host, now);
        }
    }

    /// The hosts heard from within their loss timeout (their own `lostAfter` when their
    /// record names one: a host on a slow link asks for more; else `timeout`), less those
    /// whose connection closed at least `grace` ago and that were not heard from since: a
    /// process that died is lost in about `grace`, a host that reconnects within it is not.
    pub(super) fn live(
        &self,
        timeout: Duration,
        lost_after: &HashMap<String, Duration>,
        grace: Duration,
        now: Instant,
    ) -> HashSet<String> {
        self.seen
            .iter()
            .filter(|(id, (_, at))| {
                now.duration_since(*at) <= lost_after.get(*id).copied().unwrap_or(timeout)
            })
            .filter(|(id, (_, at))| {
                !self
                    .closed
                    .get(*id)
                    .is_some_and(|closed| *at <= *closed && now.duration_since(*closed) >= grace)
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The hosts' connections opening and closing, as nats-server announces them in its system
/// account to the presence credential's holder.
///
/// # Errors
/// When the advisories cannot be subscribed to.
pub(super) async fn connection_events(
    presence: &Presence,
) -> Result<futures_util::stream::BoxStream<'static, ConnectionEvent>, Error> {
    let mut streams = Vec::new();
    for subject in shoal_lattice::presence::advisory_subjects(&presence.clients_account) {
        let subscription = presence
            .connection
            .client()
            .subscribe(subject.clone())
            .await
            .map_err(|error| Error::Request {
                bucket: subject,
                source: error.into(),
            })?;
        streams.push(subscription);
    }
    let account = presence.clients_account.clone();
    Ok(futures_util::stream::select_all(streams)
        .filter_map(move |message| {
            let event = ConnectionEvent::from_advisory(&account, &message.payload);
            std::future::ready(event)
        })
        .boxed())
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

    fn record(id: &str, revision: u64) -> Versioned<HostRecord> {
        let value = serde_json::from_value(serde_json::json!({
            "id": id, "version": "0", "startedAt": 0, "heartbeatAt": 0, "labels": {},
            "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 10}
        }))
        .unwrap();
        Versioned {
            key: id.to_owned(),
            revision,
            value,
        }
    }

    fn event(host: &str, connection: u64, opened: bool) -> ConnectionEvent {
        ConnectionEvent {
            host: host.to_owned(),
            connection: ("n1".to_owned(), connection),
            opened,
        }
    }

    #[test]
    fn a_closed_connection_loses_its_host_after_the_grace_unless_it_comes_back() {
        const TIMEOUT: Duration = Duration::from_secs(60);
        const GRACE: Duration = Duration::from_secs(1);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let live = |liveness: &Liveness, ms: u64| {
            let mut live: Vec<String> = liveness
                .live(TIMEOUT, &HashMap::new(), GRACE, at(ms))
                .into_iter()
                .collect();
            live.sort();
            live
        };
        let mut liveness = Liveness::default();
        liveness.observe(&[record("h1", 1), record("h2", 1), record("h3", 1)], at(0));
        liveness.connection(event("h1", 1, true), at(0));
        liveness.connection(event("h2", 2, true), at(0));

        // h1's process dies: lost once the grace has passed, not before.
        liveness.connection(event("h1", 1, false), at(100));
        assert_eq!(live(&liveness, 900), ["h1", "h2", "h3"]);
        assert_eq!(live(&liveness, 1100), ["h2", "h3"]);

        // h2 reconnects, and the server notices its old socket only afterwards: its new
        // connection counts, the old one's close does not.
        liveness.connection(event("h2", 3, true), at(200));
        liveness.connection(event("h2", 2, false), at(300));
        assert!(live(&liveness, 5000).contains(&"h2".to_owned()));

        // h3's connection closes (the scheduler never saw it open) and it is heard from
        // again within the grace, on a connection this scheduler missed: not lost.
        liveness.connection(event("h3", 4, false), at(400));
        liveness.observe(
            &[record("h1", 1), record("h2", 1), record("h3", 2)],
            at(600),
        );
        assert!(live(&liveness, 5000).contains(&"h3".to_owned()));

        // h1 comes back: a new connection, then heartbeats.
        liveness.connection(event("h1", 5, true), at(2000));
        assert!(live(&liveness, 2000).contains(&"h1".to_owned()));
    }
}
