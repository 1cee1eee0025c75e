//! The secure lattice over a real nats-server in operator mode: what a host credential can
//! and cannot do (enforced by the server, tried with a bare NATS client), roles through the
//! control API, revocation, and unique host ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::eventually;
use support::lattice::{Lattice, hello_manifest};
use support::raw::Raw;

const PATIENCE: Duration = Duration::from_secs(30);

fn secure_lattice_with_hello() -> (
    Lattice,
    support::lattice::Process,
    support::lattice::Process,
) {
    let lattice = Lattice::start_secure();
    let scheduler = lattice.secure_scheduler("1s");
    let host = lattice.secure_host("h1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, ""));
    lattice.wait_ready("hello", 1, PATIENCE);
    (lattice, scheduler, host)
}

#[test]
fn a_host_credential_can_write_only_its_own_records_and_hear_only_its_own_requests() {
    let (lattice, _scheduler, host) = secure_lattice_with_hello();
    let name = &lattice.name;
    let creds = lattice.mint(&["host", "h9"], "h9");
    let raw = Raw::connect(&lattice.nats.url(), &creds, "_INBOX.host.h9");
    // Key writes and JetStream calls as a host sends them: its account imports the state
    // account's under a prefix.
    let client = shoal_lattice::auth::client_subject;
    let kv = |bucket: &str, key: &str| client(&format!("$KV.shoal-{name}-v1-{bucket}.{key}"));

    // Its own records: stored.
    raw.store(&kv("hosts", "h9"), r#"{"id":"h9"}"#).unwrap();
    raw.store(&kv("status", "replicas.h9.r1"), "{}").unwrap();

    // Desired state, the lease, other hosts' records and statuses: refused by the server.
    let forbidden = [
        kv("apps", "default.evil"),
        kv("revisions", "default.hello.9"),
        kv("assignments", "h9.evil-1"),
        kv("assignments", "h1.evil-1"),
        kv("leases", "scheduler"),
        kv("hosts", "h1"),
        kv("status", "replicas.h1.evil-1"),
        kv("status", "apps.default.hello"),
        client(&format!("$JS.API.STREAM.CREATE.KV_shoal-{name}-v1-apps")),
        client(&format!("$JS.API.STREAM.PURGE.KV_shoal-{name}-v1-apps")),
        format!("shoal.{name}.v1.events.default.hello._scheduler"),
        format!("shoal.{name}.v1.logs.default.hello.h1"),
        format!("shoal.{name}.v1.api.admin._lattice.h9.apply"),
        // Waking an app in another host's name.
        format!("shoal.{name}.v1.wake.h1.default.hello"),
    ];
    for subject in &forbidden {
        raw.publish(subject);
        raw.wait_refused("Publish", subject);
    }
    // Reading beyond what it serves: apps' specs (their configuration), other hosts'
    // assignments, other hosts' records.
    for subject in [
        client(&format!("$JS.API.CONSUMER.CREATE.KV_shoal-{name}-v1-apps")),
        client(&format!(
            "$JS.API.CONSUMER.CREATE.KV_shoal-{name}-v1-apps.x.$KV.shoal-{name}-v1-apps.>"
        )),
        client(&format!(
            "$JS.API.CONSUMER.CREATE.KV_shoal-{name}-v1-assignments"
        )),
        client(&format!(
            "$JS.API.CONSUMER.CREATE.KV_shoal-{name}-v1-assignments.x.$KV.shoal-{name}-v1-assignments.h1.>"
        )),
        client(&format!(
            "$JS.API.DIRECT.GET.KV_shoal-{name}-v1-apps.$KV.shoal-{name}-v1-apps.default.hello"
        )),
        client(&format!(
            "$JS.API.DIRECT.GET.KV_shoal-{name}-v1-hosts.$KV.shoal-{name}-v1-hosts.h1"
        )),
        client(&format!("$JS.API.STREAM.MSG.GET.KV_shoal-{name}-v1-apps")),
    ] {
        raw.publish(&subject);
        raw.wait_refused("Publish", &subject);
    }
    // Another host's requests, every app's requests, other identities' replies.
    for subject in [
        format!("shoal.{name}.v1.http.h1.>"),
        format!("shoal.{name}.v1.http.>"),
        "_INBOX.>".to_owned(),
        format!("shoal.{name}.v1.api.>"),
        // Other hosts' wakes.
        format!("shoal.{name}.v1.wake.>"),
    ] {
        raw.subscribe(&subject);
        raw.wait_refused("Subscription", &subject);
    }

    // Nothing changed: no app, the host still serves.
    let (ok, _, stderr) = lattice.shoal(&["describe", "app", "evil"]);
    assert!(
        !ok && stderr.contains("there is no app default/evil"),
        "{stderr}"
    );
    assert_eq!(host.get("/hello").unwrap().0, 200);
    assert_eq!(lattice.ready_by_host("hello").get("h1"), Some(&1));

    // A credential is for one host id: another id is refused at start, and so is a
    // second host with the id of a live one.
    let (ok, _, stderr) = lattice.shoal(&[
        "host",
        "--id",
        "h1",
        "--http",
        "127.0.0.1:0",
        "--nats-creds",
        creds.to_str().unwrap(),
    ]);
    assert!(
        !ok && stderr.contains("the credential is for host \"h9\""),
        "{stderr}"
    );
    let h1 = lattice.auth.as_ref().unwrap().path().join("h1.creds");
    let (ok, _, stderr) = lattice.shoal(&[
        "host",
        "--http",
        "127.0.0.1:0",
        "--nats-creds",
        h1.to_str().unwrap(),
    ]);
    assert!(!ok, "a second h1 started");
    assert!(
        stderr.contains("host id h1 is held by a live host"),
        "{stderr}"
    );
    assert_eq!(host.get("/hello").unwrap().0, 200);
}

/// A manifest of one hello app in `namespace`.
fn in_namespace(name: &str, namespace: &str, component: &str) -> String {
    hello_manifest(name, component, 1, "").replacen(
        &format!("{{name: {name}}}"),
        &format!("{{name: {name}, namespace: {namespace}}}"),
        1,
    )
}

#[test]
fn roles_decide_what_each_user_may_do_and_refusals_exit_77() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("1s");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&in_namespace("web", "team-a", &hello));
    lattice.apply(&in_namespace("shop", "team-b", &hello));
    let viewer = lattice.mint(
        &["user", "viewer-a", "--role", "viewer", "-n", "team-a"],
        "viewer-a",
    );
    let editor = lattice.mint(
        &["user", "editor-b", "--role", "editor", "-n", "team-b"],
        "editor-b",
    );
    let as_user = |creds: &Path, args: &[&str]| {
        let output = lattice
            .command()
            .env("SHOAL_NATS_CREDS", creds)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    // A viewer sees its namespace only, and may not change it.
    let (code, stdout, stderr) = as_user(&viewer, &["get", "apps", "-o", "json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let apps: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"]);
    let manifest = lattice.shoal.home.path().join("web.yaml");
    std::fs::write(
        &manifest,
        in_namespace("web", "team-a", &hello).replace("replicas: 1", "replicas: 3"),
    )
    .unwrap();
    let (code, _, stderr) = as_user(&viewer, &["apply", "-f", manifest.to_str().unwrap()]);
    assert_eq!(code, Some(77), "{stderr}");
    assert!(
        stderr.contains("forbidden: viewer-a (viewer in team-a) may not apply in team-a"),
        "{stderr}"
    );
    for refused in [
        &["logs", "shop", "-n", "team-b"][..],
        &["events", "--app", "shop", "-n", "team-b"],
        &["events", "-n", "team-b"],
        &["describe", "app", "shop", "-n", "team-b"],
    ] {
        let (code, _, stderr) = as_user(&viewer, refused);
        assert_eq!(code, Some(77), "{refused:?}: {stderr}");
    }
    let (code, _, stderr) = as_user(&viewer, &["events", "-n", "team-a"]);
    assert_eq!(code, Some(0), "{stderr}");

    // An editor edits its namespace, not another.
    let (code, _, stderr) = as_user(&editor, &["delete", "app", "web", "-n", "team-a"]);
    assert_eq!(code, Some(77), "{stderr}");
    assert!(
        stderr.contains("forbidden: editor-b (editor in team-b) may not delete in team-a"),
        "{stderr}"
    );
    let (code, _, stderr) = as_user(
        &editor,
        &["scale", "app", "shop", "-n", "team-b", "--replicas", "2"],
    );
    assert_eq!(code, Some(0), "{stderr}");

    // Nothing the refused requests asked for happened; the admin's work.
    let apps: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "apps", "-o", "json"])).unwrap();
    let replicas = |name: &str| {
        apps.as_array()
            .unwrap()
            .iter()
            .find(|app| app["name"] == name)
            .map(|app| app["spec"]["replicas"].as_u64().unwrap())
    };
    assert_eq!(replicas("web"), Some(1));
    assert_eq!(replicas("shop"), Some(2));
    lattice.ok(&["delete", "app", "web", "-n", "team-a"]);

    // The server validates what it is sent, whoever sends it: a bare request past the
    // CLI's checks gets the field path.
    let admin = lattice.auth.as_ref().unwrap().path().join("admin.creds");
    let raw = Raw::connect(&lattice.nats.url(), &admin, "_INBOX.user.admin");
    let digest = format!("sha256:{}", "a".repeat(64));
    let request = serde_json::json!({
        "verb": "apply",
        "apps": [{"namespace": "team-a", "name": "bad", "digest": digest,
                  "spec": {"component": "r/x:1", "replicas": 1, "limits": {"timeout": "99999h"}}}]
    });
    let answer = raw.runtime.block_on(async {
        raw.client
            .request(
                format!("shoal.{}.v1.api.admin._lattice.admin.apply", lattice.name),
                request.to_string().into(),
            )
            .await
            .unwrap()
    });
    let answer: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert_eq!(answer["error"]["code"], "invalid", "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("apps[0].spec.limits.timeout: must be at most 1h"),
        "{answer}"
    );

    // Without a credential nothing is possible.
    let (code, _, stderr) = {
        let output = lattice
            .command()
            .env_remove("SHOAL_NATS_CREDS")
            .args(["get", "apps"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("refused this client (authorization violation)"),
        "{stderr}"
    );
}

#[test]
fn a_revoked_credential_stops_working_within_seconds_while_the_others_go_on() {
    let (lattice, _scheduler, host) = secure_lattice_with_hello();
    let carol = lattice.mint(&["user", "carol", "--role", "viewer"], "carol");
    let as_carol = || {
        lattice
            .command()
            .env("SHOAL_NATS_CREDS", &carol)
            .args(["get", "apps"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(as_carol());
    // A connection that stays open is closed by the server.
    let raw = Raw::connect(&lattice.nats.url(), &carol, "_INBOX.user.carol");

    let (ok, _, stderr) = lattice.auth(&["revoke", "carol"]);
    assert!(ok, "{stderr}");
    let revoked = Instant::now();
    eventually(Duration::from_secs(5), "carol to be refused", || {
        (!as_carol()).then_some(())
    });
    eventually(
        Duration::from_secs(5),
        "carol's open connection to close",
        || {
            raw.errors
                .lock()
                .unwrap()
                .iter()
                .any(|event| {
                    event.to_lowercase().contains("revoked") || event.contains("disconnected")
                })
                .then_some(())
        },
    );
    let took = revoked.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("revocation took effect in {took:?}");

    // Everyone else goes on: the admin, the scheduler, the host and its app.
    lattice.ok(&["scale", "app", "hello", "--replicas", "2"]);
    lattice.wait_ready("hello", 2, PATIENCE);
    assert_eq!(host.get("/hello").unwrap().0, 200);
    let listed = lattice.auth(&["list"]).1;
    assert!(
        listed
            .lines()
            .any(|line| line.contains("carol") && line.contains("revoked")),
        "{listed}"
    );
}

#[test]
fn namespaces_are_a_boundary_for_service_discovery_and_route_hosts() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let frontend = lattice.push_guest("frontend", "1.0");
    let greeter = lattice.push_guest("greeter", "1.0");
    let app = |name: &str, namespace: &str, component: &str, extra: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  component: {component}\n  replicas: 1\n{extra}"
        )
    };
    lattice.apply(&app(
        "frontend",
        "team-a",
        &frontend,
        "  routes: [{path: /two-tier}]\n",
    ));
    lattice.apply(&app("greeter", "team-b", &greeter, ""));
    lattice.apply(&app("greeter", "team-a", &greeter, ""));
    lattice.wait_ready("frontend", 1, PATIENCE);
    lattice.wait_ready("greeter", 2, PATIENCE);
    let call = |url: &str| {
        host.get(&format!("/two-tier/external?url={url}"))
            .unwrap_or_default()
    };

    // Its own namespace's greeter, by short name or full name.
    eventually(PATIENCE, "the frontend to reach its own greeter", || {
        (call("http://greeter/").0 == 200).then_some(())
    });
    assert_eq!(call("http://greeter.team-a/").0, 200);
    // Another namespace's app is not reachable until it exposes itself to team-a.
    let (status, body) = call("http://greeter.team-b/");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    lattice.apply(&app(
        "greeter",
        "team-b",
        &greeter,
        "  expose: {namespaces: [team-a]}\n",
    ));
    eventually(
        PATIENCE,
        "team-b's greeter to be reachable from team-a",
        || (call("http://greeter.team-b/").0 == 200).then_some(()),
    );

    // A route host name belongs to the namespace that claimed it.
    lattice.apply(&app(
        "shop",
        "team-c",
        &greeter,
        "  routes: [{host: shop.example, path: /}]\n",
    ));
    let (ok, _, stderr) = lattice.try_apply(&app(
        "fake-shop",
        "team-d",
        &greeter,
        "  routes: [{host: shop.example, path: /checkout}]\n",
    ));
    assert!(!ok);
    assert!(
        stderr.contains("shop.example belongs to namespace team-c (app team-c/shop)"),
        "{stderr}"
    );
}

#[test]
fn an_admin_drains_a_host_without_a_failed_request_and_others_may_not() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("1s");
    let hosts: Vec<_> = ["h1", "h2"]
        .iter()
        .map(|id| lattice.secure_host(id))
        .collect();
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 2, ""));
    lattice.wait_ready("hello", 2, PATIENCE);
    assert_eq!(lattice.ready_by_host("hello").get("h1"), Some(&1));

    // Only a lattice-wide admin may.
    let editor = lattice.mint(&["user", "ed", "--role", "editor"], "ed");
    let output = lattice
        .command()
        .env("SHOAL_NATS_CREDS", &editor)
        .args(["drain", "h1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(77));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("forbidden: ed (editor of the lattice) may not drain in the lattice")
    );

    // Requests through both hosts while h1 drains: none fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = hosts
        .iter()
        .map(|host| format!("http://{}", host.address()))
        .collect();
    let load = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let agent = support::lattice::agent();
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for url in &urls {
                    match agent.get(&format!("{url}/hello")).call() {
                        Ok(response) if response.status() == 200 => ok += 1,
                        Ok(response) => failed.push(response.status().as_u16()),
                        Err(_) => failed.push(0),
                    }
                }
            }
            (ok, failed)
        })
    };
    let drained = lattice.ok(&["drain", "h1", "--timeout", "60s"]);
    assert!(drained.contains("host h1 drained"), "{drained}");
    lattice.wait_ready("hello", 2, PATIENCE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed of {}: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 0);
    eprintln!("{ok} requests while h1 drained, none failed");
    assert_eq!(lattice.ready_by_host("hello").get("h2"), Some(&2));
    let hosts: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "hosts", "-o", "json"])).unwrap();
    let h1 = hosts
        .as_array()
        .and_then(|hosts| hosts.iter().find(|host| host["id"] == "h1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(h1["control"]["draining"], true, "{h1}");

    // Uncordoned, it takes replicas again.
    lattice.ok(&["uncordon", "h1"]);
    lattice.ok(&["scale", "app", "hello", "--replicas", "4"]);
    lattice.wait_ready("hello", 4, PATIENCE);
    assert!(
        lattice
            .ready_by_host("hello")
            .get("h1")
            .is_some_and(|count| *count > 0)
    );
}

/// Whether the lattice's events report `host` lost.
fn reported_lost(lattice: &Lattice, host: &str) -> bool {
    lattice.events(&["--since", "1h"]).iter().any(|event| {
        event["reason"] == "HostLost" && event["source"] == "scheduler s1" && {
            let message = event["message"].as_str().unwrap_or_default();
            message
                .strip_prefix(&format!("host {host}"))
                .is_some_and(|rest| rest.starts_with([' ', '\'']))
        }
    })
}

#[test]
fn a_host_whose_process_dies_is_replaced_within_the_grace_and_a_frozen_one_is_not() {
    let lattice = Lattice::start_secure();
    let presence = lattice.auth_dir().join("presence.creds");
    // By heartbeats alone a host would be lost after a minute: only its connection closing
    // can move its replica in time.
    let _scheduler = lattice.secure_scheduler_with(
        "60s",
        &[
            "--presence-creds",
            presence.to_str().unwrap(),
            "--disconnect-grace",
            "1s",
        ],
    );
    // The presence credential hears connections come and go, and does nothing else: not
    // the system account's updates, not any other subject.
    let raw = Raw::connect(&lattice.nats.url(), &presence, "_INBOX.presence");
    for subject in ["$SYS.REQ.CLAIMS.UPDATE", "$SYS.REQ.SERVER.PING"] {
        raw.publish(subject);
        raw.wait_refused("Publish", subject);
    }
    raw.subscribe("$SYS.>");
    raw.wait_refused("Subscription", "$SYS.>");
    drop(raw);
    let mut hosts: Vec<_> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|id| lattice.secure_host(id))
        .collect();
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, ""));
    let placed = lattice.wait_ready("hello", 1, PATIENCE);
    let first = placed.keys().next().unwrap().clone();
    let killed = Instant::now();
    hosts
        .iter_mut()
        .find(|host| host.id == first)
        .unwrap()
        .kill();
    let moved = eventually(PATIENCE, "the replica to be ready on another host", || {
        lattice
            .replicas()
            .into_iter()
            .find(|(app, host, phase)| app == "hello" && *host != first && phase == "ready")
            .map(|(_, host, _)| host)
    });
    let took = killed.elapsed();
    eprintln!("kill -9 of {first}: replica ready on {moved} after {took:?}");
    assert!(
        took < Duration::from_secs(30),
        "replaced after {took:?}, as by heartbeats"
    );
    assert!(reported_lost(&lattice, &first));

    // A second connection presenting that host's own credential (a second process started
    // by mistake, a stolen copy) comes and goes: it is not the host's connection.
    let copy = lattice.auth_dir().join(format!("{moved}.creds"));
    drop(Raw::connect(
        &lattice.nats.url(),
        &copy,
        &format!("_INBOX.host.{moved}"),
    ));
    // A frozen host keeps its connection open: nats-server says nothing, and only its
    // heartbeats (a minute here) can tell. The last host dying meanwhile is reported lost
    // by its connection, while the frozen one, frozen as long, is not.
    let frozen = hosts.iter().find(|host| host.id == moved).unwrap();
    frozen.signal(support::Signal::Stop);
    let last = hosts
        .iter_mut()
        .find(|host| host.id != first && host.id != moved)
        .unwrap();
    let last_id = last.id.clone();
    last.kill();
    eventually(PATIENCE, "the dead host to be reported lost", || {
        reported_lost(&lattice, &last_id).then_some(())
    });
    assert!(!reported_lost(&lattice, &moved), "the frozen host was lost");
    let frozen = hosts.iter().find(|host| host.id == moved).unwrap();
    frozen.signal(support::Signal::Cont);
}

#[test]
fn shoal_auth_presence_rotates_expires_and_withdraws_the_presence_credential() {
    let lattice = Lattice::start_secure();
    let url = lattice.nats.url();
    let file = lattice.auth_dir().join("presence.creds");
    let kept = tempfile::tempdir().unwrap();
    let keep = |name: &str| {
        let copy = kept.path().join(name);
        std::fs::copy(&file, &copy).unwrap();
        copy
    };
    let admitted = |creds: &std::path::Path| Raw::try_connect(&url, Some(creds)).is_ok();
    let first = keep("first.creds");
    assert!(admitted(&first));

    // A new one, for three seconds: the first is withdrawn at once.
    let (ok, stdout, stderr) = lattice.auth(&["presence", "--expires", "3s"]);
    assert!(ok && stdout.contains("withdrawn"), "{stdout}{stderr}");
    eventually(
        PATIENCE,
        "the first presence credential to be refused",
        || (!admitted(&first)).then_some(()),
    );
    let short = keep("short.creds");
    assert!(admitted(&short));
    eventually(PATIENCE, "the short-lived credential to expire", || {
        (!admitted(&short)).then_some(())
    });

    // Another without expiry, then every one withdrawn.
    assert!(lattice.auth(&["presence"]).0);
    let last = keep("last.creds");
    assert!(admitted(&last));
    let (ok, stdout, stderr) = lattice.auth(&["presence", "--revoke"]);
    assert!(ok, "{stdout}{stderr}");
    eventually(
        PATIENCE,
        "the last presence credential to be refused",
        || (!admitted(&last)).then_some(()),
    );
    let (_, listed, _) = lattice.auth(&["list"]);
    let presence: Vec<&str> = listed
        .lines()
        .filter(|line| line.trim_start().starts_with("presence"))
        .collect();
    assert_eq!(presence.len(), 3, "{listed}");
    assert!(
        presence.iter().all(|line| line.contains("revoked")),
        "{listed}"
    );
    // A scheduler given a withdrawn one says so and leads anyway, by heartbeats.
    let scheduler =
        lattice.secure_scheduler_with("60s", &["--presence-creds", last.to_str().unwrap()]);
    lattice.wait_acting("s1", PATIENCE);
    assert!(
        scheduler.log().contains("refused the presence credential"),
        "{}",
        scheduler.log()
    );
}
