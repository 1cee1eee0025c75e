//! `shoal fleet publish|upgrade|status|cancel`: the hosts' own binary, published as a signed
//! OCI artifact per architecture, and rolled out to the fleet in waves by the control plane
//! (each host pulls, verifies, restarts into it, and goes back on its own if it fails).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_lattice::api::{CancelUpgrade, GetUpgrade, StartUpgrade};
use shoal_lattice::fleet::{BinaryTarget, FleetUpgrade, HostPhase, UpgradeState, WaveSize};
use shoal_lattice::quantity::Span;
use shoal_oci::binary::BinaryConfig;
use shoal_oci::parse_reference;

use crate::lattice::LatticeArgs;
use crate::output::{self, Format};
use crate::registry::RegistryArgs;

/// Publish host binaries and upgrade the fleet's hosts to them.
#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    pub command: FleetCommand,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    Publish(PublishArgs),
    Upgrade(UpgradeArgs),
    Status(StatusArgs),
    Cancel(CancelArgs),
}

/// Push host binaries (one per architecture) under one reference, signed.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Where to push: registry/repository:tag.
    pub reference: String,
    /// A `shoal` binary to publish (repeat for each architecture) [default: this one].
    #[arg(long = "binary", value_name = "FILE")]
    pub binaries: Vec<PathBuf>,
    /// The architecture of the one --binary, when it is not an ELF file that says.
    #[arg(long)]
    pub arch: Option<String>,
    /// The version the binaries report [default: this CLI's release and each binary's
    /// build label; give it for binaries of another release].
    #[arg(long)]
    pub binary_version: Option<String>,
    /// Sign each binary's manifest with this private key (as `shoal push --sign`); hosts run
    /// only binaries signed by a key the lattice trusts.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Upgrade the hosts to a published binary, in waves (admin).
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// What `shoal fleet publish` pushed.
    pub reference: String,
    /// Only hosts with this label, KEY=VALUE (repeatable).
    #[arg(long = "selector", value_name = "KEY=VALUE", value_parser = super::host::parse_label)]
    pub selector: Vec<(String, String)>,
    /// Hosts upgrading at once: a count (3) or a share of the selected hosts (10%).
    #[arg(long, default_value = "1")]
    pub wave: WaveSize,
    /// Stop sending waves at the first host that fails.
    #[arg(long)]
    pub pause_on_failure: bool,
    /// How long a host's new binary has to rejoin the lattice before the host goes back to
    /// the old one.
    #[arg(long, default_value = "60s", value_parser = crate::duration::parse)]
    pub timeout: Duration,
    /// Wait until the upgrade completes or pauses, showing each host as it goes.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Show the fleet's host upgrade.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// Stop the fleet's host upgrade: no more waves (admin).
#[derive(Debug, Args)]
pub struct CancelArgs {}

pub async fn run(args: FleetArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    match args.command {
        FleetCommand::Publish(args) => publish(args).await,
        FleetCommand::Upgrade(args) => upgrade(args, lattice).await,
        FleetCommand::Status(args) => status(args, lattice).await,
        FleetCommand::Cancel(_) => cancel(lattice).await,
    }
}

/// The architecture an ELF file is for, as hosts label themselves.
fn elf_arch(bytes: &[u8]) -> Option<&'static str> {
    if bytes.get(..4)? != b"\x7fELF" {
        return None;
    }
    let machine = u16::from_le_bytes([*bytes.get(18)?, *bytes.get(19)?]);
    match machine {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        _ => None,
    }
}

async fn publish(args: PublishArgs) -> anyhow::Result<u8> {
    let reference = parse_reference(&args.reference)?;
    let paths = if args.binaries.is_empty() {
        vec![std::env::current_exe().context("cannot tell where this binary is")?]
    } else {
        args.binaries.clone()
    };
    if args.arch.is_some() && paths.len() > 1 {
        bail!(
            "--arch names the architecture of one --binary; binaries of several architectures must be ELF files that say theirs"
        );
    }
    let mut binaries: Vec<(Vec<u8>, BinaryConfig)> = Vec::new();
    for path in &paths {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let arch = match (&args.arch, elf_arch(&bytes)) {
            (Some(arch), _) => arch.clone(),
            (None, Some(arch)) => arch.to_owned(),
            (None, None) => bail!(
                "{} is not an x86_64 or aarch64 ELF binary: name its architecture with --arch",
                path.display()
            ),
        };
        if binaries
            .iter()
            .any(|(_, config)| config.architecture == arch)
        {
            bail!("two binaries for {arch}: publish one per architecture");
        }
        let version = args.binary_version.clone().unwrap_or_else(|| {
            crate::build_label::version_with(crate::build_label::label_in(&bytes))
        });
        binaries.push((
            bytes,
            BinaryConfig {
                os: "linux".to_owned(),
                architecture: arch,
                version,
            },
        ));
    }
    let key = match &args.sign {
        Some(path) => Some(super::sign::private_key(path)?),
        None => None,
    };
    let client = args.registry.client()?;
    let (index, published) = client.push_binaries(&reference, &binaries).await?;
    for binary in &published {
        println!(
            "pushed {} {} ({} bytes) as {}@{}",
            binary.config.architecture,
            binary.config.version,
            binary.size,
            reference.whole(),
            binary.manifest
        );
        if let Some(key) = &key {
            super::sign::sign_pushed(&client, &reference, &binary.manifest, key).await?;
        }
    }
    println!("published {}@{index}", args.reference);
    if key.is_none() {
        eprintln!(
            "warning: not signed; hosts run only binaries signed by a key the lattice trusts (--sign KEY)"
        );
    }
    Ok(0)
}

async fn upgrade(args: UpgradeArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let reference = parse_reference(&args.reference)?;
    let client = args.registry.client()?;
    let binaries = client
        .resolve_binaries(&reference)
        .await
        .with_context(|| format!("cannot read {}", args.reference))?;
    let targets: Vec<BinaryTarget> = binaries
        .into_iter()
        .map(|binary| BinaryTarget {
            arch: binary.config.architecture,
            reference: format!(
                "{}/{}@{}",
                reference.registry(),
                reference.repository(),
                binary.manifest
            ),
            binary: binary.binary.to_string(),
            size: binary.size,
            version: binary.config.version,
        })
        .collect();
    let (api, _connection) = lattice.api("shoal fleet upgrade").await?;
    let started: FleetUpgrade = api
        .call(StartUpgrade {
            reference: args.reference.clone(),
            targets,
            selector: args.selector.iter().cloned().collect::<BTreeMap<_, _>>(),
            wave: args.wave,
            pause_on_failure: args.pause_on_failure,
            timeout: Span(args.timeout),
        })
        .await?;
    println!(
        "upgrade {} to {} started: waves of {}",
        started.id, args.reference, started.wave
    );
    for target in &started.targets {
        println!("  {} {} {}", target.arch, target.version, target.binary);
    }
    if !args.wait {
        println!("follow it with: shoal fleet status");
        return Ok(0);
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut told = BTreeMap::new();
    loop {
        let current: Option<FleetUpgrade> = api.call(GetUpgrade {}).await?;
        let Some(current) = current.filter(|current| current.id == started.id) else {
            bail!("the upgrade was cancelled or replaced");
        };
        for (host, progress) in &current.hosts {
            if told.get(host) != Some(&progress.phase) {
                told.insert(host.clone(), progress.phase);
                println!(
                    "{host}: {}",
                    describe(progress.phase, progress.message.as_deref())
                );
            }
        }
        match current.state {
            UpgradeState::Complete => {
                let failed = failed(&current);
                println!("upgrade complete");
                return Ok(u8::from(failed > 0));
            }
            UpgradeState::Paused => {
                eprintln!("upgrade paused: {} host(s) failed", failed(&current));
                return Ok(1);
            }
            UpgradeState::Running if Instant::now() > deadline => {
                bail!("the upgrade is still running; shoal fleet status follows it")
            }
            UpgradeState::Running => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn failed(upgrade: &FleetUpgrade) -> usize {
    upgrade
        .hosts
        .values()
        .filter(|progress| progress.phase == HostPhase::Failed)
        .count()
}

fn describe(phase: HostPhase, message: Option<&str>) -> String {
    match phase {
        HostPhase::Waiting => "waiting".to_owned(),
        HostPhase::Upgrading => "upgrading".to_owned(),
        HostPhase::Upgraded => "upgraded".to_owned(),
        HostPhase::Failed => format!("failed: {}", message.unwrap_or("no reason given")),
        HostPhase::Skipped => format!("skipped: {}", message.unwrap_or("no reason given")),
    }
}

async fn status(args: StatusArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal fleet status").await?;
    let upgrade: Option<FleetUpgrade> = api.call(GetUpgrade {}).await?;
    let Some(upgrade) = upgrade else {
        if matches!(args.output, Format::Text) {
            println!("no fleet upgrade");
        } else {
            output::print(args.output, &serde_json::Value::Null, |_| String::new())?;
        }
        return Ok(0);
    };
    output::print(args.output, &upgrade, |upgrade| {
        let state = match upgrade.state {
            UpgradeState::Running => "running",
            UpgradeState::Paused => "paused",
            UpgradeState::Complete => "complete",
        };
        let mut text = format!(
            "upgrade {} to {}: {state}, wave {} (waves of {}), started by {}\n",
            upgrade.id, upgrade.reference, upgrade.waves, upgrade.wave, upgrade.by
        );
        for target in &upgrade.targets {
            text.push_str(&format!(
                "  {} {} {}\n",
                target.arch, target.version, target.binary
            ));
        }
        text.push_str("HOST\tWAVE\tSTATE\n");
        for (host, progress) in &upgrade.hosts {
            text.push_str(&format!(
                "{host}\t{}\t{}\n",
                progress.wave,
                describe(progress.phase, progress.message.as_deref())
            ));
        }
        text
    })?;
    Ok(0)
}

async fn cancel(lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal fleet cancel").await?;
    let cancelled: Option<FleetUpgrade> = api.call(CancelUpgrade {}).await?;
    match cancelled {
        Some(upgrade) => println!(
            "upgrade {} to {} cancelled: no more waves",
            upgrade.id, upgrade.reference
        ),
        None => println!("no fleet upgrade to cancel"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut header = vec![0_u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[18] = 183;
        assert_eq!(elf_arch(&header), Some("aarch64"));
        header[18] = 62;
        assert_eq!(elf_arch(&header), Some("x86_64"));
        assert_eq!(elf_arch(b"#!/bin/sh\nexit 1\n"), None);
    }
}
