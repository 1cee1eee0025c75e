//! `shoal rollout status|history|undo`: follow, list and roll back an app's revisions.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use shoal_lattice::api::{self, AppDetail, History, UndoneTo};
use shoal_lattice::api::{AppHistory, DescribeApp, PauseRollout, UndoRollout};
use shoal_lattice::records::{DEFAULT_NAMESPACE, Phase};

use crate::commands::get::{age, table};
use crate::lattice::LatticeArgs;

/// Follow, list and roll back an app's revisions.
#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until the app's current revision is fully rolled out, showing progress; exits
    /// non-zero if it is not done within --timeout.
    Status {
        /// The app's name.
        name: String,
        /// The app's namespace.
        #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// How long to wait.
        #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
        timeout: Duration,
    },
    /// List the app's revisions: digest, age and what changed.
    History {
        /// The app's name.
        name: String,
        /// The app's namespace.
        #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Hold a rollout where it is: no replica is started or stopped for it until resumed.
    Pause {
        /// The app's name.
        name: String,
        /// The app's namespace.
        #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Let a paused rollout go on.
    Resume {
        /// The app's name.
        name: String,
        /// The app's namespace.
        #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// Roll back to the previous revision (or --to-revision N), as a new revision.
    Undo {
        /// The app's name.
        name: String,
        /// The app's namespace.
        #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
        namespace: String,
        /// The revision to return to.
        #[arg(long)]
        to_revision: Option<u64>,
    },
}

pub async fn run(args: RolloutArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal rollout").await?;
    match args.command {
        RolloutCommand::History { name, namespace } => {
            let history: History = api
                .call(AppHistory {
                    namespace: namespace.clone(),
                    name: name.clone(),
                })
                .await?;
            let mut rows = table(&["REVISION", "DIGEST", "AGE", "CAUSE"]);
            for revision in history.revisions {
                let marker = if revision.revision == history.current {
                    " (current)"
                } else {
                    ""
                };
                rows.add_row(vec![
                    format!("{}{marker}", revision.revision),
                    revision.digest.chars().take(19).collect(),
                    age(revision.created_at),
                    revision.cause,
                ]);
            }
            println!("{rows}");
            Ok(0)
        }
        RolloutCommand::Undo {
            name,
            namespace,
            to_revision,
        } => {
            let undone: UndoneTo = api
                .call(UndoRollout {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    to_revision,
                })
                .await?;
            if undone.revised {
                println!(
                    "app {namespace}/{name} rolled back to revision {} (now revision {})",
                    undone.target, undone.revision
                );
            } else {
                println!(
                    "app {namespace}/{name} already runs what revision {} ran (revision {})",
                    undone.target, undone.revision
                );
            }
            Ok(0)
        }
        RolloutCommand::Status {
            name,
            namespace,
            timeout,
        } => status(&api, &namespace, &name, timeout).await,
        RolloutCommand::Pause { name, namespace } => pause(&api, &namespace, &name, true).await,
        RolloutCommand::Resume { name, namespace } => pause(&api, &namespace, &name, false).await,
    }
}

async fn pause(api: &api::Client, namespace: &str, name: &str, paused: bool) -> anyhow::Result<u8> {
    let () = api
        .call(PauseRollout {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            paused,
        })
        .await?;
    let what = if paused { "paused" } else { "resumed" };
    println!("app {namespace}/{name}: rollout {what}");
    Ok(0)
}

async fn status(
    api: &api::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<u8> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    let mut following = None;
    loop {
        let detail: AppDetail = api
            .call(DescribeApp {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .await?;
        let app = detail.app;
        let watched = *following.get_or_insert(app.revision);
        let app_status = detail.status;
        if let Some(failed) = app_status
            .as_ref()
            .and_then(|status| status.failed_rollout.as_ref())
            .filter(|failed| failed.revision >= watched)
        {
            eprintln!(
                "error: the rollout of revision {} failed: {}",
                failed.revision, failed.reason
            );
            if let Some(previous) = failed.rolled_back_to {
                eprintln!(
                    "rolled back to revision {previous} (now revision {})",
                    app.revision
                );
            }
            return Ok(1);
        }
        let mine = detail.replicas;
        let ready = |revision_matches: bool| {
            mine.iter()
                .filter(|replica| {
                    (replica.assignment.revision == app.revision) == revision_matches
                        && replica
                            .status
                            .as_ref()
                            .is_some_and(|status| status.phase == Phase::Ready)
                })
                .count()
        };
        let (updated, old) = (
            ready(true),
            mine.iter()
                .filter(|replica| replica.assignment.revision != app.revision)
                .count(),
        );
        let unplaced = app_status.and_then(|status| status.unplaced);
        let line = format!(
            "revision {}: {updated} of {} updated replicas ready, {old} old replicas left{}",
            app.revision,
            app.spec.replicas,
            unplaced
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default()
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        if updated == app.spec.replicas as usize && old == 0 {
            println!("rollout of revision {} complete", app.revision);
            return Ok(0);
        }
        if Instant::now() > deadline {
            eprintln!(
                "error: the rollout of revision {} is not done after {}",
                app.revision,
                humantime::format_duration(timeout)
            );
            return Ok(1);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
