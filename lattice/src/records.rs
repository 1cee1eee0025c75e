//! The records stored in the lattice's KV buckets, serialized as JSON.
//!
//! Desired state (apps, revisions, assignments) is written by the CLI and the scheduler;
//! observed state (hosts, replica status) by hosts; app status by the scheduler. Every
//! record that can change carries a generation, and status carries the generation it
//! observed, as Kubernetes objects do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::quantity::{Memory, Millicores, Span};

/// The `apiVersion` of App manifests.
pub const API_VERSION: &str = "shoal.dev/v1";

/// The namespace of apps that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Milliseconds since the Unix epoch, for timestamps in records.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Declares a workload's spec: the fields of [`Workload`] (what runs and how it is
/// confined), written once here, then the spec's own. Apps and jobs share them, so a new
/// confinement (a limit, a grant) is added in one place and means the same in both; the
/// fields are declared, not `#[serde(flatten)]`ed, because flattening hides a misspelt
/// field of a manifest from the strict reading that refuses it.
macro_rules! workload_spec {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident: $type:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            /// OCI reference of the component, by tag or digest.
            pub component: String,
            /// Where it may run.
            #[serde(default, skip_serializing_if = "crate::records::Placement::is_empty")]
            pub placement: crate::records::Placement,
            /// Limits of each replica or run.
            #[serde(default, skip_serializing_if = "crate::records::AppLimits::is_empty")]
            pub limits: crate::records::AppLimits,
            /// Configuration values the component reads through `wasi:config/store`. Without
            /// `env`, also its environment, as before Shoal had `wasi:config`.
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub config: BTreeMap<String, String>,
            /// Environment variables given to the component (nothing is inherited from the
            /// host).
            #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
            pub env: BTreeMap<String, String>,
            /// Outbound HTTP the component may make (scheme, host, optional port; `*.`
            /// wildcards).
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub allowed_outbound: Vec<String>,
            $( $(#[$field_meta])* pub $field: $type, )*
        }

        impl $name {
            /// What it runs and how it is confined.
            pub fn workload(&self) -> crate::records::Workload {
                crate::records::Workload {
                    component: self.component.clone(),
                    placement: self.placement.clone(),
                    limits: self.limits.clone(),
                    config: self.config.clone(),
                    env: self.env.clone(),
                    allowed_outbound: self.allowed_outbound.clone(),
                }
            }

            /// Runs `workload`: its fields replace this spec's.
            pub fn set_workload(&mut self, workload: crate::records::Workload) {
                let crate::records::Workload {
                    component,
                    placement,
                    limits,
                    config,
                    env,
                    allowed_outbound,
                } = workload;
                self.component = component;
                self.placement = placement;
                self.limits = limits;
                self.config = config;
                self.env = env;
                self.allowed_outbound = allowed_outbound;
            }
        }
    };
}
pub(crate) use workload_spec;

workload_spec! {
    /// What a workload runs and how it is confined, apps and jobs alike: the component,
    /// where it may run, its limits, configuration, environment and outbound calls.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Workload {}
}

workload_spec! {
    /// An app's spec as written in its manifest (`spec:`), and as stored.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct AppSpec {
        /// Desired replica count.
        #[serde(default = "one")]
        pub replicas: u32,
        /// HTTP routes to this app.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub routes: Vec<Route>,
        /// Config objects (`shoal config create`) of the app's namespace whose values the
        /// component reads through `wasi:config/store`, later ones over earlier ones (and
        /// `config` over them). A change to one rolls the app out as a new revision.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub config_from: Vec<String>,
        /// Secrets (`shoal secret create`) of the app's namespace whose values the component
        /// reads through `wasi:config/store`, each key under its own name. Only hosts that
        /// run a replica of the app receive them, sealed to their own key. A change to one
        /// rolls the app out as a new revision.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub secrets: Vec<String>,
        /// Key-value stores the component may open through `wasi:keyvalue` (by name; each
        /// is this app's own JetStream KV bucket).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub key_value: Vec<KeyValueStore>,
        /// Message subjects the component may publish to through `wasi:messaging`
        /// (relative to the app's namespace; NATS wildcards allowed); any other is
        /// `permission-denied`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub publish: Vec<String>,
        /// Messages that trigger the component's `wasi:messaging` handler.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub triggers: Vec<Trigger>,
        /// Readiness probe.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub health: Option<Health>,
        /// Rolling update strategy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub rollout: Option<Rollout>,
        /// How many revisions of the app are kept for `rollout history` and `undo` (default
        /// 10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub revision_history_limit: Option<u32>,
        /// Which other namespaces' apps may call this one by name
        /// (`http://<app>.<namespace>`); by default only apps of its own namespace may.
        #[serde(default, skip_serializing_if = "Expose::is_empty")]
        pub expose: Expose,
        /// What happens to replicas on a host that stops sending heartbeats (a device
        /// behind a link that drops); without it they are replaced as soon as the host is
        /// lost.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub disconnect: Option<Disconnect>,
        /// Replicas follow the load: `replicas` is where they start.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub autoscale: Option<Autoscale>,
    }
}

impl AppSpec {
    /// A spec that runs `workload` and nothing more: no replicas, routes or grants of its
    /// own (a job's run is placed and confined as such a replica).
    pub fn of_workload(workload: Workload) -> Self {
        let mut spec = Self {
            component: String::new(),
            placement: Placement::default(),
            limits: AppLimits::default(),
            config: BTreeMap::new(),
            env: BTreeMap::new(),
            allowed_outbound: Vec::new(),
            replicas: 0,
            routes: Vec::new(),
            config_from: Vec::new(),
            secrets: Vec::new(),
            key_value: Vec::new(),
            publish: Vec::new(),
            triggers: Vec::new(),
            health: None,
            rollout: None,
            revision_history_limit: None,
            expose: Expose::default(),
            disconnect: None,
            autoscale: None,
        };
        spec.set_workload(workload);
        spec
    }
}

/// An app's autoscaling, after Knative's KPA: enough replicas that each has about
/// `targetConcurrency` requests in flight, averaged over `window` (and over a tenth of it,
/// at least 4 s, when the load doubles: the panic window, which only scales up).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscale {
    /// Fewest replicas (default 1). With 0 the app goes to no replicas after
    /// `scaleDownDelay` without requests, and the first request wakes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Most replicas (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Requests in flight per replica to aim for (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_concurrency: Option<u32>,
    /// Messages waiting in its JetStream triggers' consumers (not yet delivered, or not yet
    /// acknowledged) per replica to aim for, as KEDA's NATS JetStream scaler does: with it
    /// the backlog counts as load too, and with `min: 0` a message wakes the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pending: Option<u32>,
    /// The stable window the load is averaged over (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Span>,
    /// How long the load must have called for fewer replicas before they go (default 60s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<Span>,
}

impl Autoscale {
    /// Fewest replicas.
    pub fn min(&self) -> u32 {
        self.min.unwrap_or(1)
    }

    /// Most replicas.
    pub fn max(&self) -> u32 {
        self.max.unwrap_or(10)
    }

    /// Requests in flight per replica to aim for.
    pub fn target(&self) -> u32 {
        self.target_concurrency.unwrap_or(10)
    }

    /// The stable window.
    pub fn window(&self) -> std::time::Duration {
        self.window
            .map_or(std::time::Duration::from_secs(60), |span| span.0)
    }

    /// The panic window: a tenth of the stable window, at least 4 s (two heartbeats).
    pub fn panic_window(&self) -> std::time::Duration {
        (self.window() / 10).max(std::time::Duration::from_secs(4))
    }

    /// How long a lower count must hold before replicas go.
    pub fn scale_down_delay(&self) -> std::time::Duration {
        self.scale_down_delay
            .map_or(std::time::Duration::from_secs(60), |span| span.0)
    }
}

/// Messages that trigger an app's component (`spec.triggers`). Subjects and streams are
/// relative to the app's namespace.
///
/// - Core NATS (`subject` alone; wildcards allowed): each message is handled by one replica
///   (a queue group across them), at most once.
/// - JetStream (`stream`): the namespace's stream of that name keeps every message on
///   `<stream>` and `<stream>.…`, and the app's durable consumer (`consumer`, shared by its
///   replicas; `subject` narrows it) hands each to one replica, at least once: a message is
///   acknowledged when the handler succeeds; a failure, trap or timeout is delivered again
///   after `backoff`, a lost host's after `ackWait`, up to `maxDeliver` deliveries, then it
///   goes to `deadLetter` (when named) with the cause in its headers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Trigger {
    /// The message subject (core NATS), or the subjects of the stream a JetStream
    /// trigger takes (within `<stream>.…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The stream of a JetStream trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The durable consumer's name; default `default`. Each of the app's JetStream
    /// triggers has its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// How long a delivered message may go unacknowledged (while its handler runs, the host
    /// tells JetStream it is in progress) before it is delivered again; default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<Span>,
    /// Most deliveries of one message; default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
    /// The pause before each delivery again after a failure (the last repeats); default
    /// `[1s, 5s, 30s]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<Span>,
    /// Where a message goes after its last failed delivery (a message subject of the
    /// namespace); without it, it is dropped (logged and counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// The most bytes the stream keeps (the oldest messages go first); default 64Mi. The
    /// namespace's triggers naming one stream share it: the last apply sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Memory>,
}

impl Trigger {
    /// The default of `ackWait`.
    pub const ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    /// The default of `maxDeliver`.
    pub const MAX_DELIVER: u32 = 5;
    /// The default of `maxBytes`.
    pub const MAX_BYTES: u64 = 64 << 20;
    /// The default consumer name.
    pub const CONSUMER: &str = "default";

    /// A core NATS trigger on `subject`.
    pub fn core(subject: &str) -> Self {
        Self {
            subject: Some(subject.to_owned()),
            ..Self::default()
        }
    }

    /// The subject of a core NATS trigger; `None` for a JetStream one.
    pub fn core_subject(&self) -> Option<&str> {
        match (&self.subject, &self.stream) {
            (Some(subject), None) => Some(subject),
            _ => None,
        }
    }

    /// The consumer's name, as the manifest gives it or the default.
    pub fn consumer(&self) -> &str {
        self.consumer.as_deref().unwrap_or(Self::CONSUMER)
    }

    /// How long a delivery may go unacknowledged.
    pub fn ack_wait(&self) -> std::time::Duration {
        self.ack_wait.map_or(Self::ACK_WAIT, |span| span.0)
    }

    /// Most deliveries of one message.
    pub fn max_deliver(&self) -> u32 {
        self.max_deliver.unwrap_or(Self::MAX_DELIVER)
    }

    /// The pause before delivery number `delivered + 1` after delivery number `delivered`
    /// (from 1) failed.
    pub fn backoff(&self, delivered: u64) -> std::time::Duration {
        const DEFAULT: [std::time::Duration; 3] = [
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(30),
        ];
        let index = usize::try_from(delivered.saturating_sub(1)).unwrap_or(usize::MAX);
        if self.backoff.is_empty() {
            DEFAULT[index.min(DEFAULT.len() - 1)]
        } else {
            self.backoff[index.min(self.backoff.len() - 1)].0
        }
    }

    /// The most bytes the stream keeps.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.map_or(Self::MAX_BYTES, |bytes| bytes.0)
    }
}

/// A key-value store an app may open (`spec.keyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyValueStore {
    /// The name the component opens it by (`default` is what most components open).
    pub name: String,
    /// Most bytes the store holds (keys, values and JetStream's overhead); a write past it
    /// fails in the guest. Default 64Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<Memory>,
}

impl KeyValueStore {
    /// Bytes the store may hold.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.map_or(64 << 20, |bytes| bytes.0)
    }
}

/// An app's policy for replicas on a silent host, after Nomad's `disconnect` block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disconnect {
    /// How long replicas on a silent host are kept (still counted, or replaced but not
    /// removed, by `replace`) before they are lost: removed and placed elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<Span>,
    /// Place replacements elsewhere while the host is silent (the silent host's replicas
    /// are kept too); without it, they are kept and counted, and nothing is placed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace: bool,
    /// Which replicas stay when the host returns and there are too many.
    #[serde(default)]
    pub reconcile: ReconcileDisconnected,
}

/// Which replicas stay when a silent host returns and its app has too many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReconcileDisconnected {
    /// The returning host's replicas stay; replacements go.
    #[default]
    KeepOriginal,
    /// Replacements stay; the returning host's replicas go.
    KeepReplacement,
}

/// Who may reach an app through service discovery, beyond its own namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expose {
    /// These namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Every namespace of the lattice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lattice: bool,
}

impl Expose {
    /// Nothing beyond the app's own namespace.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && !self.lattice
    }

    /// Whether an app in `caller` may reach an app in `namespace` exposed like this.
    pub fn allows(&self, namespace: &str, caller: &str) -> bool {
        caller == namespace || self.lattice || self.namespaces.iter().any(|ns| ns == caller)
    }
}

fn one() -> u32 {
    1
}

impl AppSpec {
    /// The component's environment: `env`, or, for an app that sets none, `config` (what it
    /// was before `wasi:config`, so older manifests keep working).
    pub fn environment(&self) -> &BTreeMap<String, String> {
        if self.env.is_empty() {
            &self.config
        } else {
            &self.env
        }
    }

    /// What the component reads through `wasi:config/store`: the values of the config
    /// objects of `configFrom` as `pinned` holds them, in order, then `config` over them.
    pub fn config_values(&self, pinned: &PinnedConfigs) -> BTreeMap<String, String> {
        let mut values = BTreeMap::new();
        for name in &self.config_from {
            if let Some(object) = pinned.get(name) {
                values.extend(object.data.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        values.extend(self.config.iter().map(|(k, v)| (k.clone(), v.clone())));
        values
    }

    /// What a replica runs and how: two specs with the same template run the same code the
    /// same way, so a change outside it (replicas, history, expose, disconnect, autoscale)
    /// makes no new revision. Every field is named here, in or out, so a new field cannot
    /// join the template (or stay out of it) without a decision.
    pub fn template(&self) -> AppSpec {
        let AppSpec {
            component,
            replicas: _,
            placement,
            limits,
            routes,
            config,
            config_from,
            env,
            secrets,
            key_value,
            publish,
            triggers,
            allowed_outbound,
            health,
            rollout,
            revision_history_limit: _,
            expose: _,
            disconnect: _,
            autoscale: _,
        } = self.clone();
        AppSpec {
            component,
            placement,
            limits,
            routes,
            config,
            config_from,
            env,
            secrets,
            key_value,
            publish,
            triggers,
            allowed_outbound,
            health,
            rollout,
            replicas: 0,
            revision_history_limit: None,
            expose: Expose::default(),
            disconnect: None,
            autoscale: None,
        }
    }

    /// Whether its replicas reach anything beyond their host's own credential (key-value
    /// stores, message subjects to publish to or be triggered by): on a secure lattice each then carries a
    /// credential of its own (`auth::store_credential`).
    pub fn needs_app_credential(&self) -> bool {
        !self.key_value.is_empty() || !self.publish.is_empty() || !self.triggers.is_empty()
    }

    /// How many revisions of the app are kept.
    pub fn revisions_kept(&self) -> u32 {
        self.revision_history_limit
            .unwrap_or(crate::validate::DEFAULT_REVISION_HISTORY)
            .clamp(1, crate::validate::MAX_REVISION_HISTORY)
    }

    /// Memory one replica reserves on its host: its memory limit, or 64Mi without one.
    pub fn memory_request(&self) -> Memory {
        self.limits.memory.unwrap_or(Memory(64 << 20))
    }

    /// CPU one replica reserves on its host: its CPU limit, or nothing without one.
    pub fn cpu_request(&self) -> Millicores {
        self.limits.cpu.unwrap_or_default()
    }
}

/// Placement constraints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Labels a host must have, with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, String>,
    /// Spread replicas across the values of this host label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_by: Option<String>,
}

impl Placement {
    /// Whether it constrains nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.requires.is_empty() && self.spread_by.is_none()
    }
}

/// Per-replica limits; unset ones take the host's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppLimits {
    /// Linear memory cap per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// CPU quota of the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Millicores>,
    /// Wall clock per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// In-flight requests per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests one instance may serve, one after another, before it is dropped (opt-in;
    /// none or 1: a fresh instance per request). State a request leaves in the instance is
    /// seen by the next requests of the same app, never by another app's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    /// Requests one instance of a WASI 0.3 component serves at once (none or 1: one at a
    /// time). Those requests share the instance's memory, its memory cap and its fate: one
    /// that traps or runs past its timeout ends the others in it. Not with `fuel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_concurrency: Option<u32>,
    /// Largest request body a replica accepts (default 10Mi); past it, 413.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Memory>,
    /// Instructions one request may run (wasmtime fuel: the same work on a slow device and
    /// a fast one); past it the request fails with 508. None: no fuel budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

impl AppLimits {
    /// Whether every limit is the default.
    pub(crate) fn is_empty(&self) -> bool {
        *self == AppLimits::default()
    }
}

/// An HTTP route: requests whose Host header and path match reach the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Host header to match; any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path prefix to match.
    #[serde(default = "root")]
    pub path: String,
}

fn root() -> String {
    "/".to_owned()
}

/// Readiness probe: the host GETs `path` through the replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Path that answers 2xx when the replica is ready.
    pub path: String,
    /// A replica that keeps failing this probe is restarted in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Liveness>,
}

/// Liveness probe: the host GETs `path` through a serving replica every `period`; after
/// `failureThreshold` failures in a row (not 2xx, or no answer within `timeout`) the
/// replica is restarted in place: a fresh instance set under the same replica id, after a
/// backoff (1 s, doubling to 60 s). Readiness still decides whether it gets traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    /// Path that answers 2xx while the replica is alive.
    pub path: String,
    /// How often it is asked (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<Span>,
    /// Failures in a row that restart the replica (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// How long one probe may take (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
}

impl Liveness {
    /// How often the path is asked.
    pub fn period(&self) -> std::time::Duration {
        self.period
            .map_or(std::time::Duration::from_secs(10), |period| period.0)
    }

    /// Failures in a row that restart the replica.
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1)
    }

    /// How long one probe may take.
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(std::time::Duration::from_secs(1), |timeout| timeout.0)
    }
}

/// Rolling update strategy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Replicas above `replicas` during a rollout: a count or a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<serde_json::Value>,
    /// Replicas below `replicas` during a rollout: a count or a percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<serde_json::Value>,
    /// How long a new replica must stay ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ready: Option<Span>,
    /// How long a rollout may take before it is failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Span>,
    /// Roll back to the previous revision when the rollout fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
}

/// An app as stored in the `apps` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppRecord {
    /// App name, unique in its namespace.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Bumped on every change of the spec, `replicas` included.
    pub generation: u64,
    /// Bumped when the template changes (everything but `replicas`).
    pub revision: u64,
    /// The component's digest, resolved from `spec.component` at apply time.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
    /// The values of `spec.configFrom`'s config objects, taken at apply time and again when
    /// one of them changes (each time a new revision).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_objects: PinnedConfigs,
    /// The version of each secret of `spec.secrets` when the revision was made (the values
    /// stay sealed in the secrets bucket; a new version makes a new revision).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
    /// The spec.
    pub spec: AppSpec,
    /// When the app was first applied (ms since the epoch).
    pub created_at: u64,
    /// When the spec last changed.
    pub updated_at: u64,
    /// A rollout in progress is held where it is (`shoal rollout pause`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

/// A named set of configuration values of a namespace (`shoal config create`), in the
/// `configs` bucket, key `<namespace>.<name>`. Apps list it in `spec.configFrom`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigObject {
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Bumped on every change of `data`.
    pub version: u64,
    /// The values.
    pub data: BTreeMap<String, String>,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// When its values last changed.
    pub updated_at: u64,
}

/// A secret of a namespace (`shoal secret create`), in the `secrets` bucket, key
/// `<namespace>.<name>`: its values sealed to the lattice's secrets key, its keys in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretObject {
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Bumped on every change of its values.
    pub version: u64,
    /// The keys of its values.
    pub keys: Vec<String>,
    /// The values, sealed to the lattice's secrets key.
    pub sealed: crate::secrets::Sealed,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// When its values last changed.
    pub updated_at: u64,
}

/// The public half of the lattice's secrets key (`secrets-key` in the status bucket),
/// published by the leading scheduler: what clients seal secrets to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretsKey {
    /// The public xkey (`X…`).
    pub public: String,
}

/// The values of one config object as an app's revision took them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedConfig {
    /// The object's version.
    pub version: u64,
    /// Its values.
    pub data: BTreeMap<String, String>,
}

/// The config objects an app's revision runs with, by name.
pub type PinnedConfigs = BTreeMap<String, PinnedConfig>;

/// One immutable revision of an app's template, in the `revisions` bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// App name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The revision number.
    pub revision: u64,
    /// The component digest.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
    /// The config objects' values it runs with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_objects: PinnedConfigs,
    /// The secrets' versions it was made with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_versions: BTreeMap<String, u64>,
    /// The template (`replicas` is zero).
    pub template: AppSpec,
    /// When it was made.
    pub created_at: u64,
    /// Why: what changed.
    pub cause: String,
}

/// What a host offers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    /// Memory replicas may reserve.
    pub memory: Memory,
    /// CPU replicas may reserve.
    pub cpu: Millicores,
    /// Most replicas the host runs.
    pub max_replicas: u32,
}

/// A host, in the `hosts` bucket, refreshed by its heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostRecord {
    /// Host id, unique in the lattice.
    pub id: String,
    /// Labels, including `arch` and `os`.
    pub labels: BTreeMap<String, String>,
    /// What the host offers.
    pub capacity: Capacity,
    /// Where the host's HTTP ingress listens, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Shoal version of the host.
    pub version: String,
    /// When this incarnation of the host started (ms since the epoch).
    pub started_at: u64,
    /// When the host last wrote this record.
    pub heartbeat_at: u64,
    /// Component digests in the host's cache, so placement can prefer them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cached: Vec<String>,
    /// The host is shutting down and takes no new work.
    #[serde(default)]
    pub draining: bool,
    /// How long this host may go without a heartbeat before the scheduler counts it lost
    /// (`shoal host --lost-after`); the scheduler's `--host-timeout` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after: Option<Span>,
    /// Requests in flight at this host's replicas, per app (`<namespace>/<app>`), in
    /// thousandths, averaged over the last heartbeat interval: what autoscaling reads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub load: BTreeMap<String, u64>,
    /// The host's public secrets key: what the scheduler seals the secrets of the replicas
    /// it places here to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_key: Option<String>,
    /// Set while the host serves replicas it was given by a lattice whose state is gone (a
    /// wiped or different NATS server): what it serves, and how to clear it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lattice_mismatch: Option<String>,
    /// The host checks components' signatures against the trust policy in its assignments
    /// (hosts of releases before trust policies do not, and get no app that needs one).
    #[serde(default)]
    pub verifies_signatures: bool,
    /// The WASI versions the host runs (`0.2`, `0.3`); empty from hosts of releases before
    /// WASI 0.3, which run 0.2 only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wasi: Vec<String>,
    /// The connection to nats-server the host holds, as the server named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<HostConnection>,
    /// What the host's compiled code is for, so the control plane can compile pinned
    /// components for it ahead of time; absent from hosts that cannot tell (and those of
    /// releases before precompiled code), which compile everything themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile_target: Option<CompileTarget>,
    /// The digest of the binary the host runs (`sha256:…`), once it has read it: what a
    /// fleet upgrade counts as done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary: Option<String>,
    /// The fleet upgrade the host was ordered, while it prepares or restarts, or after it
    /// failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::fleet::UpgradeReport>,
}

/// What a host's compiled code must be for: its target triple and CPU features (as Cranelift
/// names them), the engine settings that change code (fuel, the async ABI), and the key all
/// of those (with the wasmtime version and every other setting) hash to. Code compiled for
/// another key is never loaded: the key is the host's engine's own, and the control plane
/// stores what it compiles under the key of the engine it compiled with, so an input that
/// differs (or a host that lies about one) only means a miss, and the host compiles.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompileTarget {
    /// The target triple (`x86_64-unknown-linux-gnu`).
    pub triple: String,
    /// The CPU features the host's compiler uses, as Cranelift names them (`has_avx2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub isa_flags: Vec<String>,
    /// Compiled code counts fuel.
    #[serde(default)]
    pub fuel: bool,
    /// The component model's async ABI (WASI 0.3) is on.
    #[serde(default)]
    pub wasi_03: bool,
    /// The engine's compatibility key: lowercase hex.
    pub key: String,
}

/// Which connection to nats-server a host holds: the server's id and the client id that
/// server gave it. A scheduler that hears this connection closed counts the host as gone; a
/// close of any other connection presenting the host's credential (a second process, a
/// JWT replayed on another connection) says nothing about the host. Only the host's own
/// credential may write its record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostConnection {
    /// The server's id (its public key).
    pub server: String,
    /// The client id the server gave the connection.
    pub id: u64,
}

impl HostRecord {
    /// Whether the host runs components that need WASI `version` (`None`: 0.2).
    pub fn runs_wasi(&self, version: Option<&str>) -> bool {
        let version = version.unwrap_or(WASI_02);
        if self.wasi.is_empty() {
            return version == WASI_02;
        }
        self.wasi.iter().any(|offered| offered == version)
    }
}

/// WASI 0.2, what every host runs.
pub const WASI_02: &str = "0.2";

/// The identity of a lattice's state (`lattice` in the status bucket), made once by the
/// first scheduler that finds none. Hosts remember it with their saved state: a lattice
/// that comes back with another identity, or none, lost its state (a new or wiped NATS
/// server), and its empty desired state must not stop what they serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatticeIdentity {
    /// A unique id.
    pub id: String,
    /// When it was made (ms since the epoch).
    pub created_at: u64,
}

/// The scheduler's decision that one replica runs on one host, in `assignments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// Replica id, unique in the lattice.
    pub replica: String,
    /// App name.
    pub app: String,
    /// Namespace.
    pub namespace: String,
    /// The app revision the replica runs.
    pub revision: u64,
    /// Fencing generation: grows with every assignment the scheduler writes, so a host can
    /// tell a current assignment from a stale one it remembers.
    pub generation: u64,
    /// The host.
    pub host: String,
    /// Component digest.
    pub digest: String,
    /// The config objects' values the replica runs with.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_objects: PinnedConfigs,
    /// The values of the app's secrets, sealed to this host's secrets key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<crate::secrets::Sealed>,
    /// The template the replica runs.
    pub template: AppSpec,
    /// When it was assigned.
    pub created_at: u64,
    /// Set for a job's run: the host runs the command to completion instead of serving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::jobs::JobRun>,
    /// The keys the trust policies (the lattice's and the namespace's) held when this was
    /// assigned: the host runs the component only with a signature of its digest by one of
    /// them. Empty: no policy, no signature needed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<crate::trust::TrustedKey>,
    /// The lattice's egress policy when this was assigned: the special address ranges
    /// (CIDRs) the replica's guests may reach when the app's `allowedOutbound` names an
    /// address in them literally. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private_egress: Vec<String>,
    /// On a secure lattice, for an app with key-value stores: a credential that reaches
    /// this app's stores and nothing else (`auth::store_credential`, under the key
    /// `credential`), sealed to this host's secrets key. The host's own credential reaches
    /// no app's store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_access: Option<crate::secrets::Sealed>,
    /// When that credential expires (seconds since the epoch): the control plane writes the
    /// assignment again with a new one before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_access_expires: Option<u64>,
}

/// The key, in an assignment's sealed store access, of the credential.
pub const STORE_CREDENTIAL: &str = "credential";

impl Assignment {
    /// Whether this is a replica of `app` (a job's run never is, whatever its name).
    pub fn is_of(&self, app: &AppRecord) -> bool {
        self.job.is_none() && self.app == app.name && self.namespace == app.namespace
    }

    /// The component reference pinned to the digest: `<repository>@<digest>`.
    pub fn pinned_reference(&self) -> String {
        pinned_reference(&self.template.component, &self.digest)
    }
}

/// Component `reference` (as a spec names it, by tag or digest) pinned to `digest`:
/// `<repository>@<digest>`.
pub fn pinned_reference(reference: &str, digest: &str) -> String {
    let repository = match reference.split_once('@') {
        Some((repository, _)) => repository,
        None => match reference.rsplit_once(':') {
            // A colon after the last slash separates a tag; one before is a port.
            Some((repository, tag)) if !tag.contains('/') => repository,
            _ => reference,
        },
    };
    format!("{repository}@{digest}")
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Assigned, not yet started.
    Pending,
    /// Fetching the component.
    Pulling,
    /// Compiled and instantiated; serving.
    Ready,
    /// Could not start, or stopped working; a job's run: exited non-zero or trapped.
    Failed,
    /// A job's run: the command runs.
    Running,
    /// A job's run: the command exited 0.
    Succeeded,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::Pulling => "pulling",
            Phase::Ready => "ready",
            Phase::Failed => "failed",
            Phase::Running => "running",
            Phase::Succeeded => "succeeded",
        })
    }
}

/// A replica's status, written by its host in `status` under `replicas.<host>.<replica>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replica id.
    pub replica: String,
    /// App name.
    pub app: String,
    /// Namespace.
    pub namespace: String,
    /// The revision running.
    pub revision: u64,
    /// The host.
    pub host: String,
    /// Phase.
    pub phase: Phase,
    /// Short machine-readable reason for the phase (`PullFailed`, `CompileFailed`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The assignment generation this status is about.
    pub observed_generation: u64,
    /// When the phase last changed.
    pub since: u64,
    /// A job's run that ended: the command's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Times the host restarted the replica in place (its liveness probe failed).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// Why it was last restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<String>,
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// One condition of an app's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// What the condition is about: `Placed`, `Available`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether it holds.
    pub status: bool,
    /// Machine-readable reason.
    pub reason: String,
    /// For people.
    pub message: String,
    /// When `status` last changed.
    pub last_transition: u64,
}

/// An app's status, written by the scheduler in `status` under `apps.<namespace>.<name>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppStatus {
    /// The app generation this status describes.
    pub observed_generation: u64,
    /// The revision being run.
    pub revision: u64,
    /// Replicas wanted.
    pub desired: u32,
    /// Replicas assigned to hosts.
    pub placed: u32,
    /// Replicas ready.
    pub ready: u32,
    /// Conditions.
    pub conditions: Vec<Condition>,
    /// Why replicas could not be placed, when some could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unplaced: Option<String>,
    /// The last revision whose rollout failed, and why (kept until a later one succeeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_rollout: Option<FailedRollout>,
    /// When the rollout of `revision` started counting toward its progress deadline (ms
    /// since the epoch), so a scheduler that takes over keeps the same clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started_at: Option<u64>,
    /// Failed replicas are not replaced before this (ms since the epoch), after this many
    /// failures in a row: the backoff survives a scheduler failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<BackoffRecord>,
    /// What autoscaling last saw and decided, for an app that autoscales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
}

/// What autoscaling decided (the load itself is in the hosts' records: kept out of the
/// status, which would otherwise be written at every sample).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// Whether it is scaling on the panic window.
    pub panicking: bool,
    /// The replica count the load calls for (within min and max).
    pub wanted: u32,
}

/// The statuses to believe, by replica id: each one read at the key of the host and
/// replica it names (`replicas.<host>.<replica>`: a host's credential writes only under
/// its own id) and about a replica assigned to that same host. A host that writes a status
/// for another host's replica, or a record whose fields disagree with its key, is not
/// heard: it cannot fail, ready or end a replica it does not run.
pub fn trusted_statuses<'a>(
    statuses: impl IntoIterator<Item = crate::Versioned<ReplicaStatus>>,
    assignments: impl IntoIterator<Item = &'a Assignment>,
) -> std::collections::HashMap<String, ReplicaStatus> {
    let placed: std::collections::HashSet<(&str, &str)> = assignments
        .into_iter()
        .map(|assignment| (assignment.host.as_str(), assignment.replica.as_str()))
        .collect();
    statuses
        .into_iter()
        .filter(|record| {
            let status = &record.value;
            record.key == crate::names::replica_status_key(&status.host, &status.replica)
                && placed.contains(&(status.host.as_str(), status.replica.as_str()))
        })
        .map(|record| (record.value.replica.clone(), record.value))
        .collect()
}

/// What hosts need to route an app's requests, written by the scheduler at
/// `routes.<namespace>.<app>` in the status bucket. Hosts read these, never apps' specs, so
/// a host's credential does not reveal any app's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    /// Namespace.
    pub namespace: String,
    /// App name.
    pub app: String,
    /// The app's routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Which other namespaces may call it by name.
    #[serde(default, skip_serializing_if = "Expose::is_empty")]
    pub expose: Expose,
    /// The app's request timeout, when it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Span>,
    /// The live hosts with a ready replica (any revision), sorted: where other hosts forward
    /// its requests.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// The app may be scaled to zero (`autoscale.min: 0`): with no endpoint, a host holds
    /// its requests and wakes it instead of answering 503.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scale_to_zero: bool,
}

impl RouteRecord {
    /// The routing record of an app with `spec`, forwarded to `endpoints`: what the
    /// scheduler publishes, and what a host rebuilds from a saved assignment's template
    /// when it has no routing record for it.
    pub fn for_app(namespace: &str, app: &str, spec: &AppSpec, endpoints: Vec<String>) -> Self {
        RouteRecord {
            namespace: namespace.to_owned(),
            app: app.to_owned(),
            routes: spec.routes.clone(),
            expose: spec.expose.clone(),
            timeout: spec.limits.timeout,
            endpoints,
            scale_to_zero: spec
                .autoscale
                .as_ref()
                .is_some_and(|autoscale| autoscale.min() == 0),
        }
    }
}

/// What an admin decided about a host (`hosts.<id>` in the status bucket, written through
/// the control API): cordoned hosts get no new replicas; drained ones also see their
/// replicas placed elsewhere, each removed once its replacement is ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostControl {
    /// No new replicas.
    pub cordoned: bool,
    /// Replicas move elsewhere.
    pub draining: bool,
    /// Who decided.
    pub by: String,
    /// When (ms since the epoch).
    pub since: u64,
}

/// The backoff of replacing an app's failed replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackoffRecord {
    /// Failures in a row.
    pub failures: u32,
    /// Not before this time (ms since the epoch).
    pub not_before: u64,
}

/// A rollout that did not finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedRollout {
    /// The revision that failed.
    pub revision: u64,
    /// Why, for people.
    pub reason: String,
    /// The revision rolled back to, when it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u64>,
}

/// Which namespace holds a route host name (`routehosts.<host>` in the status bucket),
/// and the app that claimed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteHostClaim {
    /// The namespace the name belongs to.
    pub namespace: String,
    /// The app (in that namespace) that claimed it first.
    pub app: String,
    /// When (ms since the epoch, the claimer's clock): a claim is made before its app is
    /// stored, so a young claim with no app yet is not a stale one.
    #[serde(default)]
    pub claimed_at: u64,
}

/// A host's credential as it presents it to the control plane (`credentials.<id>` in the
/// status bucket): the JWT, whose signature and tags say what an admin granted the host
/// ([`crate::auth::host_grant`]). Public: a JWT is no secret, its seed is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostCredential {
    /// The user JWT of the host's `.creds` file.
    pub jwt: String,
}

/// The address ranges outside the public internet that guests may reach at all: loopback,
/// private, link-local (cloud metadata), shared and other special ranges are refused to
/// guests unless an app's `allowedOutbound` names the address literally *and* it lies in
/// one of these ranges. Set by lattice admins (`shoal egress allow 10.1.0.0/16`), at
/// [`crate::names::EGRESS_POLICY`] in the status bucket: an editor's allowlist alone never
/// opens a host's network or the metadata address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPolicy {
    /// The ranges, as CIDRs (`10.1.0.0/16`, `127.0.0.1/32`, `fd00::/8`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub private: Vec<String>,
}

impl EgressPolicy {
    /// The most ranges a policy holds.
    pub const MAX_RANGES: usize = 64;
}

/// The control plane's health, written by the leading scheduler after its passes (at most
/// once a second) at [`crate::names::CONTROL_PLANE`] in the status bucket: who leads, when
/// it last acted, and the records it cannot read. Screens show it, so a control plane that
/// stopped acting does not look healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneStatus {
    /// The leading scheduler's id.
    pub leader: String,
    /// When its last pass ended (ms since the epoch, its clock).
    pub pass_at: u64,
    /// Its lease period, in ms: a leader that stops is replaced after about this long.
    pub lease_ms: u64,
    /// Records it cannot read, as `<bucket>/<key>: <why>` (at most
    /// [`ControlPlaneStatus::MAX_UNREADABLE`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

impl ControlPlaneStatus {
    /// The most unreadable records one status lists.
    pub const MAX_UNREADABLE: usize = 20;

    /// A warning for people when no scheduler has acted for longer than its lease allows
    /// at `now` (ms since the epoch): twice the lease and two seconds more, room for the
    /// write interval, a failover and clocks a little apart.
    pub fn warning(&self, now: u64) -> Option<String> {
        let silent = now.saturating_sub(self.pass_at);
        let allowed = self.lease_ms.saturating_mul(2).saturating_add(2_000);
        (silent > allowed).then(|| {
            format!(
                "no scheduler has acted for {:.1} s (the lease is {:.1} s; {} led last): nothing is placed, scaled or healed until one does; check that a scheduler runs and reaches NATS",
                silent as f64 / 1000.0,
                self.lease_ms as f64 / 1000.0,
                self.leader
            )
        })
    }
}

/// The scheduler's leader lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Who holds it.
    pub holder: String,
    /// When the holder last renewed it (its own clock; informational).
    pub renewed_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_keeps_what_runs_and_drops_what_only_scales_or_keeps_history() {
        let spec: AppSpec = serde_json::from_value(serde_json::json!({
            "component": "r/web:1",
            "replicas": 3,
            "env": {"A": "1"},
            "routes": [{"path": "/"}],
            "revisionHistoryLimit": 4,
            "expose": {"namespaces": ["team-b"]},
            "disconnect": {"lostAfter": "30s"},
            "autoscale": {"max": 5},
        }))
        .expect("a spec");
        let template = spec.template();
        assert_eq!(template.replicas, 0);
        assert_eq!(template.revision_history_limit, None);
        assert_eq!(template.expose, Expose::default());
        assert!(template.disconnect.is_none() && template.autoscale.is_none());
        assert_eq!(template.env, spec.env);
        assert_eq!(template.routes, spec.routes);
        // Changing only what the template leaves out leaves it as it was.
        let scaled = AppSpec {
            replicas: 9,
            revision_history_limit: Some(2),
            ..spec.clone()
        };
        assert_eq!(scaled.template(), template);
        let changed = AppSpec {
            env: BTreeMap::from([("A".to_owned(), "2".to_owned())]),
            ..spec
        };
        assert_ne!(changed.template(), template);
    }

    fn assignment(component: &str) -> Assignment {
        Assignment {
            replica: "r".into(),
            app: "a".into(),
            namespace: "default".into(),
            revision: 1,
            generation: 1,
            host: "h".into(),
            digest: "sha256:ab".into(),
            config_objects: PinnedConfigs::new(),
            secrets: None,
            template: AppSpec {
                component: component.into(),
                replicas: 0,
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
                expose: Expose::default(),
                disconnect: None,
                autoscale: None,
            },
            job: None,
            trusted_keys: Vec::new(),
            private_egress: Vec::new(),
            store_access: None,
            store_access_expires: None,
            created_at: 0,
        }
    }

    #[test]
    fn statuses_count_only_at_their_own_key_and_for_their_own_host_s_replica() {
        let placed = assignment("r/a:1");
        let status = |host: &str, replica: &str| ReplicaStatus {
            replica: replica.into(),
            app: "a".into(),
            namespace: "default".into(),
            revision: 1,
            host: host.into(),
            phase: Phase::Ready,
            reason: None,
            message: None,
            observed_generation: 1,
            since: 0,
            exit_code: None,
            restarts: 0,
            last_restart: None,
        };
        let at = |key: &str, value: ReplicaStatus| crate::Versioned {
            key: key.into(),
            revision: 1,
            value,
        };
        let trusted = trusted_statuses(
            vec![
                // The host's own status of its own replica.
                at("replicas.h.r", status("h", "r")),
                // Another host writes a status naming h's replica, at its own key.
                at("replicas.evil.r", status("h", "r2")),
                // Its own key, naming the replica as its own: not assigned to it.
                at("replicas.evil.r", status("evil", "r")),
            ],
            [&placed],
        );
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted["r"].host, "h");
        // The real one missing, a forged one does not stand in for it.
        let trusted = trusted_statuses(vec![at("replicas.evil.r", status("evil", "r"))], [&placed]);
        assert!(trusted.is_empty());
    }

    #[test]
    fn references_are_pinned_to_the_digest() {
        assert_eq!(
            assignment("localhost:5000/team/hello:1.0").pinned_reference(),
            "localhost:5000/team/hello@sha256:ab"
        );
        assert_eq!(
            assignment("localhost:5000/team/hello").pinned_reference(),
            "localhost:5000/team/hello@sha256:ab"
        );
        assert_eq!(
            assignment("ghcr.io/x/hello@sha256:00").pinned_reference(),
            "ghcr.io/x/hello@sha256:ab"
        );
    }

    #[test]
    fn config_values_layer_objects_in_order_then_inline_config() {
        let mut spec = assignment("r/a:1").template;
        spec.config_from = vec!["base".into(), "site".into()];
        spec.config = BTreeMap::from([("mode".into(), "inline".into())]);
        let object = |pairs: &[(&str, &str)]| PinnedConfig {
            version: 1,
            data: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let pinned = PinnedConfigs::from([
            (
                "base".to_owned(),
                object(&[("a", "base"), ("b", "base"), ("mode", "base")]),
            ),
            ("site".to_owned(), object(&[("b", "site")])),
            ("unlisted".to_owned(), object(&[("c", "unlisted")])),
        ]);
        let values = spec.config_values(&pinned);
        assert_eq!(values["a"], "base");
        assert_eq!(values["b"], "site");
        assert_eq!(values["mode"], "inline");
        assert!(!values.contains_key("c"));
        // Without env, config is the environment; with it, env alone.
        assert_eq!(spec.environment(), &spec.config);
        spec.env = BTreeMap::from([("MODE".into(), "edge".into())]);
        assert_eq!(spec.environment(), &spec.env);
    }
}
