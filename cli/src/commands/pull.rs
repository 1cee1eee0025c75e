//! `shoal pull`: fetch a component into the verified local cache, optionally copying it out.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shoal_oci::{PullSource, parse_reference};

use crate::output;
use crate::registry::RegistryArgs;

/// Pull a Wasm component from an OCI registry into the local cache.
///
/// Every blob is checked against its digest before it is cached. A digest that is already
/// cached needs no registry; a tag whose registry is unreachable falls back, with a warning, to
/// the digest it last resolved to. Prints the manifest digest.
///
/// Example: shoal pull localhost:5000/team/hello:1.0 -o hello.wasm
#[derive(Debug, Args)]
pub struct PullArgs {
    /// What to pull: registry/repository:tag or registry/repository@sha256:<digest>.
    pub reference: String,

    /// Also write the component to this file.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: PullArgs) -> anyhow::Result<()> {
    let reference = parse_reference(&args.reference)?;
    let client = args.registry.client_for(&args.reference)?;
    let pulled = client
        .pull(&reference)
        .await
        .with_context(|| format!("cannot pull {}", args.reference))?;

    for digest in &pulled.repaired {
        eprintln!("warning: cached blob {digest} was corrupt; removed it and fetched it again");
    }
    let origin = match &pulled.source {
        PullSource::Registry => "from the registry".to_owned(),
        PullSource::Cache => "from the local cache".to_owned(),
        PullSource::Mirror => "from the lattice's copy".to_owned(),
        PullSource::CachedTag { reason } => {
            eprintln!(
                "warning: {reason}; using {}, the digest this tag last resolved to (it may be out of date)",
                pulled.digest
            );
            "from the local cache".to_owned()
        }
    };
    if let Some(path) = &args.output {
        copy_atomically(&pulled.component_path, path)?;
    }
    eprintln!(
        "pulled {}@{} ({}) {origin}{}",
        reference.whole().split('@').next().unwrap_or_default(),
        pulled.digest,
        output::size(pulled.manifest.layer.size),
        args.output
            .as_ref()
            .map(|path| format!(" to {}", path.display()))
            .unwrap_or_default()
    );
    println!("{}", pulled.digest);
    Ok(())
}

/// Copies via a temp file beside the target so the target is never half-written.
fn copy_atomically(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let dir = match to.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    let mut file = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot write into {}", dir.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", to.display()))?;
    file.persist(to)
        .with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}
