//! `shoal create job NAME --from cronjob/CRON`: run a cron job's job now, by hand, as
//! `kubectl create job --from=cronjob/…` does.

use anyhow::bail;
use clap::{Args, Subcommand};
use shoal_lattice::api::AppliedJob;
use shoal_lattice::api::CreateJobFrom;
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::lattice::LatticeArgs;

/// Create an object from another one.
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(subcommand)]
    pub what: CreateCommand,
}

/// What to create.
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// A job made now from a cron job's template (whatever its schedule, suspended or not).
    Job {
        /// The new job's name.
        name: String,
        /// `cronjob/NAME`: the cron job whose template it runs.
        #[arg(long, value_name = "cronjob/NAME")]
        from: String,
        /// The namespace of both.
        #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

pub async fn run(args: CreateArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let CreateCommand::Job {
        name,
        from,
        namespace,
    } = args.what;
    let Some(("cronjob", cron_job)) = from.split_once('/') else {
        bail!("--from takes cronjob/NAME, not {from:?}");
    };
    let (api, _connection) = lattice.api("shoal create").await?;
    let created: AppliedJob = api
        .call(CreateJobFrom {
            namespace: namespace.clone(),
            cron_job: cron_job.to_owned(),
            name: name.clone(),
        })
        .await?;
    println!(
        "job {}/{} created from cron job {cron_job}",
        created.namespace, created.name
    );
    Ok(0)
}
