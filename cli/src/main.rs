//! `shoal`: the one binary users touch. Parses the command line, sets up logging, runs the
//! command and turns its error into a message and an exit code.

mod build_label;
mod cache_budget;
mod commands;
mod dashboard;
mod duration;
mod journal;
mod lattice;
mod local_nats;
mod output;
mod progress;
mod registry;
mod signals;
mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Shoal: a WebAssembly-native edge orchestrator.
///
/// Build a Wasm component, push it to any OCI registry, and run it on hosts from servers to
/// small devices.
#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    lattice: lattice::LatticeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    New(commands::new::NewArgs),
    Build(commands::build::BuildArgs),
    Auth(commands::auth::AuthArgs),
    Push(commands::push::PushArgs),
    Pull(commands::pull::PullArgs),
    Keygen(commands::sign::KeygenArgs),
    Sign(commands::sign::SignArgs),
    Verify(commands::sign::VerifyArgs),
    Inspect(commands::inspect::InspectArgs),
    Run(commands::run::RunArgs),
    Up(commands::up::UpArgs),
    Host(commands::host::HostArgs),
    Scheduler(commands::scheduler::SchedulerArgs),
    Apply(commands::apply::ApplyArgs),
    Create(commands::create::CreateArgs),
    Config(commands::config::ConfigArgs),
    Secret(commands::secret::SecretArgs),
    Trust(commands::trust::TrustArgs),
    Egress(commands::egress::EgressArgs),
    Kv(commands::kv::KvArgs),
    Publish(commands::publish::PublishArgs),
    Get(commands::get::GetArgs),
    Describe(commands::describe::DescribeArgs),
    Scale(commands::scale::ScaleArgs),
    Delete(commands::delete::DeleteArgs),
    Rollout(commands::rollout::RolloutArgs),
    Logs(commands::logs::LogsArgs),
    Events(commands::events::EventsArgs),
    Cordon(commands::cordon::CordonArgs),
    Uncordon(commands::cordon::UncordonArgs),
    Drain(commands::cordon::DrainArgs),
    Fleet(commands::fleet::FleetArgs),
    Status(commands::status::StatusArgs),
    Dashboard(commands::dashboard::DashboardArgs),
    Completion(commands::version::CompletionArgs),
    Version(commands::version::VersionArgs),
    #[command(hide = true)]
    CompileWorker(commands::compile_worker::CompileWorkerArgs),
    #[command(hide = true)]
    UpgradeWatchdog(upgrade::WatchdogArgs),
}

/// sysexits' EX_USAGE: the command line was wrong.
const USAGE: u8 = 64;

/// The usage line of the deepest subcommand `args` name.
fn usage_of(args: impl Iterator<Item = String>) -> clap::builder::StyledStr {
    let mut command = <Cli as clap::CommandFactory>::command();
    command.build();
    for arg in args {
        if let Some(sub) = command.find_subcommand(&arg) {
            command = sub.clone();
        }
    }
    command.render_usage()
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are answers, not mistakes.
            let usage_error = error.use_stderr();
            let _ = error.print();
            if !usage_error {
                return ExitCode::SUCCESS;
            }
            // clap shows the usage line with some mistakes only (not a bad value): always.
            if !error.render().to_string().contains("Usage:") {
                eprintln!("\n{}", usage_of(std::env::args().skip(1)));
            }
            return ExitCode::from(USAGE);
        }
    };
    // A host's compile worker: no async runtime, no logging set-up, gone when compiled.
    if let Command::CompileWorker(args) = &cli.command {
        return commands::compile_worker::run(args);
    }
    // What the binary this one replaced handed over, taken before any other thread runs
    // (reading it unsets the socket activation variables).
    let handover = match &cli.command {
        Command::Host(_) => upgrade::handover(),
        _ => upgrade::Handover::default(),
    };
    // A host's upgrade watchdog: waits for the new binary's signal, and starts the old
    // binary again or exits.
    if let Command::UpgradeWatchdog(args) = &cli.command {
        return match upgrade::watchdog(args) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Logs go to stderr so stdout stays clean for digests and JSON. SHOAL_LOG (or RUST_LOG)
    // raises the level, for example SHOAL_LOG=debug.
    let filter = EnvFilter::try_from_env("SHOAL_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::New(args) => commands::new::run(args).map(|()| 0),
            Command::Build(args) => commands::build::run(args).map(|()| 0),
            Command::Completion(args) => commands::version::completion::<Cli>(args).map(|()| 0),
            Command::Version(args) => commands::version::run(args).map(|()| 0),
            Command::Auth(args) => commands::auth::run(args, &cli.lattice).await,
            Command::Push(args) => commands::push::run(args).await.map(|()| 0),
            Command::Pull(args) => commands::pull::run(args).await.map(|()| 0),
            Command::Keygen(args) => commands::sign::keygen(args).map(|()| 0),
            Command::Sign(args) => commands::sign::sign(args).await.map(|()| 0),
            Command::Verify(args) => commands::sign::verify(args).await,
            Command::Inspect(args) => commands::inspect::run(args).await.map(|()| 0),
            Command::Run(args) => commands::run::run(args).await,
            Command::Up(args) => commands::up::run(args, &cli.lattice).await,
            Command::Host(args) => commands::host::run(args, &cli.lattice, handover).await,
            Command::Scheduler(args) => commands::scheduler::run(args, &cli.lattice).await,
            Command::Apply(args) => commands::apply::run(args, &cli.lattice).await,
            Command::Create(args) => commands::create::run(args, &cli.lattice).await,
            Command::Config(args) => commands::config::run(args, &cli.lattice).await,
            Command::Secret(args) => commands::secret::run(args, &cli.lattice).await,
            Command::Trust(args) => commands::trust::run(args, &cli.lattice).await,
            Command::Egress(args) => commands::egress::run(args, &cli.lattice).await,
            Command::Kv(args) => commands::kv::run(args, &cli.lattice).await,
            Command::Publish(args) => commands::publish::run(args, &cli.lattice).await,
            Command::Get(args) => commands::get::run(args, &cli.lattice).await,
            Command::Describe(args) => commands::describe::run(args, &cli.lattice).await,
            Command::Scale(args) => commands::scale::run(args, &cli.lattice).await,
            Command::Delete(args) => commands::delete::run(args, &cli.lattice).await,
            Command::Rollout(args) => commands::rollout::run(args, &cli.lattice).await,
            Command::Logs(args) => commands::logs::run(args, &cli.lattice).await,
            Command::Events(args) => commands::events::run(args, &cli.lattice).await,
            Command::Cordon(args) => commands::cordon::cordon(args, &cli.lattice).await,
            Command::Uncordon(args) => commands::cordon::uncordon(args, &cli.lattice).await,
            Command::Drain(args) => commands::cordon::drain(args, &cli.lattice).await,
            Command::Status(args) => commands::status::run(args, &cli.lattice).await,
            Command::Dashboard(args) => commands::dashboard::run(args, &cli.lattice).await,
            // Run above, before the async runtime.
            Command::CompileWorker(_) | Command::UpgradeWatchdog(_) => Ok(0),
            Command::Fleet(args) => commands::fleet::run(args, &cli.lattice).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {}", shoal_lattice::Chain(&*error));
            // A request the control plane refused for want of a role: 77, as sysexits'
            // EX_NOPERM, so scripts can tell it from a failure.
            let forbidden = error.chain().any(|cause| {
                matches!(
                    cause.downcast_ref::<shoal_lattice::api::CallError>(),
                    Some(shoal_lattice::api::CallError::Refused(refused))
                        if refused.code == shoal_lattice::api::ErrorCode::Forbidden
                )
            });
            if forbidden {
                ExitCode::from(77)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
