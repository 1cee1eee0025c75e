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
    let arm = lattice.spawn_command(
        lattice.aim(command),
        &[
            "host",
            "--id",
            "arm-1",
            "--http",
            "127.0.0.1:0",
            "--heartbeat",
            "500ms",
            "--no-pooling",
        ],
        "arm-1",
        true,
    );
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
