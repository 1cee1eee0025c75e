//! The control API: what the CLI asks of the control plane, over NATS request/reply.
//!
//! Every scheduler process answers (a queue group, so any one of them, leader or not). A
//! request goes to `shoal.<lattice>.v1.api.<role>.<scope>.<user>.<verb>`; on a secure
//! lattice nats-server lets a user publish only on the subjects of the grants in its
//! credential (see [`crate::auth`]), so the server authorizes by the subject alone: the
//! grant named there must allow the request's role and namespaces. The body is a JSON
//! [`Request`]; the answer a JSON [`Answer`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{ANONYMOUS, Grant, Holder, LATTICE_SCOPE, Role, api_subject};
use crate::records::{
    AppRecord, AppSpec, AppStatus, Assignment, HostControl, HostRecord, ReplicaStatus,
    RevisionRecord,
};

/// How long one attempt waits for an answer: a scheduler that froze (a stopped VM) still
/// holds its place in the queue group, so a request it got is sent again.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long a call keeps trying.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call waits for a scheduler to answer at all (one may be starting).
pub const NO_SERVER_WAIT: Duration = Duration::from_secs(5);

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

impl Request {
    /// The verb: the last token of the subject.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Apply { .. } | Request::ApplyJobs { .. } => "apply",
            Request::GetJobs { .. } | Request::GetCronJobs { .. } => "get",
            Request::DeleteJob { .. } | Request::DeleteCronJob { .. } => "delete",
            Request::CreateJobFrom { .. } => "create",
            Request::Delete { .. } => "delete",
            Request::Scale { .. } => "scale",
            Request::Undo { .. } => "undo",
            Request::Pause { paused: true, .. } => "pause",
            Request::Pause { paused: false, .. } => "resume",
            Request::History { .. } => "history",
            Request::GetApps { .. } => "get",
            Request::GetHosts | Request::GetControlPlane | Request::GetEgress => "get",
            Request::Egress { .. } => "egress",
            Request::GetReplicas { .. } => "get",
            Request::DescribeApp { .. } => "describe",
            Request::Cordon { cordoned: true, .. } => "cordon",
            Request::Cordon {
                cordoned: false, ..
            } => "uncordon",
            Request::Drain { .. } => "drain",
            Request::PutConfig { .. } => "config",
            Request::GetConfigs { .. } => "get",
            Request::DescribeConfig { .. } => "describe",
            Request::DeleteConfig { .. } => "delete",
            Request::SecretsKey => "get",
            Request::PutSecret { .. } => "secret",
            Request::GetSecrets { .. } => "get",
            Request::DeleteSecret { .. } => "delete",
            Request::TrustKey { .. } => "trust",
            Request::UntrustKey { .. } => "untrust",
            Request::GetTrust { .. } => "get",
            Request::KeyValue { op, .. } if op.writes() => "kv-write",
            Request::KeyValue { .. } => "kv-read",
        }
    }

    /// Whether it acts on the whole lattice (hosts), so only a lattice-wide grant allows it.
    pub fn lattice_wide(&self) -> bool {
        // A trust policy binds every editor of its scope: only a lattice-wide admin sets one.
        matches!(
            self,
            Request::Cordon { .. }
                | Request::Drain { .. }
                | Request::TrustKey { .. }
                | Request::UntrustKey { .. }
                | Request::Egress { .. }
        )
    }

    /// The role it needs and the namespaces it touches (none: it reads lattice-wide or
    /// filters what it reads to what the caller may see).
    pub fn needs(&self) -> (Role, Vec<&str>) {
        match self {
            Request::Apply { apps } => (
                Role::Editor,
                apps.iter().map(|app| app.namespace.as_str()).collect(),
            ),
            Request::ApplyJobs { jobs, cron_jobs } => (
                Role::Editor,
                jobs.iter()
                    .map(|job| job.namespace.as_str())
                    .chain(cron_jobs.iter().map(|cron| cron.namespace.as_str()))
                    .collect(),
            ),
            Request::Delete { namespace, .. }
            | Request::DeleteJob { namespace, .. }
            | Request::DeleteCronJob { namespace, .. }
            | Request::CreateJobFrom { namespace, .. }
            | Request::Scale { namespace, .. }
            | Request::Undo { namespace, .. }
            | Request::Pause { namespace, .. }
            | Request::PutConfig { namespace, .. }
            | Request::DeleteConfig { namespace, .. }
            | Request::PutSecret { namespace, .. }
            | Request::DeleteSecret { namespace, .. } => (Role::Editor, vec![namespace]),
            Request::History { namespace, .. }
            | Request::DescribeApp { namespace, .. }
            | Request::DescribeConfig { namespace, .. } => (Role::Viewer, vec![namespace]),
            Request::KeyValue { namespace, op, .. } => (
                if op.writes() {
                    Role::Editor
                } else {
                    Role::Viewer
                },
                vec![namespace],
            ),
            Request::GetApps { namespace }
            | Request::GetJobs { namespace }
            | Request::GetCronJobs { namespace }
            | Request::GetReplicas { namespace }
            | Request::GetConfigs { namespace }
            | Request::GetSecrets { namespace } => {
                (Role::Viewer, namespace.iter().map(String::as_str).collect())
            }
            Request::GetHosts
            | Request::GetControlPlane
            | Request::GetEgress
            | Request::SecretsKey => (Role::Viewer, Vec::new()),
            // What guests may reach of a host's own networks: the lattice's admins decide.
            Request::Egress { .. } => (Role::Admin, Vec::new()),
            Request::Cordon { .. } | Request::Drain { .. } => (Role::Admin, Vec::new()),
            Request::TrustKey { namespace, .. } | Request::UntrustKey { namespace, .. } => {
                (Role::Admin, namespace.iter().map(String::as_str).collect())
            }
            Request::GetTrust { namespace } => {
                (Role::Viewer, namespace.iter().map(String::as_str).collect())
            }
        }
    }
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

/// Who a request comes from, read from the subject it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's name.
    pub user: String,
    /// The grant the request was sent under.
    pub grant: Grant,
}

impl Caller {
    /// Reads the caller from a request subject `…api.<role>.<scope>.<user>.<verb>`.
    pub fn from_subject(lattice: &str, subject: &str) -> Option<Self> {
        let prefix = crate::auth::api_subjects(lattice);
        let rest = subject.strip_prefix(prefix.trim_end_matches('>'))?;
        let mut tokens = rest.split('.');
        let (Some(role), Some(scope), Some(user), Some(_verb), None) = (
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
        ) else {
            return None;
        };
        Some(Caller {
            user: user.to_owned(),
            grant: Grant::from_scope(role.parse().ok()?, scope),
        })
    }

    /// Whether this caller may do `request`; else the refusal, naming who, what and where.
    pub fn authorize(&self, request: &Request) -> Result<(), ApiError> {
        let (role, namespaces) = request.needs();
        let refuse = |place: &str| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "forbidden: {} ({}) may not {} {place}",
                    self.user,
                    self.grant,
                    request.verb()
                ),
            )
        };
        if self.grant.role < role || (request.lattice_wide() && self.grant.namespace.is_some()) {
            let place = namespaces
                .first()
                .map_or_else(|| "in the lattice".to_owned(), |ns| format!("in {ns}"));
            return Err(refuse(&place));
        }
        for namespace in namespaces {
            if !self.grant.allows(role, Some(namespace)) {
                return Err(refuse(&format!("in {namespace}")));
            }
        }
        Ok(())
    }

    /// Whether this caller may see things of `namespace`.
    pub fn may_view(&self, namespace: &str) -> bool {
        self.grant.allows(Role::Viewer, Some(namespace))
    }
}

/// The CLI's side: sends requests under the caller's best grant for each.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    lattice: String,
    user: String,
    grants: Vec<Grant>,
}

/// What a call can end in.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server refused or failed the request.
    #[error(transparent)]
    Refused(#[from] ApiError),
    /// No server answered.
    #[error(
        "no scheduler answers the control API of lattice {0:?}: start one (shoal scheduler, or shoal up)"
    )]
    NoServer(String),
    /// The request could not be sent or its answer read.
    #[error("control API request failed: {0}")]
    Transport(String),
}

impl Client {
    /// A client of `lattice` over `nats`, as the holder of the connection's credential
    /// (`None`: an open lattice, where anyone is an admin).
    pub fn new(nats: async_nats::Client, lattice: &str, holder: Option<&Holder>) -> Self {
        let (user, grants) = match holder {
            Some(holder) if holder.kind == "user" => (holder.name.clone(), holder.grants.clone()),
            _ => (
                ANONYMOUS.to_owned(),
                vec![Grant {
                    role: Role::Admin,
                    namespace: None,
                }],
            ),
        };
        Self {
            nats,
            lattice: lattice.to_owned(),
            user,
            grants,
        }
    }

    /// The caller's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The namespaces the caller holds a role in (none when it holds one lattice-wide).
    pub fn viewable_namespaces(&self) -> Vec<String> {
        self.grants
            .iter()
            .filter_map(|grant| grant.namespace.clone())
            .collect()
    }

    /// Whether the caller may change apps in `namespace` (apply, scale, rollout, delete).
    pub fn may_edit(&self, namespace: &str) -> bool {
        self.grants
            .iter()
            .any(|grant| grant.allows(Role::Editor, Some(namespace)))
    }

    /// Whether the caller may view the whole lattice.
    pub fn lattice_wide(&self) -> bool {
        self.grants.iter().any(|grant| grant.namespace.is_none())
    }

    /// Sends `request` and decodes the answer.
    ///
    /// # Errors
    /// [`CallError::Refused`] with the server's reason, else why no answer came.
    pub async fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, CallError> {
        let grant = choose_grant(&self.grants, request);
        let subject = api_subject(&self.lattice, &grant, &self.user, request.verb());
        let body =
            serde_json::to_vec(request).map_err(|error| CallError::Transport(error.to_string()))?;
        let subject = async_nats::Subject::from(subject);
        // Sending again is safe for every request but undo, which would roll back twice;
        // undo is sent again only when nobody got it.
        let resend_after_timeout = !matches!(request, Request::Undo { .. });
        let started = tokio::time::Instant::now();
        let body = bytes::Bytes::from(body);
        loop {
            let attempt = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                self.nats.request(subject.clone(), body.clone()),
            )
            .await;
            let reply = match attempt {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
                    if started.elapsed() >= NO_SERVER_WAIT {
                        return Err(CallError::NoServer(self.lattice.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Ok(Err(error)) if error.kind() != async_nats::RequestErrorKind::TimedOut => {
                    return Err(CallError::Transport(error.to_string()));
                }
                _ if resend_after_timeout && started.elapsed() + ATTEMPT_TIMEOUT <= TIMEOUT => {
                    tracing::debug!("no answer in time; asking again");
                    continue;
                }
                _ => {
                    return Err(CallError::Transport(format!(
                        "no answer within {:?}",
                        started.elapsed()
                    )));
                }
            };
            match serde_json::from_slice::<Answer<T>>(&reply.payload) {
                Ok(Answer::Ok(value)) => return Ok(value),
                // The server failed, not refused: a NATS server of a cluster lost a moment
                // ago leaves JetStream without a leader for a second or two. Asked again
                // while time is left (every request is declarative or idempotent but undo).
                Ok(Answer::Error(error))
                    if error.code == ErrorCode::Internal
                        && resend_after_timeout
                        && started.elapsed() + ATTEMPT_TIMEOUT <= TIMEOUT =>
                {
                    tracing::debug!(%error, "the control plane failed; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Answer::Error(error)) => return Err(CallError::Refused(error)),
                Err(error) => {
                    return Err(CallError::Transport(format!(
                        "unexpected answer from the control plane: {error}"
                    )));
                }
            }
        }
    }
}

/// The grant a request goes under: the narrowest one that allows it, else the strongest
/// in one of its namespaces, else the strongest (the server then says what is missing).
fn choose_grant(grants: &[Grant], request: &Request) -> Grant {
    let (role, namespaces) = request.needs();
    let allows = |grant: &&Grant| {
        namespaces
            .iter()
            .all(|namespace| grant.allows(role, Some(namespace)))
            && grant.role >= role
            && (!request.lattice_wide() || grant.namespace.is_none())
    };
    let covering =
        |grant: &&Grant| namespaces.is_empty() || namespaces.iter().any(|ns| grant.scope() == *ns);
    grants
        .iter()
        .filter(allows)
        .min_by_key(|grant| (grant.role, grant.scope() == LATTICE_SCOPE))
        .or_else(|| {
            grants
                .iter()
                .filter(covering)
                .max_by_key(|grant| grant.role)
        })
        .or_else(|| grants.iter().max_by_key(|grant| grant.role))
        .cloned()
        .unwrap_or(Grant {
            role: Role::Viewer,
            namespace: None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, namespace: Option<&str>) -> Caller {
        Caller {
            user: "alice".to_owned(),
            grant: Grant {
                role,
                namespace: namespace.map(str::to_owned),
            },
        }
    }

    #[test]
    fn callers_are_read_from_the_subject() {
        let read = Caller::from_subject("dev", "shoal.dev.v1.api.viewer.team-a.alice.get");
        assert_eq!(read, Some(caller(Role::Viewer, Some("team-a"))));
        assert_eq!(
            Caller::from_subject("dev", "shoal.dev.v1.api.admin._lattice.root.apply")
                .map(|caller| caller.grant.namespace),
            Some(None)
        );
        for bad in [
            "shoal.dev.v1.api.boss.team-a.alice.get",
            "shoal.dev.v1.api.viewer.team-a.alice",
            "shoal.dev.v1.api.viewer.team-a.alice.get.more",
            "shoal.other.v1.api.viewer.team-a.alice.get",
        ] {
            assert_eq!(Caller::from_subject("dev", bad), None, "{bad}");
        }
    }

    #[test]
    fn refusals_name_who_what_and_where() {
        let delete = Request::Delete {
            namespace: "team-a".to_owned(),
            name: "web".to_owned(),
        };
        let refused = caller(Role::Viewer, Some("team-a"))
            .authorize(&delete)
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert_eq!(
            refused.message,
            "forbidden: alice (viewer in team-a) may not delete in team-a"
        );
        let elsewhere = caller(Role::Editor, Some("team-b"))
            .authorize(&delete)
            .unwrap_err();
        assert_eq!(
            elsewhere.message,
            "forbidden: alice (editor in team-b) may not delete in team-a"
        );
        assert!(
            caller(Role::Editor, Some("team-a"))
                .authorize(&delete)
                .is_ok()
        );
        assert!(caller(Role::Admin, None).authorize(&delete).is_ok());
        assert!(
            caller(Role::Viewer, Some("team-a"))
                .authorize(&Request::GetHosts)
                .is_ok()
        );
    }

    #[test]
    fn only_a_lattice_wide_admin_changes_trust_policies() {
        let add = |namespace: Option<&str>| Request::TrustKey {
            namespace: namespace.map(str::to_owned),
            name: "ci".to_owned(),
            pem: String::new(),
        };
        // A namespace's own admin could otherwise trust a key of their choosing.
        for (who, request) in [
            (caller(Role::Admin, Some("team-a")), add(Some("team-a"))),
            (caller(Role::Editor, None), add(None)),
            (caller(Role::Editor, None), add(Some("team-a"))),
            (caller(Role::Admin, Some("team-a")), add(None)),
        ] {
            let refused = who.authorize(&request).unwrap_err();
            assert_eq!(refused.code, ErrorCode::Forbidden, "{who:?}");
        }
        assert!(
            caller(Role::Admin, None)
                .authorize(&add(Some("team-a")))
                .is_ok()
        );
        let untrust = Request::UntrustKey {
            namespace: None,
            name: "ci".to_owned(),
        };
        assert!(caller(Role::Editor, None).authorize(&untrust).is_err());
        // Anyone may read them: they say what a component needs.
        assert!(
            caller(Role::Viewer, Some("team-a"))
                .authorize(&Request::GetTrust {
                    namespace: Some("team-a".to_owned())
                })
                .is_ok()
        );
    }

    #[test]
    fn the_client_picks_a_grant_that_allows_the_request() {
        let viewer = Grant {
            role: Role::Viewer,
            namespace: None,
        };
        let editor = Grant {
            role: Role::Editor,
            namespace: Some("team-a".to_owned()),
        };
        let grants = [viewer.clone(), editor.clone()];
        let delete = |namespace: &str| Request::Delete {
            namespace: namespace.to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(choose_grant(&grants, &delete("team-a")), editor);
        assert_eq!(choose_grant(&grants, &Request::GetHosts), viewer);
        // No grant allows it: the strongest is sent, and refused by the server.
        assert_eq!(choose_grant(&grants, &delete("team-b")), editor);
    }
}
