//! `shoal describe app NAME`: spec, revision, replicas per host, conditions, and why
//! replicas could not be placed.

use clap::Args;
use shoal_lattice::api::{AppDetail, ReplicaView, Request};
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::commands::get::{age, table};
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

pub async fn run(args: DescribeArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal describe").await?;
    let Scalable::App = args.kind;
    let described: AppDetail = api
        .call(&Request::DescribeApp {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
        })
        .await?;
    print(args.output, &described, render)?;
    Ok(0)
}

fn render(described: &AppDetail) -> String {
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
    for ReplicaView { assignment, status } in &described.replicas {
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
