//! Watches a lattice's host records as the scheduler does and reports, per host, the gaps
//! between heartbeats as they arrive: what a loss timeout must outlast on a given link.
//!
//! `heartbeat-gaps NATS_URL LATTICE SECONDS`: prints a table after SECONDS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(lattice), Some(seconds)) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: heartbeat-gaps NATS_URL LATTICE SECONDS");
    };
    let seconds: u64 = seconds.parse().context("SECONDS is a number")?;
    let client = async_nats::connect(&url)
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let bucket = shoal_lattice::names::Bucket::Hosts.name(&lattice);
    let mut records = client.subscribe(format!("$KV.{bucket}.>")).await?;
    let mut last: BTreeMap<String, Instant> = BTreeMap::new();
    let mut gaps: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            Some(message) = records.next() => {
                let host = message.subject.rsplit('.').next().unwrap_or_default().to_owned();
                let now = Instant::now();
                if let Some(before) = last.insert(host.clone(), now) {
                    gaps.entry(host).or_default().push(now - before);
                }
            }
        }
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    table.set_header(["HOST", "BEATS", "MEDIAN", "P99", "MAX", ">3S", ">10S"]);
    for (host, mut host_gaps) in gaps {
        host_gaps.sort();
        let at = |fraction: f64| {
            let index = ((host_gaps.len() - 1) as f64 * fraction).round() as usize;
            format!("{:.2}s", host_gaps[index].as_secs_f64())
        };
        let over = |limit: u64| {
            host_gaps
                .iter()
                .filter(|gap| **gap > Duration::from_secs(limit))
                .count()
                .to_string()
        };
        table.add_row([
            host.clone(),
            host_gaps.len().to_string(),
            at(0.5),
            at(0.99),
            at(1.0),
            over(3),
            over(10),
        ]);
    }
    println!("{table}");
    Ok(())
}
