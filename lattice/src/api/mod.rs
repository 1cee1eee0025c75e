//! The control API: what the CLI asks of the control plane, over NATS request/reply.
//!
//! Every scheduler process answers (a queue group, so any one of them, leader or not). A
//! request goes to `shoal.<lattice>.v1.api.<role>.<scope>.<user>.<verb>`; on a secure
//! lattice nats-server lets a user publish only on the subjects of the grants in its
//! credential (see [`crate::auth`]), so the server authorizes by the subject alone: the
//! grant named there must allow the request's role and namespaces. The body is a JSON
//! [`Request`]; the answer a JSON [`Answer`].
//!
//! This module is the wire schema (requests, answers, views, errors); `policy` says what
//! each request needs and who may make it; `client` is the CLI's side, with its retries.

mod client;
mod policy;

pub use client::{ATTEMPT_TIMEOUT, CallError, Client, NO_SERVER_WAIT, TIMEOUT};
pub use policy::Caller;

use serde::{Deserialize, Serialize};

use crate::records::{
    AppRecord, AppSpec, AppStatus, Assignment, HostControl, HostRecord, ReplicaStatus,
    RevisionRecord,
};

/// One app of an `apply`, its component already pinned by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppManifest {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec as written.
    pub spec: AppSpec,
    /// The component's manifest digest.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
}

/// One job or cron job of an `apply`, its component already pinned by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobManifest<S> {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec as written.
    pub spec: S,
    /// The component's manifest digest.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
}

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "verb")]
pub enum Request {
    /// Create or update apps (all or nothing for validation and route collisions).
    Apply {
        /// The apps.
        apps: Vec<AppManifest>,
    },
    /// Create jobs (a job cannot be changed: the same spec again is no change, another is
    /// refused) and create or update cron jobs.
    ApplyJobs {
        /// The jobs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        jobs: Vec<JobManifest<crate::jobs::JobSpec>>,
        /// The cron jobs.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        cron_jobs: Vec<JobManifest<crate::jobs::CronJobSpec>>,
    },
    /// Jobs with their status (of one namespace, or every namespace the caller may view).
    GetJobs {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Delete a job: its runs stop.
    DeleteJob {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Cron jobs with their status.
    GetCronJobs {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Delete a cron job and the jobs it made.
    DeleteCronJob {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Make a job from a cron job's template now.
    CreateJobFrom {
        /// Namespace.
        namespace: String,
        /// The cron job.
        cron_job: String,
        /// The job's name.
        name: String,
    },
    /// Delete an app.
    Delete {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Change an app's replica count.
    Scale {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Replicas wanted.
        replicas: u32,
    },
    /// Roll back to an earlier revision.
    Undo {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The revision; `None` for the one before.
        to_revision: Option<u64>,
    },
    /// Pause or resume a rollout.
    Pause {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Paused or resumed.
        paused: bool,
    },
    /// An app's revisions.
    History {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Apps with their status (of one namespace, or every namespace the caller may view).
    GetApps {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Hosts.
    GetHosts,
    /// The control plane's health: who leads, when it last acted, what it cannot read.
    GetControlPlane,
    /// Allow (or stop allowing) guests to reach a special address range (lattice admins).
    Egress {
        /// The range, as a CIDR.
        range: String,
        /// Allow it, or take it out.
        allowed: bool,
    },
    /// The lattice's egress policy.
    GetEgress,
    /// Replicas with their status.
    GetReplicas {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// One app in detail.
    DescribeApp {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Cordon a host (no new replicas) or lift its cordon and drain.
    Cordon {
        /// The host.
        host: String,
        /// Cordoned, or back to normal.
        cordoned: bool,
    },
    /// Cordon a host and move its replicas elsewhere.
    Drain {
        /// The host.
        host: String,
    },
    /// Create a config object or replace its values; apps that list it roll out.
    PutConfig {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The values.
        data: std::collections::BTreeMap<String, String>,
    },
    /// Config objects (of one namespace, or every namespace the caller may view).
    GetConfigs {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// One config object with its values and the apps that use it.
    DescribeConfig {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Delete a config object no app uses.
    DeleteConfig {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The public key secrets are sealed to.
    SecretsKey,
    /// Create a secret or replace its values (sealed by the client to the lattice's secrets
    /// key); apps that list it roll out.
    PutSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The keys of the sealed values.
        keys: Vec<String>,
        /// The values, sealed.
        sealed: crate::secrets::Sealed,
    },
    /// Secrets: names, keys, versions and users, never values.
    GetSecrets {
        /// Only this namespace.
        namespace: Option<String>,
    },
    /// Delete a secret no app uses.
    DeleteSecret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// Trust a public key: with any key trusted, a host runs only components signed by one
    /// (the lattice's keys and the app's namespace's).
    TrustKey {
        /// The namespace's policy; `None`: the lattice's.
        namespace: Option<String>,
        /// The key's name in the policy.
        name: String,
        /// The key, a `PUBLIC KEY` PEM block (ECDSA P-256).
        pem: String,
    },
    /// Stop trusting a key.
    UntrustKey {
        /// The namespace's policy; `None`: the lattice's.
        namespace: Option<String>,
        /// The key's name (or id).
        name: String,
    },
    /// The trust policies: the lattice's and those of the namespaces the caller may view.
    GetTrust {
        /// Only the lattice's and this namespace's.
        namespace: Option<String>,
    },
    /// An operator's look at, or change to, an app's key-value store.
    KeyValue {
        /// Namespace.
        namespace: String,
        /// The app.
        app: String,
        /// The store (as in `spec.keyValue`).
        store: String,
        /// What to do.
        op: KeyValueOp,
    },
}

/// What `shoal kv` does to a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum KeyValueOp {
    /// Read a key: answers [`KeyValueAnswer::Value`].
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value, base64.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// List keys, a page after `after`: answers [`KeyValueAnswer::Keys`].
    List {
        /// The last key of the previous page.
        after: Option<String>,
    },
}

/// A store value as `shoal kv` carries it (base64).
pub fn encode_value(value: &[u8]) -> String {
    data_encoding::BASE64.encode(value)
}

/// A store value from its base64 form; `None` if it is not base64.
pub fn decode_value(text: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64.decode(text.as_bytes()).ok()
}

impl KeyValueOp {
    /// Whether it changes the store.
    pub fn writes(&self) -> bool {
        matches!(self, KeyValueOp::Put { .. } | KeyValueOp::Delete { .. })
    }
}

/// What `shoal kv` gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "answer")]
pub enum KeyValueAnswer {
    /// A value (base64), or none.
    Value {
        /// The value.
        value: Option<String>,
    },
    /// A page of keys and where the next one starts.
    Keys {
        /// Keys.
        keys: Vec<String>,
        /// The last key of this page, when there are more.
        next: Option<String>,
    },
    /// Done.
    Done,
}

/// The control plane's health, as the answering scheduler reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneView {
    /// What the leader last wrote; `None` when no scheduler has led yet.
    pub status: Option<crate::records::ControlPlaneStatus>,
    /// The answering scheduler's clock, ms since the epoch.
    pub now: u64,
    /// What is wrong, for people: no scheduler acting, or none ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl ControlPlaneView {
    /// The view of `status` at `now`.
    pub fn of(status: Option<crate::records::ControlPlaneStatus>, now: u64) -> Self {
        let warning = match &status {
            Some(status) => status.warning(now),
            None => Some(
                "no scheduler has led this lattice yet: nothing is placed until one runs (shoal scheduler)"
                    .to_owned(),
            ),
        };
        Self {
            status,
            now,
            warning,
        }
    }
}

/// Why a request was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The caller's grant does not allow it; nothing changed.
    Forbidden,
    /// The request is not valid (with the field paths); nothing changed.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// It collides with what is stored (routes); nothing changed.
    Conflict,
    /// The server failed.
    Internal,
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of refusal.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

/// A failure reading or writing the lattice's state answers as an internal error: the
/// caller did nothing wrong, and the message says what failed.
impl From<crate::Error> for ApiError {
    fn from(error: crate::Error) -> Self {
        Self::new(ErrorCode::Internal, error.to_string())
    }
}

impl ApiError {
    /// An error of `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Answer<T> {
    /// Done.
    Ok(T),
    /// Not done.
    Error(ApiError),
}

/// What applying one app did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "change")]
pub enum Applied {
    /// A new app, at revision 1.
    Created {
        /// Replicas.
        replicas: u32,
    },
    /// A new revision.
    Revised {
        /// The revision.
        revision: u64,
        /// What changed.
        changes: Vec<String>,
    },
    /// Only the replica count changed.
    Scaled {
        /// Before.
        from: u32,
        /// After.
        to: u32,
    },
    /// Something outside the template changed.
    Updated {
        /// The revision (unchanged).
        revision: u64,
        /// What changed.
        changes: Vec<String>,
    },
    /// Nothing changed.
    Unchanged {
        /// The revision.
        revision: u64,
    },
}

/// One app's outcome in an apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedApp {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happened.
    #[serde(flatten)]
    pub applied: Applied,
}

/// The outcome of a scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scaled {
    /// Replicas before.
    pub from: u32,
}

/// The outcome of an undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UndoneTo {
    /// The revision returned to.
    pub target: u64,
    /// The app's revision now.
    pub revision: u64,
    /// Whether a new revision was made (else the app already ran that template).
    pub revised: bool,
}

/// An app's revisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// The current revision.
    pub current: u64,
    /// The revisions kept, oldest first.
    pub revisions: Vec<RevisionRecord>,
}

/// What applying one job or cron job did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedJob {
    /// `job` or `cronjob`.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `created`, `configured` or `unchanged`.
    pub change: String,
}

/// A job with its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    /// The job.
    #[serde(flatten)]
    pub job: crate::jobs::JobRecord,
    /// Its status, once a scheduler wrote one.
    pub status: Option<crate::jobs::JobStatus>,
}

/// A cron job with its status and the jobs it made that are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobView {
    /// The cron job.
    #[serde(flatten)]
    pub cron_job: crate::jobs::CronJobRecord,
    /// Its status, once a scheduler wrote one.
    pub status: Option<crate::jobs::CronJobStatus>,
    /// The jobs it made that are kept, oldest first, with their phase.
    pub jobs: Vec<(String, Option<crate::jobs::JobPhase>)>,
}

/// An app with its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppView {
    /// The app.
    #[serde(flatten)]
    pub app: AppRecord,
    /// Its status, once a scheduler wrote one.
    pub status: Option<AppStatus>,
}

/// A host with the replicas assigned to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostView {
    /// The host.
    #[serde(flatten)]
    pub host: HostRecord,
    /// Replicas assigned to it.
    pub replicas: usize,
    /// An admin's cordon or drain, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<HostControl>,
}

/// A replica: its assignment and status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    /// Where it runs, what.
    #[serde(flatten)]
    pub assignment: Assignment,
    /// What its host reports.
    pub status: Option<ReplicaStatus>,
}

/// One app in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppDetail {
    /// The app.
    pub app: AppRecord,
    /// Its status.
    pub status: Option<AppStatus>,
    /// Its replicas.
    pub replicas: Vec<ReplicaView>,
    /// Requests in flight at its replicas as the hosts last reported (thousandths).
    #[serde(default)]
    pub load_milli: u64,
}

/// What storing a config object did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigPut {
    /// Its version now.
    pub version: u64,
    /// Whether it was new.
    pub created: bool,
    /// Whether its values changed (a new object counts as changed).
    pub changed: bool,
    /// The apps that list it and were given its new values (each a new revision).
    pub apps: Vec<AppliedApp>,
}

/// A config object and the apps that list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    /// The object.
    #[serde(flatten)]
    pub object: crate::records::ConfigObject,
    /// Apps of its namespace whose `configFrom` names it.
    pub used_by: Vec<String>,
}

/// A secret as listed: never its values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Version.
    pub version: u64,
    /// The keys of its values.
    pub keys: Vec<String>,
    /// When it was created (ms since the epoch).
    pub created_at: u64,
    /// When its values last changed.
    pub updated_at: u64,
    /// Apps of its namespace whose `secrets` name it.
    pub used_by: Vec<String>,
}
