//! A host restarting into a new binary, and going back on its own when the new one fails.
//!
//! When a fleet upgrade's binary is ready (signature checked, pulled, installed: see
//! [`install`]), the agent drains and keeps its record, and [`restart`]:
//! 1. starts a watchdog (`shoal upgrade-watchdog`, this same old binary) that holds a copy
//!    of the ingress's listening socket;
//! 2. replaces this process (`exec`, same pid) with the new binary, handing it the listening
//!    socket as systemd's socket activation does (`LISTEN_FDS`, descriptor 3): clients queue
//!    in its backlog meanwhile, none is refused;
//! 3. the new binary, once it has rejoined the lattice, signals the watchdog (`SIGUSR1`),
//!    which exits ([`rejoined`]). If the new binary exits first (the watchdog's parent is
//!    gone) or does not rejoin within the order's timeout (the watchdog kills it), the
//!    watchdog starts the old binary again, same arguments and socket, telling it what
//!    failed; that host reports the failure in its record and never tries that upgrade
//!    again.
//!
//! What one process hands the next goes through the environment ([`Handover`]).

mod install;
mod restart;

use std::ffi::OsStr;
use std::path::Path;

pub use install::OciUpgrader;
pub use restart::{WatchdogArgs, restart_into, watchdog};
use shoal_lattice::fleet::{ReportPhase, UpgradeOrder, UpgradeReport};

/// This very binary, even when its file was replaced or removed since it started.
const SELF: &str = "/proc/self/exe";
/// The descriptor the listening socket is handed over at, as systemd hands sockets.
const LISTEN_FD: i32 = 3;
/// The digest of the binary an upgrade started (so it need not read itself).
const RUNNING: &str = "SHOAL_UPGRADE_BINARY";
/// What failed, for the old binary started again (an [`UpgradeReport`] as JSON).
const FAILED: &str = "SHOAL_UPGRADE_FAILED";
/// The watchdog's pid: the new binary signals it once it rejoined, then reaps it.
const WATCHDOG: &str = "SHOAL_UPGRADE_WATCHDOG";

/// What this process was handed by the one it replaced (or by systemd).
#[derive(Debug, Default)]
pub struct Handover {
    /// The ingress's listening socket.
    pub listener: Option<std::net::TcpListener>,
    /// The digest of this binary, when an upgrade started it.
    pub binary: Option<String>,
    /// The upgrade that failed, when this binary was started again after it.
    pub failed: Option<UpgradeReport>,
    /// The upgrade's watchdog, to signal once rejoined.
    pub watchdog: Option<rustix::process::Pid>,
}

/// Takes what the environment hands over; before any other thread runs (taking the socket
/// unsets the socket activation variables).
pub fn handover() -> Handover {
    let listener = listenfd::ListenFd::from_env()
        .take_tcp_listener(0)
        .ok()
        .flatten();
    let watchdog = std::env::var(WATCHDOG)
        .ok()
        .and_then(|pid| pid.parse().ok())
        .and_then(rustix::process::Pid::from_raw);
    Handover {
        listener,
        binary: std::env::var(RUNNING)
            .ok()
            .filter(|digest| shoal_lattice::validate::is_digest(digest)),
        failed: std::env::var(FAILED)
            .ok()
            .and_then(|json| serde_json::from_str(&json).ok()),
        // Only our own child: the watchdog was started before the exec that made this process.
        watchdog: watchdog
            .filter(|pid| parent_of(pid.as_raw_nonzero().get()) == Some(std::process::id())),
    }
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: i32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How a `shoal host` started by another process is told what it is handed.
enum Handing<'a> {
    /// The new binary of an upgrade, with its digest and its watchdog's pid.
    NewBinary { binary: &'a str, watchdog: u32 },
    /// The old binary again, after the upgrade failed.
    OldAgain { failed: &'a UpgradeReport },
}

/// `program` started as this host again: `args`, the listening socket at [`LISTEN_FD`] for
/// this very pid (`exec` keeps it), and what `handing` says.
fn host_command(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    handing: &Handing<'_>,
) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", std::process::id().to_string());
    match handing {
        Handing::NewBinary { binary, watchdog } => command
            .env(RUNNING, binary)
            .env(WATCHDOG, watchdog.to_string())
            .env_remove(FAILED),
        Handing::OldAgain { failed } => command
            .env(FAILED, serde_json::to_string(failed).unwrap_or_default())
            .env_remove(RUNNING)
            .env_remove(WATCHDOG),
    };
    command
}

/// What a host reports of `order` when it went back on the old binary.
fn failure(order: &UpgradeOrder, message: Option<String>) -> UpgradeReport {
    UpgradeReport {
        upgrade: order.upgrade.clone(),
        binary: order.target.binary.clone(),
        phase: ReportPhase::Failed,
        message,
    }
}

/// Says the new binary rejoined: the watchdog stands down, and is reaped; `dir`'s
/// `current` link names this binary from now on (what a service manager should start).
pub async fn rejoined(watchdog: rustix::process::Pid, dir: &Path) {
    tracing::info!("rejoined the lattice on the new binary");
    if let Err(error) = install::link_current(dir) {
        tracing::warn!(error = %format!("{error:#}"), "cannot point host-binaries current at the new binary");
    }
    if let Err(error) = rustix::process::kill_process(watchdog, rustix::process::Signal::USR1) {
        tracing::warn!(%error, "cannot tell the upgrade's watchdog this host rejoined");
        return;
    }
    let _ = tokio::task::spawn_blocking(move || {
        rustix::process::waitpid(Some(watchdog), rustix::process::WaitOptions::empty())
    })
    .await;
}
