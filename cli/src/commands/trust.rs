//! `shoal trust add|remove|list`: the public keys a component needs a signature by before
//! hosts run it, for the whole lattice or one namespace.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use shoal_lattice::api::{GetTrust, TrustKey, UntrustKey};
use shoal_lattice::trust::{TrustView, TrustedKey};
use shoal_oci::keys::PublicKey;

use crate::lattice::LatticeArgs;
use crate::output::{self, Format};

/// Manage trust policies: with a key trusted, hosts run only components signed by it.
///
/// A policy is the lattice's (the default) or one namespace's (-n); an app needs a
/// signature of its component's digest by a key of either. The check happens on the host,
/// after the pull and before anything runs; a replica without one fails with
/// SignatureMissing or SignatureInvalid. A policy applies to replicas that start after it
/// changes (placed, moved, restarted or rolled out); running ones keep running. Only a
/// lattice-wide admin changes policies. Sign with `shoal push --sign` or `shoal sign`
/// (or cosign).
#[derive(Debug, Args)]
pub struct TrustArgs {
    #[command(subcommand)]
    pub command: TrustCommand,
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Trust a public key (PEM: cosign.pub, `shoal keygen`'s .pub, or openssl's
    /// `pkey -pubout` of a P-256 key).
    Add(AddArgs),
    /// Stop trusting a key, by name or id.
    Remove(RemoveArgs),
    /// The lattice's policy and the namespaces'.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The public key file.
    pub key: PathBuf,
    /// Its name in the policy [default: the file name without extension].
    #[arg(long)]
    pub name: Option<String>,
    /// This namespace's policy instead of the lattice's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The key's name or id (sha256:…).
    pub name: String,
    /// This namespace's policy instead of the lattice's.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the lattice's policy and this namespace's.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// The keys of an assignment's policy that parse as P-256 public keys (the scheduler checked
/// each; one that does not parse here is left out, so it can only make verification fail).
pub fn public_keys(trusted: &[TrustedKey]) -> Vec<PublicKey> {
    trusted
        .iter()
        .filter_map(|key| match PublicKey::from_pem(&key.pem) {
            Ok(public) => Some(public),
            Err(error) => {
                tracing::warn!(name = %key.name, %error, "a trusted key does not parse; left out");
                None
            }
        })
        .collect()
}

fn render(views: &[TrustView]) -> String {
    let mut table = crate::commands::get::table(&["SCOPE", "NAME", "ID", "ADDED"]);
    let mut rows = 0;
    for view in views {
        let scope = view.namespace.as_deref().map_or_else(
            || "lattice".to_owned(),
            |namespace| format!("namespace {namespace}"),
        );
        for key in &view.keys {
            rows += 1;
            table.add_row(vec![
                scope.clone(),
                key.name.clone(),
                key.id.clone(),
                crate::commands::get::age(key.added_at),
            ]);
        }
    }
    if rows == 0 {
        return "no trusted keys: hosts run unsigned components (shoal trust add KEY.pub to require signatures)\n".to_owned();
    }
    format!("{table}\n")
}

pub async fn run(args: TrustArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal trust").await?;
    match args.command {
        TrustCommand::Add(args) => {
            let key = crate::commands::sign::public_key(&args.key)?;
            let name = match args.name {
                Some(name) => name,
                None => args
                    .key
                    .file_stem()
                    .map(|stem| stem.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_else(|| "key".to_owned()),
            };
            let view: TrustView = api
                .call(TrustKey {
                    namespace: args.namespace.clone(),
                    name: name.clone(),
                    pem: key.to_pem(),
                })
                .await?;
            println!(
                "{} trusts key {name} ({}); {} key(s) in it",
                scope(args.namespace.as_deref()),
                key.id(),
                view.keys.len()
            );
        }
        TrustCommand::Remove(args) => {
            let view: TrustView = api
                .call(UntrustKey {
                    namespace: args.namespace.clone(),
                    name: args.name.clone(),
                })
                .await?;
            println!(
                "{} no longer trusts {}; {} key(s) left{}",
                scope(args.namespace.as_deref()),
                args.name,
                view.keys.len(),
                if view.keys.is_empty() {
                    " (it requires no signature now)"
                } else {
                    ""
                }
            );
        }
        TrustCommand::List(args) => {
            let views: Vec<TrustView> = api
                .call(GetTrust {
                    namespace: args.namespace.clone(),
                })
                .await?;
            output::print(args.output, &views, |views| render(views))?;
        }
    }
    Ok(0)
}

fn scope(namespace: Option<&str>) -> String {
    namespace.map_or_else(
        || "the lattice".to_owned(),
        |namespace| format!("namespace {namespace}"),
    )
}
