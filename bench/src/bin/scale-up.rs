//! A closed-loop HTTP load (like `wrk -c CLIENTS`) that reports its p99 latency second by
//! second: how long an autoscaled app takes, from the moment the load starts, until the p99
//! stays under a target.
//!
//! `scale-up URL CLIENTS SECONDS TARGET_MS`: prints one line per second, then the time
//! from the start until the p99 was under TARGET_MS for three seconds in a row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(clients), Some(seconds), Some(target)) =
        (args.next(), args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: scale-up URL CLIENTS SECONDS TARGET_MS");
    };
    let clients: usize = clients.parse().context("CLIENTS is a number")?;
    let seconds: u64 = seconds.parse().context("SECONDS is a number")?;
    let target = Duration::from_millis(target.parse().context("TARGET_MS is a number")?);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // (second since the start, latency, ok) of every request.
    let samples: Arc<Mutex<Vec<(u64, Duration, bool)>>> = Arc::default();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, stop, samples) = (url.clone(), Arc::clone(&stop), Arc::clone(&samples));
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(30)))
                    .build()
                    .into();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let ok = agent
                        .get(&url)
                        .call()
                        .is_ok_and(|response| response.status() == 200);
                    let second = sent.duration_since(started).as_secs();
                    if let Ok(mut samples) = samples.lock() {
                        samples.push((second, sent.elapsed(), ok));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let samples = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("a client panicked"))?;
    let mut under_since: Option<u64> = None;
    let mut settled = None;
    println!("SECOND  REQUESTS  FAILED  P50_MS  P99_MS");
    for second in 0..seconds {
        let mut latencies: Vec<Duration> = samples
            .iter()
            .filter(|(at, _, _)| *at == second)
            .map(|(_, latency, _)| *latency)
            .collect();
        let failed = samples
            .iter()
            .filter(|(at, _, ok)| *at == second && !ok)
            .count();
        if latencies.is_empty() {
            continue;
        }
        latencies.sort();
        let at =
            |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction).round() as usize];
        let p99 = at(0.99);
        println!(
            "{second:>6}  {:>8}  {failed:>6}  {:>6}  {:>6}",
            latencies.len(),
            at(0.5).as_millis(),
            p99.as_millis()
        );
        if p99 <= target {
            let since = *under_since.get_or_insert(second);
            if settled.is_none() && second >= since + 2 {
                settled = Some(since);
            }
        } else {
            under_since = None;
        }
    }
    match settled {
        Some(second) => println!(
            "p99 under {} ms from second {second} on (for 3 s in a row)",
            target.as_millis()
        ),
        None => println!("p99 never stayed under {} ms", target.as_millis()),
    }
    Ok(())
}
