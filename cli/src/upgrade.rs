//! A host restarting into a new binary, and going back on its own when the new one fails.
//!
//! When a fleet upgrade's binary is ready (pulled into the cache, checked by digest and
//! signature, see [`OciUpgrader`]), the host drains, keeps its record, and:
//! 1. starts a watchdog (`shoal upgrade-watchdog`, this same old binary) that holds a copy
//!    of the ingress's listening socket;
//! 2. replaces itself (`exec`, same pid) with the new binary, handing it the listening
//!    socket as systemd's socket activation does (`LISTEN_FDS`, descriptor 3): clients queue
//!    in its backlog meanwhile, none is refused;
//! 3. the new binary, once it has rejoined the lattice, signals the watchdog (`SIGUSR1`),
//!    which exits. If the new binary exits first (the watchdog's parent is gone) or does not
//!    rejoin within the order's timeout (the watchdog kills it), the watchdog starts the old
//!    binary again, same arguments and socket, telling it what failed; that host reports the
//!    failure in its record and never tries that upgrade again.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use command_fds::{CommandFdExt as _, FdMapping};
use shoal_host::agent::{Prepared, Upgrader};
use shoal_lattice::fleet::{ReportPhase, UpgradeOrder, UpgradeReport};
use shoal_oci::{Client, Digest, parse_reference};

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

/// Takes what the environment hands over.
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
        watchdog: watchdog.filter(|pid| {
            std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw_nonzero()))
                .ok()
                .and_then(|stat| {
                    let parent = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
                    parent.parse::<u32>().ok()
                })
                == Some(std::process::id())
        }),
    }
}

/// Says the new binary rejoined: the watchdog stands down, and is reaped; `dir`'s
/// `current` link names this binary from now on (what a service manager should start).
pub async fn rejoined(watchdog: rustix::process::Pid, dir: &std::path::Path) {
    tracing::info!("rejoined the lattice on the new binary");
    if let Err(error) = link_current(dir) {
        tracing::warn!(error = %format!("{error:#}"), "cannot point host-binaries/current at the new binary");
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

/// Points `dir/current` at the running binary, atomically (a new link renamed over it).
fn link_current(dir: &std::path::Path) -> anyhow::Result<()> {
    let running = std::fs::read_link(SELF)?;
    let temporary = dir.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&running, &temporary)?;
    std::fs::rename(&temporary, dir.join("current"))?;
    Ok(())
}

/// The digest of the running binary.
pub async fn own_digest() -> Option<String> {
    tokio::task::spawn_blocking(|| file_digest(std::path::Path::new(SELF)))
        .await
        .ok()
        .flatten()
}

/// `sha256:…` of a file's content.
fn file_digest(path: &std::path::Path) -> Option<String> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Pulls host binaries through the OCI cache and checks their signatures.
pub struct OciUpgrader {
    pub client: Client,
    /// Where runnable copies go.
    pub dir: PathBuf,
    /// The keys this host itself accepts binaries signed by (`--upgrade-key`).
    pub anchors: Vec<shoal_oci::keys::PublicKey>,
}

impl Upgrader for OciUpgrader {
    fn prepare(
        &self,
        order: UpgradeOrder,
    ) -> Pin<Box<dyn Future<Output = Result<PathBuf, String>> + Send>> {
        let client = self.client.clone();
        let dir = self.dir.clone();
        // Signed by a key the host was given and the lattice trusts: a control plane (or a
        // stolen scheduler credential) alone cannot make a host run native code.
        let trusted: Vec<String> = order.trusted.iter().map(|key| key.id.clone()).collect();
        let keys: Vec<shoal_oci::keys::PublicKey> = self
            .anchors
            .iter()
            .filter(|key| trusted.contains(&key.id()))
            .cloned()
            .collect();
        Box::pin(async move {
            if std::process::id() == 1 {
                return Err(
                    "the host runs as process 1 (in a container?): upgrade its image instead"
                        .to_owned(),
                );
            }
            if keys.is_empty() {
                return Err("no key of the lattice's trust policy is one this host accepts upgrades signed by (shoal host --upgrade-key KEY.pub)".to_owned());
            }
            let reference =
                parse_reference(&order.target.reference).map_err(|error| error.to_string())?;
            let expected: Digest = order
                .target
                .binary
                .parse()
                .map_err(|error| format!("{error}"))?;
            let manifest: Digest = reference
                .digest()
                .ok_or("the order's reference is not pinned")?
                .parse()
                .map_err(|error| format!("{error}"))?;
            let cached = client
                .pull_binary(&reference, &expected)
                .await
                .map_err(|error| format!("cannot pull {}: {error}", order.target.reference))?;
            client
                .verify(&reference, &manifest, &keys)
                .await
                .map_err(|error| format!("{}: {error}", error.reason()))?;
            let path = dir.join(expected.hex());
            tokio::task::spawn_blocking(move || install(&cached, &path, &expected))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| format!("{error:#}"))
        })
    }

    fn identify(&self) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> {
        Box::pin(own_digest())
    }
}

/// Copies the cached binary to `path`, executable (the cache may prune its copy).
/// A copy already there is kept when it is intact: another host of this machine may be
/// running it.
fn install(
    cached: &std::path::Path,
    path: &std::path::Path,
    expected: &Digest,
) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("no directory for host binaries")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Only this user may put a binary where hosts start them from.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    prune(dir, path);
    if file_digest(path).as_deref() == Some(expected.as_str()) {
        return Ok(path.to_owned());
    }
    let temporary = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::copy(cached, temporary.path())
        .with_context(|| format!("cannot copy the binary to {}", dir.display()))?;
    if file_digest(temporary.path()).as_deref() != Some(expected.as_str()) {
        anyhow::bail!("the copy of the binary does not match its digest");
    }
    std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(0o755))?;
    temporary
        .persist(path)
        .with_context(|| format!("cannot install {}", path.display()))?;
    Ok(path.to_owned())
}

/// Removes the binaries of `dir` other than `keep`, the running one and the one `current`
/// names: each upgrade leaves one, which nothing else would remove.
fn prune(dir: &std::path::Path, keep: &std::path::Path) {
    let running = std::fs::read_link(SELF).ok();
    let current = std::fs::read_link(dir.join("current")).ok();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let named = |other: &Option<PathBuf>| other.as_deref() == Some(path.as_path());
        let binary = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()));
        if binary && path != keep && !named(&running) && !named(&current) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// This very binary, even when its file was replaced or removed since it started.
const SELF: &str = "/proc/self/exe";

/// Replaces this process with `prepared`'s binary, with a watchdog to go back (see the
/// module's documentation). When that cannot be done, starts this binary again in its own
/// place, telling it why. Returns only when neither could be done.
pub fn restart_into(prepared: &Prepared, listener: &std::net::TcpListener) -> anyhow::Error {
    let failed = |message: String| UpgradeReport {
        upgrade: prepared.order.upgrade.clone(),
        binary: prepared.order.target.binary.clone(),
        phase: ReportPhase::Failed,
        message: Some(message),
    };
    let mut watchdog = None;
    let error = match try_restart(prepared, listener, &mut watchdog) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    // The watchdog would take this process, started again below under the same pid, for
    // the new binary and kill it at its deadline.
    if let Some(mut watchdog) = watchdog {
        let _ = watchdog.kill();
        let _ = watchdog.wait();
    }
    tracing::error!(error = %format!("{error:#}"), "cannot restart into the new binary; starting this one again");
    let report = failed(format!("{error:#}"));
    let again = match socket(listener) {
        Ok(socket) => std::process::Command::new(SELF)
            .args(std::env::args_os().skip(1))
            .env(FAILED, serde_json::to_string(&report).unwrap_or_default())
            .env("LISTEN_FDS", "1")
            .env("LISTEN_PID", std::process::id().to_string())
            .env_remove(RUNNING)
            .env_remove(WATCHDOG)
            .fd_mappings(socket)
            .map_err(anyhow::Error::new)
            .map(|command| command.exec()),
        Err(error) => Err(error),
    };
    match again {
        Ok(exec_error) => error.context(exec_error),
        Err(socket_error) => error.context(socket_error),
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

fn try_restart(
    prepared: &Prepared,
    listener: &std::net::TcpListener,
    watchdog_started: &mut Option<std::process::Child>,
) -> anyhow::Result<std::convert::Infallible> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let failed = UpgradeReport {
        upgrade: prepared.order.upgrade.clone(),
        binary: prepared.order.target.binary.clone(),
        phase: ReportPhase::Failed,
        message: None,
    };
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
        .args(&args)
        .stdin(std::process::Stdio::null())
        .fd_mappings(socket(listener)?)
        .context("cannot hand the socket to the watchdog")?;
    let started = watchdog
        .spawn()
        .context("cannot start the upgrade's watchdog")?;
    let watchdog_pid = started.id();
    *watchdog_started = Some(started);
    tracing::info!(
        binary = %prepared.path.display(),
        version = %prepared.order.target.version,
        "restarting into the new binary"
    );
    let mut next = std::process::Command::new(&prepared.path);
    next.args(&args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", std::process::id().to_string())
        .env(RUNNING, &prepared.order.target.binary)
        .env(WATCHDOG, watchdog_pid.to_string())
        .env_remove(FAILED)
        .fd_mappings(socket(listener)?)
        .context("cannot hand the socket to the new binary")?;
    let error = next.exec();
    // The watchdog sees this process gone and starts this binary again.
    Err(anyhow::Error::new(error).context(format!(
        "cannot start {}; the watchdog starts this binary again",
        prepared.path.display()
    )))
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_millis(args.timeout_ms);
    let parent = rustix::process::Pid::from_raw(args.pid);
    let why = runtime.block_on(async {
        let mut rejoined =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                _ = rejoined.recv() => return Ok::<_, anyhow::Error>(None),
                () = tokio::time::sleep_until(deadline) => {
                    // Still this process's parent (not a pid reused since it exited).
                    if let Some(pid) = parent.filter(|_| rustix::process::getppid() == parent) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                        // Gone once this process is no longer its child.
                        let gone = tokio::time::Instant::now() + Duration::from_secs(10);
                        while rustix::process::getppid() == parent && tokio::time::Instant::now() < gone {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    return Ok(Some(format!(
                        "the new binary did not rejoin the lattice within {} s; back on the old binary",
                        timeout.as_secs()
                    )));
                }
                () = tokio::time::sleep(Duration::from_millis(20)) => {
                    // The new binary exited: this process was handed to another parent.
                    if rustix::process::getppid() != parent {
                        return Ok(Some(
                            "the new binary exited before it rejoined the lattice; back on the old binary"
                                .to_owned(),
                        ));
                    }
                }
            }
        }
    })?;
    drop(runtime);
    let Some(why) = why else {
        return Ok(0);
    };
    let mut failed: UpgradeReport =
        serde_json::from_str(&args.failed).context("--failed is not an upgrade report")?;
    failed.message = Some(why.clone());
    eprintln!("upgrade watchdog: {why}");
    // The socket is still at descriptor 3, where the old binary's socket activation finds it.
    let error = std::process::Command::new(SELF)
        .args(&args.args)
        .env(FAILED, serde_json::to_string(&failed)?)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", std::process::id().to_string())
        .env_remove(RUNNING)
        .env_remove(WATCHDOG)
        .exec();
    Err(anyhow::Error::new(error).context("cannot start the old binary again"))
}
