//! The control API: what the CLI asks of the control plane, over NATS request/reply.
//!
//! Every scheduler process answers (a queue group, so any one of them, leader or not). A
//! request goes to `shoal.<lattice>.v1.api.<role>.<scope>.<user>.<verb>`; on a secure
//! lattice nats-server lets a user publish only on the subjects of the grants in its
//! credential (see [`crate::auth`]), so the server authorizes by the subject alone: the
//! grant named there must allow the request's role and namespaces. The body is a JSON
//! [`Request`]; the answer a JSON [`Answer`].
//!
//! This module holds the answers, views and errors; `verbs` has a type per request (what
//! it needs, the names it checks, its answer), `policy` says who may make a request, and
//! `client` is the CLI's side, with its retries.

mod client;
mod policy;
mod verbs;

pub use client::{ATTEMPT_TIMEOUT, CallError, Client, NO_SERVER_WAIT, TIMEOUT};
pub use policy::Caller;
pub use verbs::*;

use serde::{Deserialize, Serialize};

use crate::records::{
    AppRecord, AppStatus, Assignment, HostControl, HostRecord, ReplicaStatus, RevisionRecord,
};

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
        Self::new(ErrorCode::Internal, crate::Chain(&error).to_string())
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
    /// How its JetStream triggers stand, in the order of its spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerView>,
}

/// How one JetStream trigger of an app stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerView {
    /// The stream.
    pub stream: String,
    /// The consumer.
    pub consumer: String,
    /// Its consumer's state, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::streams::ConsumerState>,
    /// Why it could not be.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
