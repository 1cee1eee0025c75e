//! `shoal config create NAME --from-literal KEY=VALUE --from-file KEY=PATH`: a config
//! object, read by the apps that list it in `spec.configFrom` through `wasi:config/store`.
//! Creating one that exists replaces its values, and the apps that list it roll out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_lattice::api::PutConfig;
use shoal_lattice::api::{Applied, ConfigPut};
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::lattice::LatticeArgs;

/// Manage config objects: named values that apps read through wasi:config/store.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create a config object, or replace the values of the one of that name. Apps that list
    /// it in spec.configFrom roll out with the new values as a new revision (through their
    /// readiness checks, rolled back automatically if they fail). `shoal get configs` lists
    /// them, `shoal describe config NAME` shows one, `shoal delete config NAME` removes one.
    Create(CreateArgs),
}

/// Values of a config object or a secret.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Its name.
    pub name: String,
    /// Its namespace: only apps of that namespace may list it.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// A value (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE", value_parser = parse_literal)]
    pub literals: Vec<(String, String)>,
    /// A value read from a file, as UTF-8 text (repeatable).
    #[arg(long = "from-file", value_name = "KEY=PATH", value_parser = parse_file)]
    pub files: Vec<(String, PathBuf)>,
}

fn parse_literal(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{value:?} is not KEY=VALUE")),
    }
}

fn parse_file(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((key, path)) if !key.is_empty() && !path.is_empty() => {
            Ok((key.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!("{value:?} is not KEY=PATH")),
    }
}

/// The values given by `--from-literal` and `--from-file`, each key once.
pub fn values(
    literals: &[(String, String)],
    files: &[(String, PathBuf)],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut data = BTreeMap::new();
    let from_files = files.iter().map(|(key, path)| {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {} (for {key}) as UTF-8 text", path.display()))?;
        anyhow::Ok((key.clone(), text))
    });
    for entry in literals.iter().cloned().map(Ok).chain(from_files) {
        let (key, value) = entry?;
        if data.insert(key.clone(), value).is_some() {
            bail!("{key} is given twice");
        }
    }
    if data.is_empty() {
        bail!("no values: give at least one --from-literal KEY=VALUE or --from-file KEY=PATH");
    }
    Ok(data)
}

pub async fn run(args: ConfigArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let ConfigCommand::Create(args) = args.command;
    let data = values(&args.literals, &args.files)?;
    let (api, _connection) = lattice.api("shoal config").await?;
    let put: ConfigPut = api
        .call(PutConfig {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
            data,
        })
        .await?;
    let what = format!("config {}/{}", args.namespace, args.name);
    match (put.created, put.changed) {
        (true, _) => println!("{what} created"),
        (false, true) => println!("{what} updated to version {}", put.version),
        (false, false) => println!("{what} unchanged (version {})", put.version),
    }
    print_rollouts(&put);
    Ok(0)
}

/// Says which apps roll out with the new values.
pub fn print_rollouts(put: &ConfigPut) {
    for app in &put.apps {
        match &app.applied {
            Applied::Revised { revision, .. } => println!(
                "app {}/{} rolls out revision {revision} with it",
                app.namespace, app.name
            ),
            _ => println!("app {}/{} takes it", app.namespace, app.name),
        }
    }
}
