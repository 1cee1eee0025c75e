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
use support::lattice::Lattice;

/// The app's replica count as stored.
fn replicas(lattice: &Lattice) -> u64 {
    let apps: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "apps", "-o", "json"])).unwrap();
    apps.as_array()
        .unwrap()
        .iter()
        .find(|app| app["name"] == "busy")
        .map(|app| app["spec"]["replicas"].as_u64().unwrap())
        .unwrap()
}

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
        (replicas(&lattice) == 4).then_some(())
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
            replicas(&lattice),
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
        || (replicas(&lattice) == 1).then_some(()),
    );
    let down_after = quiet.elapsed();
    assert!(
        down_after >= Duration::from_secs(5),
        "scaled down {down_after:?} after the load went: sooner than its delay"
    );
    eprintln!("scaled down 4 -> 1 {down_after:?} after the load went");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(replicas(&lattice), 1, "went below min");
}
