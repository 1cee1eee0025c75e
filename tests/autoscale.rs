//! End-to-end test of autoscaling over real hosts: a load that keeps more than four times
//! the target in flight scales the app up on the panic window, a scheduler failover keeps the
//! count, and when the load goes the app scales down after its delay, never below `min`.
//! Real nats-server, registry and `shoal` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::eventually;
use support::lattice::{Lattice, burst};

#[test]
fn load_scales_an_app_up_at_once_and_down_after_its_delay() {
    let lattice = Lattice::start();
    let mut scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let _other = lattice.host("h2", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: busy}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  routes: [{{path: /slow}}]\n  autoscale: {{min: 1, max: 4, targetConcurrency: 2, window: 10s, scaleDownDelay: 5s}}\n"
    ));
    lattice.wait_ready("busy", 1, Duration::from_secs(30));
    let url = format!("{}/slow?ms=400", host.url.clone().unwrap());

    // Twelve clients, each with a request in flight most of the time (what a host measures
    // is the time its replicas spend answering: about 10 in flight): more than four times
    // the target of two, so the load calls for max whatever the measure's noise.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let (stop, url) = (Arc::clone(&stop), url.clone());
            std::thread::spawn(move || {
                let agent = support::lattice::agent();
                while !stop.load(Ordering::Relaxed) {
                    let _ = agent.get(&url).call();
                }
            })
        })
        .collect();
    let started = Instant::now();
    eventually(Duration::from_secs(30), "the app to scale up to 4", || {
        (replicas_of(&lattice, "busy") == 4).then_some(())
    });
    let up_after = started.elapsed();
    // The first heartbeats see the load ramping up: it may take a step or two, each on
    // the panic window.
    let events = lattice.events(&["--app", "busy"]);
    let steps: Vec<&str> = events
        .iter()
        .filter(|event| event["reason"] == "Scaled")
        .map(|event| event["message"].as_str().unwrap())
        .collect();
    assert!(
        steps
            .first()
            .is_some_and(|step| step.starts_with("scaled from 1 to"))
            && steps.last().is_some_and(|step| step.contains(" to 4: "))
            && steps.iter().all(|step| step.contains("(panic), target 2")),
        "{steps:?}"
    );
    eprintln!("scaled up 1 -> 4 in {up_after:?}: {steps:?}");
    let described = lattice.ok(&["describe", "app", "busy"]);
    assert!(
        described.contains("Autoscale:   1-4 replicas, target 2 in flight each"),
        "{described}"
    );

    // The count is the autoscaler's: a scale by hand is refused, saying what to change.
    let (ok, _, stderr) = lattice.shoal(&["scale", "app", "busy", "--replicas", "2"]);
    assert!(
        !ok && stderr.contains("autoscales between 1 and 4 replicas"),
        "{stderr}"
    );

    // The leader dies; the next one keeps the count while the load goes on.
    scheduler.kill();
    let _successor = lattice.scheduler("s2");
    let kept_until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < kept_until {
        assert_eq!(
            replicas_of(&lattice, "busy"),
            4,
            "the count changed across the failover"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The load goes: down to min after the window and the delay, never below.
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let quiet = Instant::now();
    eventually(
        Duration::from_secs(60),
        "the app to scale down to 1",
        || (replicas_of(&lattice, "busy") == 1).then_some(()),
    );
    let down_after = quiet.elapsed();
    assert!(
        down_after >= Duration::from_secs(5),
        "scaled down {down_after:?} after the load went: sooner than its delay"
    );
    eprintln!("scaled down 4 -> 1 {down_after:?} after the load went");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replicas_of(&lattice, "busy"), 1, "went below min");
}

/// The replica count of `app` as stored.
fn replicas_of(lattice: &Lattice, app: &str) -> u64 {
    lattice.app(app)["spec"]["replicas"].as_u64().unwrap()
}

#[test]
fn an_idle_app_goes_to_zero_and_its_first_requests_wake_it() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let h1 = lattice.host("h1", &["role=back"]);
    // h2 holds at most two requests per app, for a second.
    let h2 = lattice.host_with("h2", &["--hold-requests", "2", "--hold-timeout", "1s"]);
    let h3 = lattice.host("h3", &[]);
    let hello = lattice.push_hello("1.0");
    let app = |name: &str, replicas: u32, extra: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {hello}\n  replicas: {replicas}\n  routes: [{{path: /{name}}}]\n  autoscale: {{min: 0, max: 3, window: 6s, scaleDownDelay: 3s}}\n{extra}"
        )
    };
    lattice.apply(&app("sleepy", 1, ""));
    let placed = lattice.wait_ready("sleepy", 1, Duration::from_secs(30));
    let first_host = placed.keys().next().unwrap().clone();

    // No request for its delay: no replica anywhere, and hosts no longer list an endpoint.
    let quiet = Instant::now();
    eventually(Duration::from_secs(30), "sleepy to reach zero", || {
        (replicas_of(&lattice, "sleepy") == 0 && lattice.replica_ids("sleepy").is_empty())
            .then_some(())
    });
    eprintln!("zero {:?} after the last request", quiet.elapsed());
    let events = lattice.events(&["--app", "sleepy"]);
    assert!(
        events.iter().any(|event| event["reason"] == "Scaled"
            && event["message"] == "scaled from 1 to 0: no request for 3s"),
        "{events:?}"
    );

    // 20 concurrent first requests through a host that had no replica: all held, then
    // served; the woken replica is placed on that host.
    let other = ["h1", "h3"]
        .into_iter()
        .find(|host| *host != first_host)
        .unwrap();
    let through = if other == "h1" { &h1 } else { &h3 };
    let woke = Instant::now();
    let answers = burst(&format!("{}/sleepy", through.url.clone().unwrap()), 20);
    eprintln!(
        "20 first requests through {other} answered in {:?}",
        woke.elapsed()
    );
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(
        lattice.wait_ready("sleepy", 1, Duration::from_secs(10)),
        [(other.to_owned(), 1)].into()
    );
    let events = lattice.events(&["--app", "sleepy"]);
    assert!(
        events.iter().any(|event| event["reason"] == "Scaled"
            && event["message"]
                == format!("scaled from 0 to 1: host {other} holds a request for it").as_str()),
        "{events:?}"
    );

    // An app at zero that only h1 may run, asked through h3: woken on h1 and forwarded.
    lattice.apply(&app("pinned", 0, "  placement: {requires: {role: back}}\n"));
    // (404 until h3 has the app's routing record, as for any new app.)
    let (status, body) = eventually(Duration::from_secs(10), "h3 to route /pinned", || {
        h3.get("/pinned").filter(|(status, _)| *status != 404)
    });
    assert_eq!((status, body.as_str()), (200, "hello from Shoal\n"));
    assert_eq!(
        lattice.wait_ready("pinned", 1, Duration::from_secs(10)),
        [("h1".to_owned(), 1)].into()
    );

    // An app at zero that no host can run: h2 holds two requests for a second, then 503;
    // the others get 503 at once. All say when to try again.
    lattice.apply(&app(
        "nowhere",
        0,
        "  placement: {requires: {role: none}}\n",
    ));
    eventually(Duration::from_secs(10), "h2 to route /nowhere", || {
        h2.get("/nowhere").filter(|(status, _)| *status != 404)
    });
    let asked = Instant::now();
    let answers = burst(&format!("{}/nowhere", h2.url.clone().unwrap()), 6);
    let took = asked.elapsed();
    assert!(
        answers
            .iter()
            .all(|(status, retry)| *status == 503 && retry.as_deref() == Some("1")),
        "{answers:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "held for {took:?}"
    );
    let log = h2.log();
    assert!(!log.contains("panicked"), "{log}");
}
