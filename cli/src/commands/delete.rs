//! `shoal delete app NAME`: remove an app; the scheduler then stops its replicas.

use anyhow::bail;
use clap::Args;
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::commands::scale::Scalable;
use crate::lattice::LatticeArgs;

/// Delete an app; its replicas stop on every host.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// What to delete.
    pub kind: Scalable,
    /// The app's name.
    pub name: String,
    /// The app's namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

pub async fn run(args: DeleteArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let connection = lattice.connect("shoal delete").await?;
    let Scalable::App = args.kind;
    if !shoal_scheduler::apply::delete(&connection, &args.namespace, &args.name).await? {
        bail!(
            "there is no app {}/{}; shoal get apps lists them",
            args.namespace,
            args.name
        );
    }
    println!("app {}/{} deleted", args.namespace, args.name);
    Ok(0)
}
