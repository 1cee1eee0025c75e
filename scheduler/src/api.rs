//! The control API server: every scheduler process answers `shoal.<lattice>.v1.api.>` in
//! one queue group, leader or not (writes are compare-and-set, so any one may do them).
//! A request is authorized by the grant in its subject (which nats-server checked against
//! the caller's credential), validated with the same checks as a manifest file, then done
//! with the functions of [`crate::apply`]; reads are filtered to what the caller may view.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use shoal_lattice::api::{Answer, ApiError};
use shoal_lattice::api::{
    AppDetail, AppManifest, AppView, AppliedApp, Caller, ErrorCode, History, HostView, ReplicaView,
    Request, Scaled, UndoneTo,
};
use shoal_lattice::auth::api_subjects;
use shoal_lattice::names::{app_key, app_status_key, check_name, host_control_key};
use shoal_lattice::records::{
    AppRecord, AppStatus, Assignment, HostControl, HostRecord, ReplicaStatus, now_millis,
};
use shoal_lattice::{Bucket, Lattice};
use tokio::sync::Semaphore;

use crate::apply::{self, Change, Undo};
use crate::configs;
use crate::job_store;
use crate::manifest::App;
use crate::secrets;

/// Requests answered at once; more wait in NATS's buffer.
const CONCURRENT: usize = 32;
/// The queue group all API servers of a lattice share.
const QUEUE: &str = "shoal-api";

/// Answers control API requests until `shutdown`.
///
/// # Errors
/// When the subscription cannot be made.
pub async fn serve(
    lattice: Lattice,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), async_nats::SubscribeError> {
    let subject = api_subjects(lattice.name());
    let mut requests = lattice
        .client()
        .queue_subscribe(subject, QUEUE.to_owned())
        .await?;
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let mut refused_replies: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = requests.next() => message,
        };
        let Some(message) = message else { break };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        // The answer goes only to the caller's own inbox (the user the subject names, which
        // nats-server checked against the credential): a reply subject chosen freely, such
        // as the scheduler lease's KV key, would make the scheduler write it.
        if !answers_to_caller(lattice.name(), &message.subject, &reply) {
            refused_replies += 1;
            if refused_replies == 1 {
                tracing::warn!(subject = %message.subject, %reply, "dropped an API request whose reply subject is not its caller's inbox (logged once)");
            }
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let lattice = lattice.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answer = answer(&lattice, &message.subject, &message.payload).await;
            if let Err(error) = lattice.client().publish(reply, answer.into()).await {
                tracing::debug!(%error, "cannot answer an API request");
            }
        });
    }
    let _ = requests.unsubscribe().await;
    Ok(())
}

/// Whether `reply` leads back to the user that API request `subject` names: an inbox of
/// that user, or (on a secure lattice, where requests cross from the clients' account)
/// the reply subject nats-server made for the crossing, which it hands back only to the
/// requester's own reply subject in the clients' account, where nothing is stored.
fn answers_to_caller(lattice: &str, subject: &str, reply: &str) -> bool {
    Caller::from_subject(lattice, subject).is_some_and(|caller| {
        shoal_lattice::auth::is_inbox_of(reply, "user", Some(&caller.user))
            || shoal_lattice::auth::is_import_reply(reply)
    })
}

/// The JSON answer to one request.
async fn answer(lattice: &Lattice, subject: &str, payload: &[u8]) -> Vec<u8> {
    let result = handle(lattice, subject, payload).await;
    let encoded = match result {
        Ok(value) => serde_json::to_vec(&Answer::Ok(value)),
        Err(error) => {
            if error.code == ErrorCode::Forbidden {
                tracing::info!(%subject, message = %error.message, "API request refused");
            }
            serde_json::to_vec(&Answer::<()>::Error(error))
        }
    };
    encoded.unwrap_or_else(|_| {
        br#"{"error":{"code":"internal","message":"cannot encode the answer"}}"#.to_vec()
    })
}

pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, error.to_string())
}

fn no_app(namespace: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("there is no app {namespace}/{name}; shoal get apps lists them"),
    )
}

/// Whether the caller lists things of a namespace: one it may view, and the one it asked
/// for if it named one.
fn visible<'a>(caller: &'a Caller, wanted: Option<&'a str>) -> impl Fn(&str) -> bool + 'a {
    move |namespace| caller.may_view(namespace) && wanted.is_none_or(|wanted| wanted == namespace)
}

/// Refuses `what` when it has `problems`, naming each.
pub(crate) fn refuse_invalid(what: &str, problems: Vec<String>) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Invalid,
        format!(
            "{what} is not valid; nothing was stored:\n  {}",
            problems.join("\n  ")
        ),
    ))
}

/// `shoal kv`: one operation on a store the app grants.
async fn key_value(
    lattice: &Lattice,
    namespace: &str,
    app: &str,
    store: &str,
    op: shoal_lattice::api::KeyValueOp,
) -> Result<shoal_lattice::api::KeyValueAnswer, ApiError> {
    use shoal_lattice::api::{KeyValueAnswer, KeyValueOp, decode_value, encode_value};
    let record = lattice
        .get::<AppRecord>(Bucket::Apps, &app_key(namespace, app))
        .await?
        .ok_or_else(|| no_app(namespace, app))?;
    if !record
        .value
        .spec
        .key_value
        .iter()
        .any(|granted| granted.name == store)
    {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("app {namespace}/{app} has no key-value store {store:?} (spec.keyValue)"),
        ));
    }
    let opened = lattice
        .open_app_store(namespace, app, store)
        .await
        .map_err(internal)?;
    let invalid = |error: shoal_lattice::appkv::StoreError| match error {
        shoal_lattice::appkv::StoreError::Unreachable(_) => internal(error),
        _ => ApiError::new(ErrorCode::Invalid, error.to_string()),
    };
    Ok(match op {
        KeyValueOp::Get { key } => KeyValueAnswer::Value {
            value: opened
                .get(&key)
                .await
                .map_err(invalid)?
                .map(|value| encode_value(&value)),
        },
        KeyValueOp::Put { key, value } => {
            let value = decode_value(&value)
                .ok_or_else(|| ApiError::new(ErrorCode::Invalid, "the value is not base64"))?;
            opened.set(&key, value).await.map_err(invalid)?;
            KeyValueAnswer::Done
        }
        KeyValueOp::Delete { key } => {
            opened.delete(&key).await.map_err(invalid)?;
            KeyValueAnswer::Done
        }
        KeyValueOp::List { after } => {
            let (keys, next) = opened.list(after.as_deref()).await.map_err(invalid)?;
            KeyValueAnswer::Keys { keys, next }
        }
    })
}

/// The answer to deleting a config object or a secret.
fn deleted(
    outcome: configs::Deleted,
    kind: &str,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<serde_json::Value, ApiError> {
    match outcome {
        configs::Deleted::Done => to_json(()),
        configs::Deleted::NotFound => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("there is no {kind} {namespace}/{name}; shoal get {kind}s lists them"),
        )),
        configs::Deleted::InUse(apps) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{kind} {namespace}/{name} is in use by {}: remove it from their {field} first",
                apps.join(", ")
            ),
        )),
    }
}

/// What is wrong with a secret as the CLI sent it: its keys are those of a config object,
/// its box no larger than such values could make.
fn secret_problems(keys: &[String], sealed: &shoal_lattice::secrets::Sealed) -> Vec<String> {
    let named: std::collections::BTreeMap<String, String> = keys
        .iter()
        .map(|key| (key.clone(), String::new()))
        .collect();
    let mut problems = shoal_lattice::validate::config_data_problems(&named);
    if named.len() != keys.len() {
        problems.push("a key is given twice".to_owned());
    }
    // Base64 of the values' JSON, with room for escapes and the box.
    if sealed.sealed.len() > 2 * shoal_lattice::validate::MAX_CONFIG_BYTES {
        problems.push(format!(
            "the values must be at most {} KiB in all",
            shoal_lattice::validate::MAX_CONFIG_BYTES >> 10
        ));
    }
    problems
}

fn no_config(namespace: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("there is no config {namespace}/{name}; shoal get configs lists them"),
    )
}

fn to_json<T: serde::Serialize>(value: T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(internal)
}

async fn handle(
    lattice: &Lattice,
    subject: &str,
    payload: &[u8],
) -> Result<serde_json::Value, ApiError> {
    let caller = Caller::from_subject(lattice.name(), subject).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Invalid,
            "the request subject is not …api.<role>.<scope>.<user>.<verb>",
        )
    })?;
    // A field this scheduler does not know (sent by a newer CLI) would be dropped without a
    // word, and the user would believe it applied: refused instead, saying what to upgrade.
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(payload);
    let request: Request =
        serde_ignored::deserialize(&mut json, |path: serde_ignored::Path<'_>| {
            unknown.push(path.to_string())
        })
        .map_err(|error| {
            ApiError::new(
                ErrorCode::Invalid,
                format!("the request is not one this control plane knows: {error}"),
            )
        })?;
    if let Some(field) = unknown.first() {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "this control plane (shoal {}) does not know the field {field}: upgrade the schedulers, or leave the field out",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    caller.authorize(&request)?;
    check_names(&request)?;
    match request {
        Request::Apply { apps } => to_json(apply_all(lattice, apps).await?),
        Request::ApplyJobs { jobs, cron_jobs } => {
            to_json(job_store::apply(lattice, jobs, cron_jobs).await?)
        }
        Request::GetJobs { namespace } => to_json(
            job_store::list_jobs(lattice, visible(&caller, namespace.as_deref()))
                .await?,
        ),
        Request::GetCronJobs { namespace } => to_json(
            job_store::list_cron_jobs(lattice, visible(&caller, namespace.as_deref()))
                .await?,
        ),
        Request::DeleteJob { namespace, name } => {
            if !job_store::delete_job(lattice, &namespace, &name)
                .await?
            {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("there is no job {namespace}/{name}; shoal get jobs lists them"),
                ));
            }
            to_json(())
        }
        Request::DeleteCronJob { namespace, name } => {
            if !job_store::delete_cron_job(lattice, &namespace, &name)
                .await?
            {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "there is no cron job {namespace}/{name}; shoal get cronjobs lists them"
                    ),
                ));
            }
            to_json(())
        }
        Request::CreateJobFrom {
            namespace,
            cron_job,
            name,
        } => to_json(job_store::create_from(lattice, &namespace, &cron_job, &name).await?),
        Request::PutConfig {
            namespace,
            name,
            data,
        } => {
            refuse_invalid(
                &format!("config {namespace}/{name}"),
                shoal_lattice::validate::config_data_problems(&data),
            )?;
            to_json(
                configs::put(lattice, &namespace, &name, data)
                    .await?,
            )
        }
        Request::GetConfigs { namespace } => to_json(
            configs::list(lattice, visible(&caller, namespace.as_deref()))
                .await?,
        ),
        Request::DescribeConfig { namespace, name } => to_json(
            configs::describe(lattice, &namespace, &name)
                .await?
                .ok_or_else(|| no_config(&namespace, &name))?,
        ),
        Request::DeleteConfig { namespace, name } => deleted(
            configs::delete(lattice, &namespace, &name)
                .await?,
            "config",
            &namespace,
            &name,
            "spec.configFrom",
        ),
        Request::KeyValue {
            namespace,
            app,
            store,
            op,
        } => to_json(key_value(lattice, &namespace, &app, &store, op).await?),
        Request::SecretsKey => to_json(
            lattice
                .get::<shoal_lattice::records::SecretsKey>(
                    Bucket::Status,
                    shoal_lattice::names::SECRETS_KEY,
                )
                .await?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::NotFound,
                        "this lattice has no secrets key yet: its schedulers need one (shoal scheduler --secrets-key FILE; shoal auth init and shoal up make one)",
                    )
                })?
                .value,
        ),
        Request::PutSecret {
            namespace,
            name,
            keys,
            sealed,
        } => {
            refuse_invalid(
                &format!("secret {namespace}/{name}"),
                secret_problems(&keys, &sealed),
            )?;
            to_json(
                secrets::put(lattice, &namespace, &name, keys, sealed)
                    .await?,
            )
        }
        Request::TrustKey {
            namespace,
            name,
            pem,
        } => to_json(crate::trust::add(lattice, namespace.as_deref(), &name, &pem).await?),
        Request::UntrustKey { namespace, name } => {
            to_json(crate::trust::remove(lattice, namespace.as_deref(), &name).await?)
        }
        Request::Egress { range, allowed } => {
            to_json(crate::egress::set(lattice, &range, allowed).await?)
        }
        Request::GetEgress => to_json(crate::egress::read(lattice).await?.0),
        Request::GetTrust { namespace } => to_json(
            crate::trust::list(lattice, visible(&caller, namespace.as_deref())).await?,
        ),
        Request::GetSecrets { namespace } => to_json(
            secrets::list(lattice, visible(&caller, namespace.as_deref()))
                .await?,
        ),
        Request::DeleteSecret { namespace, name } => deleted(
            secrets::delete(lattice, &namespace, &name)
                .await?,
            "secret",
            &namespace,
            &name,
            "spec.secrets",
        ),
        Request::Delete { namespace, name } => {
            if !apply::delete(lattice, &namespace, &name)
                .await?
            {
                return Err(no_app(&namespace, &name));
            }
            // Its key-value data goes with it: an app applied again under the name starts
            // empty.
            lattice
                .remove_app_stores(&namespace, &name, &[])
                .await?;
            to_json(())
        }
        Request::Scale {
            namespace,
            name,
            replicas,
        } => {
            let max = shoal_lattice::validate::MAX_REPLICAS;
            if replicas > max {
                return Err(ApiError::new(
                    ErrorCode::Invalid,
                    format!("replicas: must be at most {max}"),
                ));
            }
            // The autoscaler owns an autoscaled app's count: a scale by hand would be undone
            // at its next decision.
            if let Some(autoscale) = lattice
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
            match apply::scale(lattice, &namespace, &name, replicas)
                .await?
            {
                Some(from) => to_json(Scaled { from }),
                None => Err(no_app(&namespace, &name)),
            }
        }
        Request::Undo {
            namespace,
            name,
            to_revision,
        } => match apply::undo(lattice, &namespace, &name, to_revision)
            .await?
        {
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
            Undo::Done(target, change, record) => to_json(UndoneTo {
                target,
                revision: record.revision,
                revised: matches!(change, Change::Revised { .. }),
            }),
        },
        Request::Pause {
            namespace,
            name,
            paused,
        } => {
            if !apply::set_paused(lattice, &namespace, &name, paused)
                .await?
            {
                return Err(no_app(&namespace, &name));
            }
            to_json(())
        }
        Request::History { namespace, name } => {
            let app = lattice
                .get::<AppRecord>(Bucket::Apps, &app_key(&namespace, &name))
                .await?
                .ok_or_else(|| no_app(&namespace, &name))?;
            let revisions = apply::history(lattice, &namespace, &name)
                .await?;
            to_json(History {
                current: app.value.revision,
                revisions,
            })
        }
        Request::GetApps { namespace } => {
            let status: HashMap<String, AppStatus> = lattice
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
            let apps: Vec<AppView> = lattice
                .list::<AppRecord>(Bucket::Apps, "")
                .await?
                .into_iter()
                .filter(|record| visible(&caller, namespace.as_deref())(&record.value.namespace))
                .map(|record| AppView {
                    status: status.get(&record.key).cloned(),
                    app: record.value,
                })
                .collect();
            to_json(apps)
        }
        Request::Cordon { host, cordoned } => {
            let key = host_control_key(&host);
            if cordoned {
                known_host(lattice, &host).await?;
                let control = HostControl {
                    cordoned: true,
                    draining: false,
                    by: caller.user.clone(),
                    since: now_millis(),
                };
                lattice
                    .put(Bucket::Status, &key, &control)
                    .await?;
            } else {
                lattice
                    .delete(Bucket::Status, &key)
                    .await?;
            }
            to_json(())
        }
        Request::Drain { host } => {
            known_host(lattice, &host).await?;
            let control = HostControl {
                cordoned: true,
                draining: true,
                by: caller.user.clone(),
                since: now_millis(),
            };
            lattice
                .put(Bucket::Status, &host_control_key(&host), &control)
                .await?;
            to_json(())
        }
        Request::GetControlPlane => {
            let status = lattice
                .get_checked::<shoal_lattice::records::ControlPlaneStatus>(
                    Bucket::Status,
                    shoal_lattice::names::CONTROL_PLANE,
                )
                .await?
                .and_then(Result::ok)
                .map(|record| record.value);
            to_json(shoal_lattice::api::ControlPlaneView::of(status, now_millis()))
        }
        Request::GetHosts => {
            let controls: HashMap<String, HostControl> = lattice
                .list::<HostControl>(Bucket::Status, "hosts.")
                .await?
                .into_iter()
                .map(|record| {
                    let host = record.key.trim_start_matches("hosts.").to_owned();
                    (host, record.value)
                })
                .collect();
            let replicas = replicas(lattice).await?;
            let hosts: Vec<HostView> = lattice
                .list::<HostRecord>(Bucket::Hosts, "")
                .await?
                .into_iter()
                .map(|record| HostView {
                    replicas: replicas
                        .iter()
                        .filter(|replica| replica.assignment.host == record.value.id)
                        .count(),
                    control: controls.get(&record.value.id).cloned(),
                    host: record.value,
                })
                .collect();
            to_json(hosts)
        }
        Request::GetReplicas { namespace } => {
            let replicas: Vec<ReplicaView> = replicas(lattice)
                .await?
                .into_iter()
                .filter(|replica| {
                    visible(&caller, namespace.as_deref())(&replica.assignment.namespace)
                })
                .collect();
            to_json(replicas)
        }
        Request::DescribeApp { namespace, name } => {
            let app = lattice
                .get::<AppRecord>(Bucket::Apps, &app_key(&namespace, &name))
                .await?
                .ok_or_else(|| no_app(&namespace, &name))?;
            let status = lattice
                .get::<AppStatus>(Bucket::Status, &app_status_key(&namespace, &name))
                .await?
                .map(|record| record.value);
            let replicas = replicas(lattice)
                .await?
                .into_iter()
                .filter(|replica| {
                    replica.assignment.app == name && replica.assignment.namespace == namespace
                })
                .collect();
            // Requests in flight at its replicas, as the hosts last said (autoscaling's input).
            let load_key = format!("{namespace}/{name}");
            let load = lattice
                .list::<HostRecord>(Bucket::Hosts, "")
                .await?
                .iter()
                .filter_map(|host| host.value.load.get(&load_key))
                .fold(0u64, |sum, milli| sum.saturating_add(*milli));
            to_json(AppDetail {
                app: app.value,
                status,
                replicas,
                load_milli: load,
            })
        }
    }
}

/// Refuses a host that is not in the lattice.
async fn known_host(lattice: &Lattice, host: &str) -> Result<(), ApiError> {
    match lattice.get::<HostRecord>(Bucket::Hosts, host).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("there is no host {host}; shoal get hosts lists them"),
        )),
    }
}

/// Names in a request follow the naming rules (they become keys and subjects).
fn check_names(request: &Request) -> Result<(), ApiError> {
    let invalid =
        |error: shoal_lattice::Error| ApiError::new(ErrorCode::Invalid, error.to_string());
    let optional_namespace = |namespace: &Option<String>| {
        namespace.as_deref().map_or(Ok(()), |namespace| {
            check_name("namespace", namespace).map_err(invalid)
        })
    };
    let check = |namespace: &str, name: &str| {
        check_name("namespace", namespace).map_err(invalid)?;
        check_name("app name", name).map_err(invalid)
    };
    match request {
        Request::Apply { apps } => apps
            .iter()
            .try_for_each(|app| check(&app.namespace, &app.name)),
        Request::ApplyJobs { jobs, cron_jobs } => jobs
            .iter()
            .map(|job| (&job.namespace, &job.name))
            .chain(cron_jobs.iter().map(|cron| (&cron.namespace, &cron.name)))
            .try_for_each(|(namespace, name)| {
                check_name("namespace", namespace).map_err(invalid)?;
                check_name("job name", name).map_err(invalid)
            }),
        Request::DeleteJob { namespace, name } | Request::DeleteCronJob { namespace, name } => {
            check_name("namespace", namespace).map_err(invalid)?;
            check_name("job name", name).map_err(invalid)
        }
        Request::CreateJobFrom {
            namespace,
            cron_job,
            name,
        } => {
            check_name("namespace", namespace).map_err(invalid)?;
            check_name("cron job name", cron_job).map_err(invalid)?;
            check_name("job name", name).map_err(invalid)
        }
        Request::GetJobs { namespace } | Request::GetCronJobs { namespace } => {
            namespace.as_deref().map_or(Ok(()), |namespace| {
                check_name("namespace", namespace).map_err(invalid)
            })
        }
        Request::Delete { namespace, name }
        | Request::Scale {
            namespace, name, ..
        }
        | Request::Undo {
            namespace, name, ..
        }
        | Request::Pause {
            namespace, name, ..
        }
        | Request::History { namespace, name }
        | Request::DescribeApp { namespace, name } => check(namespace, name),
        Request::PutConfig {
            namespace, name, ..
        }
        | Request::DescribeConfig { namespace, name }
        | Request::DeleteConfig { namespace, name } => {
            check_name("namespace", namespace).map_err(invalid)?;
            check_name("config name", name).map_err(invalid)
        }
        Request::PutSecret {
            namespace, name, ..
        }
        | Request::DeleteSecret { namespace, name } => {
            check_name("namespace", namespace).map_err(invalid)?;
            check_name("secret name", name).map_err(invalid)
        }
        Request::SecretsKey => Ok(()),
        Request::KeyValue {
            namespace,
            app,
            store,
            ..
        } => {
            check(namespace, app)?;
            check_name("store name", store).map_err(invalid)
        }
        Request::GetApps { namespace }
        | Request::GetReplicas { namespace }
        | Request::GetConfigs { namespace }
        | Request::GetSecrets { namespace } => namespace.as_deref().map_or(Ok(()), |namespace| {
            check_name("namespace", namespace).map_err(invalid)
        }),
        Request::GetHosts
        | Request::GetControlPlane
        | Request::GetEgress
        | Request::Egress { .. } => Ok(()),
        Request::TrustKey {
            namespace, name, ..
        } => {
            optional_namespace(namespace)?;
            check_name("key name", name).map_err(invalid)
        }
        Request::UntrustKey { namespace, name } => {
            optional_namespace(namespace)?;
            // A key is named by its name or its id (sha256:…).
            if name.starts_with("sha256:") {
                Ok(())
            } else {
                check_name("key name", name).map_err(invalid)
            }
        }
        Request::GetTrust { namespace } => optional_namespace(namespace),
        Request::Cordon { host, .. } | Request::Drain { host } => {
            shoal_lattice::names::check_host_id(host).map_err(invalid)
        }
    }
}

/// Every assignment with its replica's status (assignments read first, so each status is at
/// least as fresh as its assignment).
async fn replicas(lattice: &Lattice) -> Result<Vec<ReplicaView>, ApiError> {
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
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "the apps are not valid; nothing was applied:\n  {}",
                problems.join("\n  ")
            ),
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
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "the apps are not valid; nothing was applied:\n  {}",
                problems.join("\n  ")
            ),
        ));
    }
    let mut collisions = apply::route_collisions(lattice, &parsed).await?;
    if collisions.is_empty() {
        collisions = apply::claim_route_hosts(lattice, &parsed).await?;
    }
    if !collisions.is_empty() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "routes collide; nothing was applied:\n  {}",
                collisions.join("\n  ")
            ),
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
                "cannot make the key-value stores of app {}/{}: {error}",
                app.namespace, app.name
            ))
        })?;
    let (change, _) = apply::apply(lattice, app, pinned).await.map_err(|error| {
        internal(format!(
            "cannot store app {}/{}: {error}",
            app.namespace, app.name
        ))
    })?;
    Ok(AppliedApp {
        namespace: app.namespace.clone(),
        name: app.name.clone(),
        applied: change,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_go_to_the_caller_s_inbox_only() {
        let subject = "shoal.dev.v1.api.viewer.team-a.alice.getHosts";
        assert!(answers_to_caller("dev", subject, "_INBOX.user.alice.x1"));
        for reply in [
            "$KV.shoal-dev-v1-leases.scheduler",
            "_INBOX.user.bob.x1",
            "_INBOX.host.alice.x1",
            "_INBOX.x1",
        ] {
            assert!(!answers_to_caller("dev", subject, reply), "{reply}");
        }
        // No caller in the subject: no answer at all.
        assert!(!answers_to_caller(
            "dev",
            "shoal.dev.v1.api.x",
            "_INBOX.user.alice.x1"
        ));
    }
}
