//! `shoal secret create NAME --from-literal KEY=VALUE --from-file KEY=PATH`: a secret,
//! sealed here to the lattice's secrets key before it leaves this machine, read by the apps
//! that list it in `spec.secrets` through `wasi:config/store`. No command prints a value.

use clap::{Args, Subcommand};
use shoal_lattice::api::ConfigPut;
use shoal_lattice::api::{GetSecretsKey, PutSecret};
use shoal_lattice::records::SecretsKey;
use shoal_lattice::secrets::SecretValues;

use crate::commands::config::{CreateArgs, values};
use crate::lattice::LatticeArgs;

/// Manage secrets: values that apps read through wasi:config/store, sealed at rest and
/// given only to the hosts that run those apps.
#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(subcommand)]
    pub command: SecretCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create a secret, or replace the values of the one of that name. The values are
    /// sealed on this machine to the lattice's secrets key; only schedulers can open them,
    /// and only to seal them again to the hosts that run an app listing the secret in
    /// spec.secrets. Apps that list it roll out with the new values. `shoal get secrets`
    /// lists names and keys (never values); `shoal delete secret NAME` removes one.
    Create(CreateArgs),
}

pub async fn run(args: SecretArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let SecretCommand::Create(args) = args.command;
    let values = SecretValues::new(values(&args.literals, &args.files)?);
    let (api, _connection) = lattice.api("shoal secret").await?;
    let key: SecretsKey = api.call(GetSecretsKey {}).await?;
    let sealed = values.seal(&shoal_lattice::secrets::new_key(), &key.public)?;
    let keys = values.keys();
    drop(values);
    let put: ConfigPut = api
        .call(PutSecret {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            keys: keys.clone(),
            sealed,
        })
        .await?;
    let what = format!("secret {}/{}", args.namespace, args.name);
    if put.created {
        println!("{what} created (keys: {})", keys.join(", "));
    } else {
        println!(
            "{what} updated to version {} (keys: {})",
            put.version,
            keys.join(", ")
        );
    }
    crate::commands::config::print_rollouts(&put);
    Ok(0)
}
