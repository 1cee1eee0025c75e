//! `shoal cordon|uncordon|drain HOST`: an admin takes a host out of placement, and moves
//! its replicas elsewhere (each removed once its replacement is ready, as in a rollout).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use shoal_lattice::api::HostView;
use shoal_lattice::api::{CordonHost, DrainHost, GetHosts};

use crate::lattice::LatticeArgs;

/// Stop placing replicas on a host (admin).
#[derive(Debug, Args)]
pub struct CordonArgs {
    /// The host's id.
    pub host: String,
}

/// Place replicas on a host again, ending a cordon or a drain (admin).
#[derive(Debug, Args)]
pub struct UncordonArgs {
    /// The host's id.
    pub host: String,
}

/// Cordon a host and move its replicas elsewhere, each removed once its replacement is
/// ready (admin). Waits until the host runs none.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The host's id.
    pub host: String,
    /// How long to wait for the host to run no replica; 0 does not wait.
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    pub timeout: Duration,
}

pub async fn cordon(args: CordonArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    set_cordon(&args.host, true, lattice).await?;
    println!("host {} cordoned: no new replicas go there", args.host);
    Ok(0)
}

pub async fn uncordon(args: UncordonArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    set_cordon(&args.host, false, lattice).await?;
    println!(
        "host {} uncordoned: replicas may be placed there again",
        args.host
    );
    Ok(0)
}

async fn set_cordon(host: &str, cordoned: bool, lattice: &LatticeArgs) -> anyhow::Result<()> {
    let (api, _connection) = lattice.api("shoal cordon").await?;
    let () = api
        .call(CordonHost {
            host: host.to_owned(),
            cordoned,
        })
        .await?;
    Ok(())
}

pub async fn drain(args: DrainArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal drain").await?;
    let () = api
        .call(DrainHost {
            host: args.host.clone(),
        })
        .await?;
    println!("host {} draining: its replicas move elsewhere", args.host);
    if args.timeout.is_zero() {
        return Ok(0);
    }
    let deadline = Instant::now() + args.timeout;
    let mut last = None;
    loop {
        let hosts: Vec<HostView> = api.call(GetHosts {}).await?;
        let Some(host) = hosts.iter().find(|view| view.host.id == args.host) else {
            println!("host {} left the lattice", args.host);
            return Ok(0);
        };
        if host.replicas == 0 {
            println!("host {} drained: it runs no replica", args.host);
            return Ok(0);
        }
        if last != Some(host.replicas) {
            println!("{} replicas left on {}", host.replicas, args.host);
            last = Some(host.replicas);
        }
        if Instant::now() > deadline {
            bail!(
                "host {} still runs {} replicas after {}: are there hosts with room for them? (shoal describe app shows why replicas cannot be placed)",
                args.host,
                host.replicas,
                humantime::format_duration(args.timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
