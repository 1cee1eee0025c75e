//! Secrets: values of a namespace sealed to the lattice's secrets key (the CLI seals them;
//! the `secrets` bucket, and so nats-server's disk, never holds a value in clear). Apps list
//! them in `spec.secrets`; the scheduler opens them only to seal them again to the one
//! host an assignment goes to, so a host receives a secret only while it runs a replica of
//! an app that lists it. Like config objects, a new version reaches the apps that list it
//! as a new revision. No request returns a value.

use std::collections::BTreeMap;

use shoal_lattice::api::{ConfigPut, SecretView};
use shoal_lattice::names::app_key;
use shoal_lattice::records::{AppSpec, SecretObject, SecretsKey};
use shoal_lattice::secrets::{Sealed, SecretValues, XKey};
use shoal_lattice::{Bucket, Error, Lattice};

use crate::apply;
use crate::configs::apps_listing;

/// Publishes the public half of the lattice's secrets key where clients read it.
///
/// # Errors
/// Lattice errors.
pub async fn publish_key(lattice: &Lattice, key: &XKey) -> Result<(), Error> {
    let public = SecretsKey {
        public: key.public_key(),
    };
    let current = lattice
        .get::<SecretsKey>(Bucket::Status, shoal_lattice::names::SECRETS_KEY)
        .await?;
    if current.is_none_or(|current| current.value != public) {
        lattice
            .put(Bucket::Status, shoal_lattice::names::SECRETS_KEY, &public)
            .await?;
    }
    Ok(())
}

/// The secrets `names` of `namespace` as stored now; `Err` says what is wrong with the ones
/// that do not exist or cannot be used.
///
/// # Errors
/// Lattice errors.
pub async fn stored(
    lattice: &Lattice,
    namespace: &str,
    names: &[String],
) -> Result<Result<Vec<SecretObject>, Vec<String>>, Error> {
    let mut found = Vec::new();
    let mut unusable = Vec::new();
    for name in names {
        match lattice
            .get_checked::<SecretObject>(Bucket::Secrets, &app_key(namespace, name))
            .await?
        {
            Some(Ok(secret)) => found.push(secret.value),
            Some(Err(_)) => unusable.push(format!(
                "the stored secret {name:?} is not a valid secret: shoal secret create {name} -n {namespace} again"
            )),
            None => unusable.push(format!(
                "there is no secret {name:?} in namespace {namespace}: shoal secret create {name} -n {namespace} --from-literal KEY=VALUE"
            )),
        }
    }
    Ok(if unusable.is_empty() {
        Ok(found)
    } else {
        Err(unusable)
    })
}

/// Keys an app would read twice: defined by its config (inline or a config object) and by
/// one of its secrets, or by two secrets. Each as `key (where, where)`.
pub fn overlaps(
    spec: &AppSpec,
    config_objects: &shoal_lattice::records::PinnedConfigs,
    secrets: &[SecretObject],
) -> Vec<String> {
    let mut sources: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for key in spec.config.keys() {
        sources
            .entry(key)
            .or_default()
            .push("spec.config".to_owned());
    }
    for (name, object) in config_objects {
        for key in object.data.keys() {
            sources
                .entry(key)
                .or_default()
                .push(format!("config {name}"));
        }
    }
    let mut problems = Vec::new();
    let mut from_secrets: BTreeMap<&str, &str> = BTreeMap::new();
    for secret in secrets {
        for key in &secret.keys {
            if let Some(other) = from_secrets.insert(key, &secret.name) {
                problems.push(format!("{key} (secrets {other} and {})", secret.name));
            } else if let Some(configs) = sources.get(key.as_str()) {
                problems.push(format!(
                    "{key} (secret {} and {})",
                    secret.name,
                    configs.join(", ")
                ));
            }
        }
    }
    problems
}

/// Stores a secret's sealed values (a new version when they changed, which cannot be told
/// from the box: every put is a new version), then gives the new version to every app of
/// the namespace that lists it.
///
/// # Errors
/// Lattice errors.
pub async fn put(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    keys: Vec<String>,
    sealed: Sealed,
) -> Result<ConfigPut, Error> {
    // Every put is a new version: a box cannot be compared with the one stored.
    let (secret, created, _) = crate::configs::put_versioned(
        lattice,
        Bucket::Secrets,
        &app_key(namespace, name),
        |now| SecretObject {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            version: 1,
            keys: keys.clone(),
            sealed: sealed.clone(),
            created_at: now,
            updated_at: now,
        },
        |current: &SecretObject, now| {
            Some(SecretObject {
                version: current.version + 1,
                keys: keys.clone(),
                sealed: sealed.clone(),
                updated_at: now,
                ..current.clone()
            })
        },
    )
    .await?;
    let users = apps_listing(lattice, namespace, name, |spec| &spec.secrets).await?;
    let apps = crate::configs::reapply(lattice, users, |app| {
        (app.secret_versions.get(name) != Some(&secret.version)).then(|| {
            let mut pinned = apply::Pinned::of(app);
            pinned
                .secret_versions
                .insert(name.to_owned(), secret.version);
            pinned
        })
    })
    .await?;
    Ok(ConfigPut {
        version: secret.version,
        created,
        changed: true,
        apps,
    })
}

/// Secrets of the namespaces `visible` allows: names, keys, versions, users; no values.
///
/// # Errors
/// Lattice errors.
pub async fn list(
    lattice: &Lattice,
    visible: impl Fn(&str) -> bool,
) -> Result<Vec<SecretView>, Error> {
    let apps = lattice
        .list::<shoal_lattice::records::AppRecord>(Bucket::Apps, "")
        .await?;
    Ok(lattice
        .list::<SecretObject>(Bucket::Secrets, "")
        .await?
        .into_iter()
        .filter(|secret| visible(&secret.value.namespace))
        .map(|secret| {
            let secret = secret.value;
            SecretView {
                used_by: apps
                    .iter()
                    .filter(|app| {
                        app.value.namespace == secret.namespace
                            && app.value.spec.secrets.contains(&secret.name)
                    })
                    .map(|app| app.value.name.clone())
                    .collect(),
                name: secret.name,
                namespace: secret.namespace,
                version: secret.version,
                keys: secret.keys,
                created_at: secret.created_at,
                updated_at: secret.updated_at,
            }
        })
        .collect())
}

/// Deletes secret `namespace/name` unless an app lists it.
///
/// # Errors
/// Lattice errors.
pub async fn delete(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
) -> Result<crate::configs::Deleted, Error> {
    crate::configs::delete_unused(lattice, Bucket::Secrets, namespace, name, |spec| {
        &spec.secrets
    })
    .await
}

/// The values of `names` (secrets of `namespace`, as `stored` holds them) sealed to the
/// host key `recipient`: what an assignment to that host carries.
///
/// # Errors
/// Why they cannot be given: no lattice key, a missing secret, a box that does not open.
pub fn seal_for(
    lattice_key: Option<&XKey>,
    namespace: &str,
    names: &[String],
    stored: impl Fn(&str) -> Option<SecretObject>,
    recipient: &str,
) -> Result<Sealed, String> {
    let Some(key) = lattice_key else {
        return Err(
            "the scheduler has no secrets key (shoal scheduler --secrets-key FILE)".to_owned(),
        );
    };
    let mut values = SecretValues::default();
    for name in names {
        let secret = stored(&app_key(namespace, name))
            .ok_or_else(|| format!("secret {namespace}/{name} does not exist"))?;
        let opened = secret
            .sealed
            .open(key)
            .map_err(|error| format!("secret {namespace}/{name}: {error}"))?;
        values.extend(&opened);
    }
    values
        .seal(key, recipient)
        .map_err(|error| error.to_string())
}
