//! Bounds and checks of everything stored in the lattice.
//!
//! The CLI checks a manifest with these rules before it stores anything, and the scheduler
//! and every host check each record again when they read it: a record written by hand, by an
//! older Shoal or by a hostile client is reported and skipped, never acted on and never a
//! panic. Every number has a bound so arithmetic on it cannot overflow anywhere downstream.

use std::fmt;
use std::time::Duration;

use crate::names;
use crate::quantity::Span;
use crate::records::{
    AppRecord, AppSpec, AppStatus, Assignment, HostControl, HostRecord, LatticeIdentity, Lease,
    ReplicaStatus, RevisionRecord, RouteRecord, Trigger,
};

/// Most replicas an app may ask for.
pub const MAX_REPLICAS: u32 = 10_000;
/// Smallest `limits.memory`: one Wasm page.
pub const MIN_MEMORY: u64 = 64 << 10;
/// Largest `limits.memory`: all a 32-bit linear memory can address.
pub const MAX_MEMORY: u64 = 4 << 30;
/// Largest `limits.cpu`, in millicores (1,000 cores).
pub const MAX_CPU_MILLICORES: u32 = 1_000_000;
/// Longest `limits.timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Most in-flight requests per replica.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Largest `limits.maxBody`.
pub const MAX_BODY: u64 = 4 << 30;
/// Most requests one instance may serve at once with `limits.instanceConcurrency`.
pub const MAX_INSTANCE_CONCURRENCY: u32 = 1_000;
/// Most requests one instance may serve with `limits.instanceReuse`.
pub const MAX_INSTANCE_REUSE: u32 = 10_000;
/// Longest `rollout.minReady`.
pub const MAX_MIN_READY: Duration = Duration::from_secs(3600);
/// The largest fuel budget of one request (about an hour of a fast core's work; within
/// JSON's exact integers).
pub const MAX_FUEL: u64 = 1 << 52;
/// Longest liveness probe period or timeout.
pub const MAX_PROBE_SPAN: Duration = Duration::from_secs(3600);
/// Shortest liveness probe period or timeout.
pub const MIN_PROBE_SPAN: Duration = Duration::from_millis(100);
/// Most liveness failures in a row before a restart.
pub const MAX_FAILURE_THRESHOLD: u32 = 100;
/// Longest `rollout.progressDeadline`.
pub const MAX_PROGRESS_DEADLINE: Duration = Duration::from_secs(24 * 3600);
/// Most routes of one app.
pub const MAX_ROUTES: usize = 64;
/// Longest route or health path, and longest component reference.
pub const MAX_PATH: usize = 1024;
/// Longest host name (DNS).
pub const MAX_HOST_NAME: usize = 253;
/// Largest `autoscale.targetConcurrency`.
pub const MAX_TARGET_CONCURRENCY: u32 = 10_000;
/// Longest `autoscale.window` and `autoscale.scaleDownDelay`.
pub const MAX_AUTOSCALE_SPAN: Duration = Duration::from_secs(3600);
/// Most apps a host reports load for.
pub const MAX_LOAD_ENTRIES: usize = 4096;
/// Most key-value stores of one app.
pub const MAX_KV_STORES: usize = 16;
/// The most message subjects an app may be granted to publish to.
pub const MAX_PUBLISH: usize = 32;
/// The most triggers an app may have.
pub const MAX_TRIGGERS: usize = 16;

/// The most deliveries a JetStream trigger may ask for one message.
pub const MAX_DELIVER: u32 = 100;

/// The most pauses a JetStream trigger's backoff lists.
pub const MAX_BACKOFF: usize = 16;
/// Smallest `maxBytes` of a key-value store.
pub const MIN_KV_BYTES: u64 = 64 << 10;
/// Largest `maxBytes` of a key-value store.
pub const MAX_KV_BYTES: u64 = 64 << 30;
/// Longest key a guest may use in a key-value store.
pub const MAX_KV_KEY: usize = 256;
/// Largest value a guest may store.
pub const MAX_KV_VALUE: usize = 1 << 20;
/// Most config entries of one app.
pub const MAX_CONFIG_ENTRIES: usize = 256;
/// Most bytes of config (names and values) of one app.
pub const MAX_CONFIG_BYTES: usize = 256 << 10;
/// Most entries in `allowedOutbound`, `secrets` or `placement.requires`.
pub const MAX_LIST: usize = 64;
/// Longest label key or value, allowlist entry or secret name.
pub const MAX_SHORT_TEXT: usize = 253;
/// Most revisions kept per app (`revisionHistoryLimit`).
pub const MAX_REVISION_HISTORY: u32 = 100;
/// Revisions kept per app when the app says nothing.
pub const DEFAULT_REVISION_HISTORY: u32 = 10;
/// Largest generation or revision number accepted from a record: far beyond any real count,
/// and far enough below `u64::MAX` that adding to it never overflows.
pub const MAX_SEQUENCE: u64 = 1 << 53;
/// Most component digests a host record lists as cached.
pub const MAX_CACHED: usize = 256;
/// The most CPU-feature settings a host's compile target lists (Cranelift knows about 30).
pub const MAX_ISA_FLAGS: usize = 64;
/// Hex digits in a compile target's key (128 bits of its engine's compatibility hash).
pub const COMPILE_KEY_LEN: usize = 32;
/// Most labels of a host.
pub const MAX_LABELS: usize = 64;
/// Longest message in a replica status.
pub const MAX_MESSAGE: usize = 4096;

/// Longest an app keeps replicas on a silent host.
pub const MAX_DISCONNECTED: Duration = Duration::from_secs(7 * 24 * 3600);

/// Longest a host may ask to go without a heartbeat before it is counted lost.
pub const MAX_LOST_AFTER: Duration = Duration::from_secs(24 * 3600);

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path, like `spec.limits.timeout`.
    pub path: String,
    /// What is wrong, and what would be right.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Why a record was refused: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, problem) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// A record that can check itself against the lattice's bounds.
pub trait Validate {
    /// Every problem of the record.
    ///
    /// # Errors
    /// [`Invalid`] with each problem's field path and reason.
    fn validate(&self) -> Result<(), Invalid>;
}

/// Collects problems under a path prefix.
#[derive(Default)]
pub(crate) struct Problems(pub(crate) Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn name(&mut self, path: &str, what: &str, name: &str) {
        if let Err(error) = names::check_name(what, name) {
            self.add(path, error.to_string());
        }
    }

    /// A message subject an app names (`spec.publish`, a trigger's), wildcards allowed.
    pub(crate) fn message_subject(&mut self, path: String, subject: &str) {
        if !names::is_message_subject(subject, true) {
            self.add(
                path,
                "must be a message subject: 1 to 16 dot-separated tokens of letters, digits, - and _ (a token may be *, the last >), at most 200 bytes",
            );
        }
    }

    /// One of an app's triggers: a core NATS one names a subject and nothing of
    /// JetStream's; a JetStream one a stream (one token) and, if any, a subject within it.
    pub(crate) fn trigger(&mut self, path: &str, trigger: &Trigger) {
        let Some(stream) = &trigger.stream else {
            match &trigger.subject {
                Some(subject) => self.message_subject(format!("{path}.subject"), subject),
                None => self.add(
                    path,
                    "must name a subject (core NATS) or a stream (JetStream)",
                ),
            }
            let jetstream_only = [
                ("consumer", trigger.consumer.is_some()),
                ("ackWait", trigger.ack_wait.is_some()),
                ("maxDeliver", trigger.max_deliver.is_some()),
                ("backoff", !trigger.backoff.is_empty()),
                ("deadLetter", trigger.dead_letter.is_some()),
                ("maxBytes", trigger.max_bytes.is_some()),
            ];
            for (field, given) in jetstream_only {
                if given {
                    self.add(
                        format!("{path}.{field}"),
                        "is for JetStream triggers only: name a stream too",
                    );
                }
            }
            return;
        };
        if !names::is_message_subject(stream, false) || stream.contains('.') || stream.len() > 64 {
            self.add(
                format!("{path}.stream"),
                "must be a stream name: one token of 1 to 64 letters, digits, - and _",
            );
        } else if let Some(subject) = &trigger.subject {
            self.message_subject(format!("{path}.subject"), subject);
            if subject != stream && !subject.starts_with(&format!("{stream}.")) {
                self.add(
                    format!("{path}.subject"),
                    format!("must be within the stream's subjects ({stream} or {stream}.…)"),
                );
            }
        }
        if let Some(consumer) = &trigger.consumer
            && (names::check_name("consumer name", consumer).is_err() || consumer.len() > 32)
        {
            self.add(
                format!("{path}.consumer"),
                "must be 1 to 32 lowercase letters, digits and - (starting and ending with a letter or digit)",
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(12 * 3600)).contains(&trigger.ack_wait())
        {
            self.add(format!("{path}.ackWait"), "must be between 1s and 12h");
        }
        if !(1..=MAX_DELIVER).contains(&trigger.max_deliver()) {
            self.add(
                format!("{path}.maxDeliver"),
                format!("must be between 1 and {MAX_DELIVER}"),
            );
        }
        if trigger.backoff.len() > MAX_BACKOFF {
            self.add(
                format!("{path}.backoff"),
                format!("must have at most {MAX_BACKOFF} pauses"),
            );
        }
        if trigger
            .backoff
            .iter()
            .any(|pause| pause.0 > Duration::from_secs(3600))
        {
            self.add(format!("{path}.backoff"), "pauses must be at most 1h");
        }
        if let Some(dead_letter) = &trigger.dead_letter {
            if !names::is_message_subject(dead_letter, false) {
                self.add(
                    format!("{path}.deadLetter"),
                    "must be a message subject without wildcards: 1 to 16 dot-separated tokens of letters, digits, - and _",
                );
            } else if dead_letter == stream || trigger.subject.as_ref() == Some(dead_letter) {
                // The trigger skips its own dead letters: every message it takes would be.
                self.add(
                    format!("{path}.deadLetter"),
                    "must not be the subject the trigger takes: its messages would all be skipped as dead letters (use a subject of its own, say <stream>.dead)",
                );
            }
        }
        if !(MIN_KV_BYTES..=MAX_KV_BYTES).contains(&trigger.max_bytes()) {
            self.add(format!("{path}.maxBytes"), "must be between 64Ki and 64Gi");
        }
    }

    pub(crate) fn replica(&mut self, path: &str, id: &str) {
        let valid = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !valid {
            self.add(path, "must be 1 to 128 letters, digits, '-' or '_'");
        }
    }

    pub(crate) fn host_id(&mut self, path: &str, id: &str) {
        if let Err(error) = names::check_host_id(id) {
            self.add(path, error.to_string());
        }
    }

    pub(crate) fn sequence(&mut self, path: &str, value: u64) {
        if value == 0 || value > MAX_SEQUENCE {
            self.add(path, format!("must be between 1 and {MAX_SEQUENCE}"));
        }
    }

    pub(crate) fn digest(&mut self, path: &str, digest: &str) {
        if !is_digest(digest) {
            self.add(path, "must be sha256: and 64 lowercase hex digits");
        }
    }

    pub(crate) fn span(&mut self, path: &str, span: Option<Span>, max: Duration) {
        if let Some(span) = span
            && span.0 > max
        {
            self.add(
                path,
                format!("must be at most {}", humantime::format_duration(max)),
            );
        }
    }

    pub(crate) fn trusted_keys(&mut self, path: &str, keys: &[crate::trust::TrustedKey]) {
        for (index, key) in keys.iter().enumerate() {
            if !key.is_consistent() {
                self.add(
                    format!("{path}[{index}]"),
                    "is not a P-256 public key with its own id",
                );
            }
        }
    }

    pub(crate) fn text(&mut self, path: &str, text: &str, max: usize) -> bool {
        if text.len() > max {
            self.add(path, format!("must be at most {max} bytes long"));
            return false;
        }
        true
    }

    /// Address ranges (CIDRs) of an egress policy.
    pub(crate) fn ranges(&mut self, path: &str, ranges: &[String]) {
        if ranges.len() > crate::records::EgressPolicy::MAX_RANGES {
            self.add(
                path,
                format!(
                    "must list at most {} ranges",
                    crate::records::EgressPolicy::MAX_RANGES
                ),
            );
        }
        for (index, range) in ranges.iter().enumerate() {
            if range.parse::<ipnet::IpNet>().is_err() {
                self.add(
                    format!("{path}[{index}]"),
                    format!("{range:?} is not an address range like 10.1.0.0/16 or fd00::/8"),
                );
            }
        }
    }

    pub(crate) fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

impl AppSpec {
    /// Every problem of this spec, with field paths under `prefix` (`spec` in a manifest).
    pub fn problems(&self, prefix: &str) -> Vec<Problem> {
        let mut found = Problems::default();
        found.spec(prefix, self);
        found.0
    }
}

impl Problems {
    pub(crate) fn spec(&mut self, prefix: &str, spec: &AppSpec) {
        let at = |field: &str| format!("{prefix}.{field}");
        if spec.component.trim().is_empty() || spec.component.contains(char::is_whitespace) {
            self.add(
                at("component"),
                "must be an OCI reference like registry.example/team/hello:1.0",
            );
        }
        self.text(&at("component"), &spec.component, MAX_PATH);
        if spec.replicas > MAX_REPLICAS {
            self.add(at("replicas"), format!("must be at most {MAX_REPLICAS}"));
        }
        if spec.placement.requires.len() > MAX_LIST {
            self.add(
                at("placement.requires"),
                format!("must have at most {MAX_LIST} labels"),
            );
        }
        for (key, value) in &spec.placement.requires {
            let path = at(&format!("placement.requires.{key}"));
            if key.is_empty() || value.is_empty() {
                self.add(&path, "labels and their values must not be empty");
            }
            if self.text(&path, key, MAX_SHORT_TEXT) {
                self.text(&path, value, MAX_SHORT_TEXT);
            }
        }
        if let Some(label) = &spec.placement.spread_by {
            if label.is_empty() {
                self.add(at("placement.spreadBy"), "must name a host label");
            }
            self.text(&at("placement.spreadBy"), label, MAX_SHORT_TEXT);
        }
        self.limits(prefix, spec);
        if spec.routes.len() > MAX_ROUTES {
            self.add(
                at("routes"),
                format!("must have at most {MAX_ROUTES} routes"),
            );
        }
        for (index, route) in spec.routes.iter().enumerate() {
            let path = at(&format!("routes[{index}].path"));
            if !route.path.starts_with('/') {
                self.add(&path, "must start with /");
            }
            self.text(&path, &route.path, MAX_PATH);
            if let Some(host) = &route.host {
                let path = at(&format!("routes[{index}].host"));
                if host.is_empty() || host.contains("://") || host.contains('/') {
                    self.add(
                        &path,
                        "must be a host name like hello.local, without scheme or path",
                    );
                }
                self.text(&path, host, MAX_HOST_NAME);
            }
        }
        self.config(prefix, spec);
        if spec.secrets.len() > MAX_LIST {
            self.add(
                at("secrets"),
                format!("must name at most {MAX_LIST} secrets"),
            );
        }
        for (index, secret) in spec.secrets.iter().enumerate() {
            self.name(&at(&format!("secrets[{index}]")), "secret name", secret);
        }
        if spec.allowed_outbound.len() > MAX_LIST {
            self.add(
                at("allowedOutbound"),
                format!("must have at most {MAX_LIST} entries"),
            );
        }
        for (index, url) in spec.allowed_outbound.iter().enumerate() {
            let path = at(&format!("allowedOutbound[{index}]"));
            if let Err(reason) = check_origin(url) {
                self.add(&path, reason);
            }
        }
        if let Some(health) = &spec.health {
            if !health.path.starts_with('/') {
                self.add(at("health.path"), "must start with /");
            }
            self.text(&at("health.path"), &health.path, MAX_PATH);
            if let Some(liveness) = &health.liveness {
                if !liveness.path.starts_with('/') {
                    self.add(at("health.liveness.path"), "must start with /");
                }
                self.text(&at("health.liveness.path"), &liveness.path, MAX_PATH);
                for (field, span) in [("period", liveness.period), ("timeout", liveness.timeout)] {
                    let path = at(&format!("health.liveness.{field}"));
                    self.span(&path, span, MAX_PROBE_SPAN);
                    if span.is_some_and(|span| span.0 < MIN_PROBE_SPAN) {
                        self.add(&path, "must be at least 100ms");
                    }
                }
                if liveness
                    .failure_threshold
                    .is_some_and(|threshold| !(1..=MAX_FAILURE_THRESHOLD).contains(&threshold))
                {
                    self.add(
                        at("health.liveness.failureThreshold"),
                        format!("must be 1 to {MAX_FAILURE_THRESHOLD}"),
                    );
                }
            }
        }
        if let Some(rollout) = &spec.rollout {
            for (field, value) in [
                ("maxSurge", &rollout.max_surge),
                ("maxUnavailable", &rollout.max_unavailable),
            ] {
                if let Some(value) = value
                    && !is_count_or_percent(value)
                {
                    self.add(
                        at(&format!("rollout.{field}")),
                        format!(
                            "must be a count from 0 to {MAX_REPLICAS} or a percentage like \"25%\""
                        ),
                    );
                }
            }
            self.span(&at("rollout.minReady"), rollout.min_ready, MAX_MIN_READY);
            self.span(
                &at("rollout.progressDeadline"),
                rollout.progress_deadline,
                MAX_PROGRESS_DEADLINE,
            );
            if rollout
                .progress_deadline
                .is_some_and(|deadline| deadline.0 < Duration::from_secs(1))
            {
                self.add(at("rollout.progressDeadline"), "must be at least 1s");
            }
        }
        if let Some(disconnect) = &spec.disconnect {
            self.span(
                &at("disconnect.lostAfter"),
                disconnect.lost_after,
                MAX_DISCONNECTED,
            );
        }
        if let Some(autoscale) = &spec.autoscale {
            if autoscale.max() > MAX_REPLICAS || autoscale.max() < autoscale.min().max(1) {
                self.add(
                    at("autoscale.max"),
                    format!(
                        "must be between {} and {MAX_REPLICAS}",
                        autoscale.min().max(1)
                    ),
                );
            }
            if !(1..=MAX_TARGET_CONCURRENCY).contains(&autoscale.target()) {
                self.add(
                    at("autoscale.targetConcurrency"),
                    format!("must be between 1 and {MAX_TARGET_CONCURRENCY}"),
                );
            }
            if let Some(pending) = autoscale.target_pending {
                if !(1..=1_000_000).contains(&pending) {
                    self.add(
                        at("autoscale.targetPending"),
                        "must be between 1 and 1000000",
                    );
                }
                if !spec.triggers.iter().any(|trigger| trigger.stream.is_some()) {
                    self.add(
                        at("autoscale.targetPending"),
                        "needs a JetStream trigger (spec.triggers[].stream): only a stream keeps a backlog",
                    );
                }
            }
            if autoscale.window() < Duration::from_secs(6) {
                self.add(at("autoscale.window"), "must be at least 6s");
            }
            self.span(
                &at("autoscale.window"),
                autoscale.window,
                MAX_AUTOSCALE_SPAN,
            );
            self.span(
                &at("autoscale.scaleDownDelay"),
                autoscale.scale_down_delay,
                MAX_AUTOSCALE_SPAN,
            );
        }
        if let Some(limit) = spec.revision_history_limit
            && !(1..=MAX_REVISION_HISTORY).contains(&limit)
        {
            self.add(
                at("revisionHistoryLimit"),
                format!("must be between 1 and {MAX_REVISION_HISTORY}"),
            );
        }
        if spec.expose.namespaces.len() > MAX_LIST {
            self.add(
                at("expose.namespaces"),
                format!("must list at most {MAX_LIST} namespaces"),
            );
        } else {
            for (index, namespace) in spec.expose.namespaces.iter().enumerate() {
                self.name(
                    &at(&format!("expose.namespaces[{index}]")),
                    "namespace",
                    namespace,
                );
            }
        }
    }

    fn limits(&mut self, prefix: &str, spec: &AppSpec) {
        let at = |field: &str| format!("{prefix}.limits.{field}");
        let limits = &spec.limits;
        if let Some(memory) = limits.memory
            && !(MIN_MEMORY..=MAX_MEMORY).contains(&memory.0)
        {
            self.add(at("memory"), "must be between 64Ki and 4Gi");
        }
        if let Some(cpu) = limits.cpu
            && cpu.0 > MAX_CPU_MILLICORES
        {
            self.add(
                at("cpu"),
                format!("must be at most {}m (1000 cores)", MAX_CPU_MILLICORES),
            );
        }
        if let Some(timeout) = limits.timeout {
            if timeout.0.is_zero() {
                self.add(at("timeout"), "must be longer than zero");
            }
            self.span(&at("timeout"), Some(timeout), MAX_TIMEOUT);
        }
        if let Some(concurrency) = limits.concurrency
            && !(1..=MAX_CONCURRENCY).contains(&concurrency)
        {
            self.add(
                at("concurrency"),
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            );
        }
        if let Some(max_body) = limits.max_body
            && max_body.0 > MAX_BODY
        {
            self.add(at("maxBody"), "must be at most 4Gi");
        }
        if let Some(fuel) = limits.fuel
            && !(1..=MAX_FUEL).contains(&fuel)
        {
            self.add(at("fuel"), format!("must be between 1 and {MAX_FUEL}"));
        }
        if let Some(reuse) = limits.instance_reuse
            && !(1..=MAX_INSTANCE_REUSE).contains(&reuse)
        {
            self.add(
                at("instanceReuse"),
                format!("must be between 1 and {MAX_INSTANCE_REUSE}"),
            );
        }
        if let Some(concurrency) = limits.instance_concurrency {
            if !(1..=MAX_INSTANCE_CONCURRENCY).contains(&concurrency) {
                self.add(
                    at("instanceConcurrency"),
                    format!("must be between 1 and {MAX_INSTANCE_CONCURRENCY}"),
                );
            } else if concurrency > 1 && limits.fuel.is_some() {
                self.add(
                    at("instanceConcurrency"),
                    "cannot be given with fuel: a fuel budget counts one request's instructions, and requests sharing an instance share its fuel".to_owned(),
                );
            }
        }
    }

    /// Config objects pinned in a record: as many as `configFrom` may name, each as a
    /// config object may be.
    fn pinned(&mut self, path: &str, pinned: &crate::records::PinnedConfigs) {
        if pinned.len() > MAX_LIST {
            self.add(path, format!("must hold at most {MAX_LIST} config objects"));
            return;
        }
        for (name, object) in pinned {
            let at = format!("{path}.{name}");
            self.name(&at, "config object name", name);
            self.sequence(&format!("{at}.version"), object.version);
            for problem in config_data_problems(&object.data) {
                self.add(at.clone(), problem);
            }
        }
    }

    fn config(&mut self, prefix: &str, spec: &AppSpec) {
        // `config` is also the environment of an app without `env`: its keys stay names
        // an environment can hold.
        for (field, values) in [("config", &spec.config), ("env", &spec.env)] {
            let path = format!("{prefix}.{field}");
            for problem in size_problems(values) {
                self.add(path.clone(), problem);
            }
            for key in values.keys() {
                if !is_env_name(key) {
                    self.add(
                        format!("{path}.{key}"),
                        "must be an environment variable name (letters, digits, _)",
                    );
                }
            }
        }
        if spec.key_value.len() > MAX_KV_STORES {
            self.add(
                format!("{prefix}.keyValue"),
                format!("must grant at most {MAX_KV_STORES} stores"),
            );
        }
        for (index, store) in spec.key_value.iter().enumerate() {
            let path = format!("{prefix}.keyValue[{index}]");
            self.name(&format!("{path}.name"), "store name", &store.name);
            if spec.key_value[..index]
                .iter()
                .any(|other| other.name == store.name)
            {
                self.add(
                    format!("{path}.name"),
                    format!("names {:?} twice", store.name),
                );
            }
            if !(MIN_KV_BYTES..=MAX_KV_BYTES).contains(&store.max_bytes()) {
                self.add(
                    format!("{path}.maxBytes"),
                    "must be between 64Ki and 64Gi".to_owned(),
                );
            }
        }
        if spec.publish.len() > MAX_PUBLISH {
            self.add(
                format!("{prefix}.publish"),
                format!("must grant at most {MAX_PUBLISH} subjects"),
            );
        }
        for (index, subject) in spec.publish.iter().enumerate() {
            self.message_subject(format!("{prefix}.publish[{index}]"), subject);
        }
        if spec.triggers.len() > MAX_TRIGGERS {
            self.add(
                format!("{prefix}.triggers"),
                format!("must have at most {MAX_TRIGGERS} triggers"),
            );
        }
        for (index, trigger) in spec.triggers.iter().enumerate() {
            self.trigger(&format!("{prefix}.triggers[{index}]"), trigger);
            if trigger.stream.is_some()
                && spec.triggers[..index].iter().any(|other| {
                    other.stream == trigger.stream && other.consumer() == trigger.consumer()
                })
            {
                self.add(
                    format!("{prefix}.triggers[{index}].consumer"),
                    "names a stream and consumer another trigger of the app has: give each its own consumer",
                );
            }
        }
        if spec.config_from.len() > MAX_LIST {
            self.add(
                format!("{prefix}.configFrom"),
                format!("must name at most {MAX_LIST} config objects"),
            );
        }
        for (index, name) in spec.config_from.iter().enumerate() {
            let path = format!("{prefix}.configFrom[{index}]");
            self.name(&path, "config object name", name);
            if spec.config_from[..index].contains(name) {
                self.add(path, format!("names {name:?} twice"));
            }
        }
    }
}

/// Whether `key` can be an environment variable's name.
fn is_env_name(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_SHORT_TEXT
        && key.bytes().enumerate().all(|(at, byte)| {
            byte == b'_' || byte.is_ascii_alphabetic() || (at > 0 && byte.is_ascii_digit())
        })
}

/// What is wrong with the size of a set of values (entries, bytes).
fn size_problems(values: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    if values.len() > MAX_CONFIG_ENTRIES {
        problems.push(format!("must have at most {MAX_CONFIG_ENTRIES} entries"));
    }
    let bytes: usize = values
        .iter()
        .map(|(key, value)| key.len().saturating_add(value.len()))
        .fold(0, usize::saturating_add);
    if bytes > MAX_CONFIG_BYTES {
        problems.push(format!(
            "must be at most {} KiB in all",
            MAX_CONFIG_BYTES >> 10
        ));
    }
    problems
}

/// What is wrong with a config object's values: as many and as large as an app's inline
/// `config`, keys of letters, digits, `_`, `-` and `.` (what `wasi:config` keys are in
/// practice; they are not environment variables).
pub fn config_data_problems(data: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    let mut problems = size_problems(data);
    if data.is_empty() {
        problems.push("must have at least one key (--from-literal KEY=VALUE)".to_owned());
    }
    for key in data.keys() {
        let valid = key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'));
        if key.is_empty() || !valid || key.len() > MAX_SHORT_TEXT {
            problems.push(format!(
                "key {key:?} must be letters, digits, _, - and . (at most {MAX_SHORT_TEXT})"
            ));
        }
    }
    problems
}

/// Checks an `allowedOutbound` entry: `http://` or `https://`, a host (`*.` allowed as its
/// first label), an optional port, nothing after but an optional `/`.
pub fn check_origin(entry: &str) -> Result<(), String> {
    let usage = || format!("{entry:?} must be scheme://host[:port], like https://api.example.com");
    if entry.len() > MAX_SHORT_TEXT {
        return Err(format!("must be at most {MAX_SHORT_TEXT} bytes long"));
    }
    let rest = entry
        .strip_prefix("http://")
        .or_else(|| entry.strip_prefix("https://"))
        .ok_or_else(|| format!("{entry:?} must start with http:// or https://"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let (address, after) = bracketed.split_once(']').ok_or_else(usage)?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(usage());
            }
            match after {
                "" => ("v6", None),
                after => ("v6", Some(after.strip_prefix(':').ok_or_else(usage)?)),
            }
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if let Some(port) = port
        && port.parse::<u16>().ok().is_none_or(|port| port == 0)
    {
        return Err(format!("{entry:?} has a port that is not 1 to 65535"));
    }
    let host = host.strip_prefix("*.").unwrap_or(host);
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.');
    if valid { Ok(()) } else { Err(usage()) }
}

fn is_count_or_percent(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(number) => number
            .as_u64()
            .is_some_and(|count| count <= u64::from(MAX_REPLICAS)),
        serde_json::Value::String(text) => text
            .strip_suffix('%')
            .and_then(|percent| percent.parse::<u32>().ok())
            .is_some_and(|percent| percent <= 100),
        _ => false,
    }
}

impl Validate for AppRecord {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("name", "name", &self.name);
        found.name("namespace", "namespace", &self.namespace);
        found.sequence("generation", self.generation);
        found.sequence("revision", self.revision);
        found.digest("digest", &self.digest);
        found.pinned("configObjects", &self.config_objects);
        found.spec("spec", &self.spec);
        found.finish()
    }
}

impl Validate for RevisionRecord {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("name", "name", &self.name);
        found.name("namespace", "namespace", &self.namespace);
        found.sequence("revision", self.revision);
        found.digest("digest", &self.digest);
        found.pinned("configObjects", &self.config_objects);
        found.spec("template", &self.template);
        found.finish()
    }
}

impl Validate for Assignment {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.replica("replica", &self.replica);
        found.name("app", "app name", &self.app);
        found.name("namespace", "namespace", &self.namespace);
        found.host_id("host", &self.host);
        found.sequence("revision", self.revision);
        found.sequence("generation", self.generation);
        found.digest("digest", &self.digest);
        found.pinned("configObjects", &self.config_objects);
        found.spec("template", &self.template);
        found.trusted_keys("trustedKeys", &self.trusted_keys);
        found.ranges("privateEgress", &self.private_egress);
        found.finish()
    }
}

impl Validate for crate::trust::TrustPolicy {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        if self.keys.len() > crate::trust::MAX_KEYS {
            found.add(
                "keys",
                format!("must hold at most {} keys", crate::trust::MAX_KEYS),
            );
        }
        found.trusted_keys("keys", &self.keys);
        found.finish()
    }
}

impl Problems {
    /// A pinned host binary: a reference with its digest, its binary's digest, short texts.
    fn binary_target(&mut self, path: &str, target: &crate::fleet::BinaryTarget) {
        self.text(&format!("{path}.arch"), &target.arch, MAX_SHORT_TEXT);
        if !target
            .arch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            self.add(
                format!("{path}.arch"),
                "must be an architecture (x86_64, aarch64)",
            );
        }
        self.text(&format!("{path}.version"), &target.version, MAX_SHORT_TEXT);
        self.text(&format!("{path}.reference"), &target.reference, MAX_PATH);
        if !target
            .reference
            .rsplit_once('@')
            .is_some_and(|(_, digest)| is_digest(digest))
        {
            self.add(
                format!("{path}.reference"),
                "must be pinned: repository@sha256:…",
            );
        }
        self.digest(&format!("{path}.binary"), &target.binary);
    }
}

impl Validate for crate::fleet::FleetUpgrade {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.text("id", &self.id, MAX_SHORT_TEXT);
        found.text("reference", &self.reference, MAX_PATH);
        found.text("by", &self.by, MAX_SHORT_TEXT);
        if self.targets.is_empty() || self.targets.len() > crate::fleet::MAX_TARGETS {
            found.add(
                "targets",
                format!(
                    "must name between 1 and {} architectures",
                    crate::fleet::MAX_TARGETS
                ),
            );
        }
        for (index, target) in self.targets.iter().enumerate() {
            found.binary_target(&format!("targets[{index}]"), target);
            if self.targets[..index]
                .iter()
                .any(|other| other.arch == target.arch)
            {
                found.add(
                    format!("targets[{index}].arch"),
                    "names an architecture twice",
                );
            }
        }
        if self.selector.len() > MAX_LABELS {
            found.add("selector", format!("must have at most {MAX_LABELS} labels"));
        }
        for (key, value) in &self.selector {
            found.text(&format!("selector.{key}"), key, MAX_SHORT_TEXT);
            found.text(&format!("selector.{key}"), value, MAX_SHORT_TEXT);
        }
        found.span("timeout", Some(self.timeout), MAX_TIMEOUT);
        if self.timeout.0 < crate::fleet::MIN_UPGRADE_TIMEOUT {
            found.add(
                "timeout",
                format!(
                    "must be at least {}s",
                    crate::fleet::MIN_UPGRADE_TIMEOUT.as_secs()
                ),
            );
        }
        if self.hosts.len() > crate::fleet::MAX_UPGRADE_HOSTS {
            found.add(
                "hosts",
                format!("must list at most {}", crate::fleet::MAX_UPGRADE_HOSTS),
            );
        }
        for (host, progress) in &self.hosts {
            found.host_id("hosts", host);
            if let Some(message) = &progress.message {
                found.text(
                    &format!("hosts.{host}.message"),
                    message,
                    crate::fleet::MAX_PROGRESS_MESSAGE,
                );
            }
        }
        found.finish()
    }
}

impl Validate for crate::fleet::UpgradeOrder {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.text("upgrade", &self.upgrade, MAX_SHORT_TEXT);
        found.binary_target("target", &self.target);
        if self.trusted.is_empty() || self.trusted.len() > crate::trust::MAX_KEYS {
            found.add(
                "trusted",
                format!("must hold between 1 and {} keys", crate::trust::MAX_KEYS),
            );
        }
        found.trusted_keys("trusted", &self.trusted);
        found.span("timeout", Some(self.timeout), MAX_TIMEOUT);
        found.finish()
    }
}

impl Validate for crate::records::ConfigObject {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("name", "config object name", &self.name);
        found.name("namespace", "namespace", &self.namespace);
        found.sequence("version", self.version);
        for problem in config_data_problems(&self.data) {
            found.add("data", problem);
        }
        found.finish()
    }
}

impl Validate for crate::records::SecretObject {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("name", "secret name", &self.name);
        found.name("namespace", "namespace", &self.namespace);
        found.sequence("version", self.version);
        let keys: std::collections::BTreeMap<String, String> = self
            .keys
            .iter()
            .map(|key| (key.clone(), String::new()))
            .collect();
        for problem in config_data_problems(&keys) {
            found.add("keys", problem);
        }
        if self.sealed.sealed.len() > 2 * MAX_CONFIG_BYTES {
            found.add("sealed", "is larger than any secret's values");
        }
        found.finish()
    }
}

impl Validate for HostRecord {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.host_id("id", &self.id);
        if self.labels.len() > MAX_LABELS {
            found.add("labels", format!("must have at most {MAX_LABELS} labels"));
        }
        for (key, value) in &self.labels {
            if found.text(&format!("labels.{key}"), key, MAX_SHORT_TEXT) {
                found.text(&format!("labels.{key}"), value, MAX_SHORT_TEXT);
            }
        }
        if self.load.len() > MAX_LOAD_ENTRIES {
            found.add("load", format!("must list at most {MAX_LOAD_ENTRIES} apps"));
        }
        if self.capacity.cpu.0 > MAX_CPU_MILLICORES.saturating_mul(1000) {
            found.add("capacity.cpu", "is beyond any machine");
        }
        if self.capacity.memory.0 > 1 << 50 {
            found.add("capacity.memory", "is beyond any machine");
        }
        if self.cached.len() > MAX_CACHED {
            found.add("cached", format!("must list at most {MAX_CACHED} digests"));
        }
        found.span("lostAfter", self.lost_after, MAX_LOST_AFTER);
        if let Some(connection) = &self.connection {
            found.text("connection.server", &connection.server, MAX_SHORT_TEXT);
        }
        if let Some(mismatch) = &self.lattice_mismatch {
            found.text("latticeMismatch", mismatch, MAX_MESSAGE);
        }
        if let Some(target) = &self.compile_target {
            found.text("compileTarget.triple", &target.triple, MAX_SHORT_TEXT);
            if target.isa_flags.len() > MAX_ISA_FLAGS {
                found.add(
                    "compileTarget.isaFlags",
                    format!("must list at most {MAX_ISA_FLAGS} settings"),
                );
            }
            for flag in &target.isa_flags {
                if flag.is_empty()
                    || flag.len() > MAX_SHORT_TEXT
                    || !flag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    found.add(
                        "compileTarget.isaFlags",
                        "must be Cranelift CPU features (letters, digits and _)",
                    );
                    break;
                }
            }
            if target.key.len() != COMPILE_KEY_LEN
                || !target
                    .key
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                found.add(
                    "compileTarget.key",
                    format!("must be {COMPILE_KEY_LEN} lowercase hex digits"),
                );
            }
        }
        if let Some(binary) = &self.binary {
            found.digest("binary", binary);
        }
        if let Some(upgrade) = &self.upgrade {
            found.text("upgrade.upgrade", &upgrade.upgrade, MAX_SHORT_TEXT);
            found.digest("upgrade.binary", &upgrade.binary);
            if let Some(message) = &upgrade.message {
                found.text("upgrade.message", message, MAX_MESSAGE);
            }
        }
        // What secrets and store credentials are sealed to: a key that is none would make
        // every placement on this host fail.
        if let Some(key) = &self.secrets_key
            && nkeys::XKey::from_public_key(key).is_err()
        {
            found.add("secretsKey", "must be an xkey public key (X…)");
        }
        found.finish()
    }
}

impl Validate for LatticeIdentity {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.text("id", &self.id, MAX_SHORT_TEXT);
        found.finish()
    }
}

impl Validate for ReplicaStatus {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.replica("replica", &self.replica);
        found.host_id("host", &self.host);
        if let Some(message) = &self.message {
            found.text("message", message, MAX_MESSAGE);
        }
        if let Some(reason) = &self.reason {
            found.text("reason", reason, MAX_SHORT_TEXT);
        }
        found.finish()
    }
}

/// `text` cut to at most `max` bytes on a character boundary, ending with `…` when cut:
/// for what a record keeps of a message that came from elsewhere.
pub fn truncate(text: &str, max: usize) -> String {
    const CUT: char = '…';
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(CUT.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &text[..end])
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits.
pub fn is_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

impl Validate for AppStatus {
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

impl Validate for HostControl {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.text("by", &self.by, MAX_SHORT_TEXT);
        found.finish()
    }
}

impl Validate for RouteRecord {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("namespace", "namespace", &self.namespace);
        found.name("app", "app name", &self.app);
        // The routing part of a spec, checked as a spec's is.
        let spec = AppSpec {
            component: "routing/only:1".to_owned(),
            replicas: 1,
            placement: Default::default(),
            limits: crate::records::AppLimits {
                timeout: self.timeout,
                ..Default::default()
            },
            routes: self.routes.clone(),
            config: Default::default(),
            secrets: Vec::new(),
            key_value: Vec::new(),
            publish: Vec::new(),
            triggers: Vec::new(),
            config_from: Vec::new(),
            env: Default::default(),
            allowed_outbound: Vec::new(),
            health: None,
            rollout: None,
            revision_history_limit: None,
            expose: self.expose.clone(),
            disconnect: None,
            autoscale: None,
        };
        found.spec("record", &spec);
        if self.endpoints.len() > MAX_REPLICAS as usize {
            found.add(
                "endpoints",
                format!("must list at most {MAX_REPLICAS} hosts"),
            );
        } else {
            for (index, host) in self.endpoints.iter().enumerate() {
                found.host_id(&format!("endpoints[{index}]"), host);
            }
        }
        found.finish()
    }
}

impl Validate for crate::records::RouteHostClaim {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("namespace", "namespace", &self.namespace);
        found.name("app", "app name", &self.app);
        found.finish()
    }
}

impl Validate for crate::records::ControlPlaneStatus {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.text("leader", &self.leader, 256);
        if self.unreadable.len() > Self::MAX_UNREADABLE {
            found.add(
                "unreadable",
                format!("must list at most {} records", Self::MAX_UNREADABLE),
            );
        }
        for (index, entry) in self.unreadable.iter().enumerate() {
            found.text(&format!("unreadable[{index}]"), entry, 2048);
        }
        found.finish()
    }
}

impl Validate for crate::records::EgressPolicy {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.ranges("private", &self.private);
        found.finish()
    }
}

impl Validate for crate::records::HostCredential {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.text("jwt", &self.jwt, 64 * 1024);
        found.finish()
    }
}

impl Validate for Lease {
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }
}

#[cfg(test)]
mod truncate_tests {
    use super::truncate;

    #[test]
    fn truncated_text_fits_its_limit_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate("ééééé", 6);
        assert!(cut.len() <= 6, "{cut}");
        assert_eq!(cut, "é…");
        assert!(truncate(&"x".repeat(600), 512).len() <= 512);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_concurrency_is_bounded_and_not_given_with_fuel() {
        let problems = |limits: &str| {
            let spec: AppSpec = serde_json::from_str(&format!(
                r#"{{"component":"localhost:5000/hello:1.0","limits":{limits}}}"#
            ))
            .unwrap();
            spec.problems("spec")
                .iter()
                .map(|problem| format!("{}: {}", problem.path, problem.reason))
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert_eq!(problems(r#"{"instanceConcurrency":16}"#), "");
        assert!(
            problems(r#"{"instanceConcurrency":0}"#)
                .contains("instanceConcurrency: must be between 1 and 1000")
        );
        let both = problems(r#"{"instanceConcurrency":16,"fuel":1000}"#);
        assert!(
            both.contains("instanceConcurrency: cannot be given with fuel"),
            "{both}"
        );
        assert_eq!(problems(r#"{"instanceConcurrency":1,"fuel":1000}"#), "");
    }

    #[test]
    fn message_subjects_an_app_names_are_checked_where_they_are_named() {
        let problems = |grants: &str| {
            let spec: AppSpec = serde_json::from_str(&format!(
                r#"{{"component":"localhost:5000/hello:1.0",{grants}}}"#
            ))
            .unwrap();
            spec.problems("spec")
                .iter()
                .map(|problem| problem.path.clone())
                .collect::<Vec<_>>()
        };
        assert!(
            problems(r#""publish":["alerts.>"],"triggers":[{"subject":"sensors.*"}]"#).is_empty()
        );
        assert_eq!(
            problems(r#""publish":["ok", "a..b"],"triggers":[{"subject":"$KV.x"}]"#),
            ["spec.publish[1]", "spec.triggers[0].subject"]
        );
        let many: Vec<String> = (0..=MAX_TRIGGERS)
            .map(|index| format!(r#"{{"subject":"s{index}"}}"#))
            .collect();
        assert_eq!(
            problems(&format!(r#""triggers":[{}]"#, many.join(","))),
            ["spec.triggers"]
        );
        // A trigger of a kind this version does not know is refused.
        assert!(
            serde_json::from_str::<AppSpec>(r#"{"component":"c","triggers":[{"queue":"orders"}]}"#)
                .is_err()
        );
        // JetStream triggers: a stream (one token), a subject within it, sane limits, one
        // consumer per trigger; JetStream's fields only with a stream.
        assert!(
            problems(
                r#""triggers":[{"stream":"orders","consumer":"billing","ackWait":"30s","maxDeliver":5,"backoff":["1s","5s"],"deadLetter":"orders.dead"},{"stream":"orders","subject":"orders.eu.*","consumer":"eu"}]"#
            )
            .is_empty()
        );
        assert_eq!(
            problems(
                r#""triggers":[{"stream":"a.b"},{"stream":"orders","subject":"other.x"},{"subject":"s","maxDeliver":2},{},{"stream":"o","maxDeliver":0,"ackWait":"0s","deadLetter":"d.*","consumer":"Bad_"},{"stream":"o","consumer":"Bad_"},{"stream":"o","consumer":"d","deadLetter":"o"}]"#
            ),
            [
                "spec.triggers[0].stream",
                "spec.triggers[1].subject",
                "spec.triggers[2].maxDeliver",
                "spec.triggers[3]",
                "spec.triggers[4].consumer",
                "spec.triggers[4].ackWait",
                "spec.triggers[4].maxDeliver",
                "spec.triggers[4].deadLetter",
                "spec.triggers[5].consumer",
                "spec.triggers[5].consumer",
                "spec.triggers[6].deadLetter",
            ]
        );
    }

    #[test]
    fn a_host_s_secrets_key_must_be_an_xkey() {
        let record = |key: &str| -> HostRecord {
            serde_json::from_value(serde_json::json!({
                "id": "h1", "version": "0", "startedAt": 0, "heartbeatAt": 0,
                "labels": {}, "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 1},
                "secretsKey": key
            }))
            .unwrap()
        };
        let key = crate::secrets::new_key().public_key();
        assert!(record(&key).validate().is_ok());
        for bogus in ["XBOGUS", "", "not a key"] {
            assert!(record(bogus).validate().is_err(), "{bogus:?}");
        }
    }

    #[test]
    fn a_host_s_compile_target_is_bounded_and_its_key_is_hex() {
        let record = |target: serde_json::Value| -> HostRecord {
            serde_json::from_value(serde_json::json!({
                "id": "h1", "version": "0", "startedAt": 0, "heartbeatAt": 0,
                "labels": {}, "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 1},
                "compileTarget": target
            }))
            .unwrap()
        };
        let key = "0123456789abcdef0123456789abcdef";
        let good = serde_json::json!({"triple": "aarch64-unknown-linux-gnu",
            "isaFlags": ["has_lse", "sign_return_address"], "key": key});
        assert!(record(good).validate().is_ok());
        let too_many: Vec<String> = (0..=MAX_ISA_FLAGS).map(|n| format!("f{n}")).collect();
        for bad in [
            serde_json::json!({"triple": "x", "key": "ABCDEF0123456789abcdef0123456789"}),
            serde_json::json!({"triple": "x", "key": "00"}),
            serde_json::json!({"triple": "x", "key": key, "isaFlags": ["a b"]}),
            serde_json::json!({"triple": "x", "key": key, "isaFlags": ["opt_level=none"]}),
            serde_json::json!({"triple": "x", "key": key, "isaFlags": [""]}),
            serde_json::json!({"triple": "x", "key": key, "isaFlags": too_many}),
            serde_json::json!({"triple": "x".repeat(300), "key": key}),
        ] {
            assert!(record(bad.clone()).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_need_a_scheme_a_host_and_a_real_port() {
        for good in [
            "https://api.example.com",
            "http://*.internal:8080",
            "http://127.0.0.1:9000/",
            "http://[::1]:80",
        ] {
            assert!(check_origin(good).is_ok(), "{good}");
        }
        for bad in [
            "api.example.com",
            "ftp://x",
            "http://",
            "http://a:0",
            "http://a:70000",
            "http://a/path",
            "http://a b",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}

/// Fuzzing: random and mutated records and quantities go through decoding and validation;
/// nothing panics, and whatever validates stays within the bounds downstream code relies on.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::quantity::{Memory, Millicores};

    /// Any JSON value, a few levels deep, with the strings and numbers records use.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<u64>().prop_map(|number| serde_json::json!(number)),
            any::<i64>().prop_map(|number| serde_json::json!(number)),
            any::<f64>().prop_map(|number| serde_json::json!(number)),
            "[a-z0-9:./%-]{0,12}".prop_map(serde_json::Value::String),
            "[0-9]{1,25}(s|ms|m|h|Mi|Gi|Ti|m|%)".prop_map(serde_json::Value::String),
            any::<String>().prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("component".to_owned()),
                        Just("replicas".to_owned()),
                        Just("limits".to_owned()),
                        Just("timeout".to_owned()),
                        Just("memory".to_owned()),
                        Just("cpu".to_owned()),
                        Just("concurrency".to_owned()),
                        Just("instanceReuse".to_owned()),
                        Just("maxBody".to_owned()),
                        Just("routes".to_owned()),
                        Just("rollout".to_owned()),
                        Just("maxSurge".to_owned()),
                        Just("progressDeadline".to_owned()),
                        "[a-zA-Z]{1,8}",
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A valid app record as JSON, to mutate.
    const APP: &str = r#"{"name":"hello","namespace":"default","generation":3,"revision":2,
        "digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "spec":{"component":"localhost:5000/hello:1.0","replicas":3,
        "limits":{"memory":"64Mi","cpu":"250m","timeout":"5s","concurrency":100,
        "instanceReuse":128},
        "routes":[{"host":"hello.local","path":"/"}],"config":{"GREETING":"hi"},
        "allowedOutbound":["https://api.example.com"],"health":{"path":"/healthz"},
        "rollout":{"maxSurge":1,"maxUnavailable":"25%","progressDeadline":"60s"}},
        "createdAt":0,"updatedAt":0}"#;

    fn check_bounds(spec: &AppSpec) {
        assert!(spec.replicas <= MAX_REPLICAS);
        if let Some(timeout) = spec.limits.timeout {
            assert!(timeout.0 <= MAX_TIMEOUT);
            // What hosts do with it must not overflow.
            let _ = timeout.0 + std::time::Duration::from_secs(5);
        }
        if let Some(memory) = spec.limits.memory {
            assert!(memory.0 <= MAX_MEMORY);
        }
        if let Some(max_body) = spec.limits.max_body {
            assert!(max_body.0 <= MAX_BODY);
        }
        if let Some(reuse) = spec.limits.instance_reuse {
            assert!((1..=MAX_INSTANCE_REUSE).contains(&reuse));
        }
        if let Some(concurrency) = spec.limits.instance_concurrency {
            assert!((1..=MAX_INSTANCE_CONCURRENCY).contains(&concurrency));
            assert!(concurrency == 1 || spec.limits.fuel.is_none());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_records_never_panic(value in json()) {
            let bytes = serde_json::to_vec(&value).unwrap();
            if let Ok(record) = serde_json::from_slice::<AppRecord>(&bytes)
                && record.validate().is_ok()
            {
                check_bounds(&record.spec);
            }
            if let Ok(spec) = serde_json::from_slice::<AppSpec>(&bytes)
                && spec.problems("spec").is_empty()
            {
                check_bounds(&spec);
            }
            if let Ok(assignment) = serde_json::from_slice::<Assignment>(&bytes) {
                let _ = assignment.validate();
            }
            if let Ok(host) = serde_json::from_slice::<HostRecord>(&bytes) {
                let _ = host.validate();
            }
            if let Ok(status) = serde_json::from_slice::<ReplicaStatus>(&bytes) {
                let _ = status.validate();
            }
        }

        #[test]
        fn mutated_records_never_panic(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..8)
        ) {
            let mut bytes = APP.as_bytes().to_vec();
            for (at, byte, kind) in edits {
                let at = at.index(bytes.len());
                match kind {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => { bytes.remove(at); }
                }
                if bytes.is_empty() { break; }
            }
            if let Ok(record) = serde_json::from_slice::<AppRecord>(&bytes)
                && record.validate().is_ok()
            {
                check_bounds(&record.spec);
            }
        }

        #[test]
        fn quantities_parse_any_text_without_panicking(text in any::<String>(), digits in "[0-9]{1,40}") {
            let _ = text.parse::<Memory>();
            let _ = text.parse::<Millicores>();
            let _ = text.parse::<Span>();
            for unit in ["", "s", "ms", "h", "m", "Mi", "Gi", "Ti", "Ei"] {
                let text = format!("{digits}{unit}");
                let _ = text.parse::<Memory>();
                let _ = text.parse::<Millicores>();
                let _ = text.parse::<Span>();
            }
        }
    }

    #[test]
    fn the_valid_example_is_valid() {
        let record: AppRecord = serde_json::from_str(APP).unwrap();
        record.validate().unwrap();
    }

    #[test]
    fn config_from_env_and_config_objects_are_checked() {
        let mut spec: AppSpec = serde_json::from_str(
            r#"{"component":"registry.local/hello:1","routes":[{"path":"/"}]}"#,
        )
        .unwrap();
        spec.config_from = vec!["settings".into(), "settings".into(), "Not A Name".into()];
        spec.env = std::collections::BTreeMap::from([("1BAD".into(), "v".into())]);
        let problems: Vec<String> = spec
            .problems("spec")
            .iter()
            .map(ToString::to_string)
            .collect();
        let has = |path: &str, text: &str| {
            problems
                .iter()
                .any(|problem| problem.contains(path) && problem.contains(text))
        };
        assert!(has("spec.configFrom[1]", "twice"), "{problems:?}");
        assert!(has("spec.configFrom[2]", ""), "{problems:?}");
        assert!(has("spec.env.1BAD", "environment variable"), "{problems:?}");
        let data = |pairs: &[(&str, &str)]| -> std::collections::BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(config_data_problems(&data(&[("log.level", "debug"), ("db-url", "x")])).is_empty());
        assert!(!config_data_problems(&data(&[("has space", "x")])).is_empty());
        assert!(!config_data_problems(&data(&[])).is_empty());
        let huge = "x".repeat(MAX_CONFIG_BYTES + 1);
        assert!(!config_data_problems(&data(&[("big", &huge)])).is_empty());
    }
}
