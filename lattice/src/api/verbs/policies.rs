//! The verbs on the lattice's policies: which keys' signatures hosts trust, and which
//! special address ranges guests may reach. Only a lattice-wide admin changes either (a
//! policy binds every editor of its scope).

use serde::{Deserialize, Serialize};

use super::{Rules, Verb, check_namespace, lattice_admin, lattice_read, listing};
use crate::Error;
use crate::auth::Role;
use crate::names::check_name;
use crate::records::EgressPolicy;
use crate::trust::TrustView;

/// Trust a public key: with any key trusted, a host runs only components signed by one
/// (the lattice's keys and the app's namespace's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustKey {
    /// The namespace's policy; `None`: the lattice's.
    pub namespace: Option<String>,
    /// The key's name in the policy.
    pub name: String,
    /// The key, a `PUBLIC KEY` PEM block (ECDSA P-256).
    pub pem: String,
}

impl Rules for TrustKey {
    fn verb(&self) -> &'static str {
        "trust"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Admin, self.namespace.as_deref().into_iter().collect())
    }

    fn lattice_wide(&self) -> bool {
        true
    }

    fn check_names(&self) -> Result<(), Error> {
        check_namespace(self.namespace.as_deref())?;
        check_name("key name", &self.name)
    }
}

impl Verb for TrustKey {
    type Answer = TrustView;
}

/// Stop trusting a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UntrustKey {
    /// The namespace's policy; `None`: the lattice's.
    pub namespace: Option<String>,
    /// The key's name (or id).
    pub name: String,
}

impl Rules for UntrustKey {
    fn verb(&self) -> &'static str {
        "untrust"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Admin, self.namespace.as_deref().into_iter().collect())
    }

    fn lattice_wide(&self) -> bool {
        true
    }

    fn check_names(&self) -> Result<(), Error> {
        check_namespace(self.namespace.as_deref())?;
        // A key is named by its name or its id (sha256:…).
        if self.name.starts_with("sha256:") {
            Ok(())
        } else {
            check_name("key name", &self.name)
        }
    }
}

impl Verb for UntrustKey {
    type Answer = TrustView;
}

listing!(
    /// The trust policies: the lattice's and those of the namespaces the caller may view
    /// (with a namespace: the lattice's and that one's).
    GetTrust,
    Vec<TrustView>
);

/// Allow (or stop allowing) guests to reach a special address range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetEgress {
    /// The range, as a CIDR.
    pub range: String,
    /// Allow it, or take it out.
    pub allowed: bool,
}

// What guests may reach of a host's own networks: the lattice's admins decide. The range
// is parsed, with its own error, where it is stored.
lattice_admin!(SetEgress, "egress", EgressPolicy);

lattice_read!(
    /// The lattice's egress policy.
    GetEgress,
    EgressPolicy
);
