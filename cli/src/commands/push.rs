//! `shoal push`: validate a component and push it to a registry as a CNCF Wasm artifact.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_oci::{ArtifactOptions, parse_reference};

use crate::output::{self, Format};
use crate::registry::RegistryArgs;

/// Push a Wasm component to an OCI registry.
///
/// The file must be a WASI 0.2 component (cargo build --target wasm32-wasip2). It is pushed in
/// the CNCF Wasm artifact layout, with its imports, exports and world in the config. Prints the
/// manifest digest; deploy `REFERENCE@DIGEST` to pin exactly this build.
///
/// Example: shoal push target/wasm32-wasip2/release/hello.wasm localhost:5000/team/hello:1.0
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The component file (.wasm).
    pub file: PathBuf,

    /// Where to push: registry/repository:tag.
    pub reference: String,

    /// Add an annotation to the manifest (repeatable), for example
    /// --annotation org.opencontainers.image.source=https://github.com/me/hello
    #[arg(long = "annotation", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,

    /// Sign the pushed digest with this private key (cosign's layout, as `shoal sign`):
    /// cosign's encrypted key (password in SHOAL_KEY_PASSWORD or COSIGN_PASSWORD) or a
    /// PKCS#8/SEC1 PEM key.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,

    /// Output format: text prints the digest alone on stdout.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn parse_annotation(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(format!("{value:?} is not KEY=VALUE")),
    }
}

pub async fn run(args: PushArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    // The key is read first: a wrong password should stop the push, not follow it.
    let key = match &args.sign {
        Some(path) => Some(crate::commands::sign::private_key(path)?),
        None => None,
    };
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let options = ArtifactOptions {
        title: args
            .file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned()),
        annotations: args.annotations.into_iter().collect::<BTreeMap<_, _>>(),
        created: None,
    };
    let client = args.registry.client_for(&args.reference)?;
    let pushed = client
        .push(&bytes, &reference, &options)
        .await
        .with_context(|| format!("cannot push {}", args.file.display()))?;
    eprintln!(
        "pushed {} ({}) to {}",
        args.file.display(),
        output::size(pushed.size),
        pushed.reference
    );
    if let Some(key) = &key {
        crate::commands::sign::sign_pushed(&client, &reference, &pushed.digest, key).await?;
    }
    output::print(args.output, &pushed, |pushed| {
        format!("{}\n", pushed.digest)
    })
}
