//! The trust policies behind `shoal trust`: which public keys a component needs a
//! signature by before hosts run it. The controller copies them into new assignments;
//! replicas already running keep running (like an admission policy, a policy is checked
//! when a replica starts: placed, moved, restarted, rolled out).

use shoal_lattice::api::{ApiError, ErrorCode};
use shoal_lattice::records::now_millis;
use shoal_lattice::trust::{LATTICE_KEY, MAX_KEYS, TrustPolicy, TrustView, TrustedKey};
use shoal_lattice::{Bucket, Lattice};

use crate::configs::put_versioned;

fn key_of(namespace: Option<&str>) -> String {
    namespace.map_or_else(
        || LATTICE_KEY.to_owned(),
        shoal_lattice::trust::namespace_key,
    )
}

fn scope(namespace: Option<&str>) -> String {
    namespace.map_or_else(
        || "the lattice's trust policy".to_owned(),
        |namespace| format!("the trust policy of namespace {namespace}"),
    )
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::Invalid, message)
}

/// Adds key `name` to the lattice's policy (`namespace` `None`) or a namespace's. The same
/// key under the same name again is no change.
///
/// # Errors
/// Invalid when the key is not a P-256 public key, or the name or key is already there
/// differently, or the policy is full.
pub async fn add(
    lattice: &Lattice,
    namespace: Option<&str>,
    name: &str,
    pem: &str,
) -> Result<TrustView, ApiError> {
    let key = TrustedKey::new(name, pem, now_millis()).map_err(invalid)?;
    let scope = scope(namespace);
    let conflict = |policy: &TrustPolicy| -> Option<String> {
        if let Some(same_name) = policy.keys.iter().find(|held| held.name == key.name) {
            return (same_name.id != key.id).then(|| {
                format!(
                    "{scope} already has a key named {name} ({}): shoal trust remove {name} first",
                    same_name.short_id()
                )
            });
        }
        if let Some(same_key) = policy.keys.iter().find(|held| held.id == key.id) {
            return Some(format!(
                "{scope} already trusts this key, as {}",
                same_key.name
            ));
        }
        (policy.keys.len() >= MAX_KEYS)
            .then(|| format!("{scope} holds {MAX_KEYS} keys, the most it may"))
    };
    let record_key = key_of(namespace);
    if let Some(current) = lattice
        .get::<TrustPolicy>(Bucket::Trust, &record_key)
        .await?
        && let Some(problem) = conflict(&current.value)
    {
        return Err(invalid(problem));
    }
    let (policy, _, _) = put_versioned(
        lattice,
        Bucket::Trust,
        &record_key,
        |_| TrustPolicy {
            keys: vec![key.clone()],
        },
        |current: &TrustPolicy, _| {
            if current.keys.iter().any(|held| held.id == key.id) || conflict(current).is_some() {
                return None;
            }
            let mut next = current.clone();
            next.keys.push(key.clone());
            Some(next)
        },
    )
    .await?;
    Ok(TrustView {
        namespace: namespace.map(str::to_owned),
        keys: policy.keys,
    })
}

/// Removes the key named (or with id) `name`.
///
/// # Errors
/// Not found when the policy has no such key.
pub async fn remove(
    lattice: &Lattice,
    namespace: Option<&str>,
    name: &str,
) -> Result<TrustView, ApiError> {
    let record_key = key_of(namespace);
    let matches = |key: &TrustedKey| key.name == name || key.id == name;
    let current = lattice
        .get::<TrustPolicy>(Bucket::Trust, &record_key)
        .await?;
    if !current
        .as_ref()
        .is_some_and(|current| current.value.keys.iter().any(matches))
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "{} has no key {name}; shoal trust list shows them",
                scope(namespace)
            ),
        ));
    }
    let (policy, _, _) = put_versioned(
        lattice,
        Bucket::Trust,
        &record_key,
        |_| TrustPolicy::default(),
        |current: &TrustPolicy, _| {
            current.keys.iter().any(matches).then(|| TrustPolicy {
                keys: current
                    .keys
                    .iter()
                    .filter(|key| !matches(key))
                    .cloned()
                    .collect(),
            })
        },
    )
    .await?;
    Ok(TrustView {
        namespace: namespace.map(str::to_owned),
        keys: policy.keys,
    })
}

/// The lattice's policy and the namespaces' that `visible` lets through (all of them, or
/// only `only`'s), including empty ones only for the lattice.
///
/// # Errors
/// Lattice errors.
pub async fn list(
    lattice: &Lattice,
    visible: impl Fn(&str) -> bool,
) -> Result<Vec<TrustView>, ApiError> {
    let mut views = vec![TrustView {
        namespace: None,
        keys: Vec::new(),
    }];
    for record in lattice.list::<TrustPolicy>(Bucket::Trust, "").await? {
        let keys = record.value.keys.clone();
        if record.key == LATTICE_KEY {
            views[0].keys = keys;
        } else if let Some(namespace) = record.key.strip_prefix("namespaces.")
            && visible(namespace)
            && !keys.is_empty()
        {
            views.push(TrustView {
                namespace: Some(namespace.to_owned()),
                keys,
            });
        }
    }
    Ok(views)
}
