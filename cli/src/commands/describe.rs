//! `shoal describe app NAME`: spec, revision, replicas per host, conditions, and why
//! replicas could not be placed. `shoal describe config NAME`: a config object's values and
//! the apps that use it.

use clap::Args;
use clap::ValueEnum;
use shoal_lattice::api::{AppDetail, ConfigView, ReplicaView, Request};
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::commands::get::{age, table};
use crate::lattice::LatticeArgs;
use crate::output::{Format, print};

/// What `describe` and `delete` name.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Object {
    /// An app.
    App,
    /// A config object.
    Config,
    /// A secret (delete only: `shoal get secrets` lists them; no command shows values).
    Secret,
}

/// Show an app or a config object in detail.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// What to describe.
    pub kind: Object,
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(args: DescribeArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal describe").await?;
    if let Object::Secret = args.kind {
        anyhow::bail!(
            "secrets are not described: shoal get secrets lists their keys and users, and no command shows their values"
        );
    }
    if let Object::Config = args.kind {
        let described: ConfigView = api
            .call(&Request::DescribeConfig {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            })
            .await?;
        print(args.output, &described, render_config)?;
        return Ok(0);
    }
    let described: AppDetail = api
        .call(&Request::DescribeApp {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
        })
        .await?;
    print(args.output, &described, render)?;
    Ok(0)
}

fn render_config(described: &ConfigView) -> String {
    let object = &described.object;
    let mut out = format!(
        "Name:        {}\nNamespace:   {}\nVersion:     {}\nCreated:     {} ago\nUpdated:     {} ago\nUsed by:     {}\nData:\n",
        object.name,
        object.namespace,
        object.version,
        age(object.created_at),
        age(object.updated_at),
        if described.used_by.is_empty() {
            "no app".to_owned()
        } else {
            described.used_by.join(", ")
        }
    );
    for (key, value) in &object.data {
        out += &format!("  {key}: {value}\n");
    }
    out
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
    if !app.spec.config_from.is_empty() {
        let objects: Vec<String> = app
            .spec
            .config_from
            .iter()
            .map(|name| match app.config_objects.get(name) {
                Some(pinned) => format!("{name} (version {})", pinned.version),
                None => name.clone(),
            })
            .collect();
        out += &format!("Config from: {}\n", objects.join(", "));
    }
    if !app.spec.secrets.is_empty() {
        let secrets: Vec<String> = app
            .spec
            .secrets
            .iter()
            .map(|name| match app.secret_versions.get(name) {
                Some(version) => format!("{name} (version {version})"),
                None => name.clone(),
            })
            .collect();
        out += &format!("Secrets:     {}\n", secrets.join(", "));
    }
    if let Some(autoscale) = &app.spec.autoscale {
        let decided = described
            .status
            .as_ref()
            .and_then(|status| status.autoscale.as_ref())
            .map(|status| {
                format!(
                    "; wants {}{}",
                    status.wanted,
                    if status.panicking { " (panic)" } else { "" }
                )
            })
            .unwrap_or_default();
        out += &format!(
            "Autoscale:   {}-{} replicas, target {} in flight each; now {}.{} in flight{decided}\n",
            autoscale.min(),
            autoscale.max(),
            autoscale.target(),
            described.load_milli / 1000,
            (described.load_milli % 1000) / 100,
        );
    }
    if !app.spec.key_value.is_empty() {
        let stores: Vec<String> = app
            .spec
            .key_value
            .iter()
            .map(|store| {
                format!(
                    "{} (max {})",
                    store.name,
                    shoal_lattice::quantity::Memory(store.max_bytes())
                )
            })
            .collect();
        out += &format!("Key-value:   {}\n", stores.join(", "));
    }
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
