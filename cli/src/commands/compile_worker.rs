//! `shoal compile-worker`, hidden: the child process a host compiles a component in (see
//! `shoal_host::compile`). Not for users; its arguments may change between versions.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;

/// The child a host compiles in: the component on stdin, the request as JSON.
#[derive(Debug, Args)]
pub struct CompileWorkerArgs {
    /// The compile request (JSON).
    pub request: String,
}

/// The host's compile worker for this binary, where it can be started again by path.
pub fn worker() -> Option<shoal_host::compile::Worker> {
    shoal_host::compile::Worker::this_executable(["compile-worker"])
}

pub fn run(args: &CompileWorkerArgs) -> ExitCode {
    // The message only, never a backtrace: printing one holds a lock that an allocation
    // failing past --compile-memory then waits for, and the worker would hang instead of
    // ending.
    std::panic::set_hook(Box::new(|info| eprintln!("compile worker: {info}")));
    let (code, message) = shoal_host::compile::serve(&args.request, &mut std::io::stdin().lock());
    if !message.is_empty() {
        let _ = writeln!(std::io::stdout(), "{message}");
    }
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
