//! `shoal kv get|put|del|ls APP[/STORE] [KEY]`: an operator's look at, or change to, an
//! app's key-value store (what its components reach through `wasi:keyvalue`), through the
//! control API: viewers read, editors write.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_lattice::api::KeyValue;
use shoal_lattice::api::{KeyValueAnswer, KeyValueOp, decode_value, encode_value};
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::lattice::LatticeArgs;

/// Read and change apps' key-value stores.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// The app's namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE, global = true)]
    pub namespace: String,

    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (raw bytes to standard output); exit 1 when there is none.
    Get {
        /// APP or APP/STORE (default store: default).
        store: String,
        /// The key.
        key: String,
    },
    /// Set a key to VALUE, or to a file's bytes.
    Put {
        /// APP or APP/STORE.
        store: String,
        /// The key.
        key: String,
        /// The value.
        #[arg(required_unless_present = "from_file", conflicts_with = "from_file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// Delete a key.
    Del {
        /// APP or APP/STORE.
        store: String,
        /// The key.
        key: String,
    },
    /// List keys, in order.
    Ls {
        /// APP or APP/STORE.
        store: String,
    },
}

fn split(store: &str) -> (String, String) {
    match store.split_once('/') {
        Some((app, store)) => (app.to_owned(), store.to_owned()),
        None => (store.to_owned(), "default".to_owned()),
    }
}

pub async fn run(args: KvArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal kv").await?;
    let (target, op) = match args.command {
        KvCommand::Get { store, key } => (store, KeyValueOp::Get { key }),
        KvCommand::Put {
            store,
            key,
            value,
            from_file,
        } => {
            let bytes = match (value, from_file) {
                (Some(value), _) => value.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => bail!("give a VALUE or --from-file PATH"),
            };
            (
                store,
                KeyValueOp::Put {
                    key,
                    value: encode_value(&bytes),
                },
            )
        }
        KvCommand::Del { store, key } => (store, KeyValueOp::Delete { key }),
        KvCommand::Ls { store } => (store, KeyValueOp::List { after: None }),
    };
    let (app, store) = split(&target);
    let request = |op| KeyValue {
        namespace: args.namespace.clone(),
        app: app.clone(),
        store: store.clone(),
        op,
    };
    match op {
        KeyValueOp::List { .. } => {
            let mut after = None;
            loop {
                let answer: KeyValueAnswer = api.call(request(KeyValueOp::List { after })).await?;
                let KeyValueAnswer::Keys { keys, next } = answer else {
                    bail!("the control plane answered a list with something else");
                };
                for key in keys {
                    println!("{key}");
                }
                match next {
                    Some(next) => after = Some(next),
                    None => return Ok(0),
                }
            }
        }
        KeyValueOp::Get { .. } => {
            let answer: KeyValueAnswer = api.call(request(op)).await?;
            match answer {
                KeyValueAnswer::Value { value: Some(value) } => {
                    use std::io::Write as _;
                    let bytes = decode_value(&value).context("the value is not base64")?;
                    std::io::stdout().write_all(&bytes)?;
                    Ok(0)
                }
                _ => {
                    eprintln!("no such key");
                    Ok(1)
                }
            }
        }
        op => {
            let _: KeyValueAnswer = api.call(request(op)).await?;
            Ok(0)
        }
    }
}
