//! End-to-end tests of over-the-air host upgrades: the `shoal` binary published as a signed
//! artifact, three real hosts upgraded in waves under load, and a broken binary rolled back
//! by every host of its wave while the upgrade stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::eventually;
use support::lattice::{Lattice, hello_manifest};
use support::load::Load;

const PASSWORD: &str = support::KEY_PASSWORD;
const PATIENCE: Duration = Duration::from_secs(90);

/// A copy of the `shoal` under test whose build label is `label`: another build of the same
/// release, as a packager's would be.
fn labelled_copy(dir: &Path, label: &str) -> PathBuf {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_shoal")).unwrap();
    let marker = [b"SHOAL-BUILD-".as_slice(), b"LABEL-1:"].concat();
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker.as_slice())
        .expect("the binary has no build label")
        + marker.len();
    bytes[at..at + 48].fill(0);
    bytes[at..at + label.len()].copy_from_slice(label.as_bytes());
    let path = dir.join(format!("shoal-{label}"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn publish(lattice: &Lattice, reference: &str, binary: &Path, key: &Path, extra: &[&str]) {
    support::succeeded(
        lattice
            .command()
            .env("SHOAL_KEY_PASSWORD", PASSWORD)
            .args(["fleet", "publish", reference, "--binary"])
            .arg(binary)
            .arg("--sign")
            .arg(key)
            .args(extra)
            .output()
            .unwrap(),
    );
}

/// A shell script published as this machine's host binary, signed with `key`.
fn publish_script(lattice: &Lattice, dir: &Path, key: &Path) -> String {
    let script = dir.join("script");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let reference = lattice.registry.reference("shoal/host:script");
    publish(
        lattice,
        &reference,
        &script,
        key,
        &["--arch", std::env::consts::ARCH],
    );
    reference
}

/// Each host's reported version, by id.
fn versions(lattice: &Lattice) -> Vec<(String, String)> {
    let hosts: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "hosts", "-o", "json"])).unwrap();
    let mut versions: Vec<(String, String)> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|host| {
            (
                host["id"].as_str().unwrap().to_owned(),
                host["version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    versions.sort();
    versions
}

#[test]
fn hosts_upgrade_in_waves_under_load_and_a_broken_binary_rolls_back_and_stops_the_upgrade() {
    let lattice = Lattice::start_secure();
    let keys = tempfile::tempdir().unwrap();
    lattice.keygen(keys.path(), "release");
    let key = keys.path().join("release.key");

    // No trusted key: no upgrade starts (no host would run the binary).
    let v2 = labelled_copy(keys.path(), "v2");
    let reference = lattice.registry.reference("shoal/host:v2");
    publish(&lattice, &reference, &v2, &key, &[]);
    let _scheduler = lattice.secure_scheduler("2s");
    let (ok, _, stderr) = lattice.shoal(&["fleet", "upgrade", &reference]);
    assert!(!ok && stderr.contains("trusts no key"), "{stderr}");
    lattice.ok(&[
        "trust",
        "add",
        keys.path().join("release.pub").to_str().unwrap(),
    ]);

    let hosts: Vec<_> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|id| {
            let creds = lattice.mint(&["host", id], id);
            let key = keys.path().join("release.pub");
            lattice.host_in_group(
                id,
                &[
                    "--nats-creds",
                    creds.to_str().unwrap(),
                    "--upgrade-key",
                    key.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let urls: Vec<String> = hosts
        .iter()
        .map(|host| format!("{}/hello", host.url.as_deref().unwrap()))
        .collect();
    // The lattice's trust policy is the components' too: the app is signed as well.
    let component = lattice.registry.reference("examples/hello-http:1.0");
    support::succeeded(
        lattice
            .command()
            .env("SHOAL_KEY_PASSWORD", PASSWORD)
            .args([
                "push",
                support::guest("hello-http").to_str().unwrap(),
                &component,
            ])
            .arg("--sign")
            .arg(&key)
            .output()
            .unwrap(),
    );
    lattice.apply(&hello_manifest("hello", &component, 3, ""));
    lattice.wait_ready("hello", 3, PATIENCE);
    let before = versions(&lattice);
    assert!(
        before.iter().all(|(_, version)| !version.contains('+')),
        "{before:?}"
    );

    // One host at a time, under load through every host: nothing fails.
    let load = Load::start(&urls);
    eventually(PATIENCE, "the load to be served", || {
        (load.ok() > 20).then_some(())
    });
    let started = std::time::Instant::now();
    let upgraded = lattice.ok(&[
        "fleet",
        "upgrade",
        &reference,
        "--wave",
        "1",
        "--timeout",
        "60s",
        "--wait",
    ]);
    assert!(upgraded.contains("upgrade complete"), "{upgraded}");
    eprintln!(
        "3 hosts upgraded one at a time in {} ms",
        started.elapsed().as_millis()
    );
    let answered = load.ok();
    eventually(PATIENCE, "the load to go on after the upgrade", || {
        (load.ok() > answered + 20).then_some(())
    });
    let (ok, failed, errors, _) = load.finish();
    eprintln!("upgrade of 3 hosts under load: {ok} ok, {failed} failed; errors: {errors:?}");
    assert_eq!(failed, 0, "{errors:?}");
    let after = versions(&lattice);
    assert!(
        after.iter().all(|(_, version)| version.ends_with("+v2")),
        "{after:?}"
    );
    let status = lattice.ok(&["fleet", "status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "complete", "{status}");
    let waves: Vec<u64> = ["h1", "h2", "h3"]
        .iter()
        .map(|host| status["hosts"][host]["wave"].as_u64().unwrap())
        .collect();
    assert_eq!(waves, [1, 2, 3], "one host per wave: {status}");

    // A binary that never comes up (on h1 it hangs, on the others it exits at once): each
    // host of the first wave goes back on its own, and the upgrade stops there.
    let broken = keys.path().join("broken");
    std::fs::write(
        &broken,
        "#!/bin/sh\ncase \" $* \" in *\" h1 \"*) exec sleep 600;; esac\necho 'broken build' >&2\nexit 3\n",
    )
    .unwrap();
    let broken_reference = lattice.registry.reference("shoal/host:broken");
    publish(
        &lattice,
        &broken_reference,
        &broken,
        &key,
        &[
            "--arch",
            std::env::consts::ARCH,
            "--binary-version",
            "broken",
        ],
    );
    let (ok, stdout, stderr) = lattice.shoal(&[
        "fleet",
        "upgrade",
        &broken_reference,
        "--wave",
        "2",
        "--pause-on-failure",
        "--timeout",
        "5s",
        "--wait",
    ]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("upgrade paused"), "{stdout}{stderr}");
    // The host still on its way when the other failed settles too (paused, no new wave).
    let status = eventually(PATIENCE, "both hosts of the wave to fail", || {
        let status: serde_json::Value =
            serde_json::from_str(&lattice.ok(&["fleet", "status", "-o", "json"])).unwrap();
        let phases: Vec<&str> = ["h1", "h2", "h3"]
            .iter()
            .map(|host| status["hosts"][host]["phase"].as_str().unwrap_or_default())
            .collect();
        (phases == ["failed", "failed", "waiting"]).then_some(status)
    });
    assert_eq!(status["state"], "paused", "{status}");
    let message = |host: &str| {
        status["hosts"][host]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        message("h1").contains("did not rejoin the lattice within 5 s"),
        "{status}"
    );
    assert!(
        message("h2").contains("exited before it rejoined"),
        "{status}"
    );
    // Every host is back on v2 and serves.
    eventually(PATIENCE, "every host back on v2", || {
        versions(&lattice)
            .iter()
            .all(|(_, version)| version.ends_with("+v2"))
            .then_some(())
    });
    lattice.wait_ready("hello", 3, PATIENCE);
    for url in &urls {
        eventually(PATIENCE, "every host to answer", || {
            ureq::get(url)
                .call()
                .is_ok_and(|response| response.status() == 200)
                .then_some(())
        });
    }
    if std::env::var("SHOAL_TEST_SHOW_LOGS").is_ok() {
        eprintln!("h1 log:\n{}", hosts[0].log());
    }
    let events = lattice.ok(&["events"]);
    assert!(
        events.contains("HostUpgradeFailed") && events.contains("UpgradePaused"),
        "{events}"
    );
    drop(hosts);
}

#[test]
fn a_host_on_a_lattice_without_credentials_refuses_upgrade_orders() {
    let lattice = Lattice::start();
    let keys = tempfile::tempdir().unwrap();
    lattice.keygen(keys.path(), "release");
    let _scheduler = lattice.scheduler("s1");
    lattice.ok(&[
        "trust",
        "add",
        keys.path().join("release.pub").to_str().unwrap(),
    ]);
    let _host = lattice.host_in_group("h1", &[]);
    let reference = publish_script(&lattice, keys.path(), &keys.path().join("release.key"));
    let (ok, stdout, _) = lattice.shoal(&["fleet", "upgrade", &reference, "--wait"]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("h1: failed: this host takes upgrades only on a secure lattice"),
        "{stdout}"
    );
    assert!(!versions(&lattice)[0].1.contains("broken"));
}

#[test]
fn a_host_takes_no_binary_unless_a_key_it_was_given_signed_it() {
    let lattice = Lattice::start_secure();
    let keys = tempfile::tempdir().unwrap();
    lattice.keygen(keys.path(), "release");
    lattice.keygen(keys.path(), "other");
    let _scheduler = lattice.secure_scheduler("2s");
    lattice.ok(&[
        "trust",
        "add",
        keys.path().join("release.pub").to_str().unwrap(),
    ]);
    // The host accepts only binaries signed by `other`, which the lattice does not trust:
    // the control plane alone cannot make it run one.
    let creds = lattice.mint(&["host", "h1"], "h1");
    let other = keys.path().join("other.pub");
    let _host = lattice.host_in_group(
        "h1",
        &[
            "--nats-creds",
            creds.to_str().unwrap(),
            "--upgrade-key",
            other.to_str().unwrap(),
        ],
    );
    let reference = publish_script(&lattice, keys.path(), &keys.path().join("release.key"));
    let (ok, stdout, _) = lattice.shoal(&["fleet", "upgrade", &reference, "--wait"]);
    assert!(!ok, "{stdout}");
    assert!(
        stdout
            .contains("h1: failed: no key of the lattice's trust policy is one this host accepts"),
        "{stdout}"
    );
}
