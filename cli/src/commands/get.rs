//! `shoal get apps|hosts|replicas|triggers|configs|secrets|jobs|cronjobs`: tables for people,
//! `-o json|yaml` for scripts.

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use shoal_lattice::api::{
    AppView, ConfigView, CronJobView, HostView, JobView, ReplicaView, SecretView,
};
use shoal_lattice::api::{
    GetApps, GetConfigs, GetControlPlane, GetCronJobs, GetHosts, GetJobs, GetReplicas, GetSecrets,
};
use shoal_lattice::fleet::ReportPhase;
use shoal_lattice::records::{HostRecord, now_millis};

use crate::lattice::LatticeArgs;
use crate::output::{Format, print};

/// What to list.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    /// Apps, with their revision and ready replicas.
    Apps,
    /// Hosts, with their state, labels and load.
    Hosts,
    /// Replicas: where each runs and in what phase.
    Replicas,
    /// Apps' triggers: their subjects or streams, and each JetStream consumer's backlog
    /// (pending, unacknowledged, redelivered, dead-lettered).
    Triggers,
    /// Config objects: their keys (not values), version and the apps that use them.
    Configs,
    /// Secrets: their keys, version and the apps that use them (values never leave the
    /// lattice's seal).
    Secrets,
    /// Jobs: their phase, completions and runs.
    Jobs,
    /// Cron jobs: their schedule, last and next time, and active jobs.
    #[value(name = "cronjobs")]
    CronJobs,
}

/// List apps, hosts, replicas, triggers, config objects, secrets, jobs or cron jobs.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    pub kind: Kind,
    /// Only this namespace (apps, replicas, triggers, configs, secrets) [default: every namespace you may view].
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// A host that names no loss timeout of its own is shown as lost when its record is older
/// than this (the scheduler's default `--host-timeout`).
const LOST_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_style(NOTHING);
    table.set_header(header.to_vec());
    table
}

pub fn age(since_ms: u64) -> String {
    let seconds = now_millis().saturating_sub(since_ms) / 1000;
    match seconds {
        0..=119 => format!("{seconds}s"),
        120..=7199 => format!("{}m", seconds / 60),
        7200..=172_799 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// A duration in ms for people: `42s`, `3m10s`.
pub fn span(millis: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(millis / 1000)).to_string()
}

/// A time in ms since the epoch, to the second, in UTC.
pub fn time(millis: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(millis),
    )
    .to_string()
}

pub fn host_state(host: &HostRecord) -> &'static str {
    let lost_after = host.lost_after.map_or(LOST_AFTER, |span| span.0);
    if host.draining {
        "draining"
    } else if u128::from(now_millis().saturating_sub(host.heartbeat_at)) > lost_after.as_millis() {
        "lost"
    } else if host.lattice_mismatch.is_some() {
        // Serving what a lattice that lost its state assigned: `-o yaml` says what.
        "mismatch"
    } else {
        "ready"
    }
}

/// A host's state with an admin's decision about it: `draining (admin)`, `ready,cordoned`.
pub fn host_view_state(view: &HostView) -> String {
    let state = match &view.control {
        Some(control) if control.draining => "draining (admin)".to_owned(),
        Some(control) if control.cordoned => format!("{},cordoned", host_state(&view.host)),
        _ => host_state(&view.host).to_owned(),
    };
    // A fleet upgrade under way here, or one that failed (the host went back).
    let upgrade = view.host.upgrade.as_ref().map(|report| match report.phase {
        ReportPhase::Preparing => "upgrading",
        ReportPhase::Restarting => "restarting",
        ReportPhase::Failed => "upgrade failed",
    });
    match upgrade {
        Some(upgrade) => format!("{state},{upgrade}"),
        None => state,
    }
}

pub async fn run(args: GetArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal get").await?;
    match args.kind {
        Kind::Apps => {
            let rows: Vec<AppView> = api
                .call(GetApps {
                    namespace: args.namespace.clone(),
                })
                .await?;
            print(args.output, &rows, |rows| {
                let mut table =
                    table(&["NAMESPACE", "NAME", "REVISION", "READY", "COMPONENT", "AGE"]);
                for row in rows {
                    let ready = row.status.as_ref().map_or(0, |status| status.ready);
                    table.add_row(vec![
                        row.app.namespace.clone(),
                        row.app.name.clone(),
                        row.app.revision.to_string(),
                        format!("{ready}/{}", row.app.spec.replicas),
                        row.app.spec.component.clone(),
                        age(row.app.created_at),
                    ]);
                }
                format!("{table}\n")
            })?;
        }
        Kind::Triggers => {
            let rows = triggers(&api, args.namespace.clone()).await?;
            print(args.output, &rows, |rows| {
                let mut table = table(&[
                    "NAMESPACE",
                    "APP",
                    "TRIGGER",
                    "PENDING",
                    "UNACKED",
                    "REDELIVERED",
                    "DEAD-LETTERED",
                ]);
                for row in rows {
                    let count =
                        |count: Option<u64>| count.map_or("-".to_owned(), |n| n.to_string());
                    let state = row.state.as_ref();
                    table.add_row(vec![
                        row.namespace.clone(),
                        row.app.clone(),
                        super::describe::describe_trigger(&row.trigger),
                        count(state.map(|state| state.pending)),
                        count(state.map(|state| state.ack_pending)),
                        count(state.map(|state| state.redelivered)),
                        count(state.and_then(|state| state.dead_lettered)),
                    ]);
                }
                let mut out = format!("{table}\n");
                for row in rows {
                    if let Some(why) = &row.error {
                        out += &format!("{}/{}: {why}\n", row.namespace, row.app);
                    }
                }
                out
            })?;
        }
        Kind::Hosts => {
            let hosts: Vec<HostView> = api.call(GetHosts {}).await?;
            print(args.output, &hosts, |hosts| {
                let mut table = table(&[
                    "ID", "STATE", "VERSION", "REPLICAS", "MEMORY", "CPU", "LABELS", "INGRESS",
                    "AGE",
                ]);
                for view in hosts {
                    let (host, mine) = (&view.host, view.replicas);
                    let labels: Vec<String> = host
                        .labels
                        .iter()
                        .map(|(key, value)| format!("{key}={value}"))
                        .collect();
                    table.add_row(vec![
                        host.id.clone(),
                        host_view_state(view),
                        host.version.clone(),
                        format!("{mine}/{}", host.capacity.max_replicas),
                        host.capacity.memory.to_string(),
                        host.capacity.cpu.to_string(),
                        labels.join(","),
                        host.http.clone().unwrap_or_default(),
                        age(host.started_at),
                    ]);
                }
                format!("{table}\n")
            })?;
            // The hosts can all look fine while no scheduler acts on them: say so.
            if let Ok(control_plane) = api.call(GetControlPlane {}).await
                && let Some(warning) = control_plane.warning
            {
                eprintln!("warning: {warning}");
            }
        }
        Kind::Configs => {
            let rows: Vec<ConfigView> = api
                .call(GetConfigs {
                    namespace: args.namespace.clone(),
                })
                .await?;
            print(args.output, &rows, |rows| {
                let mut table = table(&["NAMESPACE", "NAME", "KEYS", "VERSION", "USED BY", "AGE"]);
                for row in rows {
                    let keys: Vec<&str> = row.object.data.keys().map(String::as_str).collect();
                    table.add_row(vec![
                        row.object.namespace.clone(),
                        row.object.name.clone(),
                        keys.join(","),
                        row.object.version.to_string(),
                        row.used_by.join(","),
                        age(row.object.created_at),
                    ]);
                }
                format!("{table}\n")
            })?;
        }
        Kind::Secrets => {
            let rows: Vec<SecretView> = api
                .call(GetSecrets {
                    namespace: args.namespace.clone(),
                })
                .await?;
            print(args.output, &rows, |rows| {
                let mut table = table(&["NAMESPACE", "NAME", "KEYS", "VERSION", "USED BY", "AGE"]);
                for row in rows {
                    table.add_row(vec![
                        row.namespace.clone(),
                        row.name.clone(),
                        row.keys.join(","),
                        row.version.to_string(),
                        row.used_by.join(","),
                        age(row.created_at),
                    ]);
                }
                format!("{table}\n")
            })?;
        }
        Kind::Jobs => {
            let rows: Vec<JobView> = api
                .call(GetJobs {
                    namespace: args.namespace.clone(),
                })
                .await?;
            print(args.output, &rows, |rows| {
                let mut table = table(&[
                    "NAMESPACE",
                    "NAME",
                    "PHASE",
                    "COMPLETIONS",
                    "ACTIVE",
                    "FAILED",
                    "DURATION",
                    "AGE",
                ]);
                for row in rows {
                    let status = row.status.as_ref();
                    table.add_row(vec![
                        row.job.namespace.clone(),
                        row.job.name.clone(),
                        status.map_or_else(|| "pending".to_owned(), |s| s.phase.to_string()),
                        format!(
                            "{}/{}",
                            status.map_or(0, |s| s.succeeded),
                            row.job.spec.completions()
                        ),
                        status.map_or(0, |s| s.active).to_string(),
                        status.map_or(0, |s| s.failed).to_string(),
                        status
                            .and_then(|s| {
                                Some((s.started_at?, s.finished_at.unwrap_or_else(now_millis)))
                            })
                            .map(|(start, end)| span(end.saturating_sub(start)))
                            .unwrap_or_default(),
                        age(row.job.created_at),
                    ]);
                }
                format!("{table}\n")
            })?;
        }
        Kind::CronJobs => {
            let rows: Vec<CronJobView> = api
                .call(GetCronJobs {
                    namespace: args.namespace.clone(),
                })
                .await?;
            print(args.output, &rows, |rows| {
                let mut table = table(&[
                    "NAMESPACE",
                    "NAME",
                    "SCHEDULE",
                    "TIMEZONE",
                    "SUSPEND",
                    "ACTIVE",
                    "LAST",
                    "NEXT",
                    "AGE",
                ]);
                for row in rows {
                    let cron = &row.cron_job;
                    let status = row.status.as_ref();
                    let active = row
                        .jobs
                        .iter()
                        .filter(|(_, phase)| {
                            phase
                                .is_none_or(|phase| phase == shoal_lattice::jobs::JobPhase::Running)
                        })
                        .count();
                    table.add_row(vec![
                        cron.namespace.clone(),
                        cron.name.clone(),
                        cron.spec.schedule.clone(),
                        cron.spec
                            .time_zone
                            .clone()
                            .unwrap_or_else(|| "UTC".to_owned()),
                        cron.spec.suspend.to_string(),
                        active.to_string(),
                        status
                            .and_then(|s| s.last_scheduled)
                            .map(time)
                            .unwrap_or_default(),
                        status
                            .and_then(|s| s.problem.clone().or_else(|| s.next.map(time)))
                            .unwrap_or_default(),
                        age(cron.created_at),
                    ]);
                }
                format!("{table}\n")
            })?;
        }
        Kind::Replicas => {
            let rows: Vec<ReplicaView> = api
                .call(GetReplicas {
                    namespace: args.namespace.clone(),
                })
                .await?;
            print(args.output, &rows, |rows| {
                let mut table = table(&[
                    "NAMESPACE",
                    "APP",
                    "REPLICA",
                    "HOST",
                    "REVISION",
                    "PHASE",
                    "RESTARTS",
                    "REASON",
                    "AGE",
                ]);
                for row in rows {
                    let status = row.status.as_ref();
                    table.add_row(vec![
                        row.assignment.namespace.clone(),
                        match row.assignment.job {
                            Some(_) => format!("job/{}", row.assignment.app),
                            None => row.assignment.app.clone(),
                        },
                        row.assignment.replica.clone(),
                        row.assignment.host.clone(),
                        row.assignment.revision.to_string(),
                        status.map_or_else(
                            || "pending".to_owned(),
                            |status| status.phase.to_string(),
                        ),
                        status.map_or(0, |status| status.restarts).to_string(),
                        status
                            .and_then(|status| status.reason.clone())
                            .unwrap_or_default(),
                        age(row.assignment.created_at),
                    ]);
                }
                format!("{table}\n")
            })?;
        }
    }
    Ok(0)
}

/// One trigger of one app, with its consumer's state for a JetStream trigger.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct TriggerRow {
    namespace: String,
    app: String,
    trigger: shoal_lattice::records::Trigger,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<shoal_lattice::streams::ConsumerState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The triggers of the apps in `namespace` (or every namespace one may view), each
/// JetStream one with its consumer's state (one describe per app that has any).
async fn triggers(
    api: &shoal_lattice::api::Client,
    namespace: Option<String>,
) -> anyhow::Result<Vec<TriggerRow>> {
    let apps: Vec<AppView> = api.call(GetApps { namespace }).await?;
    let mut rows = Vec::new();
    for view in apps
        .iter()
        .filter(|view| !view.app.spec.triggers.is_empty())
    {
        let app = &view.app;
        let mut states = if app
            .spec
            .triggers
            .iter()
            .any(|trigger| trigger.stream.is_some())
        {
            let detail: shoal_lattice::api::AppDetail = api
                .call(shoal_lattice::api::DescribeApp {
                    namespace: app.namespace.clone(),
                    name: app.name.clone(),
                })
                .await?;
            detail.triggers.into_iter()
        } else {
            Vec::new().into_iter()
        };
        for trigger in &app.spec.triggers {
            let view = trigger.stream.is_some().then(|| states.next()).flatten();
            let (state, error) = view.map_or((None, None), |view| (view.state, view.error));
            rows.push(TriggerRow {
                namespace: app.namespace.clone(),
                app: app.name.clone(),
                trigger: trigger.clone(),
                state,
                error,
            });
        }
    }
    Ok(rows)
}
