//! The global `--nats` and `--lattice` options and the connection they describe.

use anyhow::Context;
use clap::Args;
use shoal_lattice::{ConnectOptions, Lattice};

/// The default NATS server: a local one, as `shoal up` starts.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// Which lattice to talk to.
#[derive(Debug, Clone, Args)]
pub struct LatticeArgs {
    /// NATS server URL of the lattice [default: nats://127.0.0.1:4222].
    #[arg(long, env = "SHOAL_NATS", global = true, value_name = "URL")]
    pub nats: Option<String>,

    /// Lattice name: several lattices can share one NATS system.
    #[arg(long, env = "SHOAL_LATTICE", global = true, default_value = "default")]
    pub lattice: String,
}

impl LatticeArgs {
    /// The NATS URL, defaulted.
    pub fn url(&self) -> &str {
        self.nats.as_deref().unwrap_or(DEFAULT_NATS)
    }

    /// Connects as `client_name`.
    pub async fn connect(&self, client_name: &str) -> anyhow::Result<Lattice> {
        Lattice::connect(&ConnectOptions {
            url: self.url().to_owned(),
            lattice: self.lattice.clone(),
            client_name: client_name.to_owned(),
        })
        .await
        .with_context(|| format!("cannot reach lattice {:?}", self.lattice))
    }
}
