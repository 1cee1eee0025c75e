//! End-to-end tests of WASI 0.3 components beside 0.2 ones: an unmodified Spin SDK 7 HTTP
//! component, a plain `wasip3` HTTP fixture and a `wasip3` command, through `shoal run` and
//! through a real lattice, with the limits, grants and outcomes 0.2 components get.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Read as _;
use std::time::Duration;

use support::lattice::{Lattice, agent, hello_manifest};
use support::load::Load;
use support::served::Served;
use support::{Shoal, eventually, guest};

const PATIENCE: Duration = Duration::from_secs(30);

fn path(name: &str) -> String {
    guest(name).to_str().unwrap().to_owned()
}

/// A body sent in 64 KiB chunks with no declared length (chunked transfer encoding).
struct Chunks {
    left: usize,
    at: u8,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let count = buf.len().min(self.left).min(64 << 10);
        for byte in &mut buf[..count] {
            *byte = self.at;
            self.at = self.at.wrapping_mul(31).wrapping_add(7);
        }
        self.left -= count;
        Ok(count)
    }
}

/// FNV-1a 64 of `bytes`, as the fixture's `/digest` answers it.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3)
    })
}

/// POSTs `len` bytes chunked to `url` (an echo route) and checks that the same bytes come
/// back; returns the response's `x-served-by`, when the ingress added one.
fn assert_echoes(agent: &ureq::Agent, url: &str, len: usize) -> Option<String> {
    let (mut body, expected) = chunks(len);
    let mut response = agent
        .post(url)
        .send(ureq::SendBody::from_reader(&mut body))
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed = response
        .body_mut()
        .with_config()
        .limit(2 * len as u64 + (1 << 20))
        .read_to_vec()
        .unwrap();
    assert!(
        echoed == expected,
        "the echo of {url} differs ({} bytes)",
        echoed.len()
    );
    response
        .headers()
        .get("x-served-by")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// GETs `url` (a download route): 200, and how many bytes came, read as they came.
fn download(agent: &ureq::Agent, url: &str) -> u64 {
    let mut response = agent.get(url).call().unwrap();
    assert_eq!(response.status(), 200);
    std::io::copy(&mut response.body_mut().as_reader(), &mut std::io::sink()).unwrap()
}

fn chunks(len: usize) -> (Chunks, Vec<u8>) {
    let mut expected = Vec::new();
    Chunks { left: len, at: 1 }
        .read_to_end(&mut expected)
        .unwrap();
    (Chunks { left: len, at: 1 }, expected)
}

#[test]
fn shoal_run_serves_an_unmodified_spin_sdk_component() {
    let shoal = Shoal::new();
    let spin = path("hello-spin");
    let served = Served::start(&shoal, &spin, &[]);
    assert_eq!(
        served.get("/abc"),
        (200, "spin-sdk hello /abc\n".to_owned())
    );
    // inspect names the 0.3 world by its export.
    let inspected = shoal.ok(&["inspect", &spin]).stdout();
    assert!(
        inspected.contains("World:       wasi:http/service@0.3.0"),
        "{inspected}"
    );
}

#[test]
fn a_spin_component_reads_the_app_s_configuration_as_its_variables() {
    let shoal = Shoal::new();
    let served = Served::start(
        &shoal,
        &path("spin-fixtures"),
        &["--config", "GREETING=hi", "--config", "api_key=k1"],
    );
    // As written, then regardless of case (Spin names its variables in lowercase).
    assert_eq!(served.get("/var/api_key"), (200, "api_key=k1\n".to_owned()));
    assert_eq!(
        served.get("/var/greeting"),
        (200, "greeting=hi\n".to_owned())
    );
    let (status, body) = served.get("/var/missing");
    assert_eq!(status, 404);
    assert!(body.contains("Undefined"), "{body}");
}

#[test]
fn a_wasi_03_component_streams_both_ways_and_fails_alone_within_its_limits() {
    let shoal = Shoal::new();
    let served = Served::start(
        &shoal,
        &path("p3-fixtures"),
        &["--memory", "64Mi", "--timeout", "2s", "--max-body", "16Mi"],
    );
    assert_eq!(
        served.get("/hello"),
        (200, "hello from a WASI 0.3 component\n".to_owned())
    );
    // 8 MiB sent chunked and echoed as it arrives; 20 MiB written after the handler
    // returned, read as it comes.
    assert_echoes(&Served::agent(), &format!("{}/echo", served.url), 8 << 20);
    let downloaded = download(&Served::agent(), &format!("{}/large?mib=20", served.url));
    assert_eq!(downloaded, 20 << 20);

    // Each hostile request fails with the status a 0.2 component's gets, alone.
    assert_eq!(
        served.get("/hog"),
        (500, "the component ran out of memory\n".to_owned())
    );
    assert_eq!(
        served.get("/loop"),
        (504, "the component ran past its timeout\n".to_owned())
    );
    assert_eq!(
        served.get("/panic"),
        (500, "the component failed\n".to_owned())
    );
    // Past maxBody: 413, declared (answered before the body is sent) or not.
    let address = served.url.trim_start_matches("http://").to_owned();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!(
            "POST /digest HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n",
            17 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    let mut status_line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut status_line).unwrap();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    let (mut body, _) = chunks(17 << 20);
    let response = Served::agent()
        .post(&format!("{}/digest", served.url))
        .send(ureq::SendBody::from_reader(&mut body));
    assert!(
        response
            .as_ref()
            .map_or(true, |response| response.status() == 413),
        "{response:?}"
    );
    assert_eq!(served.get("/hello").0, 200);
    let stderr = served.stderr();
    for cause in ["cause=out_of_memory", "cause=timeout", "cause=trap"] {
        assert!(stderr.contains(cause), "{cause} not logged:\n{stderr}");
    }
}

#[test]
fn fuel_cpu_and_instance_reuse_hold_for_wasi_03() {
    let shoal = Shoal::new();
    let fixtures = path("p3-fixtures");
    let served = Served::start(&shoal, &fixtures, &["--fuel", "100000000"]);
    assert_eq!(
        served.get("/loop"),
        (508, "the component used its whole fuel budget\n".to_owned())
    );
    assert_eq!(served.get("/hello").0, 200);
    drop(served);

    // One instance per request unless reuse is asked for.
    let served = Served::start(&shoal, &fixtures, &[]);
    assert_eq!(served.get("/count").1, "1\n");
    assert_eq!(served.get("/count").1, "1\n");
    drop(served);
    let served = Served::start(&shoal, &fixtures, &["--instance-reuse", "3"]);
    // An instance goes back to the pool a moment after its response ended: a request that
    // comes sooner gets a fresh one. Within 30 requests one instance serves its third, and
    // none serves a fourth.
    let counts: Vec<String> = (0..30).map(|_| served.get("/count").1).collect();
    assert!(counts.iter().any(|count| count == "3\n"), "{counts:?}");
    assert!(
        counts
            .iter()
            .all(|count| ["1\n", "2\n", "3\n"].contains(&count.as_str())),
        "{counts:?}"
    );
    drop(served);

    let units = |extra: &[&str]| -> u64 {
        let served = Served::start(&shoal, &fixtures, extra);
        let (status, body) = served.get("/burn?ms=2000");
        assert_eq!(status, 200);
        body.trim().parse().unwrap()
    };
    let unlimited = units(&[]);
    let throttled = units(&["--cpu", "200m"]);
    let ratio = throttled as f64 / unlimited as f64;
    eprintln!("burn units in 2 s: unlimited {unlimited}, 200m {throttled}, ratio {ratio:.3}");
    assert!(
        ratio < 0.4 && ratio > 0.08,
        "throttled run did {ratio:.3} of the work"
    );
}

#[test]
fn outbound_requests_through_wasi_http_03_follow_the_allowlist() {
    let shoal = Shoal::new();
    let upstream = Served::start(&shoal, &path("hello-spin"), &[]);
    let allowed = upstream.url.clone();
    let served = Served::start(
        &shoal,
        &path("p3-fixtures"),
        &["--allow-outbound", &allowed],
    );
    assert_eq!(
        served.get(&format!("/fetch?url={allowed}/via")),
        (
            200,
            "upstream answered 200: spin-sdk hello /via\n".to_owned()
        )
    );
    let (status, body) = served.get("/fetch?url=http://127.0.0.1:9/refused");
    assert_eq!(status, 502);
    assert!(body.contains("HttpRequestDenied"), "{body}");
    served.wait_for_log("not in the allowed outbound list", 0);
}

#[test]
fn a_wasi_03_command_runs_with_its_arguments_environment_and_exit_status() {
    let shoal = Shoal::new();
    let command = path("p3-command");
    let run = shoal.ok(&["run", &command, "--env", "GREETING=hi", "--", "one", "two"]);
    let stdout = run.stdout();
    assert!(
        stdout.starts_with("hello from a WASI 0.3 command [")
            && stdout.contains("\"one\", \"two\"] hi"),
        "{stdout}"
    );
    let run = shoal.run(&["run", &command, "--", "fail"]);
    assert_eq!(run.0.status.code(), Some(1), "{}", run.stderr());
}

#[test]
fn wasi_03_apps_route_forward_stream_discover_services_log_and_run_as_jobs() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let _worker = lattice.host("worker", &["role=worker"]);
    let edge = lattice.host("edge", &["role=edge"]);
    let spin = lattice.push_guest("hello-spin", "1.0");
    let fixtures = lattice.push_guest("p3-fixtures", "1.0");
    let command = lattice.push_guest("p3-command", "1.0");
    let app = |name: &str, component: &str, route: &str, extra: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {component}\n  replicas: 1\n  routes: [{{path: {route}}}]\n  placement: {{requires: {{role: worker}}}}\n{extra}"
        )
    };
    lattice.apply(&app("spin", &spin, "/spin", ""));
    lattice.apply(&app("p3", &fixtures, "/", "  health: {path: /hello}\n"));
    lattice.wait_ready("spin", 1, PATIENCE);
    lattice.wait_ready("p3", 1, PATIENCE);
    let url = edge.url.clone().unwrap();

    // Through the host that runs neither: forwarded, with the replica's host named.
    let (status, body, served_by) = eventually(PATIENCE, "the spin app through the edge", || {
        edge.get_served("/spin/x")
            .filter(|(status, _, _)| *status == 200)
    });
    assert_eq!(
        (status, body.as_str(), served_by.as_str()),
        (200, "spin-sdk hello /spin/x\n", "worker")
    );

    // Streamed through the forwarding host both ways: 6 MiB uploaded chunked and hashed as
    // it arrives, 20 MiB downloaded as the guest writes it, 512 KiB echoed.
    let (mut body, expected) = chunks(6 << 20);
    let mut response = agent()
        .post(&format!("{url}/digest"))
        .send(ureq::SendBody::from_reader(&mut body))
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("x-served-by").unwrap(), "worker");
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        format!("{} {:016x}\n", expected.len(), fnv1a(&expected))
    );
    assert_eq!(download(&agent(), &format!("{url}/large?mib=20")), 20 << 20);
    let served_by = assert_echoes(&agent(), &format!("{url}/echo"), 512 << 10);
    assert_eq!(served_by.as_deref(), Some("worker"));

    // Service discovery from a 0.3 component's outgoing request: http://<app>.
    let (status, body) = edge.get("/fetch?url=http://spin/spin/by-name").unwrap();
    assert_eq!(
        (status, body.as_str()),
        (200, "upstream answered 200: spin-sdk hello /spin/by-name\n")
    );

    // The guest's output is the app's logs.
    assert_eq!(edge.get("/print?out=p3-log-line").unwrap().0, 200);
    eventually(PATIENCE, "the app's log line", || {
        lattice
            .ok(&["logs", "p3"])
            .contains("p3-log-line")
            .then_some(())
    });

    // A 0.3 command as a job: it runs to completion and its output is kept.
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: Job\nmetadata: {{name: greet}}\nspec:\n  component: {command}\n  args: [once]\n  env: {{GREETING: from-a-job}}\n"
    ));
    let phase = eventually(PATIENCE, "the job to end", || {
        let status = lattice.row("jobs", "greet")["status"].clone();
        (status["phase"] == "succeeded" || status["phase"] == "failed")
            .then(|| status["phase"].clone())
    });
    assert_eq!(phase, "succeeded");
    let logs = lattice.ok(&["logs", "job/greet"]);
    assert!(
        logs.contains("hello from a WASI 0.3 command") && logs.contains("from-a-job"),
        "{logs}"
    );
}

#[test]
fn a_wasi_03_component_goes_only_to_hosts_that_run_wasi_03() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    // A host that runs WASI 0.2 only, as a host of an older release does.
    let _old = lattice.host_with("old", &["--wasi", "0.2"]);
    let spin = lattice.push_guest("hello-spin", "1.0");
    let hello = lattice.push_hello("1.0");
    let app = |name: &str, component: &str| hello_manifest(name, component, 1, "");
    lattice.apply(&app("spin", &spin));
    lattice.apply(&app("hello", &hello));
    // The 0.2 app runs there; the 0.3 one waits, and describe says why.
    assert_eq!(
        lattice
            .wait_ready("hello", 1, PATIENCE)
            .keys()
            .collect::<Vec<_>>(),
        ["old"]
    );
    let described = eventually(PATIENCE, "describe to say why spin waits", || {
        let described = lattice.ok(&["describe", "app", "spin"]);
        described
            .contains("0 of 1 hosts fit: 1 does not run WASI 0.3")
            .then_some(described)
    });
    assert!(described.contains("Unschedulable"), "{described}");
    assert!(lattice.replica_ids("spin").is_empty());

    // A host that runs 0.3 joins: the app is placed there, and each host says what it runs.
    let new = lattice.host("new", &[]);
    assert_eq!(
        lattice
            .wait_ready("spin", 1, PATIENCE)
            .keys()
            .collect::<Vec<_>>(),
        ["new"]
    );
    let (status, body, _) = eventually(PATIENCE, "spin through the new host", || {
        new.get_served("/spin")
            .filter(|(status, _, _)| *status == 200)
    });
    assert_eq!((status, body.as_str()), (200, "spin-sdk hello /spin\n"));
    let hosts: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "hosts", "-o", "json"])).unwrap();
    let wasi = |id: &str| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|host| host["id"] == id)
            .map(|host| host["wasi"].clone())
            .unwrap()
    };
    assert_eq!(wasi("old"), serde_json::json!(["0.2"]));
    assert_eq!(wasi("new"), serde_json::json!(["0.2", "0.3"]));
}

#[test]
fn a_rollout_between_a_wasi_02_and_a_wasi_03_component_fails_no_request() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let hosts = [lattice.host("h1", &[]), lattice.host("h2", &[])];
    let hello = lattice.push_hello("1.0");
    let spin = lattice.push_guest("hello-spin", "1.0");
    let web = |component: &str| hello_manifest("web", component, 4, "");
    lattice.apply(&web(&hello));
    lattice.wait_ready("web", 4, PATIENCE);
    let urls: Vec<String> = hosts
        .iter()
        .map(|host| format!("{}/web", host.url.clone().unwrap()))
        .collect();
    for url in &urls {
        eventually(PATIENCE, "every host to serve the 0.2 component", || {
            agent()
                .get(url)
                .call()
                .ok()
                .filter(|response| response.status() == 200)
        });
    }
    // 0.2 → 0.3 under load through both hosts, then back with undo.
    for (step, expected) in [
        ("apply", "spin-sdk hello /web\n"),
        ("undo", "hello from Shoal\n"),
    ] {
        let load = Load::start(&urls);
        eventually(PATIENCE, "the load to be answered", || {
            (load.ok() > 20).then_some(())
        });
        if step == "apply" {
            lattice.apply(&web(&spin));
        } else {
            lattice.ok(&["rollout", "undo", "web"]);
        }
        let status = lattice.ok(&["rollout", "status", "web", "--timeout", "60s"]);
        assert!(status.contains("complete"), "{status}");
        eventually(
            PATIENCE,
            "every host to answer with the new component",
            || {
                urls.iter()
                    .all(|url| {
                        agent()
                            .get(url)
                            .call()
                            .ok()
                            .and_then(|mut response| response.body_mut().read_to_string().ok())
                            .is_some_and(|body| body == expected)
                    })
                    .then_some(())
            },
        );
        let (ok, failed, errors, seen) = load.finish();
        eprintln!("{step} under load: {ok} ok, {failed} failed; errors: {errors:?}");
        assert_eq!(failed, 0, "{step}: {errors:?}");
        assert!(seen.iter().any(|answer| answer == expected), "{seen:?}");
    }
}

#[test]
fn a_wasi_03_app_scales_to_zero_wakes_on_a_request_and_is_counted_in_metrics() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let port = support::free_port();
    let host = lattice.host_with("h1", &["--metrics", &format!("127.0.0.1:{port}")]);
    let spin = lattice.push_guest("hello-spin", "1.0");
    lattice.apply(&hello_manifest(
        "sleepy",
        &spin,
        0,
        "  autoscale: {min: 0, max: 2, window: 6s, scaleDownDelay: 3s}\n",
    ));
    // At zero: the first request wakes a replica and is answered by it.
    let (status, body) = eventually(PATIENCE, "the host to route /sleepy", || {
        host.get("/sleepy/woken")
            .filter(|(status, _)| *status != 404)
    });
    assert_eq!(
        (status, body.as_str()),
        (200, "spin-sdk hello /sleepy/woken\n")
    );
    assert_eq!(
        lattice.wait_ready("sleepy", 1, PATIENCE),
        [("h1".to_owned(), 1)].into()
    );
    // Idle for its delay: back to zero.
    eventually(PATIENCE, "sleepy to reach zero", || {
        lattice.replica_ids("sleepy").is_empty().then_some(())
    });
    let metrics = agent()
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "shoal_http_requests_total{namespace=\"default\",app=\"sleepy\",path=\"local\",outcome=\"success\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn with_instance_concurrency_one_wasi_03_instance_serves_requests_at_once_and_fails_them_together()
{
    let shoal = Shoal::new();
    let served = Served::start(
        &shoal,
        &path("p3-fixtures"),
        &["--instance-concurrency", "8", "--timeout", "2s"],
    );
    // Eight requests waiting on the clock at once: answered, and an instance saw several
    // in flight together. (Without the option each has an instance of its own.)
    let url = served.url.clone();
    let peak = || {
        let waits: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut response = Served::agent()
                        .get(&format!("{url}/sleep?ms=300"))
                        .call()
                        .unwrap();
                    let status = response.status().as_u16();
                    let _ = response.body_mut().read_to_string();
                    status
                })
            })
            .collect();
        for wait in waits {
            assert_eq!(wait.join().unwrap(), 200);
        }
        served.get("/peak").1.trim().parse::<u64>().unwrap()
    };
    let shared = eventually(PATIENCE, "one instance to serve sleeps at once", || {
        let peak = peak();
        (peak >= 2).then_some(peak)
    });
    eprintln!("most sleeps in flight in one instance: {shared}");
    // Limits hold per request; a failure ends the instance, and the next request gets a
    // fresh one.
    assert_eq!(served.get("/loop").0, 504);
    assert_eq!(served.get("/panic").0, 500);
    assert_eq!(served.get("/count"), (200, "1\n".to_owned()));
    assert_echoes(&Served::agent(), &format!("{url}/echo"), 1 << 20);
    // Fuel counts one request's instructions: not with shared instances.
    let refused = shoal.fails(&[
        "run",
        &path("p3-fixtures"),
        "--instance-concurrency",
        "4",
        "--fuel",
        "1000",
    ]);
    assert!(refused.contains("cannot be used with"), "{refused}");
}

/// Runs `shoal ARGS` on `lattice` with `SHOAL_KEY_PASSWORD` set; panics unless it succeeds.
fn with_key_password(lattice: &Lattice, args: &[&str]) -> String {
    let output = lattice
        .command()
        .env("SHOAL_KEY_PASSWORD", "a test password")
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_signed_wasi_03_component_runs_under_a_trust_policy_and_serves_offline_after_a_restart() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.patient_scheduler("s1");
    let host = lattice.spawn(&support::lattice::host_args("edge-1"), "edge-1", true);
    lattice.wait_registered("edge-1");
    let keys = tempfile::tempdir().unwrap();
    let prefix = keys.path().join("ci");
    with_key_password(
        &lattice,
        &["keygen", "--output-key-prefix", prefix.to_str().unwrap()],
    );
    lattice.ok(&["trust", "add", keys.path().join("ci.pub").to_str().unwrap()]);
    // Signed at push: it runs. The same component unsigned is refused.
    let spin = guest("hello-spin");
    let signed = lattice.registry.reference("examples/spin:signed");
    with_key_password(
        &lattice,
        &[
            "push",
            spin.to_str().unwrap(),
            &signed,
            "--annotation",
            "build=signed",
            "--sign",
            keys.path().join("ci.key").to_str().unwrap(),
        ],
    );
    let unsigned = lattice.registry.reference("examples/spin:unsigned");
    lattice.ok(&[
        "push",
        spin.to_str().unwrap(),
        &unsigned,
        "--annotation",
        "build=unsigned",
    ]);
    let app = |name: &str, component: &str| hello_manifest(name, component, 1, "");
    lattice.apply(&app("edge", &signed));
    lattice.wait_ready("edge", 1, PATIENCE);
    let (ok, _, stderr) = lattice.try_apply(&app("unsigned", &unsigned));
    assert!(ok && stderr.contains("SignatureMissing"), "{stderr}");

    // Offline restart: NATS and the registry gone, the host killed and started again; it
    // serves the saved 0.3 replica from its cache.
    let state = lattice.shoal.cache_dir().join("hosts/edge-1/state.json");
    eventually(PATIENCE, "the host to save its replica and route", || {
        let text = std::fs::read_to_string(&state).ok()?;
        text.contains("\"/edge\"").then_some(())
    });
    lattice.nats.stop();
    let mut host = host;
    host.kill();
    lattice.registry.stop();
    let host = lattice.spawn(&support::lattice::host_args("edge-1"), "edge-1", true);
    let (status, body) = eventually(PATIENCE, "the offline host to serve /edge", || {
        host.get("/edge").filter(|(status, _)| *status == 200)
    });
    assert_eq!((status, body.as_str()), (200, "spin-sdk hello /edge\n"));
}

#[test]
fn wasi_03_components_use_the_app_s_stores_through_spin_key_value_and_wasi_keyvalue() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let fixtures = lattice.push_guest("spin-fixtures", "1.0");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: spinkv}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  routes: [{{path: /}}]\n  config: {{GREETING: from-the-lattice}}\n  keyValue: [{{name: default}}]\n"
    ));
    lattice.wait_ready("spinkv", 1, PATIENCE);
    let url = host.url.clone().unwrap();
    let (status, body) = eventually(PATIENCE, "the app's route", || {
        host.get("/var/greeting")
            .filter(|(status, _)| *status != 404)
    });
    assert_eq!(
        (status, body.as_str()),
        (200, "greeting=from-the-lattice\n")
    );
    let call = |method: &str, path: &str, body: &str| {
        let agent = agent();
        let url = format!("{url}{path}");
        let mut response = match method {
            "PUT" => agent.put(&url).send(body),
            "DELETE" => agent.delete(&url).call(),
            _ => agent.get(&url).call(),
        }
        .unwrap();
        (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap(),
        )
    };
    assert_eq!(
        call("PUT", "/kv/default/visits", "41"),
        (200, "stored\n".to_owned())
    );
    assert_eq!(
        call("PUT", "/kv/default/name", "spin"),
        (200, "stored\n".to_owned())
    );
    assert_eq!(
        call("GET", "/kv/default/visits", ""),
        (200, "41".to_owned())
    );
    assert_eq!(
        call("GET", "/keys/default", ""),
        (200, "name\nvisits\n".to_owned())
    );
    assert_eq!(
        call("DELETE", "/kv/default/visits", ""),
        (200, "deleted\n".to_owned())
    );
    assert_eq!(call("GET", "/kv/default/visits", "").0, 404);
    // A store the app does not grant: access denied.
    let (status, body) = call("GET", "/kv/other/visits", "");
    assert_eq!(status, 403);
    assert!(body.to_lowercase().contains("access"), "{body}");
    // The value is in the app's own store, where `shoal kv` reads it too.
    let stored = lattice.ok(&["kv", "get", "spinkv/default", "name"]);
    assert_eq!(stored.trim(), "spin");

    // A plain wasip3 component through wasi:keyvalue@0.2.0-draft (as wasmCloud's toolchain
    // imports it), in the same lattice: its own store only.
    let plain = lattice.push_guest("p3-fixtures", "1.0");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: p3kv}}\nspec:\n  component: {plain}\n  replicas: 1\n  routes: [{{path: /kv}}]\n  keyValue: [{{name: default}}]\n"
    ));
    lattice.wait_ready("p3kv", 1, PATIENCE);
    let (status, body) = eventually(PATIENCE, "the p3 app's route", || {
        host.get("/kv?store=default&key=hits&value=7")
            .filter(|(status, _)| *status != 404)
    });
    assert_eq!((status, body.as_str()), (200, "7"));
    assert_eq!(
        host.get("/kv?store=default&key=hits").unwrap(),
        (200, "7".to_owned())
    );
    assert_eq!(
        lattice.ok(&["kv", "get", "p3kv/default", "hits"]).trim(),
        "7"
    );
    let (status, body) = host.get("/kv?store=other&key=hits").unwrap();
    assert_eq!(status, 403);
    assert!(body.contains("AccessDenied"), "{body}");
}

#[test]
fn a_wasi_03_guest_reaches_a_private_address_only_inside_the_lattice_s_egress_policy() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let fixtures = lattice.push_guest("p3-fixtures", "1.0");
    // A server on this machine's loopback, named by the app's allowlist: not enough.
    let port = support::upstream();
    let target = format!("http://127.0.0.1:{port}");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: fetcher}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  routes: [{{path: /fetch}}]\n  allowedOutbound: [\"{target}\"]\n"
    ));
    lattice.wait_ready("fetcher", 1, PATIENCE);
    let fetch = || host.get(&format!("/fetch?url={target}/")).unwrap();
    let (status, body) = eventually(PATIENCE, "the route", || {
        Some(fetch()).filter(|(status, _)| *status != 404)
    });
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DestinationIpProhibited"), "{body}");
    // The lattice's policy opens the range: a replica that starts after it reaches it.
    lattice.ok(&["egress", "allow", "127.0.0.1/32"]);
    lattice.replace_replica("fetcher", PATIENCE);
    let (status, body) = eventually(PATIENCE, "the new replica to reach the server", || {
        Some(fetch()).filter(|(status, _)| *status == 200)
    });
    assert!(body.starts_with("upstream answered 200"), "{status} {body}");
}
