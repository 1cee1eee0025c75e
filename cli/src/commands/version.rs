//! `shoal version` and `shoal completion`: what this binary is, and shell completions.

use std::io::Write as _;

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;
use serde::Serialize;

use crate::output::{self, Format};

/// Print the version of shoal, the wasmtime it runs components with, and the manifest and
/// protocol versions it speaks.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Version {
    shoal: String,
    wasmtime: &'static str,
    api_version: &'static str,
    target: &'static str,
}

pub fn run(args: VersionArgs) -> anyhow::Result<()> {
    let version = Version {
        shoal: crate::build_label::version(),
        wasmtime: env!("SHOAL_WASMTIME_VERSION"),
        api_version: shoal_lattice::records::API_VERSION,
        target: "wasm32-wasip2",
    };
    output::print(args.output, &version, |version| {
        format!(
            "shoal {}\nwasmtime {}\nmanifests {}\ncomponents {}\n",
            version.shoal, version.wasmtime, version.api_version, version.target
        )
    })
}

/// Print a completion script for a shell.
///
/// Examples: shoal completion bash > ~/.local/share/bash-completion/completions/shoal
///           shoal completion zsh > "${fpath[1]}/_shoal"
///           shoal completion fish > ~/.config/fish/completions/shoal.fish
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// Shells completions are written for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

pub fn completion<C: CommandFactory>(args: CompletionArgs) -> anyhow::Result<()> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut command = C::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "shoal", &mut script);
    match std::io::stdout().write_all(&script) {
        // `shoal completion bash | head`: the reader had enough.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}
