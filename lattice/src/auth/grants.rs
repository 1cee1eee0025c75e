//! Roles and grants: what a person may do in which namespaces, and what an admin grants a
//! host (labels, capacity), as read back from the host's signed JWT.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::*;

/// What a person may do; each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// get, describe, logs, events.
    #[default]
    Viewer,
    /// Also apply, delete, scale, rollout.
    Editor,
    /// Also identities and hosts.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    /// The role's name, as in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a role: viewer, editor or admin"))
    }
}

/// A role in one namespace, or in all of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The namespace; `None` for the whole lattice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Grant {
    /// The scope token in API subjects: the namespace or [`LATTICE_SCOPE`].
    pub fn scope(&self) -> &str {
        self.namespace.as_deref().unwrap_or(LATTICE_SCOPE)
    }

    /// Whether this grant lets its holder act with `role` in `namespace` (`None`: on
    /// something of the whole lattice, such as hosts).
    pub fn allows(&self, role: Role, namespace: Option<&str>) -> bool {
        self.role >= role
            && match (&self.namespace, namespace) {
                (None, _) => true,
                (Some(mine), Some(wanted)) => mine == wanted,
                (Some(_), None) => false,
            }
    }

    /// Reads a grant back from its scope token.
    pub fn from_scope(role: Role, scope: &str) -> Self {
        Grant {
            role,
            namespace: (scope != LATTICE_SCOPE).then(|| scope.to_owned()),
        }
    }

    /// The JWT tag that records it: `role:scope`.
    pub(super) fn tag(&self) -> String {
        format!("{}:{}", self.role, self.scope())
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} in {namespace}", self.role),
            None => write!(f, "{} of the lattice", self.role),
        }
    }
}

/// What an admin grants a host when minting its credential: the labels placement may
/// match it by and the most capacity it may be given. Carried in the JWT's tags
/// (`shoal-label:<key>=<value>`, `shoal-memory:<bytes>`, `shoal-cpu:<millicores>`,
/// `shoal-max-replicas:<n>`), signed with it: a host cannot claim more than this, whatever
/// its own record says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostGrant {
    /// Labels the host may be matched by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The most memory (bytes) its replicas may reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// The most CPU (millicores) its replicas may reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// The most replicas it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
}

impl HostGrant {
    pub(super) fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .labels
            .iter()
            .map(|(key, value)| format!("shoal-label:{key}={value}"))
            .collect();
        tags.extend(self.memory.map(|bytes| format!("shoal-memory:{bytes}")));
        tags.extend(self.cpu.map(|millis| format!("shoal-cpu:{millis}")));
        tags.extend(
            self.max_replicas
                .map(|count| format!("shoal-max-replicas:{count}")),
        );
        tags
    }

    /// Reads a grant back from JWT tags (others are ignored; NATS may lowercase tags, so
    /// label values are as the admin wrote them only when they were lowercase).
    pub(super) fn from_tags(tags: &[String]) -> Self {
        let mut grant = HostGrant::default();
        for tag in tags {
            if let Some(label) = tag.strip_prefix("shoal-label:")
                && let Some((key, value)) = label.split_once('=')
            {
                grant.labels.insert(key.to_owned(), value.to_owned());
            } else if let Some(bytes) = tag.strip_prefix("shoal-memory:") {
                grant.memory = bytes.parse().ok();
            } else if let Some(millis) = tag.strip_prefix("shoal-cpu:") {
                grant.cpu = millis.parse().ok();
            } else if let Some(count) = tag.strip_prefix("shoal-max-replicas:") {
                grant.max_replicas = count.parse().ok();
            }
        }
        grant
    }
}

/// Reads a host's credential (its JWT) as the control plane must: signed by `account` (the
/// lattice's account, which signed the reader's own credential), for a host, named `id`.
/// Returns what it grants.
///
/// # Errors
/// [`AuthError::Malformed`] for anything else: a JWT that does not verify, another
/// account's, another kind's or another host's.
pub fn host_grant(jwt: &str, account: &str, id: &str) -> Result<HostGrant, AuthError> {
    let claims: Claims<UserNats> = decode(jwt)?;
    if claims.iss != account {
        return Err(AuthError::Malformed(
            "the credential was not signed by this lattice's account".to_owned(),
        ));
    }
    if !claims.nats.tags.iter().any(|tag| tag == "shoal-kind:host") {
        return Err(AuthError::Malformed(
            "the credential is not a host's".to_owned(),
        ));
    }
    if claims.name != id {
        return Err(AuthError::Malformed(format!(
            "the credential is host {:?}'s, not {id:?}'s",
            claims.name
        )));
    }
    Ok(HostGrant::from_tags(&claims.nats.tags))
}
