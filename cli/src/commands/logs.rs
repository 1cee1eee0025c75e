//! `shoal logs APP` (or `job/NAME`): what an app's replicas (or a job's runs) wrote to
//! stdout and stderr, on whichever host they ran (the lattice keeps recent lines), and with
//! `-f` what they write next.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shoal_lattice::api::{AppHistory, GetJobs};
use shoal_lattice::api::{CallError, ErrorCode, JobView};
use shoal_lattice::records::DEFAULT_NAMESPACE;
use shoal_lattice::{LogLine, Output, Start};

use crate::journal;
use crate::lattice::LatticeArgs;

/// Print what an app's replicas wrote to stdout and stderr.
///
/// Lines come from every replica of the app on every host, oldest first, each after the
/// replica that wrote it. The lattice keeps the last 24 hours (at most 64 MiB of lines over
/// all apps), including lines of replicas that are gone and hosts that died.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app's name (`app/NAME` too), or `job/NAME` for a job's runs.
    pub app: String,
    /// The app's namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Keep printing new lines as they are written, until ctrl-c.
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines written within this long, like 10m or 2h.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub since: Option<Duration>,
    /// Only the last N lines written so far (then, with -f, every new one).
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only lines of this replica (see shoal get replicas).
    #[arg(long)]
    pub replica: Option<String>,
    /// Start each line with the time it was written (RFC 3339, UTC).
    #[arg(long)]
    pub timestamps: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: LogFormat,
}

/// How lines are printed.
#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum LogFormat {
    /// `REPLICA LINE`, stderr lines marked `(stderr)`.
    #[default]
    Text,
    /// One JSON object a line: host, replica, revision, output, time, line.
    Json,
}

pub async fn run(args: LogsArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, connection) = lattice.api("shoal logs").await?;
    let (kind, name) = match args.app.split_once('/') {
        Some(("job", name)) => ("job", name),
        Some(("app", name)) => ("app", name),
        Some((kind, _)) => bail!("shoal logs reads app/NAME or job/NAME, not {kind}/…"),
        None => ("app", args.app.as_str()),
    };
    // Asks the control plane first: a caller who may not view the namespace is refused
    // with a clear answer (nats-server would refuse the journal read anyway), and following
    // an app that does not exist is an error. The lines of a deleted app can still be read.
    let exists = if kind == "job" {
        let jobs: Vec<JobView> = api
            .call(GetJobs {
                namespace: Some(args.namespace.clone()),
            })
            .await?;
        let found = jobs.iter().any(|job| job.job.name == name);
        if !found && args.follow {
            bail!(
                "there is no job {}/{name} to follow; shoal get jobs lists them",
                args.namespace
            );
        }
        found
    } else {
        match api
            .call(AppHistory {
                namespace: args.namespace.clone(),
                name: name.to_owned(),
            })
            .await
        {
            Ok(_) => true,
            Err(CallError::Refused(refused))
                if refused.code == ErrorCode::NotFound && !args.follow =>
            {
                false
            }
            Err(error) => return Err(error.into()),
        }
    };
    // A job's runs write under a name no app can have.
    let published = match kind {
        "job" => shoal_lattice::jobs::log_name(name),
        _ => name.to_owned(),
    };
    let start = match args.tail {
        Some(0) => Start::New,
        _ => journal::start(args.since),
    };
    let mut reader = connection
        .logs(&args.namespace, &published, start, args.follow)
        .await?;
    let mut printer = Printer {
        out: std::io::stdout().lock(),
        args: &args,
        printed: 0,
    };
    // With --tail, the backlog is held back until it is all read, then its end printed.
    let mut held: Option<(usize, VecDeque<LogLine>)> =
        args.tail.map(|tail| (tail, VecDeque::new()));
    if reader.caught_up() {
        printer.flush_held(&mut held)?;
    }
    journal::read(&mut reader, |line, caught_up| {
        if args
            .replica
            .as_ref()
            .is_none_or(|wanted| *wanted == line.replica)
        {
            match &mut held {
                Some((tail, backlog)) => {
                    if backlog.len() >= *tail {
                        backlog.pop_front();
                    }
                    backlog.push_back(line);
                }
                None => printer.line(&line)?,
            }
        }
        if caught_up {
            printer.flush_held(&mut held)?;
        }
        Ok(())
    })
    .await?;
    printer.flush_held(&mut held)?;
    if !exists && printer.printed == 0 {
        bail!(
            "there is no {kind} {}/{name} and the lattice keeps no lines of one; shoal get {kind}s lists them",
            args.namespace,
        );
    }
    Ok(0)
}

struct Printer<'a, W> {
    out: W,
    args: &'a LogsArgs,
    printed: usize,
}

impl<W: Write> Printer<'_, W> {
    fn line(&mut self, line: &LogLine) -> anyhow::Result<()> {
        let text = match self.args.output {
            LogFormat::Json => serde_json::to_string(line).context("cannot encode a line")?,
            LogFormat::Text => {
                let mut text = String::new();
                if self.args.timestamps {
                    let time = UNIX_EPOCH + Duration::from_millis(line.time);
                    text.push_str(&humantime::format_rfc3339_millis(time).to_string());
                    text.push(' ');
                }
                text.push_str(&line.replica);
                if line.output == Output::Stderr {
                    text.push_str(" (stderr)");
                }
                text.push(' ');
                text.push_str(&line.line);
                text
            }
        };
        self.printed += 1;
        journal::print_line(&mut self.out, &text)
    }

    fn flush_held(&mut self, held: &mut Option<(usize, VecDeque<LogLine>)>) -> anyhow::Result<()> {
        if let Some((_, backlog)) = held.take() {
            for line in &backlog {
                self.line(line)?;
            }
        }
        Ok(())
    }
}
