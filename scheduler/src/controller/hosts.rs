//! Hosts as the scheduler sees them: which are live (by when their records last changed,
//! on this scheduler's clock), which just joined or were lost.

use shoal_lattice::presence::ConnectionEvent;
use shoal_lattice::records::HostConnection;

use super::plan::{Op, Plan};
use super::*;

/// Local liveness of hosts, on this scheduler's clock: when did each host record last
/// change, and which hosts' own connections nats-server said closed.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    seen: HashMap<String, (u64, Instant)>,
    /// The connection each host's record says it holds.
    reported: HashMap<String, HostConnection>,
    /// Per host, the newest connection nats-server said it opened.
    opened: HashMap<String, HostConnection>,
    /// Per host whose reported connection nats-server said closed, with none opened since:
    /// when.
    closed: HashMap<String, Instant>,
}

impl Liveness {
    pub(super) fn observe(&mut self, hosts: &[Versioned<HostRecord>], now: Instant) {
        let present: HashSet<&str> = hosts.iter().map(|host| host.key.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        self.opened.retain(|id, _| present.contains(id.as_str()));
        self.closed.retain(|id, _| present.contains(id.as_str()));
        self.reported.retain(|id, _| present.contains(id.as_str()));
        for host in hosts {
            match self.seen.get(&host.key) {
                Some((revision, _)) if *revision == host.revision => {}
                // A record that changed: when, and the connection it names now.
                _ => {
                    self.seen.insert(host.key.clone(), (host.revision, now));
                    match &host.value.connection {
                        Some(connection) => {
                            self.reported.insert(host.key.clone(), connection.clone());
                        }
                        None => {
                            self.reported.remove(&host.key);
                        }
                    }
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

    /// A host's connection opened or closed, as nats-server said at `now`. Only a close of
    /// the connection the host's record names counts, and not once a newer one opened (the
    /// host reconnected, and the server noticed the old socket late).
    pub(super) fn connection(&mut self, event: ConnectionEvent, now: Instant) {
        let ConnectionEvent {
            host,
            connection,
            opened,
        } = event;
        if opened {
            self.closed.remove(&host);
            self.opened.insert(host, connection);
        } else if self.reported.get(&host) == Some(&connection)
            && self
                .opened
                .get(&host)
                .is_none_or(|newest| *newest == connection)
        {
            self.closed.insert(host, now);
        }
    }

    /// Whether `host`'s own connection closed and no other opened since.
    pub(super) fn connection_closed(&self, host: &str) -> bool {
        self.closed.contains_key(host)
    }

    /// The hosts heard from within their loss timeout (their own `lostAfter` when their
    /// record names one: a host on a slow link asks for more; else `timeout`), less those
    /// whose connection closed at least `grace` ago and that were not heard from since: a
    /// process that died is lost in about `grace`, a host that reconnects within it is not.
    /// A host that names its own `lostAfter` is on a link that drops connections now and
    /// then: it goes by its heartbeats only.
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
                lost_after.contains_key(*id)
                    || !self.closed.get(*id).is_some_and(|closed| {
                        *at <= *closed && now.duration_since(*closed) >= grace
                    })
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
    let ended = futures_util::stream::once(async {
        tracing::warn!(
            "nats-server's connection advisories stopped: hosts are lost by their heartbeats only"
        );
        None
    });
    Ok(futures_util::stream::select_all(streams)
        .map(move |message| ConnectionEvent::from_advisory(&account, &message.payload))
        .chain(ended)
        .filter_map(std::future::ready)
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
        let (reason, message) = if known.contains(host) && state.liveness.connection_closed(host) {
            (
                "HostLost",
                format!(
                    "host {host}'s connection closed and it did not connect again: its replicas are placed elsewhere"
                ),
            )
        } else if known.contains(host) {
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

    fn record(id: &str, revision: u64, connection: u64) -> Versioned<HostRecord> {
        let value = serde_json::from_value(serde_json::json!({
            "id": id, "version": "0", "startedAt": 0, "heartbeatAt": 0, "labels": {},
            "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 10},
            "connection": {"server": "NABC", "id": connection}
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
            connection: HostConnection {
                server: "NABC".to_owned(),
                id: connection,
            },
            opened,
        }
    }

    #[test]
    fn a_host_s_own_connection_closing_loses_it_after_the_grace_and_nothing_else_does() {
        const TIMEOUT: Duration = Duration::from_secs(60);
        const GRACE: Duration = Duration::from_secs(1);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let slow_link = HashMap::from([("h5".to_owned(), Duration::from_secs(60))]);
        let live = |liveness: &Liveness, ms: u64| {
            let mut live: Vec<String> = liveness
                .live(TIMEOUT, &slow_link, GRACE, at(ms))
                .into_iter()
                .collect();
            live.sort();
            live
        };
        let records = |h4: (u64, u64)| {
            vec![
                record("h1", 1, 1),
                record("h2", 1, 2),
                record("h3", 1, 3),
                record("h4", h4.0, h4.1),
                record("h5", 1, 8),
            ]
        };
        let mut liveness = Liveness::default();
        liveness.observe(&records((1, 5)), at(0));

        // h1's process dies: lost once the grace has passed, not before.
        liveness.connection(event("h1", 1, false), at(100));
        assert_eq!(live(&liveness, 900), ["h1", "h2", "h3", "h4", "h5"]);
        assert_eq!(live(&liveness, 1100), ["h2", "h3", "h4", "h5"]);
        assert!(liveness.connection_closed("h1"));

        // A second process with h2's credential connects and goes away, and h2's JWT is
        // replayed on a connection that fails: neither is h2's own connection.
        liveness.connection(event("h2", 9, true), at(100));
        liveness.connection(event("h2", 9, false), at(150));
        liveness.connection(event("h2", 10, false), at(160));
        // h3 reconnects, and the server notices its old socket only afterwards.
        liveness.connection(event("h3", 4, true), at(200));
        liveness.connection(event("h3", 3, false), at(300));
        // h4's connection closes and it is heard from again within the grace, on a new
        // connection whose advisory this scheduler missed.
        liveness.connection(event("h4", 5, false), at(400));
        liveness.observe(&records((2, 6)), at(600));
        // h5 is on a slow link (its own lostAfter): its connection dropping is not its end.
        liveness.connection(event("h5", 8, false), at(400));
        assert_eq!(live(&liveness, 5000), ["h2", "h3", "h4", "h5"]);

        // h1 comes back on a new connection.
        liveness.connection(event("h1", 7, true), at(6000));
        assert!(live(&liveness, 6000).contains(&"h1".to_owned()));
    }
}
