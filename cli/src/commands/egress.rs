//! `shoal egress allow|deny|list`: the lattice's egress policy, the special address ranges
//! (loopback, private, link-local, …) that guests may reach when their app's
//! `allowedOutbound` names such an address literally. Lattice admins only.

use clap::{Args, Subcommand};
use shoal_lattice::api::{GetEgress, SetEgress};

use crate::lattice::LatticeArgs;
use crate::output::{Format, print};

/// Manage the lattice's egress policy: which private, loopback and link-local address
/// ranges guests may reach at all.
///
/// Guests reach the public internet only through their app's `allowedOutbound`, and never a
/// special address (this machine, private networks, the cloud metadata address
/// 169.254.169.254, …) by a name that resolves to one. An app whose allowlist names such an
/// address literally (`http://10.1.2.3:9000`) reaches it only when the lattice's admins have
/// allowed a range holding it: an editor's allowlist alone never opens a host's networks.
/// The policy applies to replicas that start after it changes.
///
/// Examples: shoal egress allow 10.1.0.0/16
///           shoal egress deny 10.1.0.0/16
///           shoal egress list
#[derive(Debug, Args)]
pub struct EgressArgs {
    #[command(subcommand)]
    pub command: EgressCommand,
}

#[derive(Debug, Subcommand)]
pub enum EgressCommand {
    /// Let guests reach addresses in a range their app's allowlist names literally.
    Allow(RangeArgs),
    /// Take a range out of the policy.
    Deny(RangeArgs),
    /// The ranges the policy allows.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct RangeArgs {
    /// The range, as a CIDR: 10.1.0.0/16, 127.0.0.1/32, fd00::/8.
    pub range: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(args: EgressArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal egress").await?;
    let (policy, output) = match args.command {
        EgressCommand::Allow(RangeArgs { range }) => {
            let allow = SetEgress {
                range,
                allowed: true,
            };
            (api.call(allow).await?, None)
        }
        EgressCommand::Deny(RangeArgs { range }) => {
            let deny = SetEgress {
                range,
                allowed: false,
            };
            (api.call(deny).await?, None)
        }
        EgressCommand::List(ListArgs { output }) => (api.call(GetEgress {}).await?, Some(output)),
    };
    print(output.unwrap_or_default(), &policy, |policy| {
        if policy.private.is_empty() {
            "no special address range is allowed\n".to_owned()
        } else {
            policy
                .private
                .iter()
                .map(|range| format!("{range}\n"))
                .collect()
        }
    })?;
    Ok(0)
}
