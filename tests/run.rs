//! End-to-end tests of `shoal run`: serving, limits, isolation, commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::served::Served;
use support::{Shoal, guest};

fn fixtures() -> String {
    guest("http-fixtures").to_str().unwrap().to_owned()
}

#[test]
fn hello_serves_and_a_second_run_hits_the_compile_cache() {
    let shoal = Shoal::new();
    let hello = guest("hello-http");
    let first = Served::start(&shoal, hello.to_str().unwrap(), &[]);
    assert_eq!(first.get("/"), (200, "hello from Shoal\n".to_owned()));
    first.wait_for_log("compiled sha256:", 0);
    drop(first);

    let second = Served::start(&shoal, hello.to_str().unwrap(), &[]);
    assert_eq!(second.get("/anything").0, 200);
    second.wait_for_log("from the compile cache", 0);
}

#[test]
fn echo_round_trips_a_5_mib_body_and_headers() {
    let shoal = Shoal::new();
    let served = Served::start(&shoal, &fixtures(), &[]);
    let body: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut response = Served::agent()
        .post(&format!("{}/echo", served.url))
        .header("x-shoal-test", "round-trip")
        .send(&body[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers().get("echo-x-shoal-test").unwrap(),
        "round-trip"
    );
    let echoed = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()
        .unwrap();
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body);
}

#[test]
fn a_memory_bomb_is_capped_by_default() {
    let shoal = Shoal::new();
    // No --memory: the default cap (256Mi) holds, as an app's does.
    let served = Served::start(&shoal, &fixtures(), &["--timeout", "20s"]);
    let (status, _) = served.get("/hog");
    assert_eq!(status, 500);
    served.wait_for_log("cause=out_of_memory", 0);
    let peak = served.peak_rss();
    assert!(
        peak < 600 << 20,
        "shoal run reached {} MiB resident for one memory bomb",
        peak >> 20
    );
    // And it goes on serving.
    assert_eq!(served.get("/hello").0, 200);
}

#[test]
fn hostile_requests_fail_alone_while_hello_keeps_succeeding() {
    let shoal = Shoal::new();
    let served = Served::start(
        &shoal,
        &fixtures(),
        &["--memory", "32Mi", "--timeout", "2s"],
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = served.url.clone();
    let flag = std::sync::Arc::clone(&stop);
    // Hello requests run alongside the hostile ones, on the same process.
    let hello = std::thread::spawn(move || {
        let agent = Served::agent();
        let (mut ok, mut failed) = (0, 0);
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match agent.get(&format!("{url}/hello")).call() {
                Ok(response) if response.status() == 200 => ok += 1,
                _ => failed += 1,
            }
        }
        (ok, failed)
    });

    for (path, status, cause) in [
        ("/hog", 500, "out_of_memory"),
        ("/loop", 504, "timeout"),
        ("/panic", 500, "trap"),
        // A Rust guest keeps its stack in linear memory: overflowing it is an out-of-bounds
        // trap, not wasmtime's native stack-overflow trap.
        ("/stack", 500, "trap"),
        ("/slow?ms=10000", 504, "timeout"),
    ] {
        let needle = format!("cause={cause}");
        let logged_before = served.stderr().matches(&needle).count();
        let started = Instant::now();
        let (got, _) = served.get(path);
        assert_eq!(got, status, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{path} took {:?}",
            started.elapsed()
        );
        // The failure is logged with its cause.
        served.wait_for_log(&needle, logged_before);
    }
    let (status, body) = served.get("/large?mib=3");
    assert_eq!((status, body.len()), (200, 3 << 20));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = hello.join().unwrap();
    assert!(ok > 10, "hello answered {ok} times");
    assert_eq!(
        failed, 0,
        "hello failed {failed} times next to the hostile requests"
    );
    assert_eq!(served.get("/hello").0, 200);
}

#[test]
fn a_cpu_quota_throttles_a_burner_well_below_an_unlimited_one() {
    let shoal = Shoal::new();
    let units = |extra: &[&str]| -> u64 {
        let served = Served::start(&shoal, &fixtures(), extra);
        let (status, body) = served.get("/burn?ms=3000");
        assert_eq!(status, 200);
        body.trim().parse().unwrap()
    };
    let unlimited = units(&[]);
    let throttled = units(&["--cpu", "200m"]);
    let ratio = throttled as f64 / unlimited as f64;
    eprintln!("burn units in 3 s: unlimited {unlimited}, 200m {throttled}, ratio {ratio:.3}");
    // 200m is a fifth of a core; allow for tick granularity and machine noise.
    assert!(
        ratio < 0.4,
        "throttled run did {ratio:.3} of the unlimited work"
    );
    assert!(
        ratio > 0.08,
        "throttled run did {ratio:.3} of the unlimited work: starved, not throttled"
    );
}

#[test]
fn oversized_bodies_get_413_and_a_full_queue_gets_503() {
    let shoal = Shoal::new();
    let served = Served::start(
        &shoal,
        &fixtures(),
        &["--max-body", "1KiB", "--concurrency", "1"],
    );
    let response = Served::agent()
        .post(&format!("{}/echo", served.url))
        .send(&vec![0u8; 4096][..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);

    // One slow request holds the only slot, one waits in the queue, the third is refused.
    let url = served.url.clone();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                Served::agent()
                    .get(&format!("{url}/slow?ms=1500"))
                    .call()
                    .unwrap()
                    .status()
                    .as_u16()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let response = Served::agent().get(&format!("{url}/hello")).call().unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");
    for handle in slow {
        assert_eq!(handle.join().unwrap(), 200);
    }
}

#[test]
fn guests_see_no_host_files_environment_or_network_unless_granted() {
    let shoal = Shoal::new();
    let served = Served::start(&shoal, &fixtures(), &[]);
    assert_eq!(served.get("/env"), (200, "[]\n".to_owned()));
    let (status, body) = served.get("/read?path=/etc/hostname");
    assert_eq!(status, 403, "{body}");
    let (status, body) = served.get("/fetch?url=http://127.0.0.1:9/");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    served.wait_for_log("outbound request refused", 0);
}

#[test]
fn a_command_streams_stdout_and_passes_its_exit_code_through() {
    let shoal = Shoal::new();
    let cli = guest("hello-cli");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("note.txt"), "granted").unwrap();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "do not read").unwrap();

    let run = shoal
        .command()
        .args([
            "run",
            cli.to_str().unwrap(),
            "--env",
            "GREETING=hi",
            "--dir",
        ])
        .arg(format!("{}:/data", dir.path().display()))
        .args(["--", "--read", "/data/note.txt", "--exit", "3"])
        .env("HOST_ONLY", "leak")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    // WASI 0.2's wasi:cli/exit carries success or failure, not a number: any non-zero exit
    // code from the guest arrives as 1.
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("hello from Shoal"), "{stdout}");
    assert!(
        stdout.contains("env: [\"GREETING=hi\"]"),
        "only what was granted: {stdout}"
    );
    assert!(stdout.contains("read /data/note.txt: granted"), "{stdout}");
    assert!(String::from_utf8_lossy(&run.stderr).contains("done"));

    // Without a grant, neither the file nor the host environment is visible.
    let run = shoal
        .command()
        .args(["run", cli.to_str().unwrap(), "--", "--read"])
        .arg(&secret)
        .env("HOST_ONLY", "leak")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("env: []"), "{stdout}");
    assert!(
        stdout.contains(&format!("cannot read {}", secret.display())),
        "{stdout}"
    );
    assert!(!stdout.contains("do not read"));
}

#[test]
fn startup_errors_are_clear() {
    let shoal = Shoal::new();
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\x00\x00\x00").unwrap();
    let stderr = shoal.fails(&["run", core.to_str().unwrap()]);
    assert!(
        stderr.contains("a core WebAssembly module, not a component"),
        "{stderr}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap().to_string();
    let hello = guest("hello-http");
    let stderr = shoal.fails(&["run", hello.to_str().unwrap(), "--listen", &address]);
    assert!(stderr.contains("already in use"), "{stderr}");

    // A real component importing an interface no host provides: the import is named.
    let unsupported = guest("unsupported-import");
    let stderr = shoal.fails(&["run", unsupported.to_str().unwrap()]);
    assert!(
        stderr.contains("imports shoal-fixtures:unsupported/store")
            && stderr.contains("which Shoal does not provide")
            && stderr.contains("this host provides WASI 0.2")
            && stderr.contains("spin:key-value 3"),
        "{stderr}"
    );

    let empty = dir.path().join("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\x00\x01\x00").unwrap();
    let stderr = shoal.fails(&["run", empty.to_str().unwrap()]);
    assert!(
        stderr.contains("exports neither an HTTP handler (wasi:http/incoming-handler@0.2 or wasi:http/handler@0.3)"),
        "{stderr}"
    );
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let shoal = Shoal::new();
    let served = Served::start(&shoal, &fixtures(), &[]);
    let url = served.url.clone();
    let in_flight = std::thread::spawn(move || {
        Served::agent()
            .get(&format!("{url}/slow?ms=1000"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = served.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the in-flight request finished"
    );
}

#[test]
fn oversized_request_heads_get_431_and_the_server_goes_on() {
    let shoal = Shoal::new();
    let served = Served::start(&shoal, &fixtures(), &["--max-header", "16KiB"]);
    let agent = Served::agent();
    let url = format!("{}/hello", served.url);
    let response = agent
        .get(&url)
        .header("x-padding", "a".repeat(32 * 1024))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 431);
    // Just under the cap is fine, and the server keeps serving.
    let response = agent
        .get(&url)
        .header("x-padding", "a".repeat(8 * 1024))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[test]
fn instance_reuse_is_opt_in_and_bounded() {
    let shoal = Shoal::new();
    let count = |served: &Served| -> u64 {
        let (status, body) = served.get("/count");
        assert_eq!(status, 200, "{body}");
        body.trim().parse().unwrap()
    };
    // The default: a fresh instance per request, no state carried over.
    let fresh = Served::start(&shoal, &fixtures(), &[]);
    for _ in 0..5 {
        assert_eq!(count(&fresh), 1);
    }
    // Opt-in: one instance serves up to three requests, one after another. (A request may
    // arrive before the last one's instance is put back, and then gets a fresh one.)
    let reused = Served::start(&shoal, &fixtures(), &["--instance-reuse", "3"]);
    let counts: Vec<u64> = (0..30).map(|_| count(&reused)).collect();
    assert!(
        counts.iter().all(|count| (1..=3).contains(count)),
        "{counts:?}"
    );
    assert!(
        counts.iter().filter(|count| **count > 1).count() >= 10,
        "{counts:?}"
    );
    // An instance left idle for a second is dropped: the next request starts afresh.
    // (Idleness is what is tested, so the test idles.)
    let long = Served::start(&shoal, &fixtures(), &["--instance-reuse", "10000"]);
    let counts: Vec<u64> = (0..5).map(|_| count(&long)).collect();
    assert!(counts.iter().any(|count| *count >= 3), "{counts:?}");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(count(&long), 1);
    // A trap never poisons what follows.
    assert_eq!(reused.get("/panic").0, 500);
    assert_eq!(reused.get("/hello").0, 200);
    let out_of_range = shoal
        .command()
        .args(["run", &fixtures(), "--instance-reuse", "0"])
        .output()
        .unwrap();
    assert!(!out_of_range.status.success());
    assert!(
        String::from_utf8_lossy(&out_of_range.stderr).contains("--instance-reuse"),
        "{}",
        String::from_utf8_lossy(&out_of_range.stderr)
    );
}

#[test]
fn a_fuel_budget_stops_the_same_work_every_time_with_508() {
    let shoal = Shoal::new();
    let served = Served::start(&shoal, &fixtures(), &["--fuel", "20000000"]);
    // The same work passes or fails the same way every time: instructions, not time.
    for _ in 0..5 {
        assert_eq!(served.get("/work?units=10").0, 200);
        let (status, body) = served.get("/work?units=100");
        assert_eq!(status, 508, "{body}");
        assert_eq!(body, "the component used its whole fuel budget\n");
    }
    // A loop ends at its budget, long before the 30 s timeout.
    let started = Instant::now();
    assert_eq!(served.get("/loop").0, 508);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(served.get("/hello").0, 200);
    served.wait_for_log("cause=out_of_fuel", 0);
    // Without --fuel nothing is counted: the same work passes.
    let unbudgeted = Served::start(&shoal, &fixtures(), &[]);
    assert_eq!(unbudgeted.get("/work?units=100").0, 200);
}
