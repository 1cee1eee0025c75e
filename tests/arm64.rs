//! The `shoal` binary cross-built for aarch64 (`scripts/cross.sh aarch64`), run under
//! `qemu-aarch64`: `shoal run` serves the hello component, and an arm64 host joins a lattice
//! of x86_64 processes and serves an app placed on it by `placement.requires: {arch:
//! aarch64}`. Runs only when `SHOAL_ARM64_BIN` names that binary (the script sets it): the
//! cross build does not fit in CI's time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::lattice::{Lattice, hello_manifest};
use support::{Shoal, eventually};

const PATIENCE: Duration = Duration::from_secs(120);

/// The arm64 `shoal` under qemu, or `None` when this run has none. Its runtime runs with
/// `--no-pooling`: qemu-user backs the pooling allocator's terabytes of reserved address
/// space with real memory (24 GB before the OOM killer, measured), which an arm64 machine
/// does not.
fn arm64(shoal: &Shoal) -> Option<Command> {
    let Some(binary) = std::env::var_os("SHOAL_ARM64_BIN") else {
        eprintln!("SHOAL_ARM64_BIN is not set: run scripts/cross.sh aarch64 to run this test");
        return None;
    };
    let mut command = Command::new(std::env::var_os("QEMU").unwrap_or("qemu-aarch64".into()));
    command
        .arg("-L")
        .arg(std::env::var_os("QEMU_LD_PREFIX").unwrap_or("/usr/aarch64-linux-gnu".into()))
        .arg(binary);
    Some(shoal.command_of(command))
}

#[test]
fn the_arm64_binary_runs_a_component_and_joins_an_x86_64_lattice() {
    let lattice = Lattice::start();
    let Some(command) = arm64(&lattice.shoal) else {
        return;
    };
    let hello = lattice.push_hello("1.0");

    // `shoal run` under emulation.
    let mut run = arm64(&lattice.shoal).unwrap();
    let served = lattice.spawn_command(
        {
            run.args(["run", &hello, "--no-pooling", "--listen", "127.0.0.1:0"]);
            run
        },
        &[],
        "arm64-run",
        false,
    );
    let url = eventually(PATIENCE, "shoal run (arm64) to listen", || {
        served
            .log()
            .lines()
            .find_map(|line| line.strip_prefix("listening on ").map(str::to_owned))
    });
    let body = eventually(PATIENCE, "shoal run (arm64) to serve hello", || {
        let mut response = support::lattice::agent().get(&url).call().ok()?;
        (response.status() == 200).then(|| response.body_mut().read_to_string().unwrap())
    });
    assert!(body.contains("hello"), "{body}");

    // An arm64 host in a lattice of x86_64 processes.
    let _scheduler = lattice.scheduler("s1");
    let _x86 = lattice.host("x86-1", &[]);
    let arm = arm64_host(&lattice, command, "arm-1", &[]);
    lattice.wait_registered("arm-1");
    lattice.apply(&hello_manifest(
        "on-arm",
        &hello,
        1,
        "  placement: {requires: {arch: aarch64}}\n",
    ));
    let placed = lattice.wait_ready("on-arm", 1, PATIENCE);
    assert_eq!(
        placed.keys().collect::<Vec<_>>(),
        ["arm-1"],
        "{}",
        arm.log()
    );
    let (status, _) = eventually(PATIENCE, "the arm64 host to serve on-arm", || {
        arm.get("/on-arm").filter(|(status, _)| *status == 200)
    });
    assert_eq!(status, 200);
}

/// An arm64 host `id` under qemu joining `lattice`, with `extra` flags.
fn arm64_host(
    lattice: &Lattice,
    command: Command,
    id: &str,
    extra: &[&str],
) -> support::lattice::Process {
    let mut args = support::lattice::host_args(id);
    args.push("--no-pooling");
    args.extend_from_slice(extra);
    lattice.spawn_command(lattice.aim(command), &args, id, true)
}

/// Milliseconds from applying `app` to its replica being ready.
fn apply_until_ready(lattice: &Lattice, app: &str, hello: &str, slot: &str) -> u128 {
    let started = std::time::Instant::now();
    lattice.apply(&hello_manifest(
        app,
        hello,
        1,
        &format!("  placement: {{requires: {{arch: aarch64, slot: {slot}}}}}\n"),
    ));
    lattice.wait_ready(app, 1, PATIENCE);
    started.elapsed().as_millis()
}

#[test]
fn an_arm64_host_starts_an_app_from_code_an_x86_64_scheduler_compiled_for_it() {
    // Secure: hosts take native code from the lattice only where nothing but the control
    // plane can write it.
    let lattice = Lattice::start_secure();
    let Some(first) = arm64(&lattice.shoal) else {
        return;
    };
    let second = arm64(&lattice.shoal).unwrap();
    let hello = lattice.push_hello("1.0");
    // First a scheduler that compiles nothing for hosts (else the first start, slow under
    // emulation, might already find code compiled for it).
    let without = lattice.secure_scheduler_with("60s", &["--precompile-memory", "0"]);
    // Two arm64 hosts, each with a compile cache of its own.
    let caches = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let arm = |command, id: &str, slot: &str, cache: &tempfile::TempDir| {
        let slot = format!("slot={slot}");
        let creds = lattice.mint(&["host", id, "--label", &slot], id);
        let creds = creds.to_str().unwrap();
        let cache = cache.path().to_str().unwrap();
        arm64_host(
            &lattice,
            command,
            id,
            &[
                "--label",
                &slot,
                "--cache-dir",
                cache,
                "--nats-creds",
                creds,
            ],
        )
    };
    let arm1 = arm(first, "arm-1", "a", &caches[0]);
    let arm2 = arm(second, "arm-2", "b", &caches[1]);
    lattice.wait_registered("arm-1");
    lattice.wait_registered("arm-2");

    // The first start compiles on the (emulated) device. The next leader, on x86_64,
    // compiles the component for the arm64 hosts' target.
    let compiled_here = apply_until_ready(&lattice, "first", &hello, "a");
    assert!(arm1.log().contains("component compiled"), "{}", arm1.log());
    drop(without);
    let scheduler = lattice.secure_scheduler_with("60s", &["--precompile-memory", "2GiB"]);
    eventually(PATIENCE, "the scheduler to compile for arm64", || {
        scheduler
            .log()
            .lines()
            .any(|line| {
                line.contains("component precompiled for hosts of this target")
                    && line.contains("aarch64")
            })
            .then_some(())
    });
    // The second host starts the same component from that code.
    let precompiled = apply_until_ready(&lattice, "second", &hello, "b");
    let log = arm2.log();
    assert!(log.contains("precompiled code from the lattice"), "{log}");
    assert!(!log.contains("component compiled"), "{log}");
    let compile_ms = |log: &str| {
        log.lines()
            .find(|line| line.contains("component compiled"))
            .and_then(|line| line.split("elapsed_ms=").nth(1))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
    };
    eprintln!(
        "first start under qemu-aarch64, apply to ready: compiled on the host {compiled_here} ms \
         (compile {} ms); precompiled by the scheduler {precompiled} ms",
        compile_ms(&arm1.log()).unwrap_or_default()
    );
}
