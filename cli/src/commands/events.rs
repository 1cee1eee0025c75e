//! `shoal events`: what happened in the lattice (replicas placed, ready, failed or removed,
//! hosts joining or lost, rollouts failing and rolling back), oldest first, and with `-f`
//! what happens next.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, ValueEnum};
use shoal_lattice::Event;
use shoal_lattice::api::GetApps;
use shoal_lattice::records::DEFAULT_NAMESPACE;

use shoal_lattice::api::AppView;

use crate::journal;
use crate::lattice::LatticeArgs;

/// Show what happened in the lattice.
///
/// The scheduler reports replicas it places and removes, hosts it finds live or loses, and
/// rollouts that fail or roll back; hosts report replicas that become ready, fail to start
/// or stop passing their health check. The lattice keeps the last hour.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this app.
    #[arg(long, conflicts_with_all = ["job", "cronjob"])]
    pub app: Option<String>,
    /// Only events of this job (its runs placed, ended, stopped).
    #[arg(long, conflicts_with = "cronjob")]
    pub job: Option<String>,
    /// Only events of this cron job (jobs made, times skipped).
    #[arg(long)]
    pub cronjob: Option<String>,
    /// Only events of this namespace's apps (with --app: the app's namespace, default
    /// `default`). Without either: everything, for lattice-wide viewers, else the first
    /// namespace the credential may view.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Keep printing new events as they happen, until ctrl-c.
    #[arg(short, long)]
    pub follow: bool,
    /// Only events within this long, like 10m.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub since: Option<Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: EventFormat,
}

/// How events are printed.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum EventFormat {
    /// `TIME REASON OBJECT MESSAGE`, a line each.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

pub async fn run(mut args: EventsArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, connection) = lattice.api("shoal events").await?;
    // Jobs' and cron jobs' events are published under a name no app can have.
    if let Some(job) = args.job.take() {
        args.app = Some(shoal_lattice::jobs::log_name(&job));
    }
    if let Some(cron_job) = args.cronjob.take() {
        args.app = Some(shoal_lattice::jobs::cron_log_name(&cron_job));
    }
    // Every event of the lattice (host events included) is for lattice-wide viewers; others
    // read a namespace they may view.
    let namespace = match (&args.namespace, &args.app) {
        (Some(namespace), _) => Some(namespace.clone()),
        (None, Some(_)) => Some(DEFAULT_NAMESPACE.to_owned()),
        (None, None) if api.lattice_wide() => None,
        (None, None) => api.viewable_namespaces().first().cloned(),
    };
    // A caller who may not view the namespace gets the control plane's clear refusal (the
    // journal read would be refused by nats-server anyway).
    if let Some(namespace) = &namespace {
        let _: Vec<AppView> = api
            .call(GetApps {
                namespace: Some(namespace.clone()),
            })
            .await?;
    }
    let start = journal::start(args.since);
    let mut reader = match (&args.app, &namespace) {
        (Some(app), Some(namespace)) => {
            connection
                .events(Some((namespace.as_str(), app)), start, args.follow)
                .await?
        }
        (_, Some(namespace)) => {
            connection
                .namespace_events(namespace, start, args.follow)
                .await?
        }
        (_, None) => connection.events(None, start, args.follow).await?,
    };
    let mut out = std::io::stdout().lock();
    journal::read(&mut reader, |event, _| {
        journal::print_line(&mut out, &render(&event, args.output)?)
    })
    .await?;
    Ok(0)
}

fn render(event: &Event, format: EventFormat) -> anyhow::Result<String> {
    Ok(match format {
        EventFormat::Json => serde_json::to_string(event).context("cannot encode an event")?,
        EventFormat::Text => {
            let time =
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(event.time));
            format!(
                "{time}  {:<13} {:<24} {}",
                event.reason,
                event.object(),
                event.message
            )
        }
    })
}
