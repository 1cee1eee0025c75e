//! `shoal delete app NAME`: remove an app; the scheduler then stops its replicas.
//! `shoal delete config NAME`: remove a config object no app uses.
//! `shoal delete job NAME`: remove a job; its runs stop. `shoal delete cronjob NAME`: remove
//! a cron job and the jobs it made.

use clap::Args;
use shoal_lattice::api::{DeleteApp, DeleteConfig, DeleteCronJob, DeleteJob, DeleteSecret};
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::commands::describe::Object;
use crate::lattice::LatticeArgs;

/// Delete an app (its replicas stop on every host), a config object or secret no app
/// uses, a job (its runs stop) or a cron job (with the jobs it made).
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// What to delete.
    pub kind: Object,
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

pub async fn run(args: DeleteArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal delete").await?;
    let (namespace, name) = (args.namespace.clone(), args.name.clone());
    let what = match args.kind {
        Object::App => {
            api.call(DeleteApp { namespace, name }).await?;
            "app"
        }
        Object::Config => {
            api.call(DeleteConfig { namespace, name }).await?;
            "config"
        }
        Object::Secret => {
            api.call(DeleteSecret { namespace, name }).await?;
            "secret"
        }
        Object::Job => {
            api.call(DeleteJob { namespace, name }).await?;
            "job"
        }
        Object::CronJob => {
            api.call(DeleteCronJob { namespace, name }).await?;
            "cronjob"
        }
    };
    println!("{what} {}/{} deleted", args.namespace, args.name);
    Ok(0)
}
