//! End-to-end tests of apps' key-value stores through `wasi:keyvalue` (a fixture built with
//! plain wit-bindgen, importing 0.2.0-draft and 0.2.0-draft2): a counter incremented
//! through three hosts at once loses no update, compare-and-swap reports a conflict, apps
//! do not see each other's keys, grants and limits are enforced, listing pages, and the
//! data outlives a nats-server restart and a host's kill -9. Real nats-server, registry and
//! `shoal` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::eventually;
use support::lattice::{Lattice, Process, hello_manifest};

const PATIENCE: Duration = Duration::from_secs(30);

fn get(host: &Process, path: &str) -> (u16, String) {
    host.get(path).unwrap_or((0, String::new()))
}

#[test]
fn apps_keep_state_in_their_own_stores_and_lose_no_update() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut hosts = vec![
        lattice.host("h1", &[]),
        lattice.host("h2", &[]),
        lattice.host("h3", &[]),
    ];
    let counter = lattice.push_guest("kv-counter", "1.0");
    lattice.apply(&hello_manifest(
        "counter",
        &counter,
        3,
        "  keyValue: [{name: default}]\n  placement: {spreadBy: host}\n",
    ));
    lattice.apply(&hello_manifest(
        "other",
        &counter,
        1,
        "  keyValue: [{name: default}, {name: small, maxBytes: 128Ki}]\n",
    ));
    lattice.wait_ready("counter", 3, PATIENCE);
    lattice.wait_ready("other", 1, PATIENCE);
    for host in &hosts {
        eventually(PATIENCE, "every host to route both apps", || {
            (get(host, "/counter/open").0 == 200 && get(host, "/other/open").0 == 200).then_some(())
        });
    }

    // 3 × 60 increments at once, each thread through its own host (the three replicas
    // are on three hosts): every one counted.
    let urls: Vec<String> = hosts.iter().map(|host| host.url.clone().unwrap()).collect();
    let threads: Vec<_> = urls
        .into_iter()
        .map(|url| {
            std::thread::spawn(move || {
                let agent = support::lattice::agent();
                let mut failed = Vec::new();
                for _ in 0..60 {
                    match agent.get(&format!("{url}/counter/incr")).call() {
                        Ok(response) if response.status() == 200 => {}
                        Ok(mut response) => failed.push(format!(
                            "{}: {}",
                            response.status(),
                            response.body_mut().read_to_string().unwrap_or_default()
                        )),
                        Err(error) => failed.push(error.to_string()),
                    }
                }
                failed
            })
        })
        .collect();
    for thread in threads {
        let failed = thread.join().unwrap();
        assert!(failed.is_empty(), "{failed:?}");
    }
    assert_eq!(
        get(&hosts[0], "/counter/get?key=hits"),
        (200, "180".to_owned())
    );

    // Two apps, each with a store named default: neither sees the other's keys.
    assert_eq!(get(&hosts[1], "/other/get?key=hits").0, 404);
    assert_eq!(get(&hosts[1], "/other/set?key=mine&value=other").0, 200);
    assert_eq!(get(&hosts[2], "/counter/get?key=mine").0, 404);
    // A store the app does not grant: access-denied.
    assert_eq!(
        get(&hosts[0], "/counter/open?store=small"),
        (403, "access-denied\n".to_owned())
    );
    // Compare-and-swap from one read: the second loses and sees the first's value.
    assert_eq!(
        get(&hosts[0], "/counter/cas?key=swapped"),
        (409, "conflict; now first".to_owned())
    );
    assert_eq!(
        get(&hosts[0], "/counter/many"),
        (200, "a=1,b=2,none a-exists=false".to_owned())
    );
    // Limits: a value over 1 MiB, and a store past its maxBytes, fail in the guest.
    let (status, body) = get(&hosts[0], "/other/big");
    assert!(
        status == 413 && body.contains("up to 1 MiB"),
        "{status} {body}"
    );
    let (status, body) = get(&hosts[0], "/other/fill?kib=1024&store=small");
    assert!(status == 507 && body.contains("full"), "{status} {body}");
    // Listing pages (100 keys a page) with both versions' cursors, and agrees.
    assert_eq!(get(&hosts[0], "/counter/fill?kib=8000").0, 200);
    let (status, listed) = get(&hosts[0], "/counter/list");
    assert_eq!(status, 200, "{listed}");
    let count: usize = listed.lines().next().unwrap().parse().unwrap();
    // hits, swapped, and 250 fill keys (a, b were deleted).
    assert_eq!(count, 252, "{listed}");

    let described = lattice.ok(&["describe", "app", "other"]);
    assert!(
        described.contains("Key-value:   default (max 64Mi), small (max 128Ki)"),
        "{described}"
    );
    // Operators read and write the same stores.
    assert_eq!(lattice.ok(&["kv", "get", "counter", "hits"]), "180");
    lattice.ok(&["kv", "put", "counter/default", "from-operator", "hello"]);
    assert_eq!(
        get(&hosts[1], "/counter/get?key=from-operator"),
        (200, "hello".to_owned())
    );
    let keys = lattice.ok(&["kv", "ls", "counter"]);
    assert_eq!(keys.lines().count(), 253, "{keys}");
    lattice.ok(&["kv", "del", "counter", "from-operator"]);
    let (ok, _, stderr) = lattice.shoal(&["kv", "get", "counter", "from-operator"]);
    assert!(!ok && stderr.contains("no such key"), "{stderr}");
    let (ok, _, stderr) = lattice.shoal(&["kv", "ls", "counter/small"]);
    assert!(
        !ok && stderr.contains("has no key-value store \"small\""),
        "{stderr}"
    );

    // The data outlives a nats-server restart and a host killed with SIGKILL.
    lattice.nats.restart();
    hosts[0].kill();
    eventually(PATIENCE, "the counter to answer after the restart", || {
        (get(&hosts[1], "/counter/get?key=hits") == (200, "180".to_owned())).then_some(())
    });
    eventually(PATIENCE, "an increment after the restart", || {
        (get(&hosts[2], "/counter/incr") == (200, "181".to_owned())).then_some(())
    });

    // A deleted app's stores go with it: applied again, it starts empty.
    lattice.ok(&["delete", "app", "other"]);
    lattice.apply(&hello_manifest(
        "other",
        &counter,
        1,
        "  keyValue: [{name: default}]\n",
    ));
    lattice.wait_ready("other", 1, PATIENCE);
    eventually(PATIENCE, "the new app to answer", || {
        (get(&hosts[1], "/other/open").0 == 200).then_some(())
    });
    assert_eq!(get(&hosts[1], "/other/get?key=mine").0, 404);
    drop(hosts.remove(0));
}

#[test]
fn a_host_reaches_only_the_stores_of_the_apps_it_runs() {
    let lattice = Lattice::start_secure();
    // Store credentials last 4 s: renewed every 2 s or so, while the app keeps counting.
    let _scheduler = lattice.secure_scheduler_with("1s", &["--store-credential-lifetime", "4s"]);
    let host = lattice.secure_host("h1");
    let counter = lattice.push_guest("kv-counter", "1.0");
    lattice.apply(&hello_manifest(
        "counter",
        &counter,
        1,
        "  keyValue: [{name: default}]\n",
    ));
    lattice.wait_ready("counter", 1, PATIENCE);
    eventually(PATIENCE, "an increment through a secure host", || {
        (get(&host, "/counter/incr") == (200, "1".to_owned())).then_some(())
    });
    assert_eq!(get(&host, "/counter/list").0, 200);

    // Neither the host's own credential nor another host's reaches the app's store: only
    // the credential in the assignment does.
    let name = &lattice.name;
    let bucket = format!("shoal-{name}-v1-kv_default_counter_default");
    let client = shoal_lattice::auth::client_subject;
    let store_subjects = [
        client(&format!("$KV.{bucket}.=kv.counter")),
        client(&format!(
            "$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.=kv.counter"
        )),
        client(&format!("$JS.API.STREAM.INFO.KV_{bucket}")),
    ];
    let own = lattice.auth_dir().join("h1.creds");
    let other = lattice.mint(&["host", "h9"], "h9");
    for (creds, inbox) in [(&own, "_INBOX.host.h1"), (&other, "_INBOX.host.h9")] {
        let raw = support::raw::Raw::connect(&lattice.nats.url(), creds, inbox);
        for subject in &store_subjects {
            raw.publish(subject);
            raw.wait_refused("Publish", subject);
        }
        // The token of guests' keys, in the lattice's own buckets: refused.
        for bucket in ["apps", "assignments", "status", "hosts"] {
            let subject = client(&format!("$KV.shoal-{name}-v1-{bucket}.=kv.junk"));
            raw.publish(&subject);
            raw.wait_refused("Publish", &subject);
        }
    }

    // Its stream refuses rollups: a key write with `Nats-Rollup: all` would empty it.
    let scheduler = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("s1.creds"),
        "_INBOX.scheduler.s1",
    );
    assert!(!scheduler.takes_rollups(&format!("KV_{bucket}")));

    // Past two lifetimes of the first credential, the app still counts: renewed ones
    // replaced it.
    let mut expected = 1;
    let counting = std::time::Instant::now();
    while counting.elapsed() < Duration::from_secs(9) {
        expected += 1;
        assert_eq!(
            get(&host, "/counter/incr"),
            (200, expected.to_string()),
            "after {:?}:\n{}",
            counting.elapsed(),
            host.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
