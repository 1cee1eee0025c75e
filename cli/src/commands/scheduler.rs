//! `shoal scheduler`: runs a scheduler (control plane) for a lattice until stopped.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use shoal_scheduler::controller::{self, Options};

use crate::lattice::LatticeArgs;

/// Run a scheduler: it places apps' replicas on hosts and heals failures.
///
/// Several schedulers may run; one holds the lease and acts, the others take over when it
/// stops renewing the lease.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Scheduler id, for the lease [default: scheduler-<pid>].
    #[arg(long)]
    pub id: Option<String>,

    /// A host whose heartbeat is older than this is lost and its replicas move, unless the
    /// host names its own timeout (`shoal host --lost-after`). The default rides out a few
    /// lost heartbeats on a lossy, slow link (cellular: 300 ms RTT, 5% loss).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub host_timeout: Duration,

    /// Lease period: a dead leader is replaced after about this long.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    pub lease: Duration,

    /// The lattice's secrets key (an xkey seed file): secrets are sealed to it, and the
    /// scheduler opens them only to seal them again to the hosts that run their apps. Give
    /// every scheduler of a lattice the same file (`shoal auth init` writes one as
    /// secrets.xk); a missing file is created. Without it, apps that list secrets are not
    /// placed.
    #[arg(long, env = "SHOAL_SECRETS_KEY", value_name = "FILE")]
    pub secrets_key: Option<std::path::PathBuf>,

    /// For tests: read cron schedules by a clock that starts at START when the system clock
    /// reads ANCHOR_MS, running RATE times as fast (`START,ANCHOR_MS,RATE`).
    #[arg(long, hide = true, value_name = "START,ANCHOR_MS,RATE", value_parser = shoal_scheduler::cron::Clock::parse)]
    pub cron_clock: Option<shoal_scheduler::cron::Clock>,
}

impl SchedulerArgs {
    pub fn options(&self) -> anyhow::Result<Options> {
        let secrets_key = match &self.secrets_key {
            Some(path) => {
                let (key, created) = shoal_lattice::secrets::key_file(path)
                    .with_context(|| format!("cannot read or write {}", path.display()))?;
                if created {
                    eprintln!(
                        "created the lattice's secrets key in {}: give every scheduler of this lattice that file",
                        path.display()
                    );
                }
                Some(key)
            }
            None => None,
        };
        Ok(Options {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("scheduler-{}", std::process::id())),
            host_timeout: self.host_timeout,
            lease: self.lease,
            secrets_key,
            clock: self.cron_clock.unwrap_or_default(),
            account: None,
        })
    }
}

pub async fn run(args: SchedulerArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let mut options = args.options()?;
    options.account = lattice.account()?;
    let connection = lattice
        .connect_as(&options.id, shoal_lattice::store::SCHEDULER_ORIGIN)
        .await?;
    eprintln!(
        "scheduler {} on lattice {:?} at {}",
        options.id,
        lattice.lattice,
        lattice.url()
    );
    controller::run(connection, options, crate::signals::shutdown()).await?;
    Ok(0)
}
