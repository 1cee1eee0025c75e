//! The restart itself: the watchdog started, this process replaced by the new binary with
//! the listening socket; and the watchdog's side, which starts the old binary again when
//! the new one does not rejoin.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use command_fds::{CommandFdExt as _, FdMapping};
use shoal_host::agent::Prepared;
use shoal_lattice::fleet::UpgradeReport;

use super::{Handing, LISTEN_FD, SELF, failure, host_command};

/// Replaces this process with `prepared`'s binary, with a watchdog to go back (see the
/// module's documentation). When that cannot be done, stops the watchdog and starts this
/// binary again in its own place, telling it why. Returns only when neither could be done.
pub fn restart_into(prepared: &Prepared, listener: &std::net::TcpListener) -> anyhow::Error {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut watchdog = None;
    let error = match spawn_watchdog(prepared, listener, &args) {
        Ok(started) => {
            let pid = started.id();
            watchdog = Some(started);
            exec_new(prepared, listener, &args, pid)
        }
        Err(error) => error,
    };
    // The watchdog would take this process, started again below under the same pid, for
    // the new binary and kill it at its deadline.
    if let Some(mut watchdog) = watchdog {
        let _ = watchdog.kill();
        let _ = watchdog.wait();
    }
    tracing::error!(error = %format!("{error:#}"), "cannot restart into the new binary; starting this one again");
    let failed = failure(&prepared.order, Some(format!("{error:#}")));
    let again = socket(listener).and_then(|socket| {
        let mut command = host_command(SELF, &args, &Handing::OldAgain { failed: &failed });
        command.fd_mappings(socket)?;
        Ok(command.exec())
    });
    match again {
        Ok(exec_error) => error.context(format!(
            "cannot start this binary again either: {exec_error}"
        )),
        Err(socket_error) => error.context(format!(
            "cannot start this binary again either: {socket_error:#}"
        )),
    }
}

/// The listening socket, handed over at [`LISTEN_FD`].
fn socket(listener: &std::net::TcpListener) -> anyhow::Result<Vec<FdMapping>> {
    Ok(vec![FdMapping {
        parent_fd: OwnedFd::from(
            listener
                .try_clone()
                .context("cannot copy the listening socket")?,
        ),
        child_fd: LISTEN_FD,
    }])
}

/// Starts the watchdog: this binary, with the socket, the host's arguments and what to
/// report should it start this binary again.
fn spawn_watchdog(
    prepared: &Prepared,
    listener: &std::net::TcpListener,
    args: &[std::ffi::OsString],
) -> anyhow::Result<std::process::Child> {
    let failed = failure(&prepared.order, None);
    let mut watchdog = std::process::Command::new(SELF);
    watchdog
        .arg("upgrade-watchdog")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg("--timeout-ms")
        .arg(prepared.order.timeout.0.as_millis().to_string())
        .arg("--failed")
        .arg(serde_json::to_string(&failed)?)
        .arg("--")
        .args(args)
        .stdin(std::process::Stdio::null())
        .fd_mappings(socket(listener)?)
        .context("cannot hand the socket to the watchdog")?;
    watchdog
        .spawn()
        .context("cannot start the upgrade's watchdog")
}

/// Replaces this process with the new binary; returns only the error that prevented it.
fn exec_new(
    prepared: &Prepared,
    listener: &std::net::TcpListener,
    args: &[std::ffi::OsString],
    watchdog: u32,
) -> anyhow::Error {
    tracing::info!(
        binary = %prepared.path.display(),
        version = %prepared.order.target.version,
        "restarting into the new binary"
    );
    let handing = Handing::NewBinary {
        binary: &prepared.order.target.binary,
        watchdog,
    };
    let mut next = host_command(&prepared.path, args, &handing);
    let error = match socket(listener).and_then(|socket| {
        next.fd_mappings(socket)
            .context("cannot hand the socket to the new binary")?;
        Ok(())
    }) {
        Ok(()) => anyhow::Error::new(next.exec()),
        Err(error) => error,
    };
    error.context(format!("cannot start {}", prepared.path.display()))
}

/// Watches a host restarting into a new binary (started by the host, not by people).
#[derive(Debug, Args)]
pub struct WatchdogArgs {
    /// The host's process.
    #[arg(long)]
    pid: i32,
    /// How long the new binary has to rejoin.
    #[arg(long)]
    timeout_ms: u64,
    /// What the old binary reports when it is started again.
    #[arg(long)]
    failed: String,
    /// The host's arguments.
    #[arg(last = true)]
    args: Vec<std::ffi::OsString>,
}

/// Waits for the new binary's word; starts the old one again without it.
pub fn watchdog(args: &WatchdogArgs) -> anyhow::Result<u8> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let Some(why) = wait_for_word(args.pid, timeout)? else {
        return Ok(0);
    };
    let mut failed: UpgradeReport =
        serde_json::from_str(&args.failed).context("--failed is not an upgrade report")?;
    failed.message = Some(why.clone());
    eprintln!("upgrade watchdog: {why}");
    // The socket is still at descriptor 3, where the old binary's socket activation finds it.
    let error = host_command(SELF, &args.args, &Handing::OldAgain { failed: &failed }).exec();
    Err(anyhow::Error::new(error).context("cannot start the old binary again"))
}

/// `None` once the new binary (the watchdog's parent, `pid`) signals it rejoined; else why
/// it did not: it exited (the watchdog was handed to another parent), or the deadline came
/// (it is killed, if still the parent: not a pid reused since it exited).
fn wait_for_word(pid: i32, timeout: Duration) -> anyhow::Result<Option<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let parent = rustix::process::Pid::from_raw(pid);
    let still_parent = || rustix::process::getppid() == parent;
    runtime.block_on(async {
        let mut rejoined =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                _ = rejoined.recv() => return Ok(None),
                () = tokio::time::sleep_until(deadline) => {
                    if let Some(pid) = parent.filter(|_| still_parent()) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        let gone = tokio::time::Instant::now() + Duration::from_secs(10);
                        while still_parent() && tokio::time::Instant::now() < gone {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    return Ok(Some(format!(
                        "the new binary did not rejoin the lattice within {} s; back on the old binary",
                        timeout.as_secs()
                    )));
                }
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    if !still_parent() {
                        return Ok(Some(
                            "the new binary exited before it rejoined the lattice; back on the old binary"
                                .to_owned(),
                        ));
                    }
                }
            }
        }
    })
}
