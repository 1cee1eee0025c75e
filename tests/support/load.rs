//! Steady HTTP load from client threads while a test disturbs the lattice: what failed, and
//! each change of answer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client per URL, each sending GETs back to back, counting what fails and noting each
/// change of answer.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<String>>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Starts a client for each of `urls` (whole URLs, path included).
    pub fn start(urls: &[String]) -> Self {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            errors: Arc::new(Mutex::new(Vec::new())),
            threads: Vec::new(),
        };
        let threads = urls
            .iter()
            .map(|url| {
                let (stop, ok, failed, seen, errors, url) = (
                    load.stop.clone(),
                    load.ok.clone(),
                    load.failed.clone(),
                    load.seen.clone(),
                    load.errors.clone(),
                    url.clone(),
                );
                std::thread::spawn(move || {
                    let client: ureq::Agent = ureq::Agent::config_builder()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(10)))
                        .build()
                        .into();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).call() {
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
        Load { threads, ..load }
    }

    /// Stops the clients; returns (ok, failed, errors, distinct answers).
    pub fn finish(self) -> (u64, u64, Vec<String>, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let seen = self.seen.lock().unwrap().iter().cloned().collect();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.errors.lock().unwrap().clone(),
            seen,
        )
    }
}
