//! `shoal build`: builds a Rust component project for wasm32-wasip2 in release (adding the
//! target with rustup when it is missing), checks that the result is a component of the
//! world the project says, and prints where it is.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use bytesize::ByteSize;
use clap::Args;
use serde::Deserialize;
use shoal_oci::ComponentInfo;

/// The target every component builds for.
const TARGET: &str = "wasm32-wasip2";

/// Build a component project (as `shoal new` writes them) for wasm32-wasip2, in release.
///
/// Installs the wasm32-wasip2 target with rustup if it is missing, runs cargo, then checks
/// the result: a valid component, of the world `[package.metadata.shoal] world` names
/// ("http" or "command"; any world when absent). Prints the component's path, size and
/// world, ready for `shoal push` or `shoal run`.
///
/// Examples: shoal build
///           shoal build ./hello
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The project: a directory with a Cargo.toml, or the Cargo.toml itself.
    #[arg(default_value = ".")]
    pub path: PathBuf,
}

/// The part of Cargo.toml `shoal build` reads.
#[derive(Debug, Deserialize)]
struct Manifest {
    package: Option<Package>,
}

#[derive(Debug, Deserialize)]
struct Package {
    name: String,
    metadata: Option<Metadata>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    shoal: Option<ShoalMetadata>,
}

#[derive(Debug, Deserialize)]
struct ShoalMetadata {
    world: Option<String>,
    /// "0.2" or "0.3"; either when absent.
    wasi: Option<String>,
}

/// One line of cargo's `--message-format json` output, as far as artifacts go.
#[derive(Debug, Deserialize)]
struct CargoMessage {
    reason: String,
    #[serde(default)]
    package_id: String,
    #[serde(default)]
    target: Option<CargoTarget>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct CargoTarget {
    kind: Vec<String>,
    name: String,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let manifest_path = if args.path.is_dir() {
        args.path.join("Cargo.toml")
    } else {
        args.path.clone()
    };
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!(
            "cannot read {}: give the directory of a Rust project (`shoal new NAME` makes one)",
            manifest_path.display()
        )
    })?;
    let manifest: Manifest = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid Cargo.toml", manifest_path.display()))?;
    let package = manifest.package.with_context(|| {
        format!(
            "{} has no [package]: give the project's own directory",
            manifest_path.display()
        )
    })?;
    let metadata = package.metadata.and_then(|metadata| metadata.shoal);
    let world = metadata.as_ref().and_then(|shoal| shoal.world.clone());
    let wasi = metadata.and_then(|shoal| shoal.wasi);
    // The worlds the component may target: each kind's, in the WASI versions allowed.
    let worlds: &[&str] = match (world.as_deref(), wasi.as_deref()) {
        (None, _) => &[],
        (Some("http"), None) => &["wasi:http/proxy@0.2", "wasi:http/service@0.3"],
        (Some("http"), Some("0.2")) => &["wasi:http/proxy@0.2"],
        (Some("http"), Some("0.3")) => &["wasi:http/service@0.3"],
        (Some("command"), None) => &["wasi:cli/command@0.2", "wasi:cli/command@0.3"],
        (Some("command"), Some("0.2")) => &["wasi:cli/command@0.2"],
        (Some("command"), Some("0.3")) => &["wasi:cli/command@0.3"],
        (Some("http" | "command"), Some(other)) => bail!(
            "{}: [package.metadata.shoal] wasi = {other:?} is not a WASI version Shoal runs: use \"0.2\" or \"0.3\"",
            manifest_path.display()
        ),
        (Some(other), _) => bail!(
            "{}: [package.metadata.shoal] world = {other:?} is not a world Shoal runs: use \"http\" or \"command\"",
            manifest_path.display()
        ),
    };
    let expected = (!worlds.is_empty()).then(|| worlds.join(" or "));
    ensure_target()?;
    let wasm = cargo_build(&manifest_path, &package.name)?;
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let info = ComponentInfo::from_bytes(&bytes).with_context(|| {
        format!(
            "{} is not a Wasm component: build with a Rust toolchain that targets {TARGET} (1.82 or newer)",
            wasm.display()
        )
    })?;
    let target = info.target.clone().unwrap_or_default();
    if let Some(expected) = expected
        && !worlds.iter().any(|world| target.starts_with(world))
    {
        bail!(
            "{} is a component of world {}, not {expected} as Cargo.toml says ([package.metadata.shoal] world = {:?}): {}",
            wasm.display(),
            if target.is_empty() {
                "unknown"
            } else {
                &target
            },
            world.unwrap_or_default(),
            match (
                expected.starts_with("wasi:http"),
                wasi.as_deref() == Some("0.3")
            ) {
                (true, false) => {
                    "export an incoming-handler (shoal_sdk::wasi::http::proxy::export!) from a cdylib"
                }
                (true, true) => "export a handler (wasip3::http::service::export!) from a cdylib",
                (false, false) => "give the crate a fn main (a bin target)",
                (false, true) =>
                    "export wasi:cli/run (wasip3::cli::command::export!) from a cdylib",
            }
        );
    }
    println!(
        "built {} ({}, world {})",
        wasm.display(),
        ByteSize::b(bytes.len() as u64).display().iec(),
        if target.is_empty() {
            "unknown"
        } else {
            &target
        }
    );
    Ok(())
}

/// Adds the wasm32-wasip2 target when rustup is there and the target is not.
fn ensure_target() -> anyhow::Result<()> {
    let Ok(installed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .stderr(Stdio::null())
        .output()
    else {
        // No rustup: a toolchain installed otherwise may still have the target; cargo says.
        return Ok(());
    };
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("adding the {TARGET} target (rustup target add {TARGET})");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()
        .context("cannot run rustup")?;
    if !added.success() {
        bail!("rustup could not add the {TARGET} target: run `rustup target add {TARGET}`");
    }
    Ok(())
}

/// Runs cargo and returns the .wasm file of the project's own library or binary.
fn cargo_build(manifest_path: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let mut child = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(manifest_path)
        .args(["--message-format", "json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot run cargo: install Rust (https://rustup.rs)")?;
    let crate_name = package.replace('-', "_");
    let mut wasm = None;
    if let Some(stdout) = child.stdout.take() {
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.context("cannot read cargo's output")?;
            let Ok(message) = serde_json::from_str::<CargoMessage>(&line) else {
                continue;
            };
            if message.reason != "compiler-artifact" {
                continue;
            }
            let Some(target) = message.target else {
                continue;
            };
            // Path dependencies (the vendored SDK) build artifacts too: only the project's.
            let own = target.name.replace('-', "_") == crate_name
                && !message.package_id.contains("shoal-sdk");
            let kind = target
                .kind
                .iter()
                .any(|kind| kind == "cdylib" || kind == "bin");
            if own && kind {
                wasm = message.executable.or_else(|| {
                    message
                        .filenames
                        .into_iter()
                        .find(|file| file.extension().is_some_and(|ext| ext == "wasm"))
                });
            }
        }
    }
    let status = child.wait().context("cargo did not finish")?;
    if !status.success() {
        bail!("cargo build failed (its messages are above)");
    }
    wasm.with_context(|| {
        format!(
            "cargo built no component for {package}: the crate needs a cdylib library (an HTTP handler) or a binary (a command)"
        )
    })
}
