//! `shoal delete app NAME`: remove an app; the scheduler then stops its replicas.

use clap::Args;
use shoal_lattice::api::Request;
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
    let (api, _connection) = lattice.api("shoal delete").await?;
    let Scalable::App = args.kind;
    let () = api
        .call(&Request::Delete {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
        })
        .await?;
    println!("app {}/{} deleted", args.namespace, args.name);
    Ok(0)
}
