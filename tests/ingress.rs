//! End-to-end tests of routed services: every host's ingress reaches a ready replica of the
//! right app wherever it runs, forwarded over NATS when it is not local.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::eventually;
use support::lattice::{Lattice, agent};

const PATIENCE: Duration = Duration::from_secs(30);

fn manifest(name: &str, component: &str, replicas: u32, route: &str, extra: &str) -> String {
    format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {component}\n  replicas: {replicas}\n  routes: [{{path: {route}}}]\n{extra}"
    )
}

#[test]
fn an_app_answers_through_every_host_and_again_after_its_host_dies() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut hosts = [
        lattice.host("a", &[]),
        lattice.host("b", &[]),
        lattice.host("c", &[]),
    ];
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest("hello", &hello, 1, "/hello", ""));
    let owner = lattice
        .wait_ready("hello", 1, PATIENCE)
        .into_keys()
        .next()
        .unwrap();

    for host in &hosts {
        let (status, body, served_by) =
            eventually(PATIENCE, &format!("{} to route /hello", host.id), || {
                host.get_served("/hello")
                    .filter(|(status, _, _)| *status == 200)
            });
        assert_eq!(
            (status, body.as_str(), served_by.as_str()),
            (200, "hello from Shoal\n", owner.as_str())
        );
    }

    let index = hosts.iter().position(|host| host.id == owner).unwrap();
    hosts[index].kill();
    let new_owner = eventually(PATIENCE, "the replica to be ready on another host", || {
        let ready = lattice.ready_by_host("hello");
        (ready.len() == 1 && !ready.contains_key(&owner)).then(|| ready.into_keys().next().unwrap())
    });
    for host in hosts.iter().filter(|host| host.id != owner) {
        let (_, _, served_by) = eventually(
            PATIENCE,
            &format!("{} to route /hello again", host.id),
            || {
                host.get_served("/hello")
                    .filter(|(status, _, _)| *status == 200)
            },
        );
        assert_eq!(served_by, new_owner);
    }
}

#[test]
fn forwarded_requests_spread_over_the_ready_replicas() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let _w1 = lattice.host("w1", &["role=worker"]);
    let _w2 = lattice.host("w2", &["role=worker"]);
    let edge = lattice.host("edge", &["role=edge"]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest(
        "hello",
        &hello,
        2,
        "/",
        "  placement: {requires: {role: worker}}\n",
    ));
    let placed = lattice.wait_ready("hello", 2, PATIENCE);
    assert_eq!(placed.keys().collect::<Vec<_>>(), ["w1", "w2"]);

    let served: BTreeSet<String> = eventually(
        PATIENCE,
        "both workers to answer through the edge host",
        || {
            let served: BTreeSet<String> = (0..40)
                .filter_map(|_| edge.get_served("/"))
                .filter(|(status, _, _)| *status == 200)
                .map(|(_, _, served_by)| served_by)
                .collect();
            (served.len() == 2).then_some(served)
        },
    );
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["w1", "w2"]);
}

#[test]
fn unknown_routes_get_404_apps_without_replicas_503_and_big_bodies_413() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let _owner = lattice.host("owner", &["role=worker"]);
    let front = lattice.host("front", &["role=edge"]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    // Routed by Host header: requests to 127.0.0.1 reach it, requests to localhost do not.
    lattice.apply(
        &manifest(
            "fixtures",
            &fixtures,
            1,
            "/",
            "  placement: {requires: {role: worker}}\n",
        )
        .replace("{path: /}", "{host: 127.0.0.1, path: /}"),
    );
    lattice.apply(
        &manifest("idle", &fixtures, 0, "/idle", "")
            .replace("{path: /idle}", "{host: 127.0.0.1, path: /idle}"),
    );
    lattice.wait_ready("fixtures", 1, PATIENCE);
    let url = front.url.clone().unwrap();

    // A 4 MiB body and the method, query and headers round-trip through the forwarding
    // host, which adds Forwarded and X-Forwarded-For.
    let body = vec![b'x'; 4 << 20];
    let mut response = eventually(PATIENCE, "the echo to be forwarded", || {
        agent()
            .post(&format!("{url}/echo?q=1"))
            .header("x-custom", "kept")
            .send(&body[..])
            .ok()
            .filter(|response| response.status() == 200)
    });
    let echoed = |name: &str| {
        response
            .headers()
            .get(format!("echo-{name}"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(echoed("x-custom").as_deref(), Some("kept"));
    assert_eq!(echoed("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    let forwarded = echoed("forwarded").unwrap_or_default();
    assert!(
        forwarded.starts_with("for=127.0.0.1;host=\"127.0.0.1:"),
        "{forwarded}"
    );
    assert_eq!(response.headers().get("x-served-by").unwrap(), "owner");
    assert_eq!(
        response
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_vec()
            .unwrap(),
        body
    );

    // Over the app's body limit (10 MiB unless limits.maxBody says otherwise): 413 from the
    // host that runs it, answered from the declared length before the body is sent.
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /echo HTTP/1.1\r\nHost: {address}\r\nContent-Length: {}\r\n\r\n",
        11 << 20
    )
    .unwrap();
    let mut status_line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut status_line)
        .unwrap();
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");

    // An app that is routed but has no ready replica anywhere: 503 with Retry-After.
    let response = eventually(PATIENCE, "the idle app's route", || {
        agent()
            .get(&format!("{url}/idle"))
            .call()
            .ok()
            .filter(|response| response.status() == 503)
    });
    assert_eq!(response.headers().get("retry-after").unwrap(), "1");

    // No app has the route: the catch-all route names another host.
    let other = url.replace("127.0.0.1", "localhost");
    let mut response = agent().get(&format!("{other}/echo")).call().unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.body_mut().read_to_string().unwrap(),
        "no app serves this route\n"
    );
}

#[test]
fn colliding_routes_are_refused_at_apply_naming_the_app_that_holds_them() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest("first", &hello, 1, "/shared", ""));
    let file = lattice.shoal.home.path().join("second.yaml");
    std::fs::write(&file, manifest("second", &hello, 1, "/shared", "")).unwrap();
    let (ok, _, stderr) = lattice.shoal(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("*/shared is already routed to app default/first"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    let apps = lattice.ok(&["get", "apps", "-o", "json"]);
    assert!(!apps.contains("\"second\""), "{apps}");
    // Re-applying the holder itself is not a collision.
    let again = lattice.apply(&manifest("first", &hello, 2, "/shared", ""));
    assert!(again.contains("scaled"), "{again}");
}

#[test]
fn killing_the_owning_host_under_load_fails_requests_only_until_rescheduling() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut owner = lattice.host("owner", &["role=worker"]);
    let _spare = lattice.host("spare", &["role=worker"]);
    let front = lattice.host("front", &["role=edge"]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest(
        "hello",
        &hello,
        1,
        "/",
        "  placement: {requires: {role: worker}}\n",
    ));
    let placed = lattice.wait_ready("hello", 1, PATIENCE);
    if !placed.contains_key("owner") {
        // Placement is deterministic, but make the test independent of it.
        panic!("expected the replica on the first worker, got {placed:?}");
    }
    let url = front.url.clone().unwrap();
    eventually(PATIENCE, "the front host to forward", || {
        agent()
            .get(&format!("{url}/"))
            .call()
            .ok()
            .filter(|response| response.status() == 200)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let load = {
        let (stop, ok, failed, failures, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            failures.clone(),
            url.clone(),
        );
        std::thread::spawn(move || {
            // A short client timeout, so a request lost with its host does not hide what
            // happens to the ones after it.
            let client: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&format!("{url}/")).call() {
                    Ok(response) if response.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        failures.lock().unwrap().push(Instant::now());
                    }
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    owner.kill();
    eventually(
        PATIENCE,
        "the replica to be ready on the spare host",
        || {
            lattice
                .ready_by_host("hello")
                .contains_key("spare")
                .then_some(())
        },
    );
    // Requests succeed again after rescheduling.
    let before = ok.load(Ordering::Relaxed);
    eventually(PATIENCE, "requests to succeed again", || {
        (ok.load(Ordering::Relaxed) > before + 20).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let failures = failures.lock().unwrap();
    let window = match (failures.first(), failures.last()) {
        (Some(first), Some(last)) => format!(
            "{:?} to {:?} after the kill",
            first.duration_since(killed),
            last.duration_since(killed)
        ),
        _ => "none".to_owned(),
    };
    eprintln!(
        "owner killed under load: {} failed, {} succeeded; failures {window}",
        failed.load(Ordering::Relaxed),
        ok.load(Ordering::Relaxed)
    );
    // Failures stop once the replica runs elsewhere: none in the last half second.
    if let Some(last) = failures.last() {
        assert!(
            last.elapsed() > Duration::from_millis(400),
            "requests still failing"
        );
    }
}

/// GET /hello over TLS to `address`, asking for `name` and trusting only `trusted` (DER).
fn tls_get(address: &str, name: &str, trusted: &[u8]) -> Result<String, String> {
    tls_get_path(address, name, trusted, "/hello")
}

/// GET `path` over TLS; see [`tls_get`].
fn tls_get_path(address: &str, name: &str, trusted: &[u8], path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let socket = std::net::TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut stream = rustls::StreamOwned::new(connection, socket);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| error.to_string())?;
    let mut response = String::new();
    // A close without close_notify after the response is fine for this check.
    let _ = stream.read_to_string(&mut response);
    if response.is_empty() {
        return Err("no response".to_owned());
    }
    Ok(response)
}

#[test]
fn the_ingress_serves_tls_with_the_certificate_each_client_asks_for() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut ders = Vec::new();
    for (index, name) in ["localhost", "tls.example"].iter().enumerate() {
        let generated = rcgen::generate_simple_self_signed(vec![(*name).to_owned()]).unwrap();
        let cert = dir.path().join(format!("cert{index}.pem"));
        let key = dir.path().join(format!("key{index}.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        ders.push(generated.cert.der().to_vec());
        files.push((cert, key));
    }
    let host = lattice.host_with(
        "secure",
        &[
            "--tls-cert",
            files[0].0.to_str().unwrap(),
            "--tls-key",
            files[0].1.to_str().unwrap(),
            "--tls-cert",
            files[1].0.to_str().unwrap(),
            "--tls-key",
            files[1].1.to_str().unwrap(),
        ],
    );
    let url = host.url.clone().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    let address = host.address();
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest("hello", &hello, 1, "/hello", ""));
    lattice.wait_ready("hello", 1, PATIENCE);

    // Each name gets its own certificate: trusting only that one is enough.
    for (name, der) in [("localhost", &ders[0]), ("tls.example", &ders[1])] {
        let response = eventually(PATIENCE, &format!("a 200 over TLS for {name}"), || {
            tls_get(&address, name, der)
                .ok()
                .filter(|response| response.starts_with("HTTP/1.1 200"))
        });
        assert!(response.contains("hello from Shoal"), "{response}");
    }
    // The wrong certificate for a name is not trusted.
    assert!(tls_get(&address, "tls.example", &ders[0]).is_err());

    // A guest is told the scheme the client used, also when another host forwarded it.
    let worker = lattice.host("worker", &["role=worker"]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&manifest(
        "scheme",
        &fixtures,
        1,
        "/scheme",
        "  placement: {requires: {role: worker}}\n",
    ));
    lattice.wait_ready("scheme", 1, PATIENCE);
    let response = eventually(PATIENCE, "/scheme over TLS, forwarded", || {
        tls_get_path(&address, "localhost", &ders[0], "/scheme")
            .ok()
            .filter(|response| response.starts_with("HTTP/1.1 200"))
    });
    assert!(response.contains("scheme https"), "{response}");
    assert_eq!(
        worker.get("/scheme"),
        Some((200, "scheme http\n".to_owned()))
    );

    // Plain HTTP to the TLS port fails cleanly (no hang, no HTTP answer), and TLS goes on.
    let mut plain = std::net::TcpStream::connect(&address).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(plain, "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    assert!(
        tls_get(&address, "localhost", &ders[0])
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
}

#[test]
fn a_frontend_reaches_its_greeter_by_name_and_nothing_it_was_not_allowed() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let hosts = [lattice.host("h1", &[]), lattice.host("h2", &[])];
    let frontend = lattice.push_guest("frontend", "1.0");
    let greeter = lattice.push_guest("greeter", "1.0");
    // The example manifest, pointed at this test's registry.
    let example =
        std::fs::read_to_string(support::workspace().join("examples/apps/two-tier.yaml")).unwrap();
    let manifest = example
        .replace("localhost:5000/examples/frontend:1.0", &frontend)
        .replace("localhost:5000/examples/greeter:1.0", &greeter);
    let applied = lattice.apply(&manifest);
    assert!(
        applied.contains("app default/frontend created")
            && applied.contains("app default/greeter created"),
        "{applied}"
    );
    lattice.wait_ready("frontend", 1, PATIENCE);
    lattice.wait_ready("greeter", 2, PATIENCE);

    for host in &hosts {
        let (status, body, _) =
            eventually(PATIENCE, "the frontend to answer with the greeting", || {
                host.get_served("/two-tier")
                    .filter(|(status, _, _)| *status == 200)
            });
        assert_eq!(
            (status, body.as_str()),
            (200, "the frontend asked the greeter: hi from the greeter\n")
        );
    }

    // Anything else outbound is refused inside the guest and logged by its host.
    let (status, body, served_by) = hosts[0]
        .get_served("/two-tier/external?url=http://example.com/")
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let runner = hosts.iter().find(|host| host.id == served_by).unwrap();
    runner.wait_log(PATIENCE, "outbound request refused");
}

#[test]
fn a_replica_that_is_not_ready_receives_nothing() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let _good = lattice.host("good", &["role=worker"]);
    // This host refuses any artifact over 1 byte: its replica can never become ready.
    let _broken = lattice.host_with("broken", &["--label", "role=worker", "--max-size", "1"]);
    let edge = lattice.host("edge", &["role=edge"]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest(
        "hello",
        &hello,
        2,
        "/",
        "  placement: {requires: {role: worker}}\n",
    ));

    eventually(PATIENCE, "the broken host's replica to fail", || {
        lattice
            .replicas()
            .iter()
            .any(|(app, host, phase)| app == "hello" && host == "broken" && phase == "failed")
            .then_some(())
    });
    let described = lattice.ok(&["describe", "app", "hello"]);
    assert!(described.contains("PullFailed"), "{described}");
    eventually(PATIENCE, "the good replica to be ready and routed", || {
        lattice
            .ready_by_host("hello")
            .contains_key("good")
            .then_some(())?;
        edge.get_served("/").filter(|(status, _, _)| *status == 200)
    });
    let served: BTreeSet<String> = (0..30)
        .filter_map(|_| edge.get_served("/"))
        .map(|(status, _, served_by)| {
            assert_eq!(status, 200);
            served_by
        })
        .collect();
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["good"]);
}

/// The samples of a Prometheus text page: `name{labels}` → value.
fn scrape(port: u16) -> std::collections::BTreeMap<String, f64> {
    let mut response = agent()
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.body_mut().read_to_string().unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn hosts_serve_prometheus_metrics_of_local_and_forwarded_requests() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let (owner_port, front_port) = (support::free_port(), support::free_port());
    let owner = lattice.host_with(
        "owner",
        &[
            "--label",
            "role=worker",
            "--metrics",
            &format!("127.0.0.1:{owner_port}"),
        ],
    );
    let front = lattice.host_with(
        "front",
        &[
            "--label",
            "role=edge",
            "--metrics",
            &format!("127.0.0.1:{front_port}"),
        ],
    );
    let hello = lattice.push_hello("1.0");
    lattice.apply(&manifest(
        "hello",
        &hello,
        1,
        "/hello",
        "  placement: {requires: {role: worker}}\n",
    ));
    lattice.wait_ready("hello", 1, PATIENCE);
    for host in [&owner, &front] {
        eventually(PATIENCE, &format!("{} to route /hello", host.id), || {
            host.get("/hello").filter(|(status, _)| *status == 200)
        });
    }
    let series = |path: &str, outcome: &str| {
        format!(
            "shoal_http_requests_total{{namespace=\"default\",app=\"hello\",path=\"{path}\",outcome=\"{outcome}\"}}"
        )
    };
    let count = |path: &str| {
        format!(
            "shoal_http_request_duration_seconds_count{{namespace=\"default\",app=\"hello\",path=\"{path}\"}}"
        )
    };
    let owner_before = scrape(owner_port);
    let front_before = scrape(front_port);
    for _ in 0..3 {
        assert_eq!(owner.get("/hello").unwrap().0, 200);
    }
    for _ in 0..2 {
        assert_eq!(front.get("/hello").unwrap().0, 200);
    }
    let owner_after = scrape(owner_port);
    let front_after = scrape(front_port);
    let grew = |before: &std::collections::BTreeMap<String, f64>,
                after: &std::collections::BTreeMap<String, f64>,
                key: &str| {
        after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
    };
    assert_eq!(
        grew(&owner_before, &owner_after, &series("local", "success")),
        3.0
    );
    assert_eq!(grew(&owner_before, &owner_after, &count("local")), 3.0);
    assert_eq!(
        grew(&front_before, &front_after, &series("forwarded", "success")),
        2.0
    );
    assert_eq!(grew(&front_before, &front_after, &count("forwarded")), 2.0);
    assert_eq!(
        grew(&front_before, &front_after, &series("local", "success")),
        0.0
    );
    let inf = "shoal_http_request_duration_seconds_bucket{namespace=\"default\",app=\"hello\",path=\"local\",le=\"+Inf\"}";
    assert_eq!(owner_after[inf], owner_after[&count("local")]);
    assert_eq!(owner_after["shoal_ready_replicas"], 1.0);
    assert_eq!(owner_after["shoal_replicas"], 1.0);
    assert_eq!(front_after["shoal_ready_replicas"], 0.0);
    assert_eq!(front_after["shoal_log_lines_dropped_total"], 0.0);

    // Heartbeats alone (nothing changed) do not rebuild the routing table.
    let settled = scrape(owner_port);
    let rebuilds = settled["shoal_routing_rebuilds_total"];
    assert!(rebuilds >= 1.0, "{rebuilds}");
    eventually(PATIENCE, "eight more heartbeats", || {
        (scrape(owner_port)["shoal_heartbeats_total"] >= settled["shoal_heartbeats_total"] + 8.0)
            .then_some(())
    });
    assert_eq!(scrape(owner_port)["shoal_routing_rebuilds_total"], rebuilds);
    // A change does: the app gone, its route goes.
    lattice.ok(&["delete", "app", "hello"]);
    eventually(PATIENCE, "the route to go", || {
        (owner.get("/hello").map(|(status, _)| status) == Some(404)).then_some(())
    });
    assert!(scrape(owner_port)["shoal_routing_rebuilds_total"] > rebuilds);

    let other = agent()
        .get(&format!("http://127.0.0.1:{owner_port}/other"))
        .call()
        .unwrap();
    assert_eq!(other.status(), 404);
}

#[test]
fn instance_reuse_keeps_state_within_one_app_never_across_apps() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    let app = |name: &str, extra: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  routes: [{{host: {name}.local, path: /count}}]\n{extra}"
        )
    };
    let (ok, _, stderr) = lattice.try_apply(&app("zero", "  limits: {instanceReuse: 0}\n"));
    assert!(!ok);
    assert!(
        stderr.contains("spec.limits.instanceReuse: must be between 1 and 10000"),
        "{stderr}"
    );
    // Two apps of the same component reuse instances; a third does not.
    lattice.apply(&app("first", "  limits: {instanceReuse: 50}\n"));
    lattice.apply(&app("second", "  limits: {instanceReuse: 50}\n"));
    lattice.apply(&app("fresh", ""));
    for name in ["first", "second", "fresh"] {
        lattice.wait_ready(name, 1, PATIENCE);
    }
    let url = format!("{}/count", host.url.clone().unwrap());
    let count = |name: &str| -> Option<u64> {
        let mut response = agent()
            .get(&url)
            .header("host", format!("{name}.local"))
            .call()
            .ok()?;
        (response.status() == 200).then_some(())?;
        response
            .body_mut()
            .read_to_string()
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    eventually(PATIENCE, "the route of first", || count("first"));
    let first: Vec<u64> = (0..20).map(|_| count("first").unwrap()).collect();
    assert!(first.iter().any(|count| *count > 5), "{first:?}");
    // The other app's requests never reach an instance `first` used: its counts start at 1
    // (its first answer is the first request its instances saw) and grow on their own.
    let mut second = vec![eventually(PATIENCE, "the route of second", || {
        count("second")
    })];
    second.extend((0..4).map(|_| count("second").unwrap()));
    assert_eq!(second[0], 1, "{second:?}");
    assert!(second.iter().all(|count| *count <= 5), "{second:?}");
    eventually(PATIENCE, "the route of fresh", || count("fresh"));
    let fresh: Vec<u64> = (0..5).map(|_| count("fresh").unwrap()).collect();
    assert_eq!(fresh, [1, 1, 1, 1, 1]);
}

#[test]
fn a_fuel_budget_is_per_app_and_forwarded_requests_keep_it() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let owner = lattice.host("h1", &["role=owner"]);
    let front = lattice.host("h2", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    let app = |name: &str, extra: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  placement: {{requires: {{role: owner}}}}\n  routes: [{{host: {name}.local, path: /}}]\n{extra}"
        )
    };
    let (ok, _, stderr) = lattice.try_apply(&app("none", "  limits: {fuel: 0}\n"));
    assert!(!ok);
    assert!(
        stderr.contains("spec.limits.fuel: must be between 1 and"),
        "{stderr}"
    );
    // One app of the component with a budget, one without, on the same host.
    lattice.apply(&app("budgeted", "  limits: {fuel: 20000000}\n"));
    lattice.apply(&app("free", ""));
    for name in ["budgeted", "free"] {
        lattice.wait_ready(name, 1, PATIENCE);
    }
    let status = |host: &support::lattice::Process, name: &str, path: &str| -> Option<u16> {
        let response = agent()
            .get(&format!("{}{path}", host.url.clone().unwrap()))
            .header("host", format!("{name}.local"))
            .call()
            .ok()?;
        Some(response.status().as_u16())
    };
    eventually(PATIENCE, "both routes on both hosts", || {
        ["budgeted", "free"]
            .iter()
            .all(|name| {
                [&owner, &front]
                    .iter()
                    .all(|host| status(host, name, "/hello") == Some(200))
            })
            .then_some(())
    });
    for host in [&owner, &front] {
        assert_eq!(status(host, "budgeted", "/work?units=10"), Some(200));
        assert_eq!(status(host, "budgeted", "/work?units=100"), Some(508));
        assert_eq!(status(host, "free", "/work?units=100"), Some(200));
    }
}
