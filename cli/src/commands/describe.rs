//! `shoal describe app NAME`: spec, revision, replicas per host, conditions, and why
//! replicas could not be placed.

use anyhow::bail;
use clap::Args;
use serde::Serialize;
use shoal_lattice::Bucket;
use shoal_lattice::names::{app_key, app_status_key};
use shoal_lattice::records::{AppRecord, AppStatus, Assignment, DEFAULT_NAMESPACE, ReplicaStatus};

use crate::commands::get::{age, replicas, table};
use crate::commands::scale::Scalable;
use crate::lattice::LatticeArgs;
use crate::output::{Format, print};

/// Show an app in detail.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// What to describe.
    pub kind: Scalable,
    /// The app's name.
    pub name: String,
    /// The app's namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Serialize)]
struct Described {
    app: AppRecord,
    status: Option<AppStatus>,
    replicas: Vec<(Assignment, Option<ReplicaStatus>)>,
}

pub async fn run(args: DescribeArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let connection = lattice.connect("shoal describe").await?;
    let Scalable::App = args.kind;
    let Some(app) = connection
        .get::<AppRecord>(Bucket::Apps, &app_key(&args.namespace, &args.name))
        .await?
    else {
        bail!(
            "there is no app {}/{}; shoal get apps lists them",
            args.namespace,
            args.name
        );
    };
    let status = connection
        .get::<AppStatus>(Bucket::Status, &app_status_key(&args.namespace, &args.name))
        .await?
        .map(|record| record.value);
    let replicas = replicas(&connection)
        .await?
        .into_iter()
        .filter(|(assignment, _)| {
            assignment.app == args.name && assignment.namespace == args.namespace
        })
        .collect();
    let described = Described {
        app: app.value,
        status,
        replicas,
    };
    print(args.output, &described, render)?;
    Ok(0)
}

fn render(described: &Described) -> String {
    let app = &described.app;
    let mut out = format!(
        "Name:        {}\nNamespace:   {}\nRevision:    {}\nGeneration:  {}\nComponent:   {}\nDigest:      {}\nCreated:     {} ago\n",
        app.name,
        app.namespace,
        app.revision,
        app.generation,
        app.spec.component,
        app.digest,
        age(app.created_at)
    );
    match &described.status {
        Some(status) => {
            out += &format!(
                "Replicas:    {} desired, {} placed, {} ready (observed generation {})\n",
                status.desired, status.placed, status.ready, status.observed_generation
            );
            if let Some(unplaced) = &status.unplaced {
                out += &format!("Placement:   {unplaced}\n");
            }
            out += "Conditions:\n";
            for condition in &status.conditions {
                out += &format!(
                    "  {:<10} {:<5} {:<14} {}\n",
                    condition.kind, condition.status, condition.reason, condition.message
                );
            }
        }
        None => out += "Replicas:    no status yet (is a scheduler running?)\n",
    }
    let spec = serde_yaml::to_string(&app.spec).unwrap_or_default();
    out += "Spec:\n";
    for line in spec.lines() {
        out += &format!("  {line}\n");
    }
    let mut replicas = table(&["REPLICA", "HOST", "REVISION", "PHASE", "REASON", "MESSAGE"]);
    for (assignment, status) in &described.replicas {
        replicas.add_row(vec![
            assignment.replica.clone(),
            assignment.host.clone(),
            assignment.revision.to_string(),
            status
                .as_ref()
                .map_or_else(|| "pending".to_owned(), |status| status.phase.to_string()),
            status
                .as_ref()
                .and_then(|status| status.reason.clone())
                .unwrap_or_default(),
            status
                .as_ref()
                .and_then(|status| status.message.clone())
                .unwrap_or_default(),
        ]);
    }
    out += &format!("Replicas by host:\n{replicas}\n");
    out
}
