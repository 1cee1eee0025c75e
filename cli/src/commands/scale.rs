//! `shoal scale app NAME --replicas N`: change an app's replica count (no new revision).

use clap::{Args, ValueEnum};
use shoal_lattice::api::ScaleApp;
use shoal_lattice::api::Scaled;
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::lattice::LatticeArgs;

/// What can be scaled.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Scalable {
    /// An app.
    App,
}

/// Change the number of replicas of an app.
#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// What to scale.
    pub kind: Scalable,
    /// The app's name.
    pub name: String,
    /// The replica count wanted.
    #[arg(long)]
    pub replicas: u32,
    /// The app's namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

pub async fn run(args: ScaleArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal scale").await?;
    let Scalable::App = args.kind;
    let scaled: Scaled = api
        .call(ScaleApp {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            replicas: args.replicas,
        })
        .await?;
    println!(
        "app {}/{} scaled: {} → {} replicas",
        args.namespace, args.name, scaled.from, args.replicas
    );
    Ok(0)
}
