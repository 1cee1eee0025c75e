//! One type per control API verb, each carrying what the server and the CLI must agree on:
//! the role and namespaces it needs, the names it checks, whether it may be sent twice and
//! the type of its answer. A new verb is a struct and its `impl` in the file of its
//! resource, plus one line in [`Request`]; the scheduler cannot then forget to authorize it
//! and the CLI cannot decode its answer as anything else.

mod apps;
mod configs;
mod fleet;
mod hosts;
mod jobs;
mod kv;
mod policies;

pub use apps::{
    AppHistory, AppManifest, Apply, DeleteApp, DescribeApp, GetApps, GetReplicas, PauseRollout,
    ScaleApp, UndoRollout,
};
pub use configs::{
    DeleteConfig, DeleteSecret, DescribeConfig, GetConfigs, GetSecrets, GetSecretsKey, PutConfig,
    PutSecret,
};
pub use fleet::{CancelUpgrade, GetUpgrade, StartUpgrade};
pub use hosts::{CordonHost, DrainHost, GetControlPlane, GetHosts};
pub use jobs::{
    ApplyJobs, CreateJobFrom, DeleteCronJob, DeleteJob, GetCronJobs, GetJobs, JobManifest,
};
pub use kv::{KeyValue, KeyValueAnswer, KeyValueOp, decode_value, encode_value};
pub use policies::{GetEgress, GetTrust, SetEgress, TrustKey, UntrustKey};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::auth::Role;
use crate::names::check_name;

/// What authorizing and checking a request needs to know of it, whatever its verb.
pub trait Rules {
    /// The verb: the last token of the request's subject.
    fn verb(&self) -> &'static str;

    /// The role it needs and the namespaces it touches (none: it reads lattice-wide or
    /// filters what it reads to what the caller may see).
    fn needs(&self) -> (Role, Vec<&str>);

    /// Whether it acts on the whole lattice (hosts, policies), so only a lattice-wide grant
    /// allows it.
    fn lattice_wide(&self) -> bool {
        false
    }

    /// The names it carries follow the naming rules (they become keys and subjects).
    ///
    /// # Errors
    /// The first name that does not.
    fn check_names(&self) -> Result<(), Error>;

    /// Whether sending it again when no answer came is harmless (every verb is declarative
    /// or idempotent but an undo, which would roll back twice).
    fn resend_safe(&self) -> bool {
        true
    }
}

/// A request the CLI can send, with the type of its answer.
pub trait Verb: Rules + Into<Request> + Serialize + DeserializeOwned {
    /// What the control plane answers when it did the request.
    type Answer: Serialize + DeserializeOwned;
}

/// Declares [`Request`], the wire form of every verb, from the list of verb types.
macro_rules! requests {
    ($( $(#[$doc:meta])* $variant:ident($verb:ty), )*) => {
        /// What the CLI asks: a JSON object whose `verb` field names the variant, the
        /// verb's own fields beside it.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", tag = "verb")]
        pub enum Request {
            $( $(#[$doc])* $variant($verb), )*
        }

        $(
            impl From<$verb> for Request {
                fn from(request: $verb) -> Self {
                    Request::$variant(request)
                }
            }
        )*

        impl Request {
            /// The rules of its verb.
            pub fn rules(&self) -> &dyn Rules {
                match self {
                    $( Request::$variant(request) => request, )*
                }
            }
        }
    };
}

requests! {
    /// Create or update apps (all or nothing for validation and route collisions).
    Apply(Apply),
    /// Create jobs and create or update cron jobs.
    ApplyJobs(ApplyJobs),
    /// Jobs with their status.
    GetJobs(GetJobs),
    /// Delete a job.
    DeleteJob(DeleteJob),
    /// Cron jobs with their status.
    GetCronJobs(GetCronJobs),
    /// Delete a cron job and the jobs it made.
    DeleteCronJob(DeleteCronJob),
    /// Make a job from a cron job's template now.
    CreateJobFrom(CreateJobFrom),
    /// Delete an app.
    Delete(DeleteApp),
    /// Change an app's replica count.
    Scale(ScaleApp),
    /// Roll back to an earlier revision.
    Undo(UndoRollout),
    /// Pause or resume a rollout.
    Pause(PauseRollout),
    /// An app's revisions.
    History(AppHistory),
    /// Apps with their status.
    GetApps(GetApps),
    /// Hosts.
    GetHosts(GetHosts),
    /// The control plane's health.
    GetControlPlane(GetControlPlane),
    /// Allow (or stop allowing) guests to reach a special address range.
    Egress(SetEgress),
    /// The lattice's egress policy.
    GetEgress(GetEgress),
    /// Replicas with their status.
    GetReplicas(GetReplicas),
    /// One app in detail.
    DescribeApp(DescribeApp),
    /// Cordon a host or lift its cordon and drain.
    Cordon(CordonHost),
    /// Cordon a host and move its replicas elsewhere.
    Drain(DrainHost),
    /// Create a config object or replace its values.
    PutConfig(PutConfig),
    /// Config objects.
    GetConfigs(GetConfigs),
    /// One config object with its values and users.
    DescribeConfig(DescribeConfig),
    /// Delete a config object no app uses.
    DeleteConfig(DeleteConfig),
    /// The public key secrets are sealed to.
    SecretsKey(GetSecretsKey),
    /// Create a secret or replace its values.
    PutSecret(PutSecret),
    /// Secrets, never their values.
    GetSecrets(GetSecrets),
    /// Delete a secret no app uses.
    DeleteSecret(DeleteSecret),
    /// Trust a public key for signatures.
    TrustKey(TrustKey),
    /// Stop trusting a key.
    UntrustKey(UntrustKey),
    /// The trust policies.
    GetTrust(GetTrust),
    /// An operator's look at, or change to, an app's key-value store.
    KeyValue(KeyValue),
    /// Upgrade the hosts' binary in waves.
    StartUpgrade(StartUpgrade),
    /// The fleet's host upgrade.
    GetUpgrade(GetUpgrade),
    /// Stop the fleet's host upgrade.
    CancelUpgrade(CancelUpgrade),
}

/// A request as a whole follows the rules of its verb.
impl Rules for Request {
    fn verb(&self) -> &'static str {
        self.rules().verb()
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        self.rules().needs()
    }

    fn lattice_wide(&self) -> bool {
        self.rules().lattice_wide()
    }

    fn check_names(&self) -> Result<(), Error> {
        self.rules().check_names()
    }

    fn resend_safe(&self) -> bool {
        self.rules().resend_safe()
    }
}

/// Declares a verb whose fields are a namespace and the name of a `$kind` in it (and
/// perhaps more): its subject's verb (a function of the request), the role it needs, its
/// answer and whether it may be sent twice.
macro_rules! named_verb {
    (
        $(#[$doc:meta])*
        $name:ident, $kind:literal, $verb:expr, $role:expr, $answer:ty, resend: $resend:expr
        $(, $(#[$field_doc:meta])* $field:ident: $type:ty)* $(,)?
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Namespace.
            pub namespace: String,
            /// Name.
            pub name: String,
            $( $(#[$field_doc])* pub $field: $type, )*
        }

        impl $crate::api::Rules for $name {
            fn verb(&self) -> &'static str {
                let verb: fn(&Self) -> &'static str = $verb;
                verb(self)
            }

            fn needs(&self) -> ($crate::auth::Role, Vec<&str>) {
                ($role, vec![self.namespace.as_str()])
            }

            fn check_names(&self) -> Result<(), $crate::Error> {
                $crate::api::verbs::check_named(&self.namespace, $kind, &self.name)
            }

            fn resend_safe(&self) -> bool {
                $resend
            }
        }

        impl $crate::api::Verb for $name {
            type Answer = $answer;
        }
    };
}
use named_verb;

/// Declares a listing of one kind of thing, of one namespace or of every namespace the
/// caller may view.
macro_rules! listing {
    ($(#[$doc:meta])* $name:ident, $answer:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Only this namespace.
            pub namespace: Option<String>,
        }

        impl $crate::api::Rules for $name {
            fn verb(&self) -> &'static str {
                "get"
            }

            fn needs(&self) -> ($crate::auth::Role, Vec<&str>) {
                let namespace = self.namespace.as_deref();
                ($crate::auth::Role::Viewer, namespace.into_iter().collect())
            }

            fn check_names(&self) -> Result<(), $crate::Error> {
                $crate::api::verbs::check_namespace(self.namespace.as_deref())
            }
        }

        impl $crate::api::Verb for $name {
            type Answer = $answer;
        }
    };
}
use listing;

/// Declares a read of something lattice-wide that any viewer may see: a verb with no
/// fields.
macro_rules! lattice_read {
    ($(#[$doc:meta])* $name:ident, $answer:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {}

        impl $crate::api::Rules for $name {
            fn verb(&self) -> &'static str {
                "get"
            }

            fn needs(&self) -> ($crate::auth::Role, Vec<&str>) {
                ($crate::auth::Role::Viewer, Vec::new())
            }

            fn check_names(&self) -> Result<(), $crate::Error> {
                Ok(())
            }
        }

        impl $crate::api::Verb for $name {
            type Answer = $answer;
        }
    };
}
use lattice_read;

/// Declares the rules of a verb only a lattice-wide admin may send, whose fields carry no
/// names (what they carry is checked where it is used): its subject's verb and its answer.
macro_rules! lattice_admin {
    ($name:ident, $verb:literal, $answer:ty) => {
        impl $crate::api::Rules for $name {
            fn verb(&self) -> &'static str {
                $verb
            }

            fn needs(&self) -> ($crate::auth::Role, Vec<&str>) {
                ($crate::auth::Role::Admin, Vec::new())
            }

            fn lattice_wide(&self) -> bool {
                true
            }

            fn check_names(&self) -> Result<(), $crate::Error> {
                Ok(())
            }
        }

        impl $crate::api::Verb for $name {
            type Answer = $answer;
        }
    };
}
use lattice_admin;

/// A namespace and the name of a `kind` (`app`, `config`, …) in it.
pub(crate) fn check_named(namespace: &str, kind: &str, name: &str) -> Result<(), Error> {
    check_name("namespace", namespace)?;
    check_name(&format!("{kind} name"), name)
}

/// A namespace a listing may be narrowed to.
pub(crate) fn check_namespace(namespace: Option<&str>) -> Result<(), Error> {
    namespace.map_or(Ok(()), |namespace| check_name("namespace", namespace))
}

#[cfg(test)]
mod tests;
