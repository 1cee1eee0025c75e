//! `shoal dashboard`: serves the web dashboard for the lattice this command reaches, as the
//! holder of its credential.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;

use crate::lattice::LatticeArgs;

/// Serve a live web dashboard of the lattice: apps and their rollouts, replicas, hosts, a
/// map of hosts by label, events and logs, with scale, rollout and delete for editors.
///
/// The dashboard reads and acts through the control API with this command's credential
/// (SHOAL_NATS_CREDS or --nats-creds): a viewer's dashboard shows what the viewer may see and
/// has no action buttons. It listens on loopback by default; anyone who can reach the
/// address acts with the credential, so put it behind your own authentication before
/// listening elsewhere.
///
/// Examples: shoal dashboard
///           shoal dashboard --listen 127.0.0.1:9000
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Address to listen on (port 0: a free port, printed).
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,

    /// Another name the dashboard answers to (a reverse proxy's, say), with any port.
    /// Requests whose Host header, or Origin when sent, names neither the listen address,
    /// localhost nor such a name get 403 (no other site's page can use the dashboard,
    /// DNS rebinding included). Repeatable.
    #[arg(long = "allow-host", value_name = "NAME")]
    pub allow_hosts: Vec<String>,
}

pub async fn run(args: DashboardArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, connection) = lattice.api("shoal dashboard").await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    println!("dashboard on http://{address}/");
    crate::dashboard::serve(
        listener,
        crate::dashboard::Dashboard::new(
            api,
            connection,
            crate::dashboard::AllowedHosts::new(address, &args.allow_hosts),
        ),
        crate::signals::shutdown(),
    )
    .await
    .context("the dashboard stopped")?;
    Ok(0)
}
