//! Config objects: named values of a namespace that apps read through `wasi:config/store`
//! (`spec.configFrom`). Each app's revision pins the values it runs with, as it pins its
//! component's digest, so a change to an object reaches the apps that list it as a new
//! revision: through readiness, with automatic rollback, and named in the history. Unlike a
//! Kubernetes ConfigMap, whose change reaches no running pod until someone restarts it.

use std::collections::BTreeMap;

use shoal_lattice::api::{AppliedApp, ConfigPut, ConfigView};
use shoal_lattice::names::app_key;
use shoal_lattice::records::{AppRecord, ConfigObject, PinnedConfig, PinnedConfigs, now_millis};
use shoal_lattice::{Bucket, Error, Lattice, Versioned};

use crate::apply;
use crate::manifest::App;

const ATTEMPTS: usize = 5;

/// The values of `names` (config objects of `namespace`) as stored now; `Err` says what is
/// wrong with the ones that do not exist or cannot be used.
///
/// # Errors
/// Lattice errors, or what is wrong with the unusable names.
pub async fn pin(
    lattice: &Lattice,
    namespace: &str,
    names: &[String],
) -> Result<Result<PinnedConfigs, Vec<String>>, Error> {
    let mut pinned = PinnedConfigs::new();
    let mut unusable = Vec::new();
    for name in names {
        match lattice
            .get_checked::<ConfigObject>(Bucket::Configs, &app_key(namespace, name))
            .await?
        {
            // Written around the API (by a raw client): not pinned into any revision.
            Some(Err(_)) => unusable.push(format!(
                "the stored config {name:?} is not a valid config object: shoal config create {name} -n {namespace} again"
            )),
            Some(Ok(object)) => {
                pinned.insert(
                    name.clone(),
                    PinnedConfig {
                        version: object.value.version,
                        data: object.value.data,
                    },
                );
            }
            None => unusable.push(format!(
                "there is no config {name:?} in namespace {namespace}: shoal config create {name} -n {namespace} --from-literal KEY=VALUE"
            )),
        }
    }
    Ok(if unusable.is_empty() {
        Ok(pinned)
    } else {
        Err(unusable)
    })
}

/// Stores `data` as config object `namespace/name` (a new version when it changed), then
/// gives its values to every app of the namespace that lists it and does not run them yet.
/// Apps are brought up to date even when the values did not change, so repeating a put
/// finishes one that stopped half way.
///
/// # Errors
/// Lattice errors.
pub async fn put(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    data: BTreeMap<String, String>,
) -> Result<ConfigPut, Error> {
    let (object, created, changed) = put_versioned(
        lattice,
        Bucket::Configs,
        &app_key(namespace, name),
        |now| ConfigObject {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            version: 1,
            data: data.clone(),
            created_at: now,
            updated_at: now,
        },
        |current: &ConfigObject, now| {
            (current.data != data).then(|| ConfigObject {
                version: current.version + 1,
                data: data.clone(),
                updated_at: now,
                ..current.clone()
            })
        },
    )
    .await?;
    let users = users(lattice, namespace, name).await?;
    let apps = reapply(lattice, users, |app| {
        let behind = app
            .config_objects
            .get(name)
            .is_none_or(|pinned| pinned.version != object.version);
        behind.then(|| {
            let mut pinned = apply::Pinned::of(app);
            pinned.config_objects.insert(
                name.to_owned(),
                PinnedConfig {
                    version: object.version,
                    data: object.data.clone(),
                },
            );
            pinned
        })
    })
    .await?;
    Ok(ConfigPut {
        version: object.version,
        created,
        changed,
        apps,
    })
}

/// Writes the record at `key` of `bucket` by compare-and-set, again while other writers get
/// there first: `fresh(now)` when there is none (or one written around the API, which is
/// replaced), else `change(current, now)`, which is `None` to leave it as it is. Returns
/// the record as stored, whether it is new, and whether it changed.
///
/// # Errors
/// Lattice errors; [`Error::Conflict`] if the key kept changing for every attempt.
pub(crate) async fn put_versioned<T>(
    lattice: &Lattice,
    bucket: Bucket,
    key: &str,
    fresh: impl Fn(u64) -> T,
    change: impl Fn(&T, u64) -> Option<T>,
) -> Result<(T, bool, bool), Error>
where
    T: serde::Serialize + serde::de::DeserializeOwned + shoal_lattice::Validate,
{
    for _ in 0..ATTEMPTS {
        let now = now_millis();
        let written = match lattice.get_checked::<T>(bucket, key).await? {
            Some(Ok(current)) => match change(&current.value, now) {
                None => return Ok((current.value, false, false)),
                Some(next) => lattice
                    .update(bucket, key, &next, current.revision)
                    .await
                    .map(|_| (next, false, true)),
            },
            // A record written around the API: replaced, as if new.
            Some(Err(revision)) => {
                let next = fresh(now);
                lattice
                    .update(bucket, key, &next, revision)
                    .await
                    .map(|_| (next, true, true))
            }
            None => {
                let next = fresh(now);
                lattice
                    .create(bucket, key, &next)
                    .await
                    .map(|_| (next, true, true))
            }
        };
        match written {
            Ok(done) => return Ok(done),
            Err(Error::Conflict { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Err(Error::Conflict {
        bucket: bucket.name(lattice.name()),
        key: key.to_owned(),
    })
}

/// Applies each of `apps` again with what `pin` says it should now pin (`None`: it is up to
/// date): a new revision each, rolled out as any other.
///
/// # Errors
/// Lattice errors.
pub(crate) async fn reapply(
    lattice: &Lattice,
    apps: Vec<Versioned<AppRecord>>,
    pin: impl Fn(&AppRecord) -> Option<apply::Pinned>,
) -> Result<Vec<AppliedApp>, Error> {
    let mut applied = Vec::new();
    for app in apps {
        let Some(pinned) = pin(&app.value) else {
            continue;
        };
        let manifest = App {
            name: app.value.name,
            namespace: app.value.namespace,
            spec: app.value.spec,
        };
        let (change, _) = apply::apply(lattice, &manifest, &pinned).await?;
        applied.push(AppliedApp {
            namespace: manifest.namespace,
            name: manifest.name,
            applied: change,
        });
    }
    Ok(applied)
}

/// The apps of `namespace` whose `configFrom` names `name`.
async fn users(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
) -> Result<Vec<Versioned<AppRecord>>, Error> {
    apps_listing(lattice, namespace, name, |spec| &spec.config_from).await
}

/// The apps of `namespace` whose list `field` (of config objects or secrets) names `name`.
pub(crate) async fn apps_listing(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    field: impl Fn(&shoal_lattice::records::AppSpec) -> &Vec<String>,
) -> Result<Vec<Versioned<AppRecord>>, Error> {
    Ok(lattice
        .list::<AppRecord>(Bucket::Apps, &format!("{namespace}."))
        .await?
        .into_iter()
        .filter(|app| {
            app.value.namespace == namespace && field(&app.value.spec).iter().any(|n| n == name)
        })
        .collect())
}

/// Config objects of the namespaces `visible` allows, with the apps that use each.
///
/// # Errors
/// Lattice errors.
pub async fn list(
    lattice: &Lattice,
    visible: impl Fn(&str) -> bool,
) -> Result<Vec<ConfigView>, Error> {
    let apps = lattice.list::<AppRecord>(Bucket::Apps, "").await?;
    Ok(lattice
        .list::<ConfigObject>(Bucket::Configs, "")
        .await?
        .into_iter()
        .filter(|object| visible(&object.value.namespace))
        .map(|object| {
            let used_by = apps
                .iter()
                .filter(|app| {
                    app.value.namespace == object.value.namespace
                        && app.value.spec.config_from.contains(&object.value.name)
                })
                .map(|app| app.value.name.clone())
                .collect();
            ConfigView {
                object: object.value,
                used_by,
            }
        })
        .collect())
}

/// One config object with the apps that use it; `None` when there is none.
///
/// # Errors
/// Lattice errors.
pub async fn describe(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
) -> Result<Option<ConfigView>, Error> {
    let Some(object) = lattice
        .get::<ConfigObject>(Bucket::Configs, &app_key(namespace, name))
        .await?
    else {
        return Ok(None);
    };
    let used_by = users(lattice, namespace, name)
        .await?
        .into_iter()
        .map(|app| app.value.name)
        .collect();
    Ok(Some(ConfigView {
        object: object.value,
        used_by,
    }))
}

/// What deleting a config object did.
#[derive(Debug)]
pub enum Deleted {
    /// Gone.
    Done,
    /// There was none.
    NotFound,
    /// Apps list it: kept.
    InUse(Vec<String>),
}

/// Deletes config object `namespace/name` unless an app lists it (its next revision would
/// have nothing to read).
///
/// # Errors
/// Lattice errors.
pub async fn delete(lattice: &Lattice, namespace: &str, name: &str) -> Result<Deleted, Error> {
    delete_unused(lattice, Bucket::Configs, namespace, name, |spec| {
        &spec.config_from
    })
    .await
}

/// Deletes `namespace/name` from `bucket` (of config objects or secrets) unless an app of
/// the namespace lists it in `field`.
///
/// # Errors
/// Lattice errors.
pub(crate) async fn delete_unused(
    lattice: &Lattice,
    bucket: Bucket,
    namespace: &str,
    name: &str,
    field: impl Fn(&shoal_lattice::records::AppSpec) -> &Vec<String>,
) -> Result<Deleted, Error> {
    let key = app_key(namespace, name);
    if lattice
        .get::<serde_json::Value>(bucket, &key)
        .await?
        .is_none()
    {
        return Ok(Deleted::NotFound);
    }
    let users: Vec<String> = apps_listing(lattice, namespace, name, field)
        .await?
        .into_iter()
        .map(|app| app.value.name)
        .collect();
    if !users.is_empty() {
        return Ok(Deleted::InUse(users));
    }
    lattice.delete(bucket, &key).await?;
    Ok(Deleted::Done)
}
