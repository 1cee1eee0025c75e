//! `shoal publish SUBJECT [DATA|-]`: a message on a subject of a namespace, as an app's
//! component would publish it (what triggers apps, `spec.triggers`). Editors of the
//! namespace and lattice-wide ones may.

use std::io::Read as _;

use anyhow::{Context, bail};
use clap::Args;
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::lattice::LatticeArgs;

/// The most bytes one message carries.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Publish a message on a subject of a namespace (what triggers apps).
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The subject, relative to the namespace (`sensors.room1`).
    pub subject: String,
    /// The message's data; `-` reads standard input; none: an empty message.
    pub data: Option<String>,
    /// The namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Metadata (a header), `NAME=VALUE`; repeatable.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
}

pub async fn run(args: PublishArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    shoal_lattice::names::check_name("namespace", &args.namespace)?;
    if !shoal_lattice::names::is_message_subject(&args.subject, false) {
        bail!(
            "{:?} is not a message subject: dot-separated tokens of letters, digits, - and _ (no wildcards)",
            args.subject
        );
    }
    let data = match args.data.as_deref() {
        Some("-") => {
            let mut data = Vec::new();
            std::io::stdin()
                .take(MAX_MESSAGE_BYTES as u64 + 1)
                .read_to_end(&mut data)
                .context("cannot read standard input")?;
            data
        }
        Some(data) => data.as_bytes().to_vec(),
        None => Vec::new(),
    };
    if data.len() > MAX_MESSAGE_BYTES {
        bail!("a message carries at most {MAX_MESSAGE_BYTES} bytes");
    }
    let headers = args
        .headers
        .iter()
        .map(|header| {
            header
                .split_once('=')
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .with_context(|| format!("{header:?} is not NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (_, connection) = lattice.api("shoal publish").await?;
    connection
        .publish_message(&args.namespace, &args.subject, &headers, data.into())
        .await
        .context("cannot publish")?;
    // nats-server refuses, without an answer, a publish the credential does not allow: a
    // flush at least proves the message reached it.
    connection
        .client()
        .flush()
        .await
        .context("cannot reach nats-server")?;
    eprintln!(
        "published on {} of namespace {}",
        args.subject, args.namespace
    );
    Ok(0)
}
