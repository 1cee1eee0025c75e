//! End-to-end tests of rolling updates: three real hosts, a client under steady load through
//! every host, a template change rolled out replica by replica.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::eventually;
use support::lattice::Lattice;

const PATIENCE: Duration = Duration::from_secs(60);

fn greeter(component: &str, version: &str) -> String {
    format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: greeter}}\nspec:\n  component: {component}\n  replicas: 6\n  routes: [{{path: /}}]\n  config: {{GREETING: {version}}}\n"
    )
}

/// (revision, phase) of every replica of the greeter.
fn revisions(lattice: &Lattice) -> Vec<(u64, String)> {
    let rows: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "replicas", "-o", "json"])).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|row| row["app"] == "greeter")
        .map(|row| {
            (
                row["revision"].as_u64().unwrap(),
                row["status"]["phase"]
                    .as_str()
                    .unwrap_or("pending")
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_rollout_switches_versions_without_failing_a_request() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let hosts = [
        lattice.host("h1", &[]),
        lattice.host("h2", &[]),
        lattice.host("h3", &[]),
    ];
    let component = lattice.push_guest("greeter", "1.0");
    lattice.apply(&greeter(&component, "v1"));
    lattice.wait_ready("greeter", 6, PATIENCE);
    let urls: Vec<String> = hosts.iter().map(|host| host.url.clone().unwrap()).collect();
    for url in &urls {
        eventually(PATIENCE, "every host to serve v1", || {
            support::lattice::agent()
                .get(&format!("{url}/"))
                .call()
                .ok()
                .filter(|response| response.status() == 200)
        });
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let load: Vec<_> = urls
        .iter()
        .map(|url| {
            let (stop, ok, failed, seen, errors, url) = (
                stop.clone(),
                ok.clone(),
                failed.clone(),
                seen.clone(),
                errors.clone(),
                url.clone(),
            );
            std::thread::spawn(move || {
                let client: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(10)))
                    .build()
                    .into();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&format!("{url}/")).call() {
                        Ok(mut response) if response.status() == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let body = response.body_mut().read_to_string().unwrap_or_default();
                            let mut seen = seen.lock().unwrap();
                            if seen.last() != Some(&body) {
                                seen.push(body);
                            }
                        }
                        Ok(mut response) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let body = response.body_mut().read_to_string().unwrap_or_default();
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{}: {body}", response.status()));
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(error.to_string());
                        }
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let applied = lattice.apply(&greeter(&component, "v2"));
    assert!(applied.contains("configured: revision 2"), "{applied}");
    eventually(
        PATIENCE,
        "six ready replicas of revision 2 and nothing else",
        || {
            let replicas = revisions(&lattice);
            (replicas.len() == 6
                && replicas
                    .iter()
                    .all(|(revision, phase)| *revision == 2 && phase == "ready"))
            .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    let seen: BTreeSet<String> = seen.lock().unwrap().iter().cloned().collect();
    eprintln!(
        "rollout under load: {} ok, {} failed; errors: {:?}",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        errors.lock().unwrap()
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        seen.contains("v1 from the greeter\n") && seen.contains("v2 from the greeter\n"),
        "{seen:?}"
    );
    // After the rollout, only v2 answers.
    for url in &urls {
        let mut response = support::lattice::agent()
            .get(&format!("{url}/"))
            .call()
            .unwrap();
        assert_eq!(
            response.body_mut().read_to_string().unwrap(),
            "v2 from the greeter\n"
        );
    }
}
