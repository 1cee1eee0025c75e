//! End-to-end tests of `wasi:messaging`: a component built from source with upstream's
//! WIT publishes to the subjects its app grants (`spec.publish`) and is refused others,
//! on an open and a secure lattice, where the host's own credential may publish to none
//! of them and a replica's credential only to its app's. Real nats-server, registry,
//! scheduler and hosts; the messages are read with a bare NATS client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures_util::StreamExt as _;
use support::lattice::{Lattice, Process};

const PATIENCE: Duration = Duration::from_secs(30);

/// A manifest for the messaging-publisher fixture, routed at `/pub`, granted `alerts.>`.
fn publisher_manifest(component: &str) -> String {
    format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: publisher}}\nspec:\n  component: {component}\n  replicas: 1\n  routes: [{{path: /pub}}]\n  publish: [alerts.>]\n"
    )
}

/// Publishes through the app and reads what a subscriber to every message of namespace
/// `default` heard, connected as `client`.
fn publishes_only_what_it_is_granted(
    lattice: &Lattice,
    host: &Process,
    client: async_nats::Client,
    runtime: &tokio::runtime::Runtime,
) {
    let everything = format!("shoal.{}.v1.msg.default.>", lattice.name);
    let mut heard = runtime.block_on(async {
        let subscriber = client.subscribe(everything).await.unwrap();
        client.flush().await.unwrap();
        subscriber
    });
    let (status, body) = host
        .get("/pub?topic=alerts.hot&data=42")
        .expect("the app answers");
    assert_eq!((status, body.trim()), (200, "published"));
    let message = runtime
        .block_on(async { tokio::time::timeout(PATIENCE, heard.next()).await })
        .expect("a message within the patience")
        .expect("a message");
    assert_eq!(
        message.subject.as_str(),
        format!("shoal.{}.v1.msg.default.alerts.hot", lattice.name)
    );
    assert_eq!(&message.payload[..], b"42");
    let headers = message.headers.expect("headers");
    assert_eq!(
        headers.get("content-type").map(|value| value.as_str()),
        Some("text/plain")
    );
    assert_eq!(
        headers.get("sent-by").map(|value| value.as_str()),
        Some("messaging-publisher")
    );

    // A subject outside the grant: the guest hears permission-denied, nothing is sent.
    let (status, body) = host.get("/pub?topic=orders.new&data=1").unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("PermissionDenied"), "{body}");
    // Nor a subject that is not one, nor a wildcard.
    for topic in ["alerts.*", "alerts..x", "$KV.x"] {
        let (status, body) = host.get(&format!("/pub?topic={topic}&data=1")).unwrap();
        assert_eq!(status, 502, "{topic}: {body}");
    }
    // The next granted message is the next one heard: nothing came in between.
    assert_eq!(host.get("/pub?topic=alerts.cold&data=2").unwrap().0, 200);
    let next = runtime
        .block_on(async { tokio::time::timeout(PATIENCE, heard.next()).await })
        .expect("a message within the patience")
        .expect("a message");
    assert!(next.subject.ends_with(".alerts.cold"), "{}", next.subject);
}

#[test]
fn an_app_publishes_to_the_subjects_it_is_granted_and_no_other() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let component = lattice.push_guest("messaging-publisher", "1.0");
    lattice.apply(&publisher_manifest(&component));
    lattice.wait_ready("publisher", 1, PATIENCE);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(async_nats::connect(lattice.nats.url()))
        .unwrap();
    publishes_only_what_it_is_granted(&lattice, &host, client, &runtime);
}

#[test]
fn on_a_secure_lattice_only_a_replica_s_credential_publishes_its_app_s_subjects() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("60s");
    let host = lattice.secure_host("h1");
    let component = lattice.push_guest("messaging-publisher", "1.0");
    lattice.apply(&publisher_manifest(&component));
    lattice.wait_ready("publisher", 1, PATIENCE);
    // An admin hears its namespaces' messages.
    let admin = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("admin.creds"),
        "_INBOX.user.admin",
    );
    publishes_only_what_it_is_granted(&lattice, &host, admin.client.clone(), &admin.runtime);

    // The host's own credential publishes no app's messages; a viewer of another
    // namespace hears none of this one's.
    let subject = format!("shoal.{}.v1.msg.default.alerts.forged", lattice.name);
    let as_host = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("h1.creds"),
        "_INBOX.host.h1",
    );
    as_host.publish(&subject);
    as_host.wait_refused("Publish", &subject);
    let viewer = lattice.mint(
        &["user", "viewer-b", "--role", "viewer", "-n", "team-b"],
        "viewer-b",
    );
    let as_viewer =
        support::raw::Raw::connect(&lattice.nats.url(), &viewer, "_INBOX.user.viewer-b");
    let everything = format!("shoal.{}.v1.msg.default.>", lattice.name);
    as_viewer.subscribe(&everything);
    as_viewer.wait_refused("Subscription", &everything);
}

/// Has a host credential (h9's, minted for the purpose) aim JetStream's answers at message
/// subject `subject` of namespace `default`: it writes its own host record with `forged`
/// and asks for it by direct get, and for its bucket's info, each with `subject` as the
/// reply subject (nats-server checks no reply subject against any permission).
fn aim_jetstream_answers_at(lattice: &Lattice, subject: &str, forged: &str) {
    let as_client = |subject: &str| shoal_lattice::auth::client_subject(subject);
    let hosts = format!("shoal-{}-v1-hosts", lattice.name);
    let host = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.mint(&["host", "h9"], "h9"),
        "_INBOX.host.h9",
    );
    host.store(&as_client(&format!("$KV.{hosts}.h9")), forged)
        .unwrap();
    let reply = format!("shoal.{}.v1.msg.default.{subject}", lattice.name);
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
    host.client_kv_get(&hosts, "h9");
}

#[test]
fn a_triggering_message_is_handled_once_by_one_of_the_app_s_replicas() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("60s");
    let hosts = [lattice.secure_host("h1"), lattice.secure_host("h2")];
    let component = lattice.push_guest("messaging-publisher", "1.0");
    // It publishes readings (through its route) and is triggered by them: each reading
    // is answered with one alert.
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: sensor}}\nspec:\n  component: {component}\n  replicas: 2\n  routes: [{{path: /pub}}]\n  publish: [sensors.>, alerts.>]\n  triggers: [{{subject: \"sensors.*\"}}]\n"
    ));
    lattice.wait_ready("sensor", 2, PATIENCE);
    for host in &hosts {
        host.wait_log(PATIENCE, "subscribed to the trigger's messages");
    }
    let admin = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("admin.creds"),
        "_INBOX.user.admin",
    );
    let alerts = format!("shoal.{}.v1.msg.default.alerts.>", lattice.name);
    let mut heard = admin.runtime.block_on(async {
        let subscriber = admin.client.subscribe(alerts).await.unwrap();
        admin.client.flush().await.unwrap();
        subscriber
    });
    let next = |heard: &mut async_nats::Subscriber, within: Duration| {
        admin
            .runtime
            .block_on(async { tokio::time::timeout(within, heard.next()).await })
            .ok()
            .flatten()
    };
    // JetStream's answers aimed at a reading's subject are no readings: no replica takes
    // them (through one, a host could send any app the bytes of whatever it may read).
    aim_jetstream_answers_at(&lattice, "sensors.injected", "forged");
    for (room, reading) in [("room1", "21"), ("room2", "fail"), ("room3", "23")] {
        let (status, body) = hosts[0]
            .get(&format!("/pub?topic=sensors.{room}&data={reading}"))
            .unwrap();
        assert_eq!(status, 200, "{body}");
    }
    // And one from the command line, as an editor would send it.
    lattice.ok(&[
        "publish",
        "sensors.room4",
        "24",
        "-H",
        "sent-by=messaging-publisher",
    ]);
    // Each reading once, by one replica (in any order); the one its handler refused is not
    // answered.
    let mut answered: Vec<(String, String)> = (0..3)
        .map(|_| {
            let alert = next(&mut heard, PATIENCE).expect("an alert");
            assert_eq!(
                alert
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get("sent-by"))
                    .map(|value| value.as_str()),
                Some("messaging-publisher")
            );
            let room = alert.subject.rsplit('.').next().unwrap().to_owned();
            (room, String::from_utf8_lossy(&alert.payload).into_owned())
        })
        .collect();
    answered.sort();
    assert_eq!(
        answered,
        [
            ("room1".to_owned(), "handled 21".to_owned()),
            ("room3".to_owned(), "handled 23".to_owned()),
            ("room4".to_owned(), "handled 24".to_owned())
        ]
    );
    assert!(
        next(&mut heard, Duration::from_secs(1)).is_none(),
        "a reading was answered twice"
    );
    // A viewer (or editor) of the namespace may not listen: as a subscriber it could join
    // the app's queue group and take readings from the app.
    let viewer = lattice.mint(
        &["user", "viewer-d", "--role", "editor", "-n", "default"],
        "viewer-d",
    );
    let as_viewer =
        support::raw::Raw::connect(&lattice.nats.url(), &viewer, "_INBOX.user.viewer-d");
    let readings = format!("shoal.{}.v1.msg.default.sensors.*", lattice.name);
    as_viewer.subscribe(&readings);
    as_viewer.wait_refused("Subscription", &readings);
    support::eventually(
        PATIENCE,
        "a host to say why room2's reading was not handled",
        || {
            hosts
                .iter()
                .any(|host| host.log().contains("asked to fail"))
                .then_some(())
        },
    );
}

/// The manifest of an app that handles stream `orders` of namespace `default` with
/// consumer `billing`: three deliveries at most, 200 ms apart, then `orders.dead`.
fn orders_manifest(component: &str, replicas: u32) -> String {
    format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: billing}}\nspec:\n  component: {component}\n  replicas: {replicas}\n  publish: [alerts.>]\n  triggers:\n    - stream: orders\n      consumer: billing\n      ackWait: 3s\n      maxDeliver: 3\n      backoff: [200ms]\n      deadLetter: orders.dead\n"
    )
}

#[test]
fn a_jetstream_trigger_handles_every_message_at_least_once_though_a_host_is_killed() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("60s");
    let mut hosts = [lattice.secure_host("h1"), lattice.secure_host("h2")];
    let component = lattice.push_guest("messaging-publisher", "1.0");
    lattice.apply(&orders_manifest(&component, 2));
    lattice.wait_ready("billing", 2, PATIENCE);
    for host in &hosts {
        host.wait_log(PATIENCE, "reading the trigger's stream");
    }
    let admin = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("admin.creds"),
        "_INBOX.user.admin",
    );
    let messages = |subject: &str| format!("shoal.{}.v1.msg.default.{subject}", lattice.name);
    let (mut alerts, mut dead) = admin.runtime.block_on(async {
        let alerts = admin.client.subscribe(messages("alerts.>")).await.unwrap();
        let dead = admin
            .client
            .subscribe(messages("orders.dead"))
            .await
            .unwrap();
        admin.client.flush().await.unwrap();
        (alerts, dead)
    });
    // A thousand orders and a poison one, published as any NATS client would (core NATS:
    // the stream keeps them whether a replica runs or not).
    const ORDERS: usize = 1000;
    admin.runtime.block_on(async {
        for order in 0..ORDERS {
            admin
                .client
                .publish(
                    messages(&format!("orders.{order}")),
                    order.to_string().into(),
                )
                .await
                .unwrap();
        }
        admin
            .client
            .publish(messages("orders.poison"), "fail".into())
            .await
            .unwrap();
        admin.client.flush().await.unwrap();
    });
    // Each order is answered with an alert; a host is killed (SIGKILL) mid-stream, and the
    // orders it held unanswered are delivered to the other after ackWait.
    let mut handled = std::collections::BTreeMap::<String, usize>::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut killed = false;
    while handled.len() < ORDERS {
        if std::time::Instant::now() >= deadline {
            let missing: Vec<usize> = (0..ORDERS)
                .filter(|order| !handled.contains_key(&order.to_string()))
                .collect();
            let logs: Vec<String> = hosts
                .iter()
                .map(|host| {
                    host.log()
                        .lines()
                        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .collect();
            panic!(
                "only {} of {ORDERS} orders handled; missing {missing:?}\n{}",
                handled.len(),
                logs.join("\n----\n")
            );
        }
        let alert = admin
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), alerts.next()).await });
        let Ok(Some(alert)) = alert else { continue };
        let order = alert.subject.rsplit('.').next().unwrap().to_owned();
        assert_eq!(
            String::from_utf8_lossy(&alert.payload),
            format!("handled {order}")
        );
        *handled.entry(order).or_default() += 1;
        if !killed && handled.len() >= 150 {
            hosts[0].kill();
            killed = true;
        }
    }
    assert!(killed);
    let duplicates: usize = handled.values().map(|count| count - 1).sum();
    println!("{ORDERS} orders handled; {duplicates} handled twice or more (the killed host's)");
    assert!(handled.contains_key("0") && handled.contains_key(&(ORDERS - 1).to_string()));
    // The poison order: three deliveries, then the dead-letter subject, with the cause.
    let letter = admin
        .runtime
        .block_on(async { tokio::time::timeout(PATIENCE, dead.next()).await })
        .expect("a dead letter")
        .unwrap();
    assert_eq!(&letter.payload[..], b"fail");
    let headers = letter.headers.expect("the cause in its headers");
    let header = |name: &str| headers.get(name).map(|value| value.as_str().to_owned());
    assert!(
        header("Shoal-Failure").is_some_and(|cause| cause.contains("asked to fail")),
        "{headers:?}"
    );
    assert_eq!(header("Shoal-Deliveries").as_deref(), Some("3"));
    assert_eq!(header("Shoal-Subject").as_deref(), Some("orders.poison"));
    assert_eq!(header("Shoal-App").as_deref(), Some("default/billing"));
    // describe says where the consumer stands: nothing pending, one dead letter.
    support::eventually(PATIENCE, "the consumer to have caught up", || {
        let described = lattice.ok(&["describe", "app", "billing"]);
        described
            .contains("stream orders consumer billing: 0 pending, 0 unacknowledged")
            .then_some(described)
    });
    let described = lattice.ok(&["describe", "app", "billing"]);
    assert!(described.contains("1 dead-lettered"), "{described}");
    // And so does get triggers, for every app.
    let listed: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "triggers", "-o", "json"])).unwrap();
    let state = &listed[0]["state"];
    assert_eq!(listed[0]["app"], "billing", "{listed}");
    assert_eq!(state["deadLettered"], 1, "{listed}");
    assert_eq!(state["pending"], 0, "{listed}");
    let table = lattice.ok(&["get", "triggers"]);
    assert!(table.contains("stream orders consumer billing"), "{table}");
    // JetStream's answers aimed at the stream's subjects are not kept by it: only what
    // clients publish is (the order published after them is handled, they are not).
    aim_jetstream_answers_at(&lattice, "orders.injected", "forged");
    admin.publish(&messages("orders.marker"));
    let mut after = Vec::new();
    while !after
        .iter()
        .any(|subject: &String| subject.ends_with(".marker"))
    {
        let alert = admin
            .runtime
            .block_on(async { tokio::time::timeout(PATIENCE, alerts.next()).await })
            .expect("the marker's alert")
            .unwrap();
        after.push(alert.subject.to_string());
    }
    if let Ok(Some(alert)) = admin
        .runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(1), alerts.next()).await })
    {
        after.push(alert.subject.to_string());
    }
    assert!(
        !after.iter().any(|subject| subject.ends_with(".injected")),
        "{after:?}"
    );
    // A stream acknowledges nothing it stores: its import keeps a publish's reply subject,
    // and an acknowledgement sent there, in the state account, would write the lease or
    // an app record.
    let state = |bucket: &str| format!("shoal-{}-v1-{bucket}", lattice.name);
    let scheduler = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("s1.creds"),
        "_INBOX.scheduler.s1",
    );
    // (Aimed at keys nobody else writes: the lease is rewritten as the scheduler renews it.)
    for reply in [
        format!("$KV.{}.default.evil", state("apps")),
        format!("$KV.{}.h7", state("hosts")),
    ] {
        admin.publish_with_reply(&messages("orders.acked"), &reply, "x");
    }
    admin.publish(&messages("orders.marker2"));
    admin
        .runtime
        .block_on(async { while !alerts.next().await.unwrap().subject.ends_with(".marker2") {} });
    assert_eq!(scheduler.kv_get(&state("apps"), "default.evil"), None);
    assert_eq!(scheduler.kv_get(&state("hosts"), "h7"), None);
}

#[test]
fn a_backlog_wakes_an_app_at_zero_and_scales_it_up() {
    // An open lattice: its streams and consumers in the one account there is.
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let port = support::free_port();
    let _host = lattice.host_with("h1", &["--metrics", &format!("127.0.0.1:{port}")]);
    let component = lattice.push_guest("messaging-publisher", "1.0");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: billing}}\nspec:\n  component: {component}\n  replicas: 0\n  publish: [alerts.>]\n  limits: {{concurrency: 1}}\n  triggers: [{{stream: orders}}]\n  autoscale: {{min: 0, max: 3, targetPending: 20, window: 6s, scaleDownDelay: 6s}}\n"
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = runtime
        .block_on(async_nats::connect(lattice.nats.url()))
        .unwrap();
    let messages = |subject: &str| format!("shoal.{}.v1.msg.default.{subject}", lattice.name);
    let mut alerts = runtime.block_on(async {
        let alerts = client.subscribe(messages("alerts.>")).await.unwrap();
        client.flush().await.unwrap();
        alerts
    });
    // 200 orders wait in the stream, and call for three replicas (20 a replica, at most
    // 3).
    let replicas = || {
        lattice
            .replicas()
            .into_iter()
            .filter(|(app, _, _)| app == "billing")
            .count()
    };
    // It idles to zero first (a scheduler starts an autoscaled app with one replica).
    support::eventually(PATIENCE, "the app to idle to zero", || {
        let events = lattice.ok(&["events", "--app", "billing"]);
        (events.contains("no request for") && replicas() == 0).then_some(())
    });
    const ORDERS: usize = 200;
    runtime.block_on(async {
        for order in 0..ORDERS {
            client
                .publish(
                    messages(&format!("orders.{order}")),
                    order.to_string().into(),
                )
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    });
    let mut handled = std::collections::BTreeSet::new();
    let mut most = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while handled.len() < ORDERS {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {ORDERS} orders handled; at most {most} replicas",
            handled.len()
        );
        if let Ok(Some(alert)) = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(1), alerts.next()).await })
        {
            handled.insert(alert.subject.to_string());
        }
        most = most.max(replicas());
    }
    assert!(most >= 2, "the backlog scaled it to {most} replica(s)");
    let events = lattice.ok(&["events", "--app", "billing"]);
    assert!(
        events.contains("messages waiting, target 20 a replica"),
        "{events}"
    );
    // The host counts what its replicas handled, per trigger.
    let metrics = support::lattice::agent()
        .get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let handled: u64 = metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "shoal_trigger_messages_total{namespace=\"default\",app=\"billing\",trigger=\"stream orders\",outcome=\"handled\"} ",
            )
        })
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(handled >= ORDERS as u64, "{metrics}");
}

/// An open lattice with one host running `guest` as app `name`, triggered by `jobs.*` and
/// granted `done.>`, after `shoal inspect` named its world `world`; and a plain NATS client.
struct TriggerApp {
    lattice: Lattice,
    _scheduler: Process,
    _host: Process,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl TriggerApp {
    fn start(guest: &str, name: &str, world: &str) -> Self {
        let lattice = Lattice::start();
        let scheduler = lattice.scheduler("s1");
        let host = lattice.host("h1", &[]);
        let component = lattice.push_guest(guest, "1.0");
        let inspected = lattice.ok(&["inspect", &component]);
        assert!(inspected.contains(world), "{inspected}");
        lattice.apply(&format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {component}\n  publish: [done.>]\n  triggers: [{{subject: \"jobs.*\"}}]\n"
        ));
        lattice.wait_ready(name, 1, PATIENCE);
        host.wait_log(PATIENCE, "subscribed to the trigger's messages");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = runtime
            .block_on(async_nats::connect(lattice.nats.url()))
            .unwrap();
        Self {
            lattice,
            _scheduler: scheduler,
            _host: host,
            runtime,
            client,
        }
    }

    /// The NATS subject of message subject `subject` of namespace `default`.
    fn subject(&self, subject: &str) -> String {
        format!("shoal.{}.v1.msg.default.{subject}", self.lattice.name)
    }

    /// Publishes `data` on `jobs.<job>` and waits for what comes on `done.>`.
    fn run(&self, job: &str, data: &str) -> async_nats::Message {
        self.runtime.block_on(async {
            let mut done = self.client.subscribe(self.subject("done.>")).await.unwrap();
            self.client.flush().await.unwrap();
            self.client
                .publish(self.subject(&format!("jobs.{job}")), data.to_owned().into())
                .await
                .unwrap();
            tokio::time::timeout(PATIENCE, done.next())
                .await
                .expect("an answer in time")
                .unwrap()
        })
    }
}

#[test]
fn a_component_that_exports_only_a_message_handler_is_an_app_of_its_triggers() {
    // shoal inspect names its world: wasi:messaging's, no HTTP.
    let app = TriggerApp::start(
        "messaging-handler",
        "worker",
        "wasi:messaging/messaging-core@0.2.0-draft",
    );
    let answer = app.run("first", "42");
    assert_eq!(answer.subject.as_str(), app.subject("done.first"));
    assert_eq!(&answer.payload[..], b"handled 42");
}

#[test]
fn an_app_answers_requests_on_the_asker_s_inbox_only_and_asks_its_own() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("60s");
    let host = lattice.secure_host("h1");
    let component = lattice.push_guest("messaging-publisher", "1.0");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: oracle}}\nspec:\n  component: {component}\n  routes: [{{path: /pub}}]\n  publish: [ask.>]\n  triggers: [{{subject: \"ask.*\"}}]\n"
    ));
    lattice.wait_ready("oracle", 1, PATIENCE);
    host.wait_log(PATIENCE, "subscribed to the trigger's messages");
    let messages = |subject: &str| format!("shoal.{}.v1.msg.default.{subject}", lattice.name);
    // An editor of the namespace asks, as any NATS client would; the app answers.
    let editor = lattice.mint(&["user", "ed", "--role", "editor", "-n", "default"], "ed");
    let editor = support::raw::Raw::connect(&lattice.nats.url(), &editor, "_INBOX.user.ed");
    let answer = editor.runtime.block_on(async {
        tokio::time::timeout(
            PATIENCE,
            editor.client.request(messages("ask.question"), "42".into()),
        )
        .await
    });
    let answer = answer.expect("an answer in time").expect("an answer");
    assert_eq!(&answer.payload[..], b"answer 42");
    // The app asks too, through its route (request-reply's request), and is answered.
    let (status, body) = host.get("/pub/request?topic=ask.self&data=hi").unwrap();
    assert_eq!((status, body.as_str()), (200, "answer hi"));
    // A subject it was not granted is refused in the guest.
    let (status, body) = host.get("/pub/request?topic=other.x&data=hi").unwrap();
    assert_eq!(status, 403, "{body}");
    // A reply subject that is not an inbox is not answered: aimed at an app record, the
    // answer would write it (through the clients' import of key writes); aimed at another
    // message subject, it would be a message the app may not send.
    let apps = format!("shoal-{}-v1-apps", lattice.name);
    editor.publish_with_reply(
        &messages("ask.evil"),
        &shoal_lattice::auth::client_subject(&format!("$KV.{apps}.default.evil")),
        "x",
    );
    editor.publish_with_reply(&messages("ask.loop"), &messages("elsewhere"), "x");
    host.wait_log(PATIENCE, "is not an inbox");
    let scheduler = support::raw::Raw::connect(
        &lattice.nats.url(),
        &lattice.auth_dir().join("s1.creds"),
        "_INBOX.scheduler.s1",
    );
    assert_eq!(scheduler.kv_get(&apps, "default.evil"), None);
}

#[test]
fn a_wasmcloud_messaging_component_handles_triggers_and_answers_requests() {
    let app = TriggerApp::start(
        "wasmcloud-messaging",
        "wc",
        "wasmcloud:messaging/messaging@0.2.0",
    );
    let done = app.run("first", "42");
    assert_eq!(done.subject.as_str(), app.subject("done.first"));
    assert_eq!(&done.payload[..], b"handled 42");
    // A request: answered on its reply subject, as wasmCloud's components answer.
    let answer = app.runtime.block_on(async {
        tokio::time::timeout(
            PATIENCE,
            app.client.request(app.subject("jobs.ask"), "7".into()),
        )
        .await
    });
    let answer = answer.expect("an answer in time").expect("an answer");
    assert_eq!(&answer.payload[..], b"answer 7");
}
