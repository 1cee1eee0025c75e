//! How the scheduler does the verbs on apps: apply (validated as a manifest would be,
//! all or nothing), delete, scale, roll back, pause, and the reads of apps, revisions and
//! replicas.

use std::collections::HashMap;

use shoal_lattice::api::{
    AppDetail, AppHistory, AppManifest, AppView, AppliedApp, Apply, DeleteApp, DescribeApp,
    ErrorCode, GetApps, GetReplicas, History, PauseRollout, ReplicaView, ScaleApp, Scaled,
    TriggerView, UndoRollout, UndoneTo,
};
use shoal_lattice::names::{app_key, app_status_key};
use shoal_lattice::records::{AppRecord, AppStatus, Assignment, HostRecord, ReplicaStatus};
use shoal_lattice::{Bucket, Lattice};

use super::{ApiError, Context, Handle, internal, no_app};
use crate::apply::{self, Change, Undo};
use crate::configs;
use crate::manifest::App;
use crate::secrets;

impl Handle for Apply {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<AppliedApp>, ApiError> {
        apply_all(cx.lattice, self.apps).await
    }
}

impl Handle for DeleteApp {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let Self { namespace, name } = self;
        if !apply::delete(cx.lattice, &namespace, &name).await? {
            return Err(no_app(&namespace, &name));
        }
        // Its key-value data goes with it: an app applied again under the name starts
        // empty.
        cx.lattice.remove_app_stores(&namespace, &name, &[]).await?;
        // Its consumers too (the streams stay, with their messages, for the namespace).
        cx.lattice
            .remove_app_triggers(&namespace, &name, &[])
            .await?;
        Ok(())
    }
}

impl Handle for ScaleApp {
    async fn handle(self, cx: &Context<'_>) -> Result<Scaled, ApiError> {
        let Self {
            namespace,
            name,
            replicas,
        } = self;
        let max = shoal_lattice::validate::MAX_REPLICAS;
        if replicas > max {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!("replicas: must be at most {max}"),
            ));
        }
        // The autoscaler owns an autoscaled app's count: a scale by hand would be undone
        // at its next decision.
        if let Some(autoscale) = cx
            .lattice
            .get::<AppRecord>(Bucket::Apps, &app_key(&namespace, &name))
            .await?
            .and_then(|app| app.value.spec.autoscale)
        {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!(
                    "app {namespace}/{name} autoscales between {} and {} replicas: change spec.autoscale (min, max) instead",
                    autoscale.min(),
                    autoscale.max()
                ),
            ));
        }
        match apply::scale(cx.lattice, &namespace, &name, replicas).await? {
            Some(from) => Ok(Scaled { from }),
            None => Err(no_app(&namespace, &name)),
        }
    }
}

impl Handle for UndoRollout {
    async fn handle(self, cx: &Context<'_>) -> Result<UndoneTo, ApiError> {
        let Self {
            namespace,
            name,
            to_revision,
        } = self;
        match apply::undo(cx.lattice, &namespace, &name, to_revision).await? {
            Undo::NoApp => Err(no_app(&namespace, &name)),
            Undo::NoRevision(Some(to)) => Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "app {namespace}/{name} has no revision {to}; shoal rollout history {name} lists them"
                ),
            )),
            Undo::NoRevision(None) => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("app {namespace}/{name} has no earlier revision to return to"),
            )),
            Undo::Done(target, change, record) => Ok(UndoneTo {
                target,
                revision: record.revision,
                revised: matches!(change, Change::Revised { .. }),
            }),
        }
    }
}

impl Handle for PauseRollout {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let Self {
            namespace,
            name,
            paused,
        } = self;
        if !apply::set_paused(cx.lattice, &namespace, &name, paused).await? {
            return Err(no_app(&namespace, &name));
        }
        Ok(())
    }
}

impl Handle for AppHistory {
    async fn handle(self, cx: &Context<'_>) -> Result<History, ApiError> {
        let Self { namespace, name } = self;
        let app = app_record(cx.lattice, &namespace, &name).await?;
        let revisions = apply::history(cx.lattice, &namespace, &name).await?;
        Ok(History {
            current: app.revision,
            revisions,
        })
    }
}

impl Handle for GetApps {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<AppView>, ApiError> {
        let status: HashMap<String, AppStatus> = cx
            .lattice
            .list::<AppStatus>(Bucket::Status, "apps.")
            .await?
            .into_iter()
            .map(|record| {
                let key = record
                    .key
                    .strip_prefix("apps.")
                    .unwrap_or(&record.key)
                    .to_owned();
                (key, record.value)
            })
            .collect();
        let visible = cx.visible(self.namespace.as_deref());
        Ok(cx
            .lattice
            .list::<AppRecord>(Bucket::Apps, "")
            .await?
            .into_iter()
            .filter(|record| visible(&record.value.namespace))
            .map(|record| AppView {
                status: status.get(&record.key).cloned(),
                app: record.value,
            })
            .collect())
    }
}

impl Handle for GetReplicas {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<ReplicaView>, ApiError> {
        let visible = cx.visible(self.namespace.as_deref());
        Ok(replicas(cx.lattice)
            .await?
            .into_iter()
            .filter(|replica| visible(&replica.assignment.namespace))
            .collect())
    }
}

impl Handle for DescribeApp {
    async fn handle(self, cx: &Context<'_>) -> Result<AppDetail, ApiError> {
        let Self { namespace, name } = self;
        let app = app_record(cx.lattice, &namespace, &name).await?;
        let status = cx
            .lattice
            .get::<AppStatus>(Bucket::Status, &app_status_key(&namespace, &name))
            .await?
            .map(|record| record.value);
        let replicas = replicas(cx.lattice)
            .await?
            .into_iter()
            .filter(|replica| {
                replica.assignment.app == name && replica.assignment.namespace == namespace
            })
            .collect();
        // Requests in flight at its replicas, as the hosts last said (autoscaling's input).
        let load_key = format!("{namespace}/{name}");
        let load = cx
            .lattice
            .list::<HostRecord>(Bucket::Hosts, "")
            .await?
            .iter()
            .filter_map(|host| host.value.load.get(&load_key))
            .fold(0u64, |sum, milli| sum.saturating_add(*milli));
        let mut triggers = Vec::new();
        for trigger in &app.spec.triggers {
            let Some(stream) = &trigger.stream else {
                continue;
            };
            let state = cx.lattice.trigger_state(&namespace, &name, trigger).await;
            triggers.push(TriggerView {
                stream: stream.clone(),
                consumer: trigger.consumer().to_owned(),
                error: state
                    .as_ref()
                    .err()
                    .map(|error| shoal_lattice::Chain(error).to_string()),
                state: state.ok(),
            });
        }
        Ok(AppDetail {
            app,
            status,
            replicas,
            load_milli: load,
            triggers,
        })
    }
}

/// The app's record, or NotFound.
async fn app_record(lattice: &Lattice, namespace: &str, name: &str) -> Result<AppRecord, ApiError> {
    Ok(lattice
        .get::<AppRecord>(Bucket::Apps, &app_key(namespace, name))
        .await?
        .ok_or_else(|| no_app(namespace, name))?
        .value)
}

/// Every assignment with its replica's status (assignments read first, so each status is at
/// least as fresh as its assignment).
pub(super) async fn replicas(lattice: &Lattice) -> Result<Vec<ReplicaView>, ApiError> {
    let assignments = lattice.list::<Assignment>(Bucket::Assignments, "").await?;
    let status: HashMap<String, ReplicaStatus> = shoal_lattice::records::trusted_statuses(
        lattice
            .list::<ReplicaStatus>(Bucket::Status, "replicas.")
            .await?,
        assignments.iter().map(|record| &record.value),
    );
    Ok(assignments
        .into_iter()
        .map(|record| ReplicaView {
            status: status.get(&record.value.replica).cloned(),
            assignment: record.value,
        })
        .collect())
}

/// Apps of one apply stored at once.
const APPLY_AT_ONCE: usize = 16;

/// Validates every app as a manifest would be, checks routes against what is stored, then
/// stores each: all or nothing up to the first write.
async fn apply_all(lattice: &Lattice, apps: Vec<AppManifest>) -> Result<Vec<AppliedApp>, ApiError> {
    let mut problems = Vec::new();
    for (index, app) in apps.iter().enumerate() {
        for problem in app.spec.problems(&format!("apps[{index}].spec")) {
            problems.push(problem.to_string());
        }
        if !shoal_lattice::validate::is_digest(&app.digest) {
            problems.push(format!("apps[{index}].digest: not a sha256 digest"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for app in &apps {
        if !seen.insert((&app.namespace, &app.name)) {
            problems.push(format!(
                "app {}/{} appears twice in one apply",
                app.namespace, app.name
            ));
        }
    }
    if !problems.is_empty() {
        return Err(nothing_applied(
            ErrorCode::Invalid,
            "the apps are not valid",
            &problems,
        ));
    }
    let parsed: Vec<App> = apps
        .iter()
        .map(|app| App {
            name: app.name.clone(),
            namespace: app.namespace.clone(),
            spec: app.spec.clone(),
        })
        .collect();
    // Each app's config objects, as they are now: an app that names one that does not
    // exist is refused with the others (nothing applied).
    // Each app's config objects and secrets, as they are now: an app that names one that
    // does not exist, or reads a key from two places, is refused with the others (nothing
    // applied).
    let mut pins = Vec::with_capacity(parsed.len());
    for ((index, app), manifest) in parsed.iter().enumerate().zip(&apps) {
        let config_objects =
            match configs::pin(lattice, &app.namespace, &app.spec.config_from).await? {
                Ok(pinned) => pinned,
                Err(unusable) => {
                    for problem in unusable {
                        problems.push(format!("apps[{index}].spec.configFrom: {problem}"));
                    }
                    Default::default()
                }
            };
        let stored = match secrets::stored(lattice, &app.namespace, &app.spec.secrets).await? {
            Ok(stored) => stored,
            Err(unusable) => {
                for problem in unusable {
                    problems.push(format!("apps[{index}].spec.secrets: {problem}"));
                }
                Vec::new()
            }
        };
        for overlap in secrets::overlaps(&app.spec, &config_objects, &stored) {
            problems.push(format!(
                "apps[{index}].spec.secrets: a key is defined twice: {overlap}"
            ));
        }
        pins.push(apply::Pinned {
            digest: manifest.digest.clone(),
            wasi: manifest.wasi.clone(),
            config_objects,
            secret_versions: stored
                .iter()
                .map(|secret| (secret.name.clone(), secret.version))
                .collect(),
        });
    }
    if !problems.is_empty() {
        return Err(nothing_applied(
            ErrorCode::Invalid,
            "the apps are not valid",
            &problems,
        ));
    }
    let mut collisions = apply::route_collisions(lattice, &parsed).await?;
    if collisions.is_empty() {
        collisions = apply::claim_route_hosts(lattice, &parsed).await?;
    }
    if !collisions.is_empty() {
        return Err(nothing_applied(
            ErrorCode::Conflict,
            "routes collide",
            &collisions,
        ));
    }
    // Apps are independent: several are stored at once (each one's writes in order), so a
    // thousand apps cost a thousand round trips spread over APPLY_AT_ONCE, not in a row.
    use futures_util::StreamExt as _;
    let stores: Vec<_> = parsed
        .iter()
        .zip(&pins)
        .map(|(app, pinned)| store_app(lattice, app, pinned))
        .collect();
    let applied: Vec<Result<AppliedApp, ApiError>> = futures_util::stream::iter(stores)
        .buffered(APPLY_AT_ONCE)
        .collect()
        .await;
    let applied: Vec<AppliedApp> = applied.into_iter().collect::<Result<_, _>>()?;
    Ok(applied)
}

/// An apply refused as a whole, with each of its problems on a line.
fn nothing_applied(code: ErrorCode, headline: &str, problems: &[String]) -> ApiError {
    ApiError::new(
        code,
        format!(
            "{headline}; nothing was applied:\n  {}",
            problems.join("\n  ")
        ),
    )
}

/// Stores one app of an apply: its key-value stores first (they exist before any replica
/// may open them), then its record.
async fn store_app(
    lattice: &Lattice,
    app: &App,
    pinned: &apply::Pinned,
) -> Result<AppliedApp, ApiError> {
    lattice
        .ensure_app_stores(&app.namespace, &app.name, &app.spec.key_value)
        .await
        .map_err(|error| {
            internal(format!(
                "cannot make the key-value stores of app {}/{}: {}",
                app.namespace,
                app.name,
                shoal_lattice::Chain(&error)
            ))
        })?;
    // Its JetStream triggers' streams and consumers, before any replica reads them.
    let triggers_failed = |error: shoal_lattice::Error| {
        internal(format!(
            "cannot make the streams and consumers of app {}/{}'s triggers: {}",
            app.namespace,
            app.name,
            shoal_lattice::Chain(&error)
        ))
    };
    lattice
        .ensure_app_triggers(&app.namespace, &app.name, &app.spec.triggers)
        .await
        .map_err(triggers_failed)?;
    let (change, _) = apply::apply(lattice, app, pinned).await.map_err(|error| {
        internal(format!(
            "cannot store app {}/{}: {}",
            app.namespace,
            app.name,
            shoal_lattice::Chain(&error)
        ))
    })?;
    // The consumers of triggers it no longer has go (its old replicas then stop reading
    // them, as they would stop serving a route it no longer has). Only a changed app can
    // have dropped one: an apply of many new apps lists no streams.
    if matches!(change, Change::Revised { .. } | Change::Updated { .. }) {
        lattice
            .remove_app_triggers(&app.namespace, &app.name, &app.spec.triggers)
            .await
            .map_err(triggers_failed)?;
    }
    Ok(AppliedApp {
        namespace: app.namespace.clone(),
        name: app.name.clone(),
        applied: change,
    })
}
