//! `shoal scale app NAME --replicas N`: change an app's replica count (no new revision).

use anyhow::bail;
use clap::{Args, ValueEnum};
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
    let connection = lattice.connect("shoal scale").await?;
    let Scalable::App = args.kind;
    match shoal_scheduler::apply::scale(&connection, &args.namespace, &args.name, args.replicas)
        .await?
    {
        Some(from) => println!(
            "app {}/{} scaled: {from} → {} replicas",
            args.namespace, args.name, args.replicas
        ),
        None => bail!(
            "there is no app {}/{}; shoal get apps lists them",
            args.namespace,
            args.name
        ),
    }
    Ok(0)
}
