//! Names on the wire: lattice and app names, bucket names, KV keys and subjects.
//!
//! Both sides build every name with these functions, so a host, the scheduler and the CLI
//! can never disagree on where a record lives. The protocol version is part of each name:
//! a `v2` protocol gets its own buckets and subjects and can run beside `v1`.

use crate::Error;

/// The protocol version in every bucket and subject name.
pub const PROTOCOL: &str = "v1";

/// Checks a DNS-label-like name (lowercase letters, digits and `-`, 1 to 63 characters,
/// starting and ending with a letter or digit), as Kubernetes does for object names.
/// `what` names the field in the error.
pub fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: what.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// A host id: like a name, but `_` is allowed too (machine ids often carry it), though not
/// first: `_` starts the names Shoal keeps for itself (`_scheduler`, `_lattice`, `_hosts`).
pub fn check_host_id(id: &str) -> Result<(), Error> {
    let valid = !id.is_empty()
        && !id.starts_with('_')
        && id.len() <= 63
        && id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "host id".to_owned(),
            name: id.to_owned(),
        })
    }
}

/// The JetStream KV buckets of one lattice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// App records, key `<namespace>.<name>`.
    Apps,
    /// Immutable revisions of app templates, key `<namespace>.<name>.<revision>`.
    Revisions,
    /// Host records refreshed by heartbeat, key `<host>`.
    Hosts,
    /// Replica assignments, key `<host>.<replica>`.
    Assignments,
    /// Replica status written by hosts (`replicas.<host>.<replica>`), and app status
    /// (`apps.<namespace>.<name>`) and routing (`routes.<namespace>.<name>`) written by the
    /// scheduler.
    Status,
    /// The scheduler's leader lease, key `scheduler`.
    Leases,
    /// Config objects, key `<namespace>.<name>`.
    Configs,
    /// Secrets (values sealed to the lattice's secrets key), key `<namespace>.<name>`.
    Secrets,
    /// Jobs, key `<namespace>.<name>`.
    Jobs,
    /// Cron jobs, key `<namespace>.<name>`.
    CronJobs,
    /// Trust policies: the lattice's (key `lattice`) and each namespace's
    /// (`namespaces.<namespace>`).
    Trust,
}

impl Bucket {
    /// Every bucket, for setup.
    pub const ALL: [Bucket; 11] = [
        Bucket::Apps,
        Bucket::Revisions,
        Bucket::Hosts,
        Bucket::Assignments,
        Bucket::Status,
        Bucket::Leases,
        Bucket::Configs,
        Bucket::Secrets,
        Bucket::Jobs,
        Bucket::CronJobs,
        Bucket::Trust,
    ];

    /// The bucket's short name, the last part of [`Bucket::name`].
    pub fn suffix(self) -> &'static str {
        match self {
            Bucket::Apps => "apps",
            Bucket::Revisions => "revisions",
            Bucket::Hosts => "hosts",
            Bucket::Assignments => "assignments",
            Bucket::Status => "status",
            Bucket::Leases => "leases",
            Bucket::Configs => "configs",
            Bucket::Secrets => "secrets",
            Bucket::Jobs => "jobs",
            Bucket::CronJobs => "cronjobs",
            Bucket::Trust => "trust",
        }
    }

    /// The bucket's name in `lattice`: `shoal-<lattice>-v1-<bucket>`.
    pub fn name(self, lattice: &str) -> String {
        format!("shoal-{lattice}-{PROTOCOL}-{}", self.suffix())
    }

    /// Whether hosts write keys of this bucket (their own records and statuses).
    pub fn written_by_hosts(self) -> bool {
        matches!(self, Bucket::Hosts | Bucket::Status)
    }

    /// How many values per key the bucket keeps.
    pub fn history(self) -> i64 {
        match self {
            Bucket::Apps => 16,
            _ => 1,
        }
    }
}

/// Key of a job's status in the status bucket.
pub fn job_status_key(namespace: &str, name: &str) -> String {
    format!("jobs.{namespace}.{name}")
}

/// Key of a cron job's status in the status bucket.
pub fn cron_job_status_key(namespace: &str, name: &str) -> String {
    format!("cronjobs.{namespace}.{name}")
}

/// Key of an app record.
pub fn app_key(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// Key of one revision of an app's template.
pub fn revision_key(namespace: &str, name: &str, revision: u64) -> String {
    format!("{namespace}.{name}.{revision}")
}

/// Key of an assignment.
pub fn assignment_key(host: &str, replica: &str) -> String {
    format!("{host}.{replica}")
}

/// The key filter of every assignment of `host`.
pub fn host_assignments(host: &str) -> String {
    format!("{host}.>")
}

/// Key of a replica's status.
pub fn replica_status_key(host: &str, replica: &str) -> String {
    format!("replicas.{host}.{replica}")
}

/// Key of an app's status.
pub fn app_status_key(namespace: &str, name: &str) -> String {
    format!("apps.{namespace}.{name}")
}

/// Key of the claim of route host name `host` (lowercase) by one namespace: made by
/// compare-and-set, so two namespaces applying at once cannot both take one name.
pub fn route_host_claim_key(host: &str) -> String {
    format!("routehosts.{host}")
}

/// Key, in the status bucket, of the JWT of host `host`'s credential, which the host writes
/// when it joins ([`crate::records::HostCredential`]).
pub fn host_credential_key(host: &str) -> String {
    format!("credentials.{host}")
}

/// Key of an app's routing record (what hosts read).
pub fn route_key(namespace: &str, name: &str) -> String {
    format!("routes.{namespace}.{name}")
}

/// Key of an admin's decision about a host (cordoned, draining).
pub fn host_control_key(host: &str) -> String {
    format!("hosts.{host}")
}

/// Key, in the status bucket, of the fleet's host upgrade ([`crate::fleet::FleetUpgrade`]).
pub const FLEET_UPGRADE: &str = "fleet.upgrade";

/// Key, in the status bucket, of the upgrade order the leader gives `host`
/// ([`crate::fleet::UpgradeOrder`]): the one key of that bucket besides its own that the
/// host reads.
pub fn upgrade_order_key(host: &str) -> String {
    format!("{UPGRADE_ORDERS}{host}")
}

/// The prefix of every upgrade order's key in the status bucket.
pub const UPGRADE_ORDERS: &str = "upgrades.";

/// The host an upgrade order's key is for.
pub fn upgrade_order_host(key: &str) -> Option<&str> {
    key.strip_prefix(UPGRADE_ORDERS)
}

/// The key of the lattice's identity in the status bucket.
pub const LATTICE_IDENTITY: &str = "lattice";

/// Key, in the status bucket, of the control plane's health as its leader last wrote it
/// ([`crate::records::ControlPlaneStatus`]).
pub const CONTROL_PLANE: &str = "controlplane";

/// Key, in the status bucket, of the lattice's egress policy
/// ([`crate::records::EgressPolicy`]), which only lattice admins change.
pub const EGRESS_POLICY: &str = "egress";

/// Key of the lattice's public secrets key in the status bucket.
pub const SECRETS_KEY: &str = "secrets-key";

/// The key of the scheduler's leader lease.
pub const SCHEDULER_LEASE: &str = "scheduler";

/// The subject of HTTP requests forwarded to `host` for an app: each host listens under its
/// own id only (`…http.<host>.>`), and forwarders pick the host among the app's endpoints.
pub fn http_subject(lattice: &str, host: &str, namespace: &str, app: &str) -> String {
    format!("shoal.{lattice}.{PROTOCOL}.http.{host}.{namespace}.{app}")
}

/// The subject a host publishes on to wake `namespace/app`, scaled to zero, for a request
/// it holds: the host's id is in the subject, so a host can speak only for itself.
pub fn wake_subject(lattice: &str, host: &str, namespace: &str, app: &str) -> String {
    format!("shoal.{lattice}.{PROTOCOL}.wake.{host}.{namespace}.{app}")
}

/// The NATS subject of message subject `subject` of namespace `namespace` (as an app's
/// spec and guests name it: relative to its namespace): `shoal.<lattice>.v1.msg.<namespace>.<subject>`.
pub fn message_subject(lattice: &str, namespace: &str, subject: &str) -> String {
    format!("shoal.{lattice}.{PROTOCOL}.msg.{namespace}.{subject}")
}

/// Every message subject of every namespace of `lattice`.
pub fn all_message_subjects(lattice: &str) -> String {
    format!("shoal.{lattice}.{PROTOCOL}.msg.>")
}

/// The queue group in which the replicas of app `namespace/app` share its triggers'
/// messages (each to one of them); their credential may subscribe in it only.
pub fn trigger_queue(namespace: &str, app: &str) -> String {
    format!("{namespace}.{app}")
}

/// Whether message subject `subject` (literal) matches `pattern` (NATS wildcards: `*` one
/// token, a last `>` one or more).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (token, Some(actual)) if token == actual => {}
            _ => return false,
        }
    }
    subject.next().is_none()
}

/// Whether `subject` is a message subject an app may name (relative to its namespace):
/// 1 to 16 tokens of letters, digits, `-` and `_`, at most 200 bytes; with `wildcards`, a
/// token may be `*` and the last one `>`.
pub fn is_message_subject(subject: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    subject.len() <= 200
        && tokens.len() <= 16
        && tokens.iter().enumerate().all(|(index, token)| {
            (wildcards && (*token == "*" || (*token == ">" && index + 1 == tokens.len())))
                || (!token.is_empty()
                    && token
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'))
        })
}

/// What the scheduler listens to for wakes from every host.
pub fn wake_subjects(lattice: &str) -> String {
    format!("shoal.{lattice}.{PROTOCOL}.wake.>")
}

/// `(host, namespace, app)` of a wake subject, checked as names; `None` for anything else.
pub fn parse_wake_subject<'a>(
    lattice: &str,
    subject: &'a str,
) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = subject.strip_prefix(&format!("shoal.{lattice}.{PROTOCOL}.wake."))?;
    let mut tokens = rest.split('.');
    let (host, namespace, app) = (tokens.next()?, tokens.next()?, tokens.next()?);
    if tokens.next().is_some()
        || check_host_id(host).is_err()
        || check_name("namespace", namespace).is_err()
        || check_name("app", app).is_err()
    {
        return None;
    }
    Some((host, namespace, app))
}

/// A name no one can guess from names seen before (about 130 random bits, base62): the
/// names of consumers, which a client that knows one could inspect or reconfigure, and the
/// lattice's identity. `nuid::next()` shares one sequence per process, so one name seen
/// gives the next ones away.
pub fn unguessable() -> String {
    nuid::NUID::new().next().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_subjects_match_as_nats_matches_them() {
        assert!(subject_matches("alerts.>", "alerts.room1.hot"));
        assert!(!subject_matches("alerts.>", "alerts"));
        assert!(subject_matches("sensors.*.temp", "sensors.room1.temp"));
        assert!(!subject_matches("sensors.*.temp", "sensors.room1.temp.c"));
        assert!(!subject_matches("a.b", "a.b.c") && !subject_matches("a.b.c", "a.b"));
        assert!(is_message_subject("alerts.>", true) && !is_message_subject("alerts.>", false));
        for bad in ["", "a..b", "$KV.x", "a.>.b", "a b", "_INBOX.x.\u{0}"] {
            assert!(!is_message_subject(bad, true), "{bad}");
        }
        assert_eq!(
            message_subject("dev", "team-a", "alerts.hot"),
            "shoal.dev.v1.msg.team-a.alerts.hot"
        );
    }

    #[test]
    fn wake_subjects_parse_only_when_well_formed() {
        let subject = wake_subject("dev", "h1", "default", "hello");
        assert_eq!(
            parse_wake_subject("dev", &subject),
            Some(("h1", "default", "hello"))
        );
        for bad in [
            "shoal.dev.v1.wake.h1.default",
            "shoal.dev.v1.wake.h1.default.hello.more",
            "shoal.dev.v1.wake.h1.Default.hello",
            "shoal.other.v1.wake.h1.default.hello",
            "shoal.dev.v1.wake.h!.default.hello",
        ] {
            assert_eq!(parse_wake_subject("dev", bad), None, "{bad}");
        }
    }

    #[test]
    fn names_follow_dns_label_rules() {
        assert!(check_name("app", "hello-2").is_ok());
        for bad in ["", "Hello", "-a", "a-", "a.b", "a_b", &"a".repeat(64)] {
            assert!(check_name("app", bad).is_err(), "{bad}");
        }
        assert!(check_host_id("edge_01-a").is_ok());
        assert!(check_host_id("edge.01").is_err());
    }

    #[test]
    fn buckets_and_keys_are_versioned_and_distinct() {
        let names: std::collections::BTreeSet<_> = Bucket::ALL
            .iter()
            .map(|bucket| bucket.name("dev"))
            .collect();
        assert_eq!(names.len(), Bucket::ALL.len());
        assert_eq!(Bucket::Apps.name("dev"), "shoal-dev-v1-apps");
        assert_eq!(assignment_key("h1", "hello-1a2b"), "h1.hello-1a2b");
        assert_eq!(
            crate::journal::Journal::Logs.subject("dev", "default.hello"),
            "shoal.dev.v1.logs.default.hello"
        );
        assert_eq!(
            crate::journal::Journal::Events.stream("dev"),
            "shoal-dev-v1-events"
        );
    }
}
