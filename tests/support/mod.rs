//! Shared pieces of the end-to-end tests: the `shoal` binary, guest components built from
//! source, and real servers (an OCI registry) on free loopback ports, stopped on drop.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod lattice;
pub mod load;
pub mod nats;
pub mod raw;
pub mod registry;
pub mod served;

/// The password tests seal signing keys with (`SHOAL_KEY_PASSWORD`).
pub const KEY_PASSWORD: &str = "correct horse";

/// The output of a command that must have succeeded (else its stderr is the panic).
pub fn succeeded(output: std::process::Output) -> std::process::Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `check` returns `Some`, polling every 50 ms, or panics after `patience`.
pub fn eventually<T>(patience: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Probes `url` with GETs from now on until one answers 200, and returns how long that
/// took; after `patience`, panics naming what the last attempt got (status and body, or
/// the transport error), how many attempts got what, and `log()` (the server's log).
pub fn until_served(
    patience: Duration,
    what: &str,
    url: &str,
    log: impl Fn() -> String,
) -> Duration {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let started = Instant::now();
    let mut seen: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    loop {
        let last = match agent.get(url).call() {
            Ok(response) if response.status().as_u16() == 200 => return started.elapsed(),
            Ok(mut response) => format!(
                "{} {}",
                response.status().as_u16(),
                response
                    .body_mut()
                    .read_to_string()
                    .unwrap_or_default()
                    .trim()
            ),
            Err(error) => format!("transport error: {error}"),
        };
        *seen.entry(last.clone()).or_default() += 1;
        assert!(
            started.elapsed() < patience,
            "timed out after {patience:?} waiting for {what} ({url});\nlast attempt: {last}\nattempts by outcome: {seen:#?}\nlog:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A one-answer-per-connection HTTP server on loopback that says 200 to anything.
pub fn upstream() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    port
}

/// A signal a test sends a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// What an operator's `kill` or systemd sends.
    Term,
    /// Ctrl-C.
    Int,
    /// A stalled VM or machine: the process stops without knowing.
    Stop,
    /// And goes on.
    Cont,
}

/// Sends `signal` to process `pid` (by `kill`, as an operator would); whether it was sent.
pub fn signal(pid: u32, signal: Signal) -> bool {
    let name = match signal {
        Signal::Term => "-TERM",
        Signal::Int => "-INT",
        Signal::Stop => "-STOP",
        Signal::Cont => "-CONT",
    };
    std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .is_ok_and(|status| status.success())
}

/// Sends SIGTERM to process `pid` (what an operator's `kill` or systemd sends).
pub fn sigterm(pid: u32) {
    signal(pid, Signal::Term);
}

/// Stops `shoal up` at the end of a test as an operator would: SIGTERM, so it stops the
/// nats-server it started (a SIGKILLed `shoal up` leaves that server running, with nobody
/// to stop it), then SIGKILL if it has not exited within 10 s. Never panics: it runs in
/// `Drop`, also while a failed test unwinds.
pub fn stop_up(child: &mut std::process::Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    sigterm(child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Builds the guest components in `examples/` (once per test process; cargo makes concurrent
/// processes wait for each other) and returns the path of `name`'s component.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // The examples' .cargo/config.toml (target, target dir) applies from their directory.
        let status = Command::new(cargo)
            .args(["build", "--release", "--quiet"])
            .current_dir(workspace().join("examples"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the guest components failed");
    });
    // Libraries (cdylib) get underscores in their file names; binaries keep their dashes.
    let dir = workspace().join("target/guests/wasm32-wasip2/release");
    [name.replace('-', "_"), name.to_owned()]
        .iter()
        .map(|stem| dir.join(format!("{stem}.wasm")))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("guest {name} was not built into {}", dir.display()))
}

/// The `shoal` binary with its own cache directory, so tests never share state.
pub struct Shoal {
    pub home: tempfile::TempDir,
}

impl Shoal {
    pub fn new() -> Self {
        Self {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    /// A `shoal` command whose cache and Docker config live in this test's temp dir.
    pub fn command(&self) -> Command {
        self.command_of(Command::new(env!("CARGO_BIN_EXE_shoal")))
    }

    /// `program` (another `shoal` binary, or an emulator running one) set up as
    /// [`Self::command`] sets up the `shoal` under test.
    pub fn command_of(&self, mut command: Command) -> Command {
        // In the temp dir: `shoal up` leaves its admin credential in the working directory,
        // where later commands would find it.
        command
            .current_dir(self.home.path())
            .env_remove("SHOAL_CREDS")
            .env_remove("SHOAL_NATS_CREDS")
            .env("SHOAL_CACHE_DIR", self.cache_dir())
            // Schedulers compile nothing for hosts unless a test asks (`--precompile-memory`):
            // the test's hosts share one compile cache, and every test would compile its
            // components twice.
            .env("SHOAL_PRECOMPILE_MEMORY", "0")
            .env("DOCKER_CONFIG", self.home.path().join("docker"))
            .env_remove("SHOAL_REGISTRY_USERNAME")
            .env_remove("SHOAL_REGISTRY_PASSWORD")
            .env_remove("SHOAL_MAX_ARTIFACT_SIZE")
            .env_remove("RUST_LOG")
            .env_remove("SHOAL_LOG");
        command
    }

    /// Runs `shoal ARGS` and returns its output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Run {
        Run(self.command().args(args).output().unwrap())
    }

    /// Runs `shoal ARGS` and panics with its stderr unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert!(
            run.0.status.success(),
            "shoal {args:?} failed:\n{}",
            run.stderr()
        );
        run
    }

    /// Runs `shoal ARGS`, expects failure and returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert!(
            !run.0.status.success(),
            "shoal {args:?} succeeded but should fail:\n{}",
            run.stderr()
        );
        run.stderr()
    }

    /// Files in the artifact cache's blob store and tag index.
    pub fn cached_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for dir in ["oci/blobs", "oci/tags"] {
            collect_files(&self.cache_dir().join(dir), &mut files);
        }
        files
    }
}

fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_files(&path, files);
        } else {
            files.push(path);
        }
    }
}

/// The output of one `shoal` run.
pub struct Run(pub Output);

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.0.stdout).unwrap()
    }
}

/// The system time in ms since the epoch.
#[allow(dead_code)]
pub fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}
