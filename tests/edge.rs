//! End-to-end tests of edge autonomy: a host that restarts while NATS is unreachable serves
//! from its saved state, keeps its replicas when the lattice returns, stops promptly while
//! offline, and keeps serving when the lattice comes back empty. Real nats-server, registry
//! and `shoal` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::lattice::{Lattice, hello_manifest, host_args};
use support::load::Load;
use support::{Signal, eventually};

const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn a_host_restarted_offline_serves_its_saved_replicas_and_keeps_them_when_nats_returns() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.patient_scheduler("s1");
    let host = lattice.spawn(&host_args("edge-1"), "edge-1", true);
    lattice.wait_registered("edge-1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("edge", &hello, 1, ""));
    lattice.wait_ready("edge", 1, PATIENCE);
    let before = lattice.replica_ids("edge");
    // The saved state holds the replica and its route once the host has both.
    let state = lattice.shoal.cache_dir().join("hosts/edge-1/state.json");
    eventually(PATIENCE, "the host to save its replica and route", || {
        let text = std::fs::read_to_string(&state).ok()?;
        (text.contains(&before[0]) && text.contains("\"/edge\"")).then_some(())
    });

    // Pull the plug: NATS goes away, then the host dies without a goodbye; it comes back
    // while NATS is still down (and the registry too: the component comes from the cache).
    lattice.nats.stop();
    let mut host = host;
    host.kill();
    lattice.registry.stop();
    let started = Instant::now();
    let mut host = lattice.spawn(&host_args("edge-1"), "edge-1", true);
    let listening = started.elapsed();
    let (status, body) = eventually(PATIENCE, "the offline host to serve /edge", || {
        host.get("/edge").filter(|(status, _)| *status == 200)
    });
    let serving = started.elapsed();
    eprintln!(
        "offline restart: ingress listening {} ms, first 200 on /edge {} ms after the host process started",
        listening.as_millis(),
        serving.as_millis()
    );
    assert_eq!(status, 200, "{body}");
    // What only the lattice could serve is 503, not 404: other hosts may serve it.
    let (status, _) = host.get("/elsewhere").unwrap();
    assert_eq!(status, 503);
    host.wait_log(
        PATIENCE,
        "the lattice is unreachable: serving the saved replicas",
    );

    // The lattice returns, under load through this host: the replica keeps running (same
    // id) and no request fails.
    let load = Load::start(&[format!("{}/edge", host.url.as_deref().unwrap())]);
    lattice.nats.relaunch();
    eventually(
        PATIENCE,
        "the host to join again and report its replica",
        || {
            (host.log().contains("host joined the lattice")
                && lattice.replica_ids("edge") == before
                && lattice
                    .replicas()
                    .iter()
                    .all(|(_, _, phase)| phase == "ready"))
            .then_some(())
        },
    );
    // The routes record is written again by the scheduler: requests keep flowing.
    eventually(PATIENCE, "some requests after the return", || {
        (load.ok() > 50).then_some(())
    });
    let (ok, failed, failures, _) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} failed, {ok} ok: {failures:?}\n{}",
        host.log()
    );
    assert_eq!(lattice.replica_ids("edge"), before, "{}", host.log());
    assert!(host.is_running());
}

#[test]
fn a_host_stopped_as_soon_as_it_serves_restarts_without_nats_and_serves_at_once() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.patient_scheduler("s1");
    let mut host = lattice.spawn(&host_args("edge-6"), "edge-6", true);
    lattice.wait_registered("edge-6");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("quick", &hello, 1, ""));
    eventually(PATIENCE, "the host to serve /quick", || {
        host.get("/quick").filter(|(status, _)| *status == 200)
    });
    // No wait for the saved state to reach the disk: the host is stopped at once, NATS and
    // the registry go away, and the host is started again while they are away.
    host.terminate();
    lattice.nats.stop();
    lattice.registry.stop();
    let host = lattice.spawn(&host_args("edge-6"), "edge-6", true);
    let serving = host.until_served(
        PATIENCE,
        "the host restarted without NATS to serve /quick",
        "/quick",
    );
    eprintln!(
        "restarted without NATS: first 200 after {} ms",
        serving.as_millis()
    );
}

#[test]
fn a_host_asked_to_stop_while_nats_is_unreachable_exits_within_its_drain_deadline() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut host = lattice.spawn(&host_args("edge-2"), "edge-2", true);
    lattice.wait_registered("edge-2");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("stop", &hello, 1, ""));
    lattice.wait_ready("stop", 1, PATIENCE);
    lattice.nats.stop();
    // Its forwarded-request subscription, heartbeat and log publisher are all stuck now.
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    host.signal(Signal::Term);
    // Within the drain deadline (2 s), with room for the process to exit.
    while host.is_running() {
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "the host still runs {} ms after SIGTERM:\n{}",
            asked.elapsed().as_millis(),
            host.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "offline SIGTERM: exited {} ms after it",
        asked.elapsed().as_millis()
    );
}

#[test]
fn a_lattice_that_comes_back_empty_does_not_stop_what_hosts_serve() {
    let mut lattice = Lattice::start();
    let mut scheduler = lattice.scheduler("s1");
    let host = lattice.host("edge-3", &[]);
    let hello = lattice.push_hello("1.0");
    let manifest = hello_manifest("kept", &hello, 1, "");
    lattice.apply(&manifest);
    lattice.wait_ready("kept", 1, PATIENCE);
    eventually(PATIENCE, "the host to serve /kept", || {
        host.get("/kept").filter(|(status, _)| *status == 200)
    });

    // The NATS server is rebuilt from nothing, and a scheduler started on it.
    scheduler.kill();
    let load = Load::start(&[format!("{}/kept", host.url.as_deref().unwrap())]);
    lattice.nats.wipe();
    let _scheduler = lattice.scheduler("s2");
    let mismatch = eventually(PATIENCE, "the host to report the mismatch", || {
        let hosts: serde_json::Value =
            serde_json::from_str(&lattice.ok(&["get", "hosts", "-o", "json"])).unwrap();
        hosts
            .as_array()?
            .iter()
            .find(|host| host["id"] == "edge-3")?
            .get("latticeMismatch")?
            .as_str()
            .map(str::to_owned)
    });
    assert!(mismatch.contains("which now has"), "{mismatch}");
    assert!(lattice.ok(&["get", "hosts"]).contains("mismatch"));
    eventually(PATIENCE, "a LatticeMismatch event", || {
        lattice
            .events(&[])
            .iter()
            .any(|event| {
                event["reason"] == "LatticeMismatch"
                    && event["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("default/kept")
            })
            .then_some(())
    });
    assert!(
        host.log().contains("it was wiped or replaced"),
        "{}",
        host.log()
    );
    let (ok, failed, failures, _) = load.finish();
    assert_eq!(failed, 0, "{failed} failed, {ok} ok: {failures:?}");

    // Restarted while the lattice is still the empty one, the host serves its saved
    // replica from the start.
    let mut host = host;
    host.terminate();
    let host = lattice.spawn(&host_args("edge-3"), "edge-3", true);
    let serving = host.until_served(
        PATIENCE,
        "the host restarted on the empty lattice to serve /kept",
        "/kept",
    );
    eprintln!(
        "restarted on an empty lattice: first 200 after {} ms",
        serving.as_millis()
    );

    // Desired state written anew clears it: the host follows the new lattice.
    lattice.apply(&manifest);
    lattice.wait_ready("kept", 1, PATIENCE);
    eventually(PATIENCE, "the mismatch to clear", || {
        (!lattice
            .ok(&["get", "hosts", "-o", "json"])
            .contains("latticeMismatch"))
        .then_some(())
    });
    assert_eq!(host.get("/kept").unwrap().0, 200);
}

#[test]
fn a_disconnect_policy_keeps_or_twins_a_silent_host_s_replicas_and_restarts_nothing() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut silent = lattice.host("site-a", &[]);
    let hello = lattice.push_hello("1.0");
    let keep = "  disconnect: {lostAfter: 1m}\n";
    let twin = "  disconnect: {lostAfter: 1m, replace: true, reconcile: keepOriginal}\n";
    lattice.apply(&hello_manifest("moved", &hello, 1, ""));
    lattice.apply(&hello_manifest("kept", &hello, 1, keep));
    lattice.apply(&hello_manifest("twin", &hello, 1, twin));
    for app in ["moved", "kept", "twin"] {
        lattice.wait_ready(app, 1, PATIENCE);
    }
    let (kept, twin) = (lattice.replica_ids("kept"), lattice.replica_ids("twin"));
    let _other = lattice.host("site-b", &[]);

    // site-a goes silent (its heartbeats stop, as behind a dropped link).
    silent.signal(Signal::Stop);
    lattice.wait_ready("moved", 1, PATIENCE);
    let by_host = eventually(PATIENCE, "moved to be replaced and twin twinned", || {
        let moved = lattice.ready_by_host("moved");
        let twins = lattice.replica_ids("twin");
        (moved.contains_key("site-b")
            && twins.len() == 2
            && lattice.ready_by_host("twin").get("site-b") == Some(&1))
        .then_some(moved)
    });
    assert_eq!(by_host.len(), 1, "{by_host:?}");
    // kept: still the one replica on site-a, nothing placed.
    assert_eq!(lattice.replica_ids("kept"), kept);
    assert!(lattice.replica_ids("twin").contains(&twin[0]));

    // site-a is back: its replicas go on; twin's replacement goes (keepOriginal).
    silent.signal(Signal::Cont);
    eventually(PATIENCE, "twin back to its original replica", || {
        (lattice.replica_ids("twin") == twin).then_some(())
    });
    assert_eq!(lattice.replica_ids("kept"), kept);
    lattice.wait_ready("kept", 1, PATIENCE);
    lattice.wait_ready("twin", 1, PATIENCE);
    assert_eq!(silent.get("/kept").unwrap().0, 200);
    assert!(silent.is_running());
}

#[test]
fn the_caches_keep_to_their_budget_never_evicting_what_runs_and_stale_temp_files_go() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    // Leftovers of a host killed mid-write, an hour old.
    let cache = lattice.shoal.cache_dir();
    let stale = [
        cache.join("oci/tmp/.tmpKILLED"),
        cache.join("compiled/.tmpKILLED"),
        cache.join("hosts/edge-4/.state.json.tmp-KILLED"),
    ];
    for file in &stale {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"half a write").unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .append(true)
            .open(file)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }
    let fresh = cache.join("oci/tmp/.tmpWRITING");
    std::fs::write(&fresh, b"being written by another process").unwrap();
    let host = lattice.host_with("edge-4", &["--cache-size", "1Ki"]);
    eventually(PATIENCE, "the stale temporary files to be swept", || {
        stale.iter().all(|file| !file.exists()).then_some(())
    });
    assert!(fresh.exists(), "a write in progress is not swept");

    // One component runs, then another replaces it: the budget (far below either) evicts
    // the first, never the one running.
    let hello = lattice.push_hello("1.0");
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&hello_manifest("first", &fixtures, 1, ""));
    lattice.wait_ready("first", 1, PATIENCE);
    let first = lattice.app("first")["digest"].as_str().unwrap().to_owned();
    let blob = |digest: &str| {
        cache
            .join("oci/blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    assert!(blob(&first).exists());
    lattice.ok(&["delete", "app", "first"]);
    lattice.apply(&hello_manifest("second", &hello, 1, ""));
    lattice.wait_ready("second", 1, PATIENCE);
    let second = lattice.app("second")["digest"].as_str().unwrap().to_owned();
    eventually(PATIENCE, "the first component to be evicted", || {
        (!blob(&first).exists()).then_some(())
    });
    assert!(blob(&second).exists(), "the running component is kept");
    let compiled: Vec<String> = std::fs::read_dir(cache.join("compiled"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        compiled.len(),
        1,
        "only the running component's code: {compiled:?}"
    );
    eventually(PATIENCE, "the host to say the budget is too small", || {
        host.log().contains("more than --cache-size").then_some(())
    });
    assert_eq!(host.get("/second").unwrap().0, 200);
}

/// The arguments of `shoal up --leaf` for `site`, linked to the hub's leaf port
/// `leafnodes`, its own nats-server on `nats_port`, its data in `data`, and `extra`.
fn site_args(
    leafnodes: u16,
    site: &str,
    nats_port: u16,
    data: &std::path::Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "up",
        "--leaf",
        &format!("nats-leaf://127.0.0.1:{leafnodes}"),
        "--site",
        site,
        "--nats-port",
        &nats_port.to_string(),
        "--http",
        &format!("127.0.0.1:{}", support::free_port()),
        "--data-dir",
        &data.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// `shoal up --leaf` for one site: a leaf nats-server linked to the hub and one host.
struct Site {
    up: std::process::Child,
    args: Vec<String>,
    ingress: String,
    /// Where its stderr (the host's log) goes: `shoal-up.log` in its data directory,
    /// appended to by every start, so a failure can show what the site said.
    log: std::path::PathBuf,
}

impl Site {
    fn start(lattice: &Lattice, args: &[String]) -> Self {
        let data = args
            .iter()
            .position(|arg| arg == "--data-dir")
            .and_then(|at| args.get(at + 1))
            .expect("site args name a data dir");
        let log = std::path::Path::new(data).join("shoal-up.log");
        std::fs::create_dir_all(data).unwrap();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut up = lattice
            .shoal
            .command()
            .args(args)
            .env("SHOAL_LATTICE", &lattice.name)
            .env("SHOAL_LOG", "info")
            .env_remove("SHOAL_NATS")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        use std::io::BufRead;
        let mut stdout = std::io::BufReader::new(up.stdout.take().unwrap());
        // A site without hosts of its own (`--hosts 0`) is up once it names its lattice.
        let hostless = args.windows(2).any(|pair| pair == ["--hosts", "0"]);
        let ingress = loop {
            let mut line = String::new();
            assert!(stdout.read_line(&mut line).unwrap() > 0, "shoal up ended");
            if let Some(address) = line.trim().split(" ingress ").nth(1) {
                break address.to_owned();
            }
            if hostless && line.starts_with("lattice ") {
                break String::new();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        Self {
            up,
            args: args.to_vec(),
            ingress,
            log,
        }
    }

    /// What the site's `shoal up` processes have written to stderr so far.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Probes `path` from now on until it answers 200; see [`support::until_served`].
    fn until_served(&self, what: &str, path: &str) -> Duration {
        support::until_served(PATIENCE, what, &format!("{}{path}", self.ingress), || {
            self.log()
        })
    }

    fn get(&self, path: &str) -> Option<u16> {
        support::lattice::agent()
            .get(&format!("{}{path}", self.ingress))
            .call()
            .ok()
            .map(|response| response.status().as_u16())
    }

    /// Stops the site as an operator would (SIGTERM) and waits for it.
    fn stop(mut self) -> Vec<String> {
        assert!(support::signal(self.up.id(), Signal::Term));
        let _ = self.up.wait();
        std::mem::take(&mut self.args)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        support::stop_up(&mut self.up);
    }
}

#[test]
fn a_site_behind_a_leaf_serves_without_its_hub_restarts_without_it_and_converges_after() {
    let leafnodes = support::free_port();
    let mut lattice = Lattice::on(support::nats::Nats::with_config(&format!(
        "leafnodes {{ listen: \"127.0.0.1:{leafnodes}\" }}\njetstream {{ domain: hub }}\n"
    )));
    let _scheduler = lattice.patient_scheduler("s1");
    let data = tempfile::tempdir().unwrap();
    let args = site_args(leafnodes, "site-a", support::free_port(), data.path(), &[]);
    let site = Site::start(&lattice, &args);
    lattice.wait_registered("site-a-1");
    let hello = lattice.push_hello("1.0");
    let manifest = hello_manifest(
        "shop",
        &hello,
        1,
        "  placement: {requires: {site: site-a}}\n",
    );
    lattice.apply(&manifest);
    lattice.wait_ready("shop", 1, PATIENCE);
    eventually(PATIENCE, "the site to serve /shop", || {
        (site.get("/shop") == Some(200)).then_some(())
    });
    let before = lattice.replica_ids("shop");

    // The hub dies (SIGKILL): the site serves on, and a restarted site serves too.
    lattice.nats.kill();
    for _ in 0..20 {
        assert_eq!(site.get("/shop"), Some(200));
    }
    // Stopped right away (its saved state may still be on its way to disk), restarted,
    // and probed at once: the saved replica is served with its route from the start.
    let args = site.stop();
    let site = Site::start(&lattice, &args);
    let serving = site.until_served("the restarted site to serve /shop without its hub", "/shop");
    eprintln!(
        "site restarted without its hub: first 200 after {} ms",
        serving.as_millis()
    );

    // The hub returns: the site joins again with the same replica, and converges on new
    // desired state.
    lattice.nats.relaunch();
    eventually(PATIENCE, "the site's replica to be reported again", || {
        (lattice.replica_ids("shop") == before).then_some(())
    });
    lattice.ok(&["scale", "app", "shop", "--replicas", "2"]);
    lattice.wait_ready("shop", 2, PATIENCE);
    assert!(lattice.replica_ids("shop").contains(&before[0]));
    assert_eq!(site.get("/shop"), Some(200));
}

#[test]
fn an_operator_adopts_a_rebuilt_lattice_and_the_saved_replicas_stop() {
    let mut lattice = Lattice::start();
    let mut scheduler = lattice.scheduler("s1");
    let mut host = lattice.spawn(&host_args("edge-5"), "edge-5", true);
    lattice.wait_registered("edge-5");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("old", &hello, 1, ""));
    lattice.wait_ready("old", 1, PATIENCE);
    eventually(PATIENCE, "the host to serve /old", || {
        host.get("/old").filter(|(status, _)| *status == 200)
    });
    scheduler.kill();
    lattice.nats.wipe();
    let _scheduler = lattice.scheduler("s2");
    eventually(PATIENCE, "the mismatch", || {
        lattice
            .ok(&["get", "hosts", "-o", "json"])
            .contains("latticeMismatch")
            .then_some(())
    });

    // The operator decides the new lattice is the one: the host follows it as it is.
    host.kill();
    let mut args = host_args("edge-5");
    args.push("--adopt-lattice");
    let host = lattice.spawn(&args, "edge-5", true);
    eventually(
        PATIENCE,
        "the saved replica to stop and the mismatch to clear",
        || {
            let hosts = lattice.ok(&["get", "hosts", "-o", "json"]);
            (hosts.contains("\"id\": \"edge-5\"")
                && !hosts.contains("latticeMismatch")
                && host.get("/old").is_some_and(|(status, _)| status == 404))
            .then_some(())
        },
    );
    assert!(
        host.log().contains("adopting the lattice as it is"),
        "{}",
        host.log()
    );
}

#[test]
fn a_secure_site_reaches_its_hub_with_its_own_credentials_and_no_more() {
    let leafnodes = support::free_port();
    let mut lattice = Lattice::start_secure_with(&format!(
        "leafnodes {{ listen: \"127.0.0.1:{leafnodes}\" }}\njetstream {{ domain: hub }}\n"
    ));
    let name = lattice.name.clone();
    let _scheduler = lattice.secure_scheduler("60s");
    let hub_host = lattice.secure_host("hub-1");

    // The hub's operator mints the site's credentials (for as many hosts as a site may
    // have: the largest credential must still pass nats-server's control line); the site
    // starts one host with them.
    let site_auth = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = lattice.auth(&[
        "site",
        "site-s",
        "--hosts",
        "50",
        "-o",
        site_auth.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let leaf_port = support::free_port();
    let data = tempfile::tempdir().unwrap();
    let args = site_args(
        leafnodes,
        "site-s",
        leaf_port,
        data.path(),
        &["--site-auth", site_auth.path().to_str().unwrap()],
    );
    let site = Site::start(&lattice, &args);
    lattice.wait_registered("site-s-1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest(
        "shop",
        &hello,
        1,
        "  placement: {requires: {site: site-s}}\n",
    ));
    lattice.wait_ready("shop", 1, PATIENCE);
    eventually(PATIENCE, "the site to serve /shop", || {
        (site.get("/shop") == Some(200)).then_some(())
    });
    // A request at a hub host crosses the leaf to the site's replica and its answer back.
    eventually(
        PATIENCE,
        "the hub host to forward /shop to the site",
        || {
            hub_host
                .get_served("/shop")
                .filter(|(status, _, served_by)| *status == 200 && served_by.contains("site-s-1"))
        },
    );

    // The leaf admits no client without a credential, and holds each host to its own.
    let leaf = format!("nats://127.0.0.1:{leaf_port}");
    assert!(
        support::raw::Raw::try_connect(&leaf, None).is_err(),
        "the leaf admitted a client without a credential"
    );
    let site_host = site_auth.path().join("site-s-1.creds");
    let raw = support::raw::Raw::connect(&leaf, &site_host, "_INBOX.host.site-s-1");
    // Key writes as a secure lattice's client sends them (under the state account's
    // prefix, across the leaf).
    let kv = |bucket: &str, key: &str| {
        shoal_lattice::auth::client_subject(&format!("$KV.shoal-{name}-v1-{bucket}.{key}"))
    };
    for subject in [
        kv("hosts", "hub-1"),
        kv("apps", "default.evil"),
        kv("assignments", "site-s-1.evil-1"),
        format!("shoal.{name}.v1.api.admin._lattice.site-s-1.apply"),
    ] {
        raw.publish(&subject);
        raw.wait_refused("Publish", &subject);
    }
    raw.subscribe(&format!("shoal.{name}.v1.http.hub-1.>"));
    raw.wait_refused("Subscription", &format!("shoal.{name}.v1.http.hub-1.>"));
    // Its own record is stored at the hub through the leaf.
    raw.store(&kv("hosts", "site-s-1"), r#"{"id":"site-s-1"}"#)
        .unwrap();
    // The site's own credential opens only leaf connections: not a client of the hub.
    assert!(
        support::raw::Raw::try_connect(
            &lattice.nats.url(),
            Some(&site_auth.path().join("site.creds"))
        )
        .is_err(),
        "the site credential was admitted as a client of the hub"
    );

    // The hub goes away and comes back: the site serves meanwhile and joins again.
    let before = lattice.replica_ids("shop");
    lattice.nats.kill();
    for _ in 0..10 {
        assert_eq!(site.get("/shop"), Some(200));
    }
    lattice.nats.relaunch();
    eventually(PATIENCE, "the site's replica to be reported again", || {
        (lattice.replica_ids("shop") == before).then_some(())
    });
    drop(site);
}

/// The bytes the hub at `monitor` (its monitoring URL) has sent across its leaf connections.
fn bytes_to_leaves(monitor: &str) -> u64 {
    let leafz = support::lattice::agent()
        .get(&format!("{monitor}/leafz"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let leafz: serde_json::Value = serde_json::from_str(&leafz).unwrap();
    leafz["leafs"]
        .as_array()
        .map(|leafs| {
            leafs
                .iter()
                .filter_map(|leaf| leaf["out_bytes"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// Writes hello-http with a custom section of `padding` bytes appended (bytes no compressor
/// shrinks) into `dir`, for a component of a realistic size.
fn padded_hello(dir: &std::path::Path, padding: usize) -> std::path::PathBuf {
    let mut component = std::fs::read(support::guest("hello-http")).unwrap();
    let name = b"shoal-test-padding";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    payload.extend((0..padding).map(|_| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state.to_le_bytes()[0]
    }));
    // A custom section: id 0, its size as unsigned LEB128, then the name and the bytes.
    component.push(0);
    let mut size = payload.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            component.push(byte);
            break;
        }
        component.push(byte | 0x80);
    }
    component.extend_from_slice(&payload);
    let path = dir.join("padded-hello.wasm");
    std::fs::write(&path, component).unwrap();
    path
}

#[test]
fn a_secure_site_s_hosts_fetch_one_copy_of_a_component_over_the_leaf() {
    one_copy_over_the_leaf(true);
}

#[test]
fn an_open_site_s_hosts_fetch_one_copy_of_a_component_over_the_leaf() {
    one_copy_over_the_leaf(false);
}

/// Three hosts of a site (`secure`: with the credentials `shoal auth site` mints), none
/// able to reach the registry, start a 5 MiB component: one copy of it crosses the leaf,
/// into the site's copy of the lattice's components, and each host reads it there.
/// `SHOAL_SITE_HOSTS` sets how many hosts (`bench/site-copy.sh` runs 20).
fn one_copy_over_the_leaf(secure: bool) {
    let count: usize = std::env::var("SHOAL_SITE_HOSTS")
        .ok()
        .and_then(|hosts| hosts.parse().ok())
        .unwrap_or(3);
    let leafnodes = support::free_port();
    let hub =
        format!("leafnodes {{ listen: \"127.0.0.1:{leafnodes}\" }}\njetstream {{ domain: hub }}\n");
    let (mut lattice, scheduler) = if secure {
        let lattice = Lattice::start_secure_with(&hub);
        let scheduler = lattice.secure_scheduler("60s");
        (lattice, scheduler)
    } else {
        let lattice = Lattice::on(support::nats::Nats::with_config(&hub));
        let scheduler = lattice.patient_scheduler("s1");
        (lattice, scheduler)
    };
    let site_auth = tempfile::tempdir().unwrap();
    if secure {
        // One host more than run: its record, never written, is a target below.
        let (ok, _, stderr) = lattice.auth(&[
            "site",
            "site-c",
            "--hosts",
            &(count + 1).to_string(),
            "-o",
            site_auth.path().to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
    }

    // A 5 MiB component, copied into the lattice when applied; then the registry goes
    // away, so the site's hosts can fetch it only from the lattice.
    const SIZE: usize = 5 << 20;
    let work = tempfile::tempdir().unwrap();
    let reference = lattice.registry.reference("examples/padded-hello:1.0");
    lattice.ok(&[
        "push",
        padded_hello(work.path(), SIZE).to_str().unwrap(),
        &reference,
    ]);
    lattice.apply(&hello_manifest(
        "big",
        &reference,
        0,
        "  placement: {requires: {site: site-c}}\n",
    ));
    scheduler.wait_log(PATIENCE, "component copied into the lattice");
    lattice.registry.stop();

    // The site: its leaf (keeping the copy) and three hosts, each with nothing cached.
    let monitor = lattice.nats.monitor_url();
    assert_eq!(bytes_to_leaves(&monitor), 0);
    let leaf_port = support::free_port();
    let data = tempfile::tempdir().unwrap();
    let site_auth_dir = site_auth.path().to_str().unwrap();
    let mut extra = vec!["--hosts", "0"];
    if secure {
        extra.extend(["--site-auth", site_auth_dir]);
    }
    let args = site_args(leafnodes, "site-c", leaf_port, data.path(), &extra);
    let site = Site::start(&lattice, &args);
    let leaf = format!("nats://127.0.0.1:{leaf_port}");
    let reader = site_auth.path().join("site-copy-reader.creds");
    let caches: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let hosts: Vec<_> = caches
        .iter()
        .enumerate()
        .map(|(index, cache)| {
            let id = format!("site-c-{}", index + 1);
            let creds = site_auth.path().join(format!("{id}.creds"));
            let mut args = vec![
                "--nats",
                &leaf,
                "--cache-dir",
                cache.path().to_str().unwrap(),
            ];
            if secure {
                args.extend([
                    "--nats-creds",
                    creds.to_str().unwrap(),
                    "--site-copy-creds",
                    reader.to_str().unwrap(),
                ]);
            } else {
                args.extend([
                    "--site-copy",
                    "--js-domain",
                    "hub",
                    "--label",
                    "site=site-c",
                ]);
            }
            lattice.host_with(&id, &args)
        })
        .collect();
    // One replica on each (placed at once, the fewest of the app on each host).
    lattice.ok(&["scale", "app", "big", "--replicas", &count.to_string()]);
    for host in &hosts {
        ready_from_the_copy(&lattice, host, "big");
    }
    let sent = bytes_to_leaves(&monitor);
    eprintln!(
        "{} site: bytes across the leaf for {count} hosts fetching a {SIZE}-byte component: {sent} ({:.2} copies)",
        if secure { "secure" } else { "open" },
        sent as f64 / SIZE as f64
    );
    assert!(
        sent < SIZE as u64 * 3 / 2,
        "{sent} bytes crossed the leaf for one {SIZE}-byte component: more than one copy\n{}",
        site.log()
    );
    if !secure {
        return;
    }

    // Whatever reply subject a reader or the keeper of the copy names, the copy's answer
    // stays in its account, whose leaf connection carries nothing but the copy's own
    // consumer traffic: direct gets and stream infos aimed at a site host's record (one
    // no host writes) and at the lattice's trust policy write nothing there.
    let name = lattice.name.clone();
    let stream = shoal_lattice::components::stream_name(&name);
    let bucket = shoal_lattice::components::bucket_name(&name);
    let unwritten = format!("site-c-{}", count + 1);
    let targets = [
        format!("$KV.shoal-{name}-v1-hosts.{unwritten}"),
        format!("$KV.shoal-{name}-v1-trust.lattice"),
    ];
    let as_reader = support::raw::Raw::connect(&leaf, &reader, "_INBOX.site-copy-reader");
    let as_keeper = support::raw::Raw::connect(
        &leaf,
        &site_auth.path().join("site-copy.creds"),
        "_INBOX.site-copy-keeper",
    );
    for target in &targets {
        for reply in [target.clone(), shoal_lattice::auth::client_subject(target)] {
            as_reader.publish_with_reply(
                &format!("$JS.API.DIRECT.GET.{stream}"),
                &reply,
                &format!(r#"{{"last_by_subj":"$O.{bucket}.M.>"}}"#),
            );
            as_keeper.publish_with_reply(&format!("$JS.API.STREAM.INFO.{stream}"), &reply, "");
        }
    }
    // A reader may not change the copy, a site host may not reach it with its own
    // credential, and nobody may write into it.
    let as_host = support::raw::Raw::connect(
        &leaf,
        &site_auth.path().join("site-c-1.creds"),
        "_INBOX.host.site-c-1",
    );
    for (raw, subject) in [
        (&as_reader, format!("$JS.API.STREAM.CREATE.{stream}")),
        (&as_reader, format!("$O.{bucket}.C.forged")),
        (&as_host, format!("$JS.API.DIRECT.GET.{stream}")),
        (&as_keeper, format!("$O.{bucket}.C.forged")),
    ] {
        raw.publish(&subject);
        raw.wait_refused("Publish", &subject);
    }
    let scheduler = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.mint(&["scheduler", "s8"], "s8"),
        "_INBOX.scheduler.s8",
    );
    // Watched for a while: a write would land within milliseconds.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            scheduler.kv_get(&format!("shoal-{name}-v1-hosts"), &unwritten),
            None
        );
        assert_eq!(
            scheduler.kv_get(&format!("shoal-{name}-v1-trust"), "lattice"),
            None
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A connection to `lattice` as a scheduler (the only kind of identity that writes the
/// lattice's copy of components), opening no bucket.
fn as_scheduler(lattice: &Lattice, runtime: &tokio::runtime::Runtime) -> shoal_lattice::Lattice {
    let creds = lattice.mint(&["scheduler", "s9"], "s9");
    runtime
        .block_on(shoal_lattice::Lattice::connect(
            &shoal_lattice::store::ConnectOptions {
                url: lattice.nats_urls(),
                lattice: lattice.name.clone(),
                client_name: "test".to_owned(),
                auth: shoal_lattice::store::NatsAuth::CredsFile(creds),
                skip_buckets: true,
                skip_journals: true,
                ..Default::default()
            },
        ))
        .unwrap()
}

/// A host of a secure lattice with its own credential and an empty cache of its own (the
/// test's other processes share one); the cache lives as long as the returned directory.
fn host_with_nothing_cached(
    lattice: &Lattice,
    id: &str,
) -> (support::lattice::Process, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let creds = lattice.mint(&["host", id], id);
    let host = lattice.host_with(
        id,
        &[
            "--nats-creds",
            creds.to_str().unwrap(),
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
    );
    (host, cache)
}

/// Waits until `host` runs a ready replica of `app` and checks it fetched the component from
/// the lattice's copy; returns the host's log.
fn ready_from_the_copy(lattice: &Lattice, host: &support::lattice::Process, app: &str) -> String {
    let log = ready_on(lattice, host, app);
    assert!(log.contains("fetched from the lattice's copy"), "{log}");
    log
}

/// Waits until `host` runs a ready replica of `app`; returns the host's log.
fn ready_on(lattice: &Lattice, host: &support::lattice::Process, app: &str) -> String {
    eventually(
        PATIENCE,
        &format!("a ready replica of {app} on {}", host.id),
        || {
            lattice
                .ready_by_host(app)
                .contains_key(&host.id)
                .then_some(())
        },
    );
    host.log()
}

#[test]
fn a_host_that_cannot_reach_the_registry_starts_apps_from_the_lattice_s_checked_copy() {
    let mut lattice = Lattice::start_secure();
    let scheduler = lattice.secure_scheduler("60s");
    let h1 = lattice.secure_host("h1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("shop", &hello, 1, ""));
    lattice.wait_ready("shop", 1, PATIENCE);
    scheduler.wait_log(PATIENCE, "component copied into the lattice");
    let digest = lattice.app("shop")["digest"].as_str().unwrap().to_owned();

    // The registry goes away; a new host, with nothing cached, takes the next replica.
    lattice.registry.stop();
    lattice.ok(&["cordon", "h1"]);
    let (h2, _cache) = host_with_nothing_cached(&lattice, "h2");
    lattice.ok(&["scale", "app", "shop", "--replicas", "2"]);
    let log = ready_from_the_copy(&lattice, &h2, "shop");
    assert!(log.contains("cannot reach registry"), "{log}");
    drop(h1);

    // A copy that does not match its digest is refused, as a registry's would be: the
    // scheduler's own credential overwrites the layer; a third host with an empty cache
    // does not run it.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let writer = as_scheduler(&lattice, &runtime);
    runtime.block_on(async {
        let store = writer.component_store(1 << 30).await.unwrap();
        store
            .put(
                &shoal_lattice::components::object_name(&digest, "layer"),
                b"not the component",
            )
            .await
            .unwrap();
    });
    lattice.ok(&["cordon", "h2"]);
    let (h3, _cache) = host_with_nothing_cached(&lattice, "h3");
    lattice.ok(&["scale", "app", "shop", "--replicas", "3"]);
    eventually(PATIENCE, "h3 to refuse the altered copy", || {
        lattice
            .events(&["--app", "shop"])
            .iter()
            .any(|event| {
                event["message"]
                    .as_str()
                    .is_some_and(|message| message.contains("does not match"))
            })
            .then_some(())
    });
    assert!(!lattice.ready_by_host("shop").contains_key("h3"));
    drop(h3);

    // Hosts read the copy and never write it.
    let creds = lattice.auth_dir().join("h3.creds");
    let raw = support::raw::Raw::connect(&lattice.nats_urls(), &creds, "_INBOX.host.h3");
    let bucket = shoal_lattice::components::bucket_name(&lattice.name);
    let subject = format!("$O.{bucket}.C.forged");
    raw.publish(&subject);
    raw.wait_refused("Publish", &subject);
}

#[test]
fn a_host_loads_the_code_the_control_plane_compiled_for_its_target_and_never_a_corrupt_one() {
    let lattice = Lattice::start_secure();
    let scheduler = lattice.secure_scheduler_with("60s", &["--precompile-memory", "2GiB"]);
    let (h1, _h1_cache) = host_with_nothing_cached(&lattice, "h1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("shop", &hello, 1, ""));
    lattice.wait_ready("shop", 1, PATIENCE);
    // The first host compiled it itself; the leader compiles it for that host's target.
    assert!(h1.log().contains("component compiled"), "{}", h1.log());
    scheduler.wait_log(PATIENCE, "component precompiled for hosts of this target");

    // A second host of the same machine, with nothing cached, compiles nothing.
    lattice.ok(&["cordon", "h1"]);
    let (h2, _h2_cache) = host_with_nothing_cached(&lattice, "h2");
    lattice.ok(&["scale", "app", "shop", "--replicas", "2"]);
    let log = ready_on(&lattice, &h2, "shop");
    assert!(log.contains("precompiled code from the lattice"), "{log}");
    assert!(!log.contains("component compiled"), "{log}");
    let elapsed = |log: &str, what: &str| {
        log.lines()
            .find(|line| line.contains(what))
            .and_then(|line| line.split("elapsed_ms=").nth(1))
            .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    };
    eprintln!(
        "h1 compiled the component in {} ms; h2 fetched and cached the precompiled code in {} ms",
        elapsed(&h1.log(), "component compiled"),
        elapsed(&log, "precompiled code from the lattice")
    );

    // Code that does not match its checksum is never loaded: written over by a control-plane
    // credential (no host's may write), a third host refuses it and compiles.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let writer = as_scheduler(&lattice, &runtime);
    runtime.block_on(async {
        let store = writer.component_store(1 << 30).await.unwrap();
        let names = store.names().await.unwrap();
        let compiled: Vec<&String> = names
            .iter()
            .filter(|name| name.contains("/compiled."))
            .collect();
        assert_eq!(compiled.len(), 1, "{names:?}");
        let mut forged = vec![0_u8; 32];
        forged.extend_from_slice(b"\x7fELF native code from nowhere");
        store.put(compiled[0], &forged).await.unwrap();
    });
    lattice.ok(&["cordon", "h2"]);
    let (h3, _h3_cache) = host_with_nothing_cached(&lattice, "h3");
    lattice.ok(&["scale", "app", "shop", "--replicas", "3"]);
    let log = ready_on(&lattice, &h3, "shop");
    assert!(log.contains("does not match its checksum"), "{log}");
    assert!(log.contains("component compiled"), "{log}");
}

#[test]
fn a_rollback_without_the_registry_runs_the_earlier_revision_from_the_lattice_s_copy() {
    let mut lattice = Lattice::start_secure();
    // The scheduler's own pull cache, emptied below: a leader that took over on another
    // machine has only the lattice's copy to go by.
    let pulls = tempfile::tempdir().unwrap();
    let scheduler =
        lattice.secure_scheduler_with("60s", &["--cache-dir", pulls.path().to_str().unwrap()]);
    let h1 = lattice.secure_host("h1");
    let first = lattice.push_hello("1.0");
    // The same component under another manifest (an annotation): another digest.
    let second = lattice.registry.reference("examples/hello-http:2.0");
    let path = support::guest("hello-http");
    lattice.shoal.ok(&[
        "push",
        path.to_str().unwrap(),
        &second,
        "--annotation",
        "release=2",
    ]);
    lattice.apply(&hello_manifest("shop", &first, 1, ""));
    lattice.wait_ready("shop", 1, PATIENCE);
    lattice.apply(&hello_manifest("shop", &second, 1, ""));
    // Once the second revision replaced the first and nothing runs the first one's
    // component, the copy keeps it for a rollback.
    eventually(
        PATIENCE,
        "the copy to keep the first revision's component",
        || {
            scheduler
                .log()
                .contains("keeps components that only apps' earlier revisions pin")
                .then_some(())
        },
    );

    lattice.registry.stop();
    std::fs::remove_dir_all(pulls.path().join("oci")).unwrap();
    lattice.ok(&["cordon", "h1"]);
    let (h2, _cache) = host_with_nothing_cached(&lattice, "h2");
    lattice.ok(&["rollout", "undo", "shop"]);
    ready_from_the_copy(&lattice, &h2, "shop");
    drop(h1);
}
