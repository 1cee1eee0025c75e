//! `shoal delete app NAME`: remove an app; the scheduler then stops its replicas.
//! `shoal delete config NAME`: remove a config object no app uses.

use clap::Args;
use shoal_lattice::api::Request;
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::commands::describe::Object;
use crate::lattice::LatticeArgs;

/// Delete an app (its replicas stop on every host), or a config object or secret no app
/// uses.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// What to delete.
    pub kind: Object,
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

pub async fn run(args: DeleteArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal delete").await?;
    let (request, what) = match args.kind {
        Object::App => (
            Request::Delete {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            },
            "app",
        ),
        Object::Config => (
            Request::DeleteConfig {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            },
            "config",
        ),
        Object::Secret => (
            Request::DeleteSecret {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            },
            "secret",
        ),
    };
    let () = api.call(&request).await?;
    println!("{what} {}/{} deleted", args.namespace, args.name);
    Ok(0)
}
