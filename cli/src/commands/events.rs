//! `shoal events`: what happened in the lattice (replicas placed, ready, failed or removed,
//! hosts joining or lost, rollouts failing and rolling back), oldest first, and with `-f`
//! what happens next.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, ValueEnum};
use shoal_lattice::Event;
use shoal_lattice::records::DEFAULT_NAMESPACE;

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
    #[arg(long)]
    pub app: Option<String>,
    /// The app's namespace, with --app.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE, requires = "app")]
    pub namespace: String,
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

pub async fn run(args: EventsArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, connection) = lattice.api("shoal events").await?;
    let start = journal::start(args.since);
    let mut reader = match &args.app {
        Some(app) => {
            connection
                .events(Some((args.namespace.as_str(), app)), start, args.follow)
                .await?
        }
        // A viewer of some namespaces only reads the one asked for (every event of the
        // lattice, host events included, is for lattice-wide viewers).
        None if !api.lattice_wide() => {
            connection
                .namespace_events(&args.namespace, start, args.follow)
                .await?
        }
        None => connection.events(None, start, args.follow).await?,
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
