//! End-to-end tests of hostile input: records written behind the CLI's back, extreme values,
//! abusive clients. Real nats-server, registry, `shoal host` and `shoal scheduler` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::lattice::{Lattice, hello_manifest};
use support::{Signal, eventually};

const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn extreme_values_and_hostile_records_crash_nothing_and_are_reported() {
    let lattice = Lattice::start();
    let mut scheduler = lattice.scheduler("s1");
    let mut host = lattice.host("host-a", &[]);
    let hello = lattice.push_hello("1.0");

    // The manifest that once took every host down is refused at apply, with the bound.
    let extreme = hello_manifest(
        "extreme",
        &hello,
        1,
        "  limits: {timeout: 18446744073709551615s, memory: 1Ti, concurrency: 4000000000}\n",
    );
    let (ok, _, stderr) = lattice.try_apply(&extreme);
    assert!(!ok, "{stderr}");
    for expected in [
        "spec.limits.timeout: must be at most 1h",
        "spec.limits.memory: must be between 64Ki and 4Gi",
        "spec.limits.concurrency: must be between 1 and 10000",
    ] {
        assert!(stderr.contains(expected), "{expected} in:\n{stderr}");
    }
    assert!(
        lattice.app("extreme").is_null(),
        "{}",
        lattice.app("extreme")
    );

    lattice.apply(&hello_manifest("good", &hello, 1, ""));
    lattice.wait_ready("good", 1, PATIENCE);
    let digest = lattice.app("good")["digest"].as_str().unwrap().to_owned();

    // A client with no Shoal code writes what the CLI would refuse, straight into the KV
    // buckets: the extreme app, a record that is not JSON, and an assignment for host-a
    // with limits no host may run.
    let spec = format!(
        r#"{{"component":"{hello}","replicas":1,"routes":[{{"path":"/evil"}}],"limits":{{"timeout":"18446744073709551615s"}}}}"#
    );
    let evil_app = format!(
        r#"{{"name":"evil","namespace":"default","generation":1,"revision":1,"digest":"{digest}","spec":{spec},"createdAt":0,"updatedAt":0}}"#
    );
    let bucket = |name: &str| format!("$KV.shoal-{}-v1-{name}", lattice.name);
    lattice.nats.publish(
        &format!("{}.default.evil", bucket("apps")),
        evil_app.as_bytes(),
    );
    lattice
        .nats
        .publish(&format!("{}.default.junk", bucket("apps")), b"{not json");
    let evil_assignment = format!(
        r#"{{"replica":"evil-1","app":"evil","namespace":"default","revision":1,"generation":1,"host":"host-a","digest":"{digest}","template":{spec},"createdAt":0}}"#
    );
    lattice.nats.publish(
        &format!("{}.host-a.evil-1", bucket("assignments")),
        evil_assignment.as_bytes(),
    );

    // Both are told as events; the invalid assignment is removed by the scheduler.
    eventually(PATIENCE, "the invalid records to be reported", || {
        let events = lattice.events(&[]);
        let told = |reason: &str, needle: &str| {
            events.iter().any(|event| {
                event["reason"] == reason
                    && event["message"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(needle)
            })
        };
        (told("InvalidSpec", "spec.limits.timeout: must be at most 1h")
            && told("InvalidSpec", "cannot read")
            && told("InvalidRecord", "assignment host-a.evil-1 was removed"))
        .then_some(())
    });
    let evil = lattice.app("evil");
    assert_eq!(evil["status"]["conditions"][0]["type"], "Valid", "{evil}");
    assert_eq!(evil["status"]["conditions"][0]["status"], false, "{evil}");

    // Nothing crashed; the good app serves; no replica of the extreme app runs.
    assert!(host.is_running(), "{}", host.log());
    assert!(scheduler.is_running(), "{}", scheduler.log());
    assert_eq!(host.get("/good").unwrap().0, 200);
    assert!(lattice.replicas().iter().all(|(app, _, _)| app != "evil"));

    // And a restart with the hostile records still stored starts and serves.
    host.kill();
    let host = lattice.host("host-a", &[]);
    let (status, _) = eventually(PATIENCE, "the restarted host to serve /good", || {
        host.get("/good").filter(|(status, _)| *status == 200)
    });
    assert_eq!(status, 200);
    scheduler.kill();
    let mut scheduler = lattice.scheduler("s2");
    lattice.ok(&["scale", "app", "good", "--replicas", "2"]);
    lattice.wait_ready("good", 2, PATIENCE);
    assert!(scheduler.is_running(), "{}", scheduler.log());
}

#[test]
fn records_from_a_newer_version_are_served_and_unreadable_ones_stop_nothing() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut host = lattice.host("host-a", &[]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("skew", &hello, 1, ""));
    lattice.wait_ready("skew", 1, PATIENCE);
    let before = lattice.replica_ids("skew");
    assert_eq!(before.len(), 1);

    // A newer version wrote the assignment with fields this one does not know, at the top
    // and inside the template.
    let (assignments, status) = (lattice.bucket("assignments"), lattice.bucket("status"));
    let key = format!("host-a.{}", before[0]);
    let mut record: serde_json::Value =
        serde_json::from_slice(&lattice.nats.kv_get(&assignments, &key).unwrap()).unwrap();
    record["placedBy"] = serde_json::json!({"scheduler": "v9", "score": 0.5});
    record["template"]["accelerators"] = serde_json::json!({"gpu": 1, "kind": "npu"});
    lattice.nats.publish(
        &format!("$KV.{assignments}.{key}"),
        record.to_string().as_bytes(),
    );
    // And the app's routing record in a shape this version cannot read at all.
    lattice.nats.publish(
        &format!("$KV.{status}.routes.default.skew"),
        br#"{"namespace": 7, "routes": "everywhere"}"#,
    );
    let rewritten = lattice.nats.kv_get(&assignments, &key).unwrap();
    assert!(String::from_utf8_lossy(&rewritten).contains("placedBy"));

    // The host says what it could not read, and serves on from what it could.
    eventually(
        PATIENCE,
        "the unreadable routing record to be reported",
        || {
            lattice
                .events(&[])
                .iter()
                .any(|event| {
                    event["reason"] == "InvalidRecord"
                        && event["message"]
                            .as_str()
                            .unwrap_or_default()
                            .contains("routes.default.skew")
                })
                .then_some(())
        },
    );
    for _ in 0..20 {
        assert_eq!(host.get("/skew").map(|(status, _)| status), Some(200));
    }
    assert_eq!(
        lattice.replica_ids("skew"),
        before,
        "the replica kept running"
    );
    assert!(host.is_running(), "{}", host.log());
}

/// A small deterministic random source, so a failing case can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

#[test]
fn mutated_components_are_refused_or_run_never_a_panic() {
    let original = std::fs::read(support::guest("hello-http")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let runtime = shoal_host::Runtime::new(shoal_host::RuntimeOptions {
        cache_dir: cache.path().to_owned(),
        pooling: false,
        instance_slots: 16,
        keep_resident: 0,
        fuel: false,
        wasi_03: true,
        compiler: None,
    })
    .unwrap();
    let mut random = XorShift(0x0005_eed0_f5a1_u64);
    let (mut refused, mut compiled) = (0, 0);
    for case in 0..300 {
        let mut bytes = original.clone();
        for _ in 0..=random.below(4) {
            let at = random.below(bytes.len());
            match random.below(3) {
                0 => bytes[at] = random.next() as u8,
                1 => bytes.insert(at, random.next() as u8),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        if shoal_oci::ComponentInfo::from_bytes(&bytes).is_err() {
            refused += 1;
            continue;
        }
        // What the registry checks let through, the host compiles or refuses, per case.
        match runtime.load(&bytes, &format!("sha256:{case:064x}")) {
            Ok(_) => compiled += 1,
            Err(_) => refused += 1,
        }
    }
    assert_eq!(refused + compiled, 300);
    assert!(refused > 0, "no mutation was refused");
}

#[test]
fn outbound_allows_the_default_port_only_and_private_addresses_only_by_literal() {
    let shoal = support::Shoal::new();
    let fixtures = support::guest("http-fixtures");
    let port = support::upstream();
    let url = format!("/fetch?url=http://127.0.0.1:{port}/");

    let named = format!("http://127.0.0.1:{port}");
    let served = support::served::Served::start(
        &shoal,
        fixtures.to_str().unwrap(),
        &["--allow-outbound", &named],
    );
    assert_eq!(
        served.get(&url),
        (200, "upstream answered 200\n".to_owned())
    );
    drop(served);

    let served = support::served::Served::start(
        &shoal,
        fixtures.to_str().unwrap(),
        &["--allow-outbound", "http://127.0.0.1"],
    );
    let (status, body) = served.get(&url);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    drop(served);

    // Allowed by name, the address it resolves to is still checked when connecting:
    // loopback (like private and link-local ranges) only when named literally.
    let by_name = format!("http://localhost:{port}");
    let served = support::served::Served::start(
        &shoal,
        fixtures.to_str().unwrap(),
        &["--allow-outbound", &by_name],
    );
    let (status, body) = served.get(&format!("/fetch?url=http://localhost:{port}/"));
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DestinationIpProhibited"), "{body}");
    served.wait_for_log("the address is this host or a private network", 0);
}

#[test]
fn idle_and_slow_connections_are_closed_and_never_starve_a_real_client() {
    use std::io::{Read, Write};
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host_with("host-a", &["--header-timeout", "1s"]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, ""));
    lattice.wait_ready("hello", 1, PATIENCE);
    let address = host.address();

    // 1,000 connections that send nothing, and 100 that send half a request head.
    let mut idle: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    for _ in 0..100 {
        let mut slow = std::net::TcpStream::connect(&address).unwrap();
        slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        idle.push(slow);
    }
    // A normal client is served meanwhile.
    let started = std::time::Instant::now();
    assert_eq!(host.get("/hello").map(|(status, _)| status), Some(200));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The server closes every one of them (a read sees the end) within the timeouts.
    for stream in &idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }
    let closed = idle
        .iter_mut()
        .filter(|stream| {
            let mut stream: &std::net::TcpStream = stream;
            let mut buffer = [0u8; 256];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(error)
                        if matches!(
                            error.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        return false;
                    }
                    Err(_) => return true,
                }
            }
        })
        .count();
    assert_eq!(closed, idle.len());
    assert_eq!(host.get("/hello").map(|(status, _)| status), Some(200));
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024)
}

#[test]
fn many_large_forwarded_bodies_stay_within_the_forward_buffer() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let front = lattice.host("front", &[]);
    let back = lattice.host("back", &["role=back"]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest(
        "big",
        &hello,
        1,
        "  placement: {requires: {role: back}}\n",
    ));
    lattice.wait_ready("big", 1, PATIENCE);
    eventually(PATIENCE, "front to forward /big", || {
        front.get("/big").filter(|(status, _)| *status == 200)
    });
    let before = (rss(front.pid()), rss(back.pid()));

    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        let pids = (front.pid(), back.pid());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                let now = rss(pids.0).max(rss(pids.1));
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let url = format!("{}/big", front.url.clone().unwrap());
    let body = std::sync::Arc::new(vec![b'x'; 8 << 20]);
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                support::lattice::agent()
                    .post(&url)
                    .send(&body[..])
                    .map(|response| response.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let statuses: Vec<u16> = clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .collect();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let served = statuses.iter().filter(|status| **status == 200).count();
    let busy = statuses.iter().filter(|status| **status == 503).count();
    eprintln!(
        "64 x 8 MiB forwarded: {served} served, {busy} busy; RSS before {} / {} MiB, peak {} MiB",
        before.0 >> 20,
        before.1 >> 20,
        peak >> 20
    );
    assert_eq!(served + busy, 64, "{statuses:?}");
    assert!(served > 0, "{statuses:?}");
    // 512 MiB of bodies were sent at once; each host holds at most its 64 MiB forward
    // buffer of them, plus what its HTTP and NATS layers have in flight.
    assert!(peak < 320 << 20, "peak RSS {} MiB", peak >> 20);
}

#[test]
fn revisions_are_capped_and_go_with_their_app() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let hello = lattice.push_hello("1.0");
    let revisions = |lattice: &Lattice| -> Vec<String> {
        lattice
            .ok(&["rollout", "history", "capped"])
            .lines()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    for version in 1..=6 {
        lattice.apply(&hello_manifest(
            "capped",
            &hello,
            1,
            &format!("  revisionHistoryLimit: 3\n  config: {{GREETING: v{version}}}\n"),
        ));
    }
    assert_eq!(revisions(&lattice), ["4", "5", "6"]);

    lattice.ok(&["delete", "app", "capped"]);
    let applied = lattice.apply(&hello_manifest("capped", &hello, 1, ""));
    assert!(applied.contains("created (revision 1"), "{applied}");
    assert_eq!(revisions(&lattice), ["1"]);
}

#[test]
fn a_lattice_on_a_three_server_nats_cluster_survives_losing_a_server_under_load() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut lattice = Lattice::start_cluster();
    let scheduler = lattice.scheduler("s1");
    let hosts = Arc::new([lattice.host("host-a", &[]), lattice.host("host-b", &[])]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 2, ""));
    assert_eq!(lattice.wait_ready("hello", 2, PATIENCE).len(), 2);

    // Every bucket and stream of the lattice is kept by all three servers.
    let jsz: serde_json::Value = serde_json::from_str(
        &support::lattice::agent()
            .get(&format!(
                "{}/jsz?streams=true&config=true",
                lattice.nats.monitor_url()
            ))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let streams: Vec<(String, u64)> = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|account| {
            account["stream_detail"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|stream| {
            (
                stream["config"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                stream["config"]["num_replicas"].as_u64().unwrap_or(0),
            )
        })
        .filter(|(name, _)| name.contains(&lattice.name))
        .collect();
    assert!(streams.len() >= 8, "{streams:?}");
    assert!(
        streams.iter().all(|(_, replicas)| *replicas == 3),
        "{streams:?}"
    );

    // Steady load through both hosts while a server dies.
    let running = Arc::new(AtomicBool::new(true));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (running, served, failed, hosts) = (
            running.clone(),
            served.clone(),
            failed.clone(),
            hosts.clone(),
        );
        std::thread::spawn(move || {
            while running.load(Ordering::Relaxed) {
                for host in hosts.iter() {
                    match host.get("/hello") {
                        Some((200, _)) => served.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("{}: {other:?}", host.id);
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
        })
    };
    eventually(PATIENCE, "some load before the kill", || {
        (served.load(Ordering::Relaxed) > 100).then_some(())
    });
    lattice.peers[0].kill();

    // Desired state survives, and applies, scaling and placement go on with two servers.
    // The streams whose leader was on the killed server elect another first: seconds alone,
    // but once over 30 s with the whole suite sharing two cores (writes meanwhile answer
    // "no stream found"), hence the longer wait.
    let recovery = Duration::from_secs(90);
    let converged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        lattice.apply(&hello_manifest("after", &hello, 1, ""));
        lattice.wait_ready("after", 1, recovery);
        lattice.ok(&["scale", "app", "hello", "--replicas", "3"]);
        lattice.wait_ready("hello", 3, recovery);
    }));
    if let Err(panic) = converged {
        eprintln!("scheduler:\n{}", scheduler.log());
        for host in hosts.iter() {
            eprintln!("{}:\n{}", host.id, host.log());
        }
        std::panic::resume_unwind(panic);
    }
    let before = served.load(Ordering::Relaxed);
    eventually(PATIENCE, "load served after the kill", || {
        (served.load(Ordering::Relaxed) > before + 100).then_some(())
    });
    running.store(false, Ordering::Relaxed);
    load.join().unwrap();
    let (served, failed) = (
        served.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!("one of three NATS servers killed under load: {served} served, {failed} failed");
    if failed > 0 {
        eprintln!("scheduler:\n{}", scheduler.log());
        for host in hosts.iter() {
            eprintln!("{}:\n{}", host.id, host.log());
        }
    }
    assert_eq!(failed, 0, "{served} served");
}

#[test]
fn a_kill_9_of_nats_server_loses_no_applied_app() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("host-a", &[]);
    let hello = lattice.push_hello("1.0");
    for name in ["one", "two", "three"] {
        lattice.apply(&hello_manifest(name, &hello, 1, ""));
    }
    lattice.wait_ready("three", 1, PATIENCE);

    lattice.nats.kill();
    lattice.nats.relaunch();

    for name in ["one", "two", "three"] {
        assert_eq!(lattice.app(name)["name"], name, "{name} lost");
    }
    lattice.ok(&["scale", "app", "two", "--replicas", "2"]);
    lattice.wait_ready("two", 2, PATIENCE);
    let (status, _) = eventually(PATIENCE, "host-a to serve /one again", || {
        host.get("/one").filter(|(status, _)| *status == 200)
    });
    assert_eq!(status, 200);
}

/// A server that asks every client for basic credentials and notes whether any sent some.
fn credential_collector() -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let offered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = offered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|read| read > 2) {
                if line.to_ascii_lowercase().starts_with("authorization:") {
                    seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                line.clear();
            }
            let _ = (&stream).write_all(
                b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Basic realm=\"give me\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (port, offered)
}

#[test]
fn registry_credentials_go_only_to_the_registry_they_belong_to() {
    let registry = support::registry::Registry::with_auth("shoal", "s3cret");
    let (stranger, offered) = credential_collector();
    let shoal = support::Shoal::new();
    let hello = support::guest("hello-http");
    let reference = registry.reference("private/hello:1.0");
    let with_password = |args: &[&str]| {
        shoal
            .command()
            .args(args)
            .env("SHOAL_REGISTRY_PASSWORD", "s3cret")
            .output()
            .unwrap()
    };
    // Bound to the reference's registry: push works.
    let pushed = with_password(&[
        "push",
        hello.to_str().unwrap(),
        &reference,
        "--username",
        "shoal",
    ]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    // A component on another registry is pulled without them, even when that registry asks.
    let elsewhere = format!("127.0.0.1:{stranger}/team/hello:1.0");
    let pulled = with_password(&[
        "pull",
        &elsewhere,
        "--username",
        "shoal",
        "--registry-server",
        &registry.host(),
    ]);
    assert!(!pulled.status.success());
    assert_eq!(offered.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Commands that reach many registries need to be told where the credentials belong.
    let manifest = shoal.home.path().join("app.yaml");
    std::fs::write(&manifest, hello_manifest("hello", &elsewhere, 1, "")).unwrap();
    let applied = with_password(&[
        "apply",
        "-f",
        manifest.to_str().unwrap(),
        "--username",
        "shoal",
    ]);
    assert!(!applied.status.success());
    let stderr = String::from_utf8_lossy(&applied.stderr);
    assert!(stderr.contains("needs --registry-server"), "{stderr}");
    assert_eq!(offered.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn a_new_leader_keeps_the_rollout_clock_of_the_last_one() {
    let lattice = Lattice::start();
    let mut first = lattice.scheduler("s1");
    let _host = lattice.host("host-a", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&hello_manifest("slow", &fixtures, 1, ""));
    lattice.wait_ready("slow", 1, PATIENCE);
    let _second = lattice.scheduler("s2");

    // Revision 2 never becomes ready: its rollout clock runs toward a long deadline.
    lattice.apply(&hello_manifest(
        "slow",
        &fixtures,
        1,
        "  health: {path: /nope}\n  rollout: {progressDeadline: 10m}\n",
    ));
    let started = eventually(PATIENCE, "the rollout clock of revision 2", || {
        let status = lattice.app("slow")["status"].clone();
        (status["revision"] == 2)
            .then(|| status["rolloutStartedAt"].as_u64())
            .flatten()
    });

    // The leader dies; once the standby acts, the clock is the one the first leader started.
    first.kill();
    lattice.ok(&["scale", "app", "slow", "--replicas", "2"]);
    eventually(PATIENCE, "the new leader to act", || {
        lattice
            .events(&["--app", "slow"])
            .iter()
            .any(|event| event["source"] == "scheduler s2" && event["reason"] == "Placed")
            .then_some(())
    });
    let status = lattice.app("slow")["status"].clone();
    assert_eq!(
        status["rolloutStartedAt"].as_u64(),
        Some(started),
        "{status}"
    );
}

#[test]
fn a_registry_signed_by_a_private_ca_is_trusted_with_registry_ca() {
    // 0.0.0.0 reaches this machine without being a loopback name, so Shoal speaks HTTPS.
    let generated = rcgen::generate_simple_self_signed(vec!["0.0.0.0".to_owned()]).unwrap();
    let registry = support::registry::Registry::with_tls(
        &generated.cert.pem(),
        &generated.signing_key.serialize_pem(),
    );
    let shoal = support::Shoal::new();
    let ca = shoal.home.path().join("ca.pem");
    std::fs::write(&ca, generated.cert.pem()).unwrap();
    let hello = support::guest("hello-http");
    let reference = format!("0.0.0.0:{}/private/hello:1.0", registry.port);

    let stderr = shoal.fails(&["push", hello.to_str().unwrap(), &reference]);
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    shoal.ok(&[
        "push",
        hello.to_str().unwrap(),
        &reference,
        "--registry-ca",
        ca.to_str().unwrap(),
    ]);
    let fresh = support::Shoal::new();
    fresh.ok(&["pull", &reference, "--registry-ca", ca.to_str().unwrap()]);
}

#[test]
fn a_paused_old_leader_does_not_place_twice_when_it_wakes() {
    let lattice = Lattice::start();
    let first = lattice.scheduler("s1");
    let _host_a = lattice.host("host-a", &[]);
    let _host_b = lattice.host("host-b", &[]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("fenced", &hello, 2, ""));
    lattice.wait_ready("fenced", 2, PATIENCE);
    let _second = lattice.scheduler("s2");

    // The leader freezes (a stalled VM, a SIGSTOP); the standby takes over and scales.
    first.signal(Signal::Stop);
    lattice.ok(&["scale", "app", "fenced", "--replicas", "4"]);
    // While frozen, the old leader keeps its place in the control API's queue group until
    // nats-server drops it, so a call may wait out an attempt (2.5 s) or, rarely, all of
    // them: these polls ask again rather than fail.
    let replicas_of = |app: &str| -> Option<Vec<String>> {
        let (ok, stdout, _) = lattice.shoal(&["get", "replicas", "-o", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&stdout).ok().filter(|_| ok)?;
        Some(
            rows.as_array()?
                .iter()
                .filter(|row| row["app"] == app)
                .map(|row| {
                    row["status"]["phase"]
                        .as_str()
                        .unwrap_or("pending")
                        .to_owned()
                })
                .collect(),
        )
    };
    eventually(PATIENCE, "the standby to place the new replicas", || {
        let (ok, stdout, _) = lattice.shoal(&["events", "-o", "json", "--app", "fenced"]);
        ok.then_some(())?;
        stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|event| event["source"] == "scheduler s2" && event["reason"] == "Placed")
            .then_some(())
    });
    eventually(PATIENCE, "4 ready replicas of fenced", || {
        let phases = replicas_of("fenced")?;
        (phases.len() == 4 && phases.iter().all(|phase| phase == "ready")).then_some(())
    });

    // The old leader wakes with its stale view: it must not act on it.
    first.signal(Signal::Cont);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Some(replicas) = replicas_of("fenced") {
            assert!(
                replicas.len() <= 4,
                "{} replicas of 4 after the old leader woke",
                replicas.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_write_planned_on_an_old_view_of_the_assignments_is_refused() {
    use shoal_lattice::{Bucket, ConnectOptions, Error};
    let nats = support::nats::Nats::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let lattice = shoal_lattice::Lattice::connect(&ConnectOptions {
            url: nats.url(),
            lattice: "fence".to_owned(),
            client_name: "fence-test".to_owned(),
            ..ConnectOptions::default()
        })
        .await
        .unwrap();
        let record = serde_json::json!({"any": "record"});
        let first = lattice
            .create_fenced(Bucket::Assignments, "h.a", &record, 0)
            .await
            .unwrap();
        // Planned at revision 0, after someone wrote revision `first`: refused.
        let stale = lattice
            .create_fenced(Bucket::Assignments, "h.b", &record, 0)
            .await;
        assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
        let second = lattice
            .create_fenced(Bucket::Assignments, "h.b", &record, first)
            .await
            .unwrap();
        let stale = lattice
            .delete_fenced(Bucket::Assignments, "h.a", first, first)
            .await;
        assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
        lattice
            .delete_fenced(Bucket::Assignments, "h.a", first, second)
            .await
            .unwrap();
        let gone: Option<shoal_lattice::Versioned<serde_json::Value>> =
            lattice.get(Bucket::Assignments, "h.a").await.unwrap();
        assert!(gone.is_none());
    });
}

#[test]
fn a_request_body_that_stalls_fails_after_the_body_timeout() {
    use std::io::{Read, Write};
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host_with(
        "host-a",
        &["--body-timeout", "1s", "--header-timeout", "60s"],
    );
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&hello_manifest("echo", &fixtures, 1, ""));
    lattice.wait_ready("echo", 1, PATIENCE);
    let address = host.address();
    eventually(PATIENCE, "host-a to route /echo", || {
        host.get("/echo").filter(|(status, _)| *status == 200)
    });

    // Ten bytes of a hundred promised, then nothing: the guest reading it is not held for
    // the header timeout (60 s) but fails after the body timeout.
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let waited = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(waited < Duration::from_secs(15), "{waited:?}: {answer}");
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_host_with_little_memory_has_few_instance_slots_and_answers_503_past_them() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    // 32 MiB for replicas: 16 pooling slots (2 MiB an instance, at least 16).
    let host = lattice.host_with("small", &["--memory", "32Mi"]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&hello_manifest(
        "slow",
        &fixtures,
        1,
        "  limits: {memory: 8Mi, concurrency: 100}\n",
    ));
    lattice.wait_ready("slow", 1, PATIENCE);
    let url = host.url.clone().unwrap();
    eventually(PATIENCE, "the route", || {
        host.get("/slow?ms=1").filter(|(status, _)| *status == 200)
    });
    // 40 requests at once, each holding an instance for a second: the first 16 get one,
    // the rest are told to retry; nothing waits unbounded and the host lives on.
    let answers = support::lattice::burst(&format!("{url}/slow?ms=1500"), 40);
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, _)| *status == 503)
        .collect();
    assert!(
        (1..=16).contains(&served),
        "{served} served at once: {answers:?}"
    );
    assert_eq!(served + refused.len(), 40, "{answers:?}");
    assert!(
        refused
            .iter()
            .all(|(_, retry)| retry.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert_eq!(host.get("/slow?ms=1").unwrap().0, 200);
}

/// A reader of `left` bytes of a repeating pattern, never all in memory.
struct Pattern {
    left: u64,
    at: u64,
}

impl std::io::Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = usize::try_from(self.left.min(buf.len() as u64)).unwrap();
        for byte in &mut buf[..n] {
            *byte = (self.at % 251) as u8;
            self.at += 1;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn a_100_mib_upload_and_download_stream_through_a_host_without_the_app() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let back = lattice.host("back", &["role=back"]);
    let front = lattice.host("front", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(
        &hello_manifest(
            "big",
            &fixtures,
            1,
            "  placement: {requires: {role: back}}\n  limits: {maxBody: 128Mi}\n",
        )
        .replace("path: /big", "path: /"),
    );
    lattice.wait_ready("big", 1, PATIENCE);
    eventually(PATIENCE, "front to forward /big", || {
        front.get("/hello").filter(|(status, _)| *status == 200)
    });
    let url = front.url.clone().unwrap();
    let before = rss(front.pid());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        let pid = front.pid();
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    const SIZE: u64 = 100 << 20;
    let expected = format!(
        "{SIZE} {:016x}\n",
        fnv1a((0..SIZE).map(|at| (at % 251) as u8))
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into();
    // Upload, chunked (no declared length): the front host streams it after its first MiB.
    let mut pattern = Pattern { left: SIZE, at: 0 };
    let mut response = agent
        .post(&format!("{url}/digest"))
        .send(ureq::SendBody::from_reader(&mut pattern))
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("x-served-by").unwrap(), "back");
    assert_eq!(response.body_mut().read_to_string().unwrap(), expected);
    // Download: 100 MiB the app writes, read as it comes.
    let mut response = agent.get(&format!("{url}/large?mib=100")).call().unwrap();
    assert_eq!(response.status(), 200);
    let downloaded =
        std::io::copy(&mut response.body_mut().as_reader(), &mut std::io::sink()).unwrap();
    assert_eq!(downloaded, SIZE);
    // Past the app's maxBody the body breaks off at the host that runs it: the guest
    // reading it gets an error (the fixture answers 400), or the host answers 413.
    let mut pattern = Pattern {
        left: 129 << 20,
        at: 0,
    };
    let response = agent
        .post(&format!("{url}/digest"))
        .send(ureq::SendBody::from_reader(&mut pattern));
    assert!(
        response.as_ref().map_or(true, |response| [400, 413]
            .contains(&response.status().as_u16())),
        "{response:?}"
    );
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let grew = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    eprintln!(
        "front RSS before {} MiB, grew by {} MiB at most; back RSS now {} MiB",
        before >> 20,
        grew >> 20,
        rss(back.pid()) >> 20
    );
    // 300 MiB went through; the front host held a few chunks of it at a time.
    assert!(grew < 48 << 20, "front RSS grew by {} MiB", grew >> 20);
}

#[test]
fn a_streamed_upload_that_gets_no_answer_from_the_app_still_gets_its_503() {
    // The app's routing record exists but no host may run it: the front host forwards, finds
    // no endpoint for a second, and answers 503. The client, still sending its 8 MiB body,
    // must read that answer, not a reset.
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let front = lattice.host("front", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(
        &hello_manifest(
            "nowhere",
            &fixtures,
            1,
            "  placement: {requires: {role: none}}\n",
        )
        .replace("path: /nowhere", "path: /"),
    );
    eventually(PATIENCE, "front to route the app", || {
        front.get("/hello").filter(|(status, _)| *status == 503)
    });
    let url = front.url.clone().unwrap();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    for declared in [false, true] {
        let mut pattern = Pattern {
            left: 8 << 20,
            at: 0,
        };
        let request = agent.post(&format!("{url}/digest"));
        let response = if declared {
            request
                .header("content-length", (8u64 << 20).to_string())
                .send(ureq::SendBody::from_reader(&mut pattern))
        } else {
            request.send(ureq::SendBody::from_reader(&mut pattern))
        };
        let response = response
            .unwrap_or_else(|error| panic!("declared length {declared}: no answer read: {error}"));
        assert_eq!(response.status(), 503, "declared length {declared}");
        assert_eq!(pattern.left, 0, "the whole body was sent");
    }
}

/// Components are compiled in a child process: one the compiler needs more memory for than
/// the host allows fails to start with that reason, and the host and its other replicas
/// keep serving (compiling in the host's own process, the cap could only be the host's).
#[test]
fn a_compile_past_its_memory_cap_fails_the_app_and_not_the_host() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut capped = lattice.host_with(
        "capped",
        &["--label", "zone=capped", "--compile-memory", "4Mi"],
    );
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest(
        "heavy",
        &hello,
        1,
        "  placement: {requires: {zone: capped}}\n",
    ));
    eventually(PATIENCE, "the compile failure to be told", || {
        lattice
            .events(&["--app", "heavy"])
            .iter()
            .find(|event| {
                let message = event["message"].as_str().unwrap_or_default();
                event["reason"] == "Failed"
                    && message.contains("(CompileFailed)")
                    && message.contains("compile memory limit of 4 MiB")
            })
            .map(|_| ())
    });
    assert!(capped.is_running(), "{}", capped.log());
    // The host still serves: its ingress answers (404 for an app it does not run).
    assert_eq!(capped.get("/nothing-here").unwrap().0, 404);

    // A host with room compiles the same component and serves it.
    let roomy = lattice.host_with("roomy", &["--label", "zone=roomy"]);
    lattice.apply(&hello_manifest(
        "light",
        &hello,
        1,
        "  placement: {requires: {zone: roomy}}\n",
    ));
    lattice.wait_ready("light", 1, PATIENCE);
    assert_eq!(roomy.get("/light").unwrap().0, 200);
}
