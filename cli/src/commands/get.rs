//! `shoal get apps|hosts|replicas|configs|secrets`: tables for people, `-o json|yaml` for scripts.

use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};
use shoal_lattice::api::{AppView, ConfigView, HostView, ReplicaView, Request, SecretView};
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
    /// Config objects: their keys (not values), version and the apps that use them.
    Configs,
    /// Secrets: their keys, version and the apps that use them (values never leave the
    /// lattice's seal).
    Secrets,
}

/// List apps, hosts, replicas, config objects or secrets.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// What to list.
    pub kind: Kind,
    /// Only this namespace (apps, replicas, configs, secrets) [default: every namespace you may view].
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

pub async fn run(args: GetArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal get").await?;
    match args.kind {
        Kind::Apps => {
            let rows: Vec<AppView> = api
                .call(&Request::GetApps {
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
        Kind::Hosts => {
            let hosts: Vec<HostView> = api.call(&Request::GetHosts).await?;
            print(args.output, &hosts, |hosts| {
                let mut table = table(&[
                    "ID", "STATE", "REPLICAS", "MEMORY", "CPU", "LABELS", "INGRESS", "AGE",
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
                        match &view.control {
                            Some(control) if control.draining => "draining (admin)".to_owned(),
                            Some(control) if control.cordoned => {
                                format!("{},cordoned", host_state(host))
                            }
                            _ => host_state(host).to_owned(),
                        },
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
        }
        Kind::Configs => {
            let rows: Vec<ConfigView> = api
                .call(&Request::GetConfigs {
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
                .call(&Request::GetSecrets {
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
        Kind::Replicas => {
            let rows: Vec<ReplicaView> = api
                .call(&Request::GetReplicas {
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
                    "REASON",
                    "AGE",
                ]);
                for row in rows {
                    let status = row.status.as_ref();
                    table.add_row(vec![
                        row.assignment.namespace.clone(),
                        row.assignment.app.clone(),
                        row.assignment.replica.clone(),
                        row.assignment.host.clone(),
                        row.assignment.revision.to_string(),
                        status.map_or_else(
                            || "pending".to_owned(),
                            |status| status.phase.to_string(),
                        ),
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
