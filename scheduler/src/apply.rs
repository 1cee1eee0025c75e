//! Storing desired state: apply (create or update with a new revision when the template
//! changes), scale and delete, each a compare-and-set on the app's key, retried when
//! another writer got there first.

use shoal_lattice::names::{app_key, revision_key};
use std::collections::BTreeMap;

use shoal_lattice::records::{AppRecord, AppSpec, PinnedConfigs, RevisionRecord, now_millis};
use shoal_lattice::{Bucket, Error, Lattice};

use crate::manifest::App;

/// What applying one app did: the control API's [`Applied`], named for this module.
pub use shoal_lattice::api::Applied as Change;

const ATTEMPTS: usize = 5;

/// What an app's revision pins at apply time besides its spec: the component's digest, the
/// values of its config objects and the versions of its secrets. A change to any of them
/// is a new revision.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pinned {
    /// The component's digest.
    pub digest: String,
    /// The WASI version the component needs, when newer than 0.2.
    pub wasi: Option<String>,
    /// The values of `spec.configFrom`.
    pub config_objects: PinnedConfigs,
    /// The versions of `spec.secrets`.
    pub secret_versions: BTreeMap<String, u64>,
}

impl Pinned {
    /// What `record` pins now.
    pub fn of(record: &AppRecord) -> Self {
        Self {
            digest: record.digest.clone(),
            wasi: record.wasi.clone(),
            config_objects: record.config_objects.clone(),
            secret_versions: record.secret_versions.clone(),
        }
    }
}

/// Stores `app`, resolved to what `pinned` holds.
///
/// # Errors
/// Lattice errors; [`Error::Conflict`] only if the key kept changing for every attempt.
pub async fn apply(
    lattice: &Lattice,
    app: &App,
    pinned: &Pinned,
) -> Result<(Change, AppRecord), Error> {
    let Pinned {
        digest,
        wasi,
        config_objects,
        secret_versions,
    } = pinned;
    let key = app_key(&app.namespace, &app.name);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let now = now_millis();
        let existing = lattice.get::<AppRecord>(Bucket::Apps, &key).await?;
        // An autoscaled app keeps the count the autoscaler reached (within the new bounds):
        // `replicas` is only where a new one starts.
        let adjusted;
        let app = match &app.spec.autoscale {
            Some(autoscale) => {
                let mut spec = app.spec.clone();
                spec.replicas = existing
                    .as_ref()
                    .map_or(app.spec.replicas, |current| current.value.spec.replicas)
                    .clamp(autoscale.min(), autoscale.max().max(autoscale.min()));
                adjusted = App {
                    spec,
                    ..app.clone()
                };
                &adjusted
            }
            None => app,
        };
        let (change, record) = match &existing {
            None => (
                Change::Created {
                    replicas: app.spec.replicas,
                },
                AppRecord {
                    name: app.name.clone(),
                    namespace: app.namespace.clone(),
                    generation: 1,
                    revision: 1,
                    digest: digest.to_owned(),
                    wasi: wasi.clone(),
                    config_objects: config_objects.clone(),
                    secret_versions: secret_versions.clone(),
                    spec: app.spec.clone(),
                    created_at: now,
                    updated_at: now,
                    paused: false,
                },
            ),
            Some(current) => {
                let current = &current.value;
                let template_changed = current.spec.template() != app.spec.template()
                    || current.digest != *digest
                    || current.config_objects != *config_objects
                    || current.secret_versions != *secret_versions;
                let mut record = AppRecord {
                    generation: current.generation + 1,
                    digest: digest.to_owned(),
                    wasi: wasi.clone(),
                    config_objects: config_objects.clone(),
                    spec: app.spec.clone(),
                    updated_at: now,
                    ..current.clone()
                };
                if template_changed {
                    record.revision += 1;
                    let mut changes = differences(&current.spec.template(), &app.spec.template());
                    if current.digest != *digest {
                        changes.push(format!("digest: {} → {digest}", current.digest));
                    }
                    changes.extend(config_changes(&current.config_objects, config_objects));
                    changes.extend(secret_versions.iter().filter_map(|(name, version)| {
                        let old = current.secret_versions.get(name)?;
                        (old != version)
                            .then(|| format!("secret {name}: version {old} → {version}"))
                    }));
                    (
                        Change::Revised {
                            revision: record.revision,
                            changes,
                        },
                        record,
                    )
                } else if current.spec.replicas != app.spec.replicas {
                    (
                        Change::Scaled {
                            from: current.spec.replicas,
                            to: app.spec.replicas,
                        },
                        record,
                    )
                } else if current.spec != app.spec {
                    (
                        Change::Updated {
                            revision: current.revision,
                            changes: differences(&current.spec, &app.spec),
                        },
                        record,
                    )
                } else {
                    return Ok((
                        Change::Unchanged {
                            revision: current.revision,
                        },
                        current.clone(),
                    ));
                }
            }
        };
        let cause = match &change {
            Change::Created { .. } => Some("created".to_owned()),
            Change::Revised { changes, .. } => Some(changes.join("; ")),
            Change::Scaled { .. } | Change::Updated { .. } | Change::Unchanged { .. } => None,
        };
        let written = store(
            lattice,
            &record,
            existing.as_ref().map(|current| current.revision),
            cause,
        )
        .await;
        match written {
            Ok(_) => return Ok((change, record)),
            Err(error @ Error::Conflict { .. }) => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| Error::Conflict {
        bucket: Bucket::Apps.name(lattice.name()),
        key,
    }))
}

/// What changed between two revisions' config objects, for the revision's cause: names
/// and versions, never values (a value may be sensitive; the history says where to look).
fn config_changes(before: &PinnedConfigs, after: &PinnedConfigs) -> Vec<String> {
    after
        .iter()
        .filter_map(|(name, object)| {
            let old = before.get(name)?;
            (old != object).then(|| {
                let keys: Vec<&str> = old
                    .data
                    .keys()
                    .chain(object.data.keys())
                    .filter(|key| old.data.get(*key) != object.data.get(*key))
                    .map(String::as_str)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                format!(
                    "config {name}: version {} → {} ({})",
                    old.version,
                    object.version,
                    if keys.is_empty() {
                        "same values".to_owned()
                    } else {
                        format!("changed {}", keys.join(", "))
                    }
                )
            })
        })
        .collect()
}

/// Writes `record`, compare-and-set: created when `expected` is `None`, else updated only
/// if the key is still at that revision. With a `cause` the template changed, and the
/// revision record (saying why) is written first, so an app never names a revision that
/// is not stored. Revision records are last-writer-wins: of two writers racing to the same
/// revision number, the loser's record may stand until its retry writes the next number.
///
/// # Errors
/// [`Error::Conflict`] when the key moved on; other lattice errors.
pub(crate) async fn store(
    lattice: &Lattice,
    record: &AppRecord,
    expected: Option<u64>,
    cause: Option<String>,
) -> Result<u64, Error> {
    if let Some(cause) = cause {
        lattice
            .put(
                Bucket::Revisions,
                &revision_key(&record.namespace, &record.name, record.revision),
                &RevisionRecord {
                    name: record.name.clone(),
                    namespace: record.namespace.clone(),
                    revision: record.revision,
                    digest: record.digest.clone(),
                    wasi: record.wasi.clone(),
                    config_objects: record.config_objects.clone(),
                    secret_versions: record.secret_versions.clone(),
                    template: record.spec.template(),
                    created_at: record.updated_at,
                    cause,
                },
            )
            .await?;
    }
    let key = app_key(&record.namespace, &record.name);
    let written = match expected {
        None => lattice.create(Bucket::Apps, &key, record).await,
        Some(revision) => lattice.update(Bucket::Apps, &key, record, revision).await,
    }?;
    if let Err(error) = prune_revisions(lattice, record).await {
        tracing::warn!(error = %shoal_lattice::Chain(&error), app = %key, "cannot remove old revisions; they stay for now");
    }
    Ok(written)
}

/// Keeps the app's newest `revisionHistoryLimit` revisions (never fewer than the current
/// one and the one before, which an automatic rollback returns to) and removes the rest.
async fn prune_revisions(lattice: &Lattice, record: &AppRecord) -> Result<(), Error> {
    let kept = u64::from(record.spec.revisions_kept().max(2));
    let oldest_kept = record.revision.saturating_sub(kept - 1);
    // Revisions start at 1: nothing older to look for (a new app, the common case).
    if oldest_kept <= 1 {
        return Ok(());
    }
    for (key, revision) in revision_keys(lattice, &record.namespace, &record.name).await? {
        if revision < oldest_kept {
            lattice.purge(Bucket::Revisions, &key).await?;
        }
    }
    Ok(())
}

/// The keys of an app's revision records, with the revision each names.
async fn revision_keys(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
) -> Result<Vec<(String, u64)>, Error> {
    let prefix = format!("{namespace}.{name}.");
    Ok(lattice
        .keys(Bucket::Revisions, &prefix)
        .await?
        .into_iter()
        .filter_map(|key| {
            let revision = key.strip_prefix(&prefix)?.parse().ok()?;
            Some((key, revision))
        })
        .collect())
}

/// Sets an app's replica count. Returns the previous count, or `None` if there is no app.
///
/// # Errors
/// Lattice errors.
pub async fn scale(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    replicas: u32,
) -> Result<Option<u32>, Error> {
    let before = modify(lattice, namespace, name, |record| {
        if record.spec.replicas == replicas {
            return false;
        }
        record.spec.replicas = replicas;
        record.updated_at = now_millis();
        true
    })
    .await?;
    Ok(before.map(|before| before.spec.replicas))
}

/// Changes the stored record of `namespace/name` with `change` (which returns `false` when
/// there is nothing to write), bumping its generation, compare-and-set; re-reads and
/// retries when another writer got there first. Returns the record as it was before the
/// change, or `None` when there is no such app.
async fn modify(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    mut change: impl FnMut(&mut AppRecord) -> bool,
) -> Result<Option<AppRecord>, Error> {
    let key = app_key(namespace, name);
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let Some(current) = lattice.get::<AppRecord>(Bucket::Apps, &key).await? else {
            return Ok(None);
        };
        let mut record = current.value.clone();
        if !change(&mut record) {
            return Ok(Some(current.value));
        }
        record.generation += 1;
        match lattice
            .update(Bucket::Apps, &key, &record, current.revision)
            .await
        {
            Ok(_) => return Ok(Some(current.value)),
            Err(error @ Error::Conflict { .. }) => last = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last.unwrap_or_else(|| Error::Conflict {
        bucket: Bucket::Apps.name(lattice.name()),
        key,
    }))
}

/// Deletes an app; the scheduler then removes its replicas. Returns whether it existed.
///
/// # Errors
/// Lattice errors.
pub async fn delete(lattice: &Lattice, namespace: &str, name: &str) -> Result<bool, Error> {
    let key = app_key(namespace, name);
    if lattice
        .get::<AppRecord>(Bucket::Apps, &key)
        .await?
        .is_none()
    {
        return Ok(false);
    }
    lattice.purge(Bucket::Apps, &key).await?;
    // A deleted app leaves nothing behind: applied again, it starts at revision 1.
    for (key, _) in revision_keys(lattice, namespace, name).await? {
        lattice.purge(Bucket::Revisions, &key).await?;
    }
    Ok(true)
}

/// The top-level spec fields that differ, as `spec.field: old → new`.
fn differences(before: &AppSpec, after: &AppSpec) -> Vec<String> {
    let (Ok(serde_json::Value::Object(before)), Ok(serde_json::Value::Object(after))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return vec!["spec".to_owned()];
    };
    let mut fields: Vec<&String> = before.keys().chain(after.keys()).collect();
    fields.sort();
    fields.dedup();
    fields
        .into_iter()
        .filter(|field| before.get(*field) != after.get(*field))
        .map(|field| {
            let show = |value: Option<&serde_json::Value>| {
                value.map_or_else(|| "(unset)".to_owned(), ToString::to_string)
            };
            format!(
                "spec.{field}: {} → {}",
                show(before.get(field)),
                show(after.get(field))
            )
        })
        .collect()
}

/// Routes are lattice-wide: one (host, path) belongs to one app. Returns every collision of
/// `apps` with each other and with the apps already stored (other than themselves), naming
/// the app that holds the route.
///
/// # Errors
/// Lattice errors reading the stored apps.
pub async fn route_collisions(lattice: &Lattice, apps: &[App]) -> Result<Vec<String>, Error> {
    // What is stored of the apps not being applied now.
    let others: Vec<AppRecord> = lattice
        .list::<AppRecord>(Bucket::Apps, "")
        .await?
        .into_iter()
        .map(|record| record.value)
        .filter(|stored| {
            !apps
                .iter()
                .any(|app| app.namespace == stored.namespace && app.name == stored.name)
        })
        .collect();
    let mut owners: Vec<((Option<String>, String), String)> = others
        .iter()
        .flat_map(|record| {
            let owner = format!("{}/{}", record.namespace, record.name);
            record
                .spec
                .routes
                .iter()
                .map(move |route| ((route.host.clone(), route.path.clone()), owner.clone()))
        })
        .collect();
    let mut problems = Vec::new();
    // A route host name belongs to the namespace that claimed it first.
    let mut claims: Vec<(String, String, String)> = others
        .iter()
        .flat_map(|record| {
            record.spec.routes.iter().filter_map(|route| {
                Some((
                    route.host.clone()?.to_ascii_lowercase(),
                    record.namespace.clone(),
                    format!("{}/{}", record.namespace, record.name),
                ))
            })
        })
        .collect();
    for app in apps {
        let me = format!("{}/{}", app.namespace, app.name);
        for (index, route) in app.spec.routes.iter().enumerate() {
            let Some(host) = route.host.as_ref().map(|host| host.to_ascii_lowercase()) else {
                continue;
            };
            match claims
                .iter()
                .find(|(claimed, namespace, _)| *claimed == host && *namespace != app.namespace)
            {
                Some((_, namespace, owner)) => problems.push(format!(
                    "app {me}: spec.routes[{index}].host: {host} belongs to namespace {namespace} (app {owner})"
                )),
                None => claims.push((host, app.namespace.clone(), me.clone())),
            }
        }
    }
    for app in apps {
        let me = format!("{}/{}", app.namespace, app.name);
        for (index, route) in app.spec.routes.iter().enumerate() {
            let key = (route.host.clone(), route.path.clone());
            match owners
                .iter()
                .find(|(taken, owner)| *taken == key && *owner != me)
            {
                Some((_, owner)) => problems.push(format!(
                    "app {me}: spec.routes[{index}]: {}{} is already routed to app {owner}",
                    route.host.as_deref().unwrap_or("*"),
                    route.path
                )),
                None => owners.push((key, me.clone())),
            }
        }
    }
    Ok(problems)
}

/// Claims each route host name `apps` use for their namespace, by compare-and-set on its
/// claim record, so that of two namespaces applying one name at once only one gets it
/// ([`route_collisions`] reads what is stored, and both could pass it). A name held by
/// another namespace is refused, unless no app of that namespace routes it any more (its
/// claim is stale: taken over, again by compare-and-set). Returns the refusals.
///
/// # Errors
/// Lattice errors.
pub async fn claim_route_hosts(lattice: &Lattice, apps: &[App]) -> Result<Vec<String>, Error> {
    use shoal_lattice::names::route_host_claim_key;
    use shoal_lattice::records::RouteHostClaim;
    let mut wanted: BTreeMap<String, (String, String)> = BTreeMap::new();
    for app in apps {
        for route in &app.spec.routes {
            if let Some(host) = &route.host {
                wanted
                    .entry(host.to_ascii_lowercase())
                    .or_insert_with(|| (app.namespace.clone(), app.name.clone()));
            }
        }
    }
    let mut problems = Vec::new();
    for (host, (namespace, app)) in wanted {
        let key = route_host_claim_key(&host);
        let claim = RouteHostClaim {
            namespace: namespace.clone(),
            app: app.clone(),
            claimed_at: now_millis(),
        };
        for attempt in 0.. {
            let current = lattice
                .get_checked::<RouteHostClaim>(Bucket::Status, &key)
                .await?;
            let written = match current {
                None => lattice.create(Bucket::Status, &key, &claim).await,
                Some(Ok(held)) if held.value.namespace == namespace => break,
                Some(Ok(held)) => {
                    let young =
                        now_millis().saturating_sub(held.value.claimed_at) < CLAIM_SETTLES_MS;
                    if young || still_routes(lattice, &held.value.namespace, &host).await? {
                        problems.push(format!(
                            "app {namespace}/{app}: route host {host} belongs to namespace {} (app {}/{})",
                            held.value.namespace, held.value.namespace, held.value.app
                        ));
                        break;
                    }
                    lattice
                        .update(Bucket::Status, &key, &claim, held.revision)
                        .await
                }
                // Unreadable: replaced, as nothing can hold a name with it.
                Some(Err(revision)) => lattice.update(Bucket::Status, &key, &claim, revision).await,
            };
            match written {
                Ok(_) => break,
                Err(Error::Conflict { .. }) if attempt < ATTEMPTS => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(problems)
}

/// How long a route host claim holds without an app that routes the name: the claiming
/// apply stores its apps right after claiming (or fails, leaving the claim to lapse).
const CLAIM_SETTLES_MS: u64 = 30_000;

/// Whether an app of `namespace` still routes host name `host`.
async fn still_routes(lattice: &Lattice, namespace: &str, host: &str) -> Result<bool, Error> {
    Ok(lattice
        .list::<AppRecord>(Bucket::Apps, &format!("{namespace}."))
        .await?
        .iter()
        .any(|record| {
            record.value.spec.routes.iter().any(|route| {
                route
                    .host
                    .as_ref()
                    .is_some_and(|claimed| claimed.eq_ignore_ascii_case(host))
            })
        }))
}

/// Every stored revision of an app, oldest first.
///
/// # Errors
/// Lattice errors.
pub async fn history(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
) -> Result<Vec<RevisionRecord>, Error> {
    let mut revisions: Vec<RevisionRecord> = lattice
        .list::<RevisionRecord>(Bucket::Revisions, &format!("{namespace}.{name}."))
        .await?
        .into_iter()
        .map(|record| record.value)
        .filter(|revision| revision.namespace == namespace && revision.name == name)
        .collect();
    revisions.sort_by_key(|revision| revision.revision);
    Ok(revisions)
}

/// What an undo found to go back to.
#[derive(Debug)]
pub enum Undo {
    /// There is no such app.
    NoApp,
    /// There is no such revision (or no earlier one).
    NoRevision(Option<u64>),
    /// Rolled back to the revision: the change made and the record as stored.
    Done(u64, Change, Box<AppRecord>),
}

/// Rolls `namespace/name` back to revision `to` (default: the one before the current), as a
/// new revision with that template, keeping the current replica count.
///
/// # Errors
/// Lattice errors.
pub async fn undo(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    to: Option<u64>,
) -> Result<Undo, Error> {
    let Some(current) = lattice
        .get::<AppRecord>(Bucket::Apps, &app_key(namespace, name))
        .await?
    else {
        return Ok(Undo::NoApp);
    };
    let revisions = history(lattice, namespace, name).await?;
    let target = match to {
        Some(to) => revisions.iter().find(|revision| revision.revision == to),
        None => revisions
            .iter()
            .rev()
            .find(|revision| revision.revision < current.value.revision),
    };
    let Some(target) = target else {
        return Ok(Undo::NoRevision(to));
    };
    let app = App {
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        spec: AppSpec {
            replicas: current.value.spec.replicas,
            revision_history_limit: current.value.spec.revision_history_limit,
            ..target.template.clone()
        },
    };
    // Secret values are not kept per revision: the target runs with the current ones.
    let pinned = Pinned {
        digest: target.digest.clone(),
        wasi: target.wasi.clone(),
        config_objects: target.config_objects.clone(),
        secret_versions: current.value.secret_versions.clone(),
    };
    let (change, record) = apply(lattice, &app, &pinned).await?;
    Ok(Undo::Done(target.revision, change, Box::new(record)))
}

/// Pauses or resumes an app's rollout. Returns whether the app exists.
///
/// # Errors
/// Lattice errors.
pub async fn set_paused(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
    paused: bool,
) -> Result<bool, Error> {
    let before = modify(lattice, namespace, name, |record| {
        let changed = record.paused != paused;
        record.paused = paused;
        changed
    })
    .await?;
    Ok(before.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_lattice::records::PinnedConfig;

    #[test]
    fn a_config_change_is_named_by_object_version_and_keys_never_values() {
        let pinned = |version: u64, pairs: &[(&str, &str)]| {
            PinnedConfigs::from([(
                "settings".to_owned(),
                PinnedConfig {
                    version,
                    data: pairs
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                },
            )])
        };
        let before = pinned(1, &[("greeting", "hello"), ("token", "s3cret")]);
        let after = pinned(
            2,
            &[("greeting", "bonjour"), ("token", "s3cret"), ("new", "x")],
        );
        let changes = config_changes(&before, &after);
        assert_eq!(
            changes,
            ["config settings: version 1 → 2 (changed greeting, new)"]
        );
        assert!(!changes[0].contains("bonjour") && !changes[0].contains("s3cret"));
        assert!(config_changes(&before, &before).is_empty());
    }
}
