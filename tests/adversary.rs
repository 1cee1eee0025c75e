//! An attacker holding one credential of a secure lattice, with a bare NATS client: every
//! path by which that credential could make another process write for it, or feed the
//! control plane facts it may not state. Each attack is refused by nats-server or dropped
//! by Shoal, and after each the lattice still converges (a scale is carried out within
//! seconds). Real nats-server in operator mode, registry, scheduler and hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use support::eventually;
use support::lattice::{Lattice, Process, hello_manifest};
use support::raw::Raw;

const PATIENCE: Duration = Duration::from_secs(30);
/// How soon a scale must be carried out after an attack: the control plane was not stopped.
const CONVERGES_WITHIN: Duration = Duration::from_secs(5);

fn kv(lattice: &Lattice, bucket: &str, key: &str) -> String {
    format!("$KV.shoal-{}-v1-{bucket}.{key}", lattice.name)
}

/// `subject` (a JetStream API call or key write) as a host or a person sends it: their
/// account has no JetStream and imports the state account's under a prefix.
fn as_client(subject: &str) -> String {
    shoal_lattice::auth::client_subject(subject)
}

/// A secure lattice with one scheduler (1 s lease), host h1 and app `hello` (1 replica).
fn secure_lattice() -> (Lattice, Process, Process) {
    secure_lattice_with("")
}

/// [`secure_lattice`] with `extra` in `hello`'s spec.
fn secure_lattice_with(extra: &str) -> (Lattice, Process, Process) {
    let lattice = Lattice::start_secure();
    let scheduler = lattice.secure_scheduler("60s");
    let host = lattice.secure_host("h1");
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, extra));
    lattice.wait_ready("hello", 1, PATIENCE);
    (lattice, scheduler, host)
}

/// Scales `hello` to `replicas` and requires it ready within [`CONVERGES_WITHIN`]: the
/// control plane still acts.
fn still_converges(lattice: &Lattice, replicas: u32) {
    let asked = Instant::now();
    lattice.ok(&["scale", "app", "hello", "--replicas", &replicas.to_string()]);
    lattice.wait_ready("hello", replicas as usize, CONVERGES_WITHIN);
    eprintln!("scaled to {replicas} in {:?}", asked.elapsed());
}

/// A bare client with the scheduler's credential (`s1`): the one that may write every
/// bucket, so the worst it can write there is what a stolen one could.
fn as_scheduler(lattice: &Lattice) -> Raw {
    let creds = lattice.auth_dir().join("s1.creds");
    Raw::connect(&lattice.nats.url(), &creds, "_INBOX.scheduler.s1")
}

/// Waits until `scheduler` has read the lease and found it unreadable.
fn wait_lease_unreadable(scheduler: &Process) {
    eventually(
        PATIENCE,
        "the scheduler to find the lease unreadable",
        || {
            scheduler
                .log()
                .contains("the scheduler lease record is unreadable")
                .then_some(())
        },
    );
}

/// `key` of `bucket`, read with the scheduler's credential (the only one that reads every
/// bucket).
fn kv_get(lattice: &Lattice, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let raw = as_scheduler(lattice);
    raw.kv_get(&format!("shoal-{}-v1-{bucket}", lattice.name), key)
}

/// A bare client with the credential of a viewer of namespace `team-a`.
fn viewer_of_team_a(lattice: &Lattice) -> Raw {
    let viewer = lattice.mint(
        &["user", "viewer-a", "--role", "viewer", "-n", "team-a"],
        "viewer-a",
    );
    Raw::connect(&lattice.nats.url(), &viewer, "_INBOX.user.viewer-a")
}

/// Whether the apps bucket has `key`.
fn app_record_exists(lattice: &Lattice, key: &str) -> bool {
    kv_get(lattice, "apps", key).is_some()
}

#[test]
fn a_host_credential_cannot_answer_its_own_request_into_a_record() {
    let (lattice, _scheduler, _host) = secure_lattice();
    let name = lattice.name.clone();
    let creds = lattice.mint(&["host", "h9"], "h9");
    let raw = Raw::connect(&lattice.nats.url(), &creds, "_INBOX.host.h9");
    let own = format!("shoal.{name}.v1.http.h9.default.x");
    // Every reply subject an attacker would aim at: an app record, the lease, the trust
    // policy, a stream purge, another identity's inbox.
    let targets = [
        kv(&lattice, "apps", "default.x"),
        kv(&lattice, "leases", "scheduler"),
        kv(&lattice, "trust", "lattice"),
        format!("$JS.API.STREAM.PURGE.KV_shoal-{name}-v1-apps"),
        "_INBOX.user.admin.stolen".to_owned(),
    ];
    for target in &targets {
        raw.runtime.block_on(async {
            let mut requests = raw.client.subscribe(own.clone()).await.unwrap();
            raw.client
                .publish_with_reply(own.clone(), target.clone(), "{}".into())
                .await
                .unwrap();
            let request = tokio::time::timeout(Duration::from_secs(5), requests.next())
                .await
                .unwrap()
                .unwrap();
            // Answering it is a publish to the reply subject: no `responses` permission
            // lets that through.
            let reply = request.reply.unwrap();
            raw.client
                .publish(reply, r#"{"spec":{"component":"evil"}}"#.into())
                .await
                .unwrap();
            raw.client.flush().await.unwrap();
        });
        raw.wait_refused("Publish", target);
    }
    assert!(!app_record_exists(&lattice, "default.x"));
    still_converges(&lattice, 2);
}

#[test]
fn an_honest_host_answers_no_reply_subject_but_a_host_s_inbox() {
    let (lattice, _scheduler, host) = secure_lattice();
    let name = lattice.name.clone();
    let creds = lattice.mint(&["host", "h9"], "h9");
    let raw = Raw::connect(&lattice.nats.url(), &creds, "_INBOX.host.h9");
    let subject = format!("shoal.{name}.v1.http.h1.default.hello");
    for target in [
        kv(&lattice, "apps", "default.y"),
        kv(&lattice, "leases", "scheduler"),
        format!("$JS.API.STREAM.PURGE.KV_shoal-{name}-v1-apps"),
    ] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Shoal-Method", "GET");
        headers.insert("Shoal-Uri", "/hello");
        raw.runtime.block_on(async {
            raw.client
                .publish_with_reply_and_headers(subject.clone(), target, headers, "".into())
                .await
                .unwrap();
            raw.client.flush().await.unwrap();
        });
    }
    host.wait_log(
        PATIENCE,
        "dropped a forwarded request whose reply subject is not a host's inbox",
    );
    assert!(!app_record_exists(&lattice, "default.y"));
    // A request with its own inbox is answered (the check is not a refusal of everything).
    let answer = raw.runtime.block_on(async {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Shoal-Method", "GET");
        headers.insert("Shoal-Uri", "/hello");
        tokio::time::timeout(
            Duration::from_secs(10),
            raw.client
                .request_with_headers(subject.clone(), headers, "".into()),
        )
        .await
        .unwrap()
        .unwrap()
    });
    assert!(
        answer
            .headers
            .as_ref()
            .is_some_and(|headers| headers.get("Shoal-Status").is_some()),
        "no answer to a request with the requester's own inbox"
    );
    assert_eq!(host.get("/hello").unwrap().0, 200);
    still_converges(&lattice, 2);
}

#[test]
fn a_namespace_viewer_cannot_aim_the_control_api_s_answer_at_the_lease() {
    let (lattice, _scheduler, _host) = secure_lattice();
    let name = lattice.name.clone();
    let raw = viewer_of_team_a(&lattice);
    let request = format!("shoal.{name}.v1.api.viewer.team-a.viewer-a.get");
    for target in [
        kv(&lattice, "leases", "scheduler"),
        kv(&lattice, "apps", "team-a.z"),
        "_INBOX.user.admin.stolen".to_owned(),
        "_INBOX.host.h1.stolen".to_owned(),
    ] {
        raw.publish_with_reply(&request, &target, r#"{"verb":"getHosts"}"#);
    }
    // The lease is the scheduler's still, and the scheduler still acts.
    let lease = kv_get(&lattice, "leases", "scheduler").unwrap();
    let lease: serde_json::Value = serde_json::from_slice(&lease).unwrap();
    assert_eq!(lease["holder"], "s1", "{lease}");
    assert!(!app_record_exists(&lattice, "team-a.z"));
    still_converges(&lattice, 3);
}

#[test]
fn an_unreadable_lease_delays_leadership_by_one_lease_period_at_most() {
    let (lattice, scheduler, _host) = secure_lattice();
    // The scheduler's own credential may write the lease: the worst it can write there.
    let raw = as_scheduler(&lattice);
    raw.store(&kv(&lattice, "leases", "scheduler"), "not a lease {")
        .unwrap();
    // Once the scheduler has read it...
    wait_lease_unreadable(&scheduler);
    // Lease 1 s: replaced within a period or two, then the scale is carried out.
    let asked = Instant::now();
    lattice.ok(&["scale", "app", "hello", "--replicas", "2"]);
    lattice.wait_ready("hello", 2, CONVERGES_WITHIN);
    eprintln!("scaled past an unreadable lease in {:?}", asked.elapsed());
}

/// A host record for `id` as a host writes it, with `load`.
fn host_record(id: &str, load: serde_json::Value) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    serde_json::json!({
        "id": id, "labels": {"arch": "x86_64", "os": "linux"},
        "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 10},
        "version": "0.1.0", "startedAt": now, "heartbeatAt": now, "load": load
    })
    .to_string()
}

#[test]
fn a_host_s_word_about_replicas_and_load_it_does_not_run_is_not_heard() {
    // Autoscaled: one replica for up to 10 requests in flight, at most 3.
    let (lattice, _scheduler, _host) =
        secure_lattice_with("  autoscale: {min: 1, max: 3, targetConcurrency: 10, window: 6s}\n");
    let before = lattice.replica_ids("hello");
    let creds = lattice.mint(&["host", "h9"], "h9");
    let raw = Raw::connect(&lattice.nats.url(), &creds, "_INBOX.host.h9");

    // A flood of load for an app it runs none of.
    raw.store(
        &as_client(&kv(&lattice, "hosts", "h9")),
        &host_record("h9", serde_json::json!({"default/hello": 1_000_000_000u64})),
    )
    .unwrap();
    // h1's replica marked failed, twice: at its own key naming h1, and naming itself.
    let status = |host: &str| {
        serde_json::json!({
            "replica": before[0], "app": "hello", "namespace": "default", "revision": 2,
            "host": host, "phase": "failed", "reason": "Forged", "observedGeneration": 99,
            "since": 1
        })
        .to_string()
    };
    let own_status = as_client(&kv(
        &lattice,
        "status",
        &format!("replicas.h9.{}", before[0]),
    ));
    raw.store(&own_status, &status("h1")).unwrap();
    raw.store(&own_status, &status("h9")).unwrap();

    // For several scheduler passes: the app stays at one replica, the same one, ready.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(4) {
        let app = lattice.app("hello");
        assert_eq!(app["spec"]["replicas"], 1, "scaled on forged load: {app}");
        assert_eq!(lattice.replica_ids("hello"), before);
        std::thread::sleep(Duration::from_millis(250));
    }
    let replicas = lattice.replicas();
    assert!(
        replicas.iter().all(|(_, _, phase)| phase == "ready"),
        "{replicas:?}"
    );
}

#[test]
fn two_namespaces_claiming_one_route_host_at_once_get_it_once() {
    let (lattice, _scheduler, _host) = secure_lattice();
    let hello = lattice.push_hello("1.0");
    let app = |namespace: &str, host: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: shop, namespace: {namespace}}}\nspec:\n  component: {hello}\n  replicas: 0\n  routes: [{{host: {host}, path: /}}]\n"
        )
    };
    for round in 0..5 {
        let host = format!("shop-{round}.example");
        let applies: Vec<_> = ["team-a", "team-b"]
            .into_iter()
            .map(|namespace| {
                let manifest = app(namespace, &host);
                let file = lattice
                    .shoal
                    .home
                    .path()
                    .join(format!("{namespace}-{round}.yaml"));
                std::fs::write(&file, manifest).unwrap();
                lattice
                    .command()
                    .args(["apply", "-f"])
                    .arg(&file)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let succeeded = applies
            .into_iter()
            .map(|mut child| child.wait().unwrap().success())
            .filter(|ok| *ok)
            .count();
        assert_eq!(
            succeeded, 1,
            "round {round}: {succeeded} namespaces got {host}"
        );
    }
}

#[test]
fn a_host_s_watch_cannot_deliver_its_records_into_another_bucket() {
    let (lattice, _scheduler, _host) = secure_lattice();
    let name = lattice.name.clone();
    // h1's own credential: it may watch its own assignments, of which it has one.
    let creds = lattice.auth_dir().join("h1.creds");
    let raw = Raw::connect(&lattice.nats.url(), &creds, "_INBOX.host.h1");
    let stream = format!("KV_shoal-{name}-v1-assignments");
    let target = kv(&lattice, "apps", "default.pwned");
    let created = raw.runtime.block_on(async {
        let context = async_nats::jetstream::with_prefix(
            raw.client.clone(),
            shoal_lattice::auth::STATE_API_PREFIX,
        );
        let stream = context.get_stream_no_info(&stream).await.unwrap();
        stream
            .create_consumer(async_nats::jetstream::consumer::push::Config {
                name: Some("pwn".to_owned()),
                deliver_subject: target.clone(),
                filter_subject: format!("$KV.shoal-{name}-v1-assignments.h1.>"),
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    });
    eprintln!("push consumer delivering to {target}: {created:?}");
    assert!(
        created.is_ok(),
        "the host may create this consumer: {created:?}"
    );
    // Watched for a while: a delivery would land within milliseconds.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert!(
            !app_record_exists(&lattice, "default.pwned"),
            "a host's watch delivered its assignment into the apps bucket"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    still_converges(&lattice, 2);
}

#[test]
fn a_control_plane_that_stopped_acting_is_reported_not_hidden() {
    let (lattice, mut scheduler, _host) = secure_lattice();
    // Healthy: the leader and a recent pass, nothing unreadable.
    let status = eventually(PATIENCE, "shoal status to name the leader", || {
        let (ok, stdout, _) = lattice.shoal(&["status"]);
        (ok && stdout.contains("leader      s1")).then_some(stdout)
    });
    assert!(status.contains("unreadable  none"), "{status}");
    let (_, _, stderr) = lattice.shoal(&["get", "hosts"]);
    assert!(!stderr.contains("warning"), "{stderr}");

    // A record it cannot read is listed (written with the scheduler's own credential).
    let raw = as_scheduler(&lattice);
    raw.store(&kv(&lattice, "apps", "default.garbled"), "{not json")
        .unwrap();
    eventually(PATIENCE, "shoal status to list the unreadable app", || {
        let (_, stdout, _) = lattice.shoal(&["status", "-o", "json"]);
        stdout.contains("apps/default.garbled").then_some(())
    });

    // A standby scheduler answers the control API but never takes the lease in this test
    // (its own lease is an hour): the leader dies, and every screen says that nobody acts
    // once the leader's lease (1 s) has long passed.
    let standby_creds = lattice.mint(&["scheduler", "s2"], "s2");
    let _standby = lattice.spawn(
        &[
            "scheduler",
            "--id",
            "s2",
            "--lease",
            "1h",
            "--nats-creds",
            standby_creds.to_str().unwrap(),
        ],
        "s2",
        false,
    );
    scheduler.kill();
    let stderr = eventually(PATIENCE, "shoal status to warn", || {
        let output = lattice.command().args(["status"]).output().unwrap();
        (output.status.code() == Some(1))
            .then(|| String::from_utf8_lossy(&output.stderr).into_owned())
    });
    assert!(stderr.contains("no scheduler has acted for"), "{stderr}");
    let (ok, _, stderr) = lattice.shoal(&["get", "hosts"]);
    assert!(ok);
    assert!(
        stderr.contains("warning: no scheduler has acted for"),
        "{stderr}"
    );
}

#[test]
fn an_editor_s_allowlist_alone_does_not_open_a_private_address() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("60s");
    let host = lattice.secure_host("h1");
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    // A server on this machine's loopback: what a guest must not reach on an editor's
    // word alone (the cloud metadata address and the LAN are the same case).
    let port = support::upstream();
    let target = format!("http://127.0.0.1:{port}");
    let editor = lattice.mint(&["user", "ed", "--role", "editor", "-n", "default"], "ed");
    let manifest = lattice.shoal.home.path().join("fetcher.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: fetcher}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  routes: [{{path: /fetch}}]\n  allowedOutbound: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let as_editor = |args: &[&str]| {
        let output = lattice
            .command()
            .env("SHOAL_NATS_CREDS", &editor)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, stderr) = as_editor(&["apply", "-f", manifest.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    lattice.wait_ready("fetcher", 1, PATIENCE);
    let fetch = || host.get(&format!("/fetch?url={target}/")).unwrap();
    let (status, body) = fetch();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("DestinationIpProhibited"), "{body}");

    // The editor may not open it; a lattice admin may.
    let (code, stderr) = as_editor(&["egress", "allow", "127.0.0.1/32"]);
    assert_eq!(code, Some(77), "{stderr}");
    let allowed = lattice.ok(&["egress", "allow", "127.0.0.1/32"]);
    assert!(allowed.contains("127.0.0.1/32"), "{allowed}");
    assert!(lattice.ok(&["egress", "list"]).contains("127.0.0.1/32"));
    // The policy holds for replicas that start after it: one more starts, and reaches it.
    lattice.replace_replica("fetcher", PATIENCE);
    let (status, body) = eventually(PATIENCE, "the new replica to reach the server", || {
        Some(fetch()).filter(|(status, _)| *status == 200)
    });
    assert_eq!(status, 200, "{body}");
    // Another private address the allowlist might name stays closed: only the range opened.
    let (code, stderr) = as_editor(&["egress", "deny", "127.0.0.1/32"]);
    assert_eq!(code, Some(77), "{stderr}");
    let (ok, _, stderr) = lattice.shoal(&["egress", "allow", "not-a-range"]);
    assert!(
        !ok && stderr.contains("is not an address range"),
        "{stderr}"
    );
}

#[test]
fn a_host_is_placed_by_what_its_credential_grants_not_by_what_it_claims() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("60s");
    // h1's credential grants zone=a and two replicas; h2's grants nothing, and h2 claims
    // zone=a and room for a hundred.
    let granted = lattice.mint(
        &["host", "h1", "--label", "zone=a", "--max-replicas", "2"],
        "h1",
    );
    let _h1 = lattice.host_with(
        "h1",
        &[
            "--nats-creds",
            granted.to_str().unwrap(),
            "--label",
            "zone=a",
        ],
    );
    let plain = lattice.mint(&["host", "h2"], "h2");
    let h2 = lattice.host_with(
        "h2",
        &[
            "--nats-creds",
            plain.to_str().unwrap(),
            "--label",
            "zone=a",
            "--max-replicas",
            "100",
        ],
    );
    h2.wait_log(
        PATIENCE,
        "warning: the label zone=a is not granted by this host's credential",
    );
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest(
        "zoned",
        &hello,
        3,
        "  placement: {requires: {zone: a}}\n",
    ));
    eventually(PATIENCE, "two replicas on h1, as its grant allows", || {
        (lattice.ready_by_host("zoned").get("h1") == Some(&2)).then_some(())
    });
    // For several passes: the third is placed nowhere, h2's claims notwithstanding.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let placed = lattice.ready_by_host("zoned");
        assert_eq!(placed.get("h2"), None, "{placed:?}");
        assert!(
            placed.get("h1").is_some_and(|count| *count <= 2),
            "{placed:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn no_user_or_host_credential_reaches_control_state_or_the_system_account() {
    let (lattice, _scheduler, _host) = secure_lattice();
    let name = lattice.name.clone();
    let stream = |bucket: &str| format!("KV_shoal-{name}-v1-{bucket}");
    let credentials = [
        (
            lattice.mint(
                &["user", "viewer-a", "--role", "viewer", "-n", "team-a"],
                "viewer-a",
            ),
            "_INBOX.user.viewer-a",
        ),
        (
            lattice.mint(
                &["user", "editor-a", "--role", "editor", "-n", "team-a"],
                "editor-a",
            ),
            "_INBOX.user.editor-a",
        ),
        (lattice.auth_dir().join("admin.creds"), "_INBOX.user.admin"),
        (lattice.mint(&["host", "h9"], "h9"), "_INBOX.host.h9"),
    ];
    let publish = [
        kv(&lattice, "leases", "scheduler"),
        kv(&lattice, "apps", "team-a.x"),
        kv(&lattice, "trust", "lattice"),
        kv(&lattice, "status", "egress"),
        kv(&lattice, "status", "controlplane"),
        kv(&lattice, "status", "routehosts.shop.example"),
        format!("$JS.API.STREAM.PURGE.{}", stream("apps")),
        format!("$JS.API.STREAM.DELETE.{}", stream("assignments")),
        format!("$JS.API.STREAM.UPDATE.{}", stream("leases")),
        format!("$JS.API.CONSUMER.CREATE.{}", stream("apps")),
        format!("$JS.API.STREAM.MSG.GET.{}", stream("secrets")),
        format!(
            "$JS.API.DIRECT.GET.{}.$KV.shoal-{name}-v1-secrets.team-a.db",
            stream("secrets")
        ),
        "$SYS.REQ.SERVER.PING.CONNZ".to_owned(),
        "$SYS.REQ.ACCOUNT.PING.STATZ".to_owned(),
    ];
    let subscribe = [
        "_INBOX.>".to_owned(),
        format!("shoal.{name}.v1.api.>"),
        "$SYS.>".to_owned(),
        format!("shoal.{name}.v1.wake.>"),
    ];
    // Each under the state account's own name and as a client sends it.
    let publish: Vec<String> = publish
        .iter()
        .flat_map(|subject| [subject.clone(), as_client(subject)])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for (creds, inbox) in &credentials {
        let raw = Raw::connect(&lattice.nats.url(), creds, inbox);
        for subject in &publish {
            raw.publish(subject);
            raw.wait_refused("Publish", subject);
        }
        for subject in &subscribe {
            raw.subscribe(subject);
            raw.wait_refused("Subscription", subject);
        }
    }
    still_converges(&lattice, 2);
}

#[test]
fn jetstream_answers_write_nothing_for_a_host_or_a_viewer() {
    let (lattice, scheduler, _host) = secure_lattice();
    let name = lattice.name.clone();
    let hosts = format!("shoal-{name}-v1-hosts");
    let host = Raw::connect(
        &lattice.nats.url(),
        &lattice.mint(&["host", "h9"], "h9"),
        "_INBOX.host.h9",
    );
    let viewer = viewer_of_team_a(&lattice);
    // The host writes the one record it may, with the bytes it wants elsewhere; nats-server
    // answers a direct get of it (and a stream's info, and a publish ack) on whatever reply
    // subject the request names, and a stream stores what arrives on its subjects. With the
    // lattice's state in an account of its own, the answer comes back into the clients'
    // account, where no stream is.
    let forged = r#"{"spec":{"component":"evil"}}"#;
    host.store(&as_client(&format!("$KV.{hosts}.h9")), forged)
        .unwrap();
    let targets = [
        ("apps", "default.evil"),
        ("trust", "lattice"),
        ("status", "egress"),
        ("leases", "scheduler"),
        ("hosts", "h1"),
    ];
    let lease_before = kv_get(&lattice, "leases", "scheduler");
    for (bucket, key) in targets {
        let target = kv(&lattice, bucket, key);
        // Aimed at the record's name in the state account and at its client form.
        for reply in [target.clone(), as_client(&target)] {
            host.publish_with_reply(
                &as_client(&format!("$JS.API.DIRECT.GET.KV_{hosts}.$KV.{hosts}.h9")),
                &reply,
                "",
            );
            host.publish_with_reply(
                &as_client(&format!("$JS.API.STREAM.INFO.KV_{hosts}")),
                &reply,
                "",
            );
            host.publish_with_reply(&as_client(&format!("$KV.{hosts}.h9")), &reply, forged);
            viewer.publish_with_reply(
                &as_client(&format!("$JS.API.STREAM.INFO.shoal-{name}-v1-events")),
                &reply,
                "",
            );
        }
    }
    // Answers to later requests on the same connections came back: the ones aimed
    // elsewhere were sent before them.
    assert_eq!(
        host.client_kv_get(&hosts, "h9").as_deref(),
        Some(forged.as_bytes())
    );
    assert!(!app_record_exists(&lattice, "default.evil"));
    assert_eq!(kv_get(&lattice, "trust", "lattice"), None);
    assert_eq!(kv_get(&lattice, "status", "egress"), None);
    // h1 rewrites its own record as it runs (heartbeats, its cache), so the test is that
    // the record is still h1's own, not that its bytes never change.
    let h1 = kv_get(&lattice, "hosts", "h1").expect("h1's record");
    let h1: serde_json::Value = serde_json::from_slice(&h1).expect("h1's record is JSON");
    assert_eq!(h1["id"], "h1", "{h1}");
    assert!(h1.get("spec").is_none(), "{h1}");
    let lease = kv_get(&lattice, "leases", "scheduler");
    assert!(
        lease.is_some() && lease != Some(forged.as_bytes().to_vec()),
        "the lease: {lease:?} (before: {lease_before:?})"
    );
    still_converges(&lattice, 2);
    assert!(
        !scheduler
            .log()
            .contains("the scheduler lease record is unreadable"),
        "{}",
        scheduler.log()
    );
}

#[test]
fn a_key_write_with_a_rollup_header_purges_no_other_record() {
    let (lattice, _scheduler, _host) = secure_lattice();
    let name = lattice.name.clone();
    let raw = Raw::connect(
        &lattice.nats.url(),
        &lattice.mint(&["host", "h9"], "h9"),
        "_INBOX.host.h9",
    );
    // Keys the host may write, with the header that would purge the rest of the stream
    // (every other host's record, the lattice's identity, routes): refused by the stream.
    for subject in [
        kv(&lattice, "hosts", "h9"),
        kv(&lattice, "status", "replicas.h9.x"),
    ] {
        let stored = raw.store_with_headers(&as_client(&subject), "{}", &[("Nats-Rollup", "all")]);
        assert!(stored.is_err(), "{subject} took a rollup");
        // Without it, the same write is stored.
        raw.store(&as_client(&subject), "{}").unwrap();
    }
    assert!(kv_get(&lattice, "hosts", "h1").is_some());
    assert!(kv_get(&lattice, "status", "lattice").is_some());
    assert!(kv_get(&lattice, "status", "routes.default.hello").is_some());
    let scheduler = as_scheduler(&lattice);
    for bucket in ["hosts", "status"] {
        assert!(!scheduler.takes_rollups(&format!("KV_shoal-{name}-v1-{bucket}")));
    }
    still_converges(&lattice, 2);
}

#[test]
fn a_host_whose_credential_does_not_verify_takes_no_new_replicas() {
    let (lattice, _scheduler, _host) = secure_lattice();
    // h2 is granted one replica, then overwrites the credential it presented (its own key,
    // which it may write) to lift the grant.
    let creds = lattice.mint(&["host", "h2", "--max-replicas", "1"], "h2");
    let _h2 = lattice.host_with("h2", &["--nats-creds", creds.to_str().unwrap()]);
    let raw = Raw::connect(&lattice.nats.url(), &creds, "_INBOX.host.h2");
    raw.store(
        &as_client(&kv(&lattice, "status", "credentials.h2")),
        r#"{"jwt":"forged"}"#,
    )
    .unwrap();
    lattice.ok(&["scale", "app", "hello", "--replicas", "4"]);
    lattice.wait_ready("hello", 4, PATIENCE);
    let placed = lattice.ready_by_host("hello");
    assert_eq!(placed.get("h1"), Some(&4), "{placed:?}");
}
