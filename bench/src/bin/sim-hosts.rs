//! `sim-hosts`: the control plane at scale. One real nats-server and one real `shoal
//! scheduler`; N simulated hosts in this process write their host records every heartbeat
//! (as `shoal host` does) and report every replica placed on them ready at once (they run
//! nothing); M apps of one replica each are applied through the control API. Prints the time
//! from the first apply to every replica placed and to every app ready, the scheduler's RSS,
//! the messages nats-server took per second (KV writes and reads, API calls) while applying
//! and while idle, and the time from a host's last heartbeat to its replicas placed again.

#[path = "../local.rs"]
mod local;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt as _;
use local::{Processes, free_port, wait_for_port};
use shoal_lattice::api::Apply;
use shoal_lattice::api::{self, AppManifest, AppliedApp};
use shoal_lattice::names::replica_status_key;
use shoal_lattice::quantity::{Memory, Millicores};
use shoal_lattice::records::{
    AppSpec, AppStatus, Assignment, Capacity, HostRecord, Phase, ReplicaStatus, now_millis,
};
use shoal_lattice::{Bucket, ConnectOptions, Lattice, NatsAuth};

#[derive(Parser, Debug)]
#[command(about = "The scheduler with thousands of simulated hosts and apps")]
struct Args {
    /// The `shoal` binary (a release build).
    #[arg(long)]
    shoal: std::path::PathBuf,
    /// Simulated hosts.
    #[arg(long, default_value_t = 10_000)]
    hosts: usize,
    /// Apps, one replica each.
    #[arg(long, default_value_t = 10_000)]
    apps: usize,
    /// How often each host writes its record (`shoal host --heartbeat`).
    #[arg(long, default_value = "2s", value_parser = humantime_secs)]
    heartbeat: Duration,
    /// NATS connections the simulated hosts share.
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

fn humantime_secs(value: &str) -> Result<Duration, String> {
    let seconds = value.trim_end_matches('s');
    seconds
        .parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|error| format!("{value:?} is not a number of seconds: {error}"))
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Messages nats-server has received, from its monitoring endpoint.
fn in_msgs(monitor: u16) -> anyhow::Result<u64> {
    let text = ureq::get(&format!("http://127.0.0.1:{monitor}/varz"))
        .call()?
        .body_mut()
        .read_to_string()?;
    text.lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("\"in_msgs\":")
                .map(|value| value.trim().trim_end_matches(','))
        })
        .and_then(|value| value.parse().ok())
        .context("no in_msgs in /varz")
}

fn host_record(id: &str, started_at: u64) -> HostRecord {
    HostRecord {
        id: id.to_owned(),
        labels: [("zone".to_owned(), format!("z{}", id.len() % 3))].into(),
        capacity: Capacity {
            memory: Memory(64 << 30),
            cpu: Millicores(64_000),
            max_replicas: 1000,
        },
        http: None,
        version: "sim".to_owned(),
        started_at,
        heartbeat_at: now_millis(),
        cached: Vec::new(),
        draining: false,
        lost_after: None,
        load: Default::default(),
        secrets_key: None,
        lattice_mismatch: None,
        verifies_signatures: true,
        wasi: Vec::new(),
        connection: None,
        compile_target: None,
        binary: None,
        upgrade: None,
    }
}

/// Writes every live host's record once per heartbeat, spread over the period.
async fn heartbeats(
    connections: Vec<Lattice>,
    hosts: Arc<Vec<String>>,
    dead: Arc<std::sync::Mutex<HashSet<String>>>,
    period: Duration,
    stop: Arc<AtomicBool>,
) {
    const TICK: Duration = Duration::from_millis(100);
    let per_tick = (hosts.len() as f64 * TICK.as_secs_f64() / period.as_secs_f64()).ceil() as usize;
    let started_at = now_millis();
    let mut next = 0usize;
    let mut ticker = tokio::time::interval(TICK);
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let dead_now = dead.lock().map(|dead| dead.clone()).unwrap_or_default();
        let batch: Vec<(usize, String)> = (0..per_tick)
            .map(|offset| (next + offset) % hosts.len())
            .map(|index| (index, hosts[index].clone()))
            .filter(|(_, id)| !dead_now.contains(id))
            .collect();
        next = (next + per_tick) % hosts.len();
        futures_util::stream::iter(batch)
            .map(|(index, id)| {
                let lattice = connections[index % connections.len()].clone();
                async move {
                    let record = host_record(&id, started_at);
                    if let Err(error) = lattice.put(Bucket::Hosts, &id, &record).await {
                        eprintln!("heartbeat of {id} failed: {error}");
                    }
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<()>>()
            .await;
    }
}

/// Reports every assignment ready, once, as soon as it is seen (a host that runs nothing).
async fn reporter(
    lattice: Lattice,
    dead: Arc<std::sync::Mutex<HashSet<String>>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(assignments) = lattice.mirror::<Assignment>(Bucket::Assignments, ">").await else {
        eprintln!("cannot follow assignments");
        return;
    };
    let mut changes = assignments.changes();
    let mut reported: HashSet<String> = HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let dead_now = dead.lock().map(|dead| dead.clone()).unwrap_or_default();
        let new: Vec<Assignment> = assignments
            .snapshot()
            .into_iter()
            .map(|record| record.value)
            .filter(|assignment| {
                !dead_now.contains(&assignment.host) && !reported.contains(&assignment.replica)
            })
            .collect();
        for assignment in &new {
            reported.insert(assignment.replica.clone());
        }
        futures_util::stream::iter(new)
            .map(|assignment| {
                let lattice = lattice.clone();
                async move {
                    let status = ReplicaStatus {
                        restarts: 0,
                        last_restart: None,
                        replica: assignment.replica.clone(),
                        app: assignment.app.clone(),
                        namespace: assignment.namespace.clone(),
                        revision: assignment.revision,
                        host: assignment.host.clone(),
                        phase: Phase::Ready,
                        reason: None,
                        message: None,
                        observed_generation: assignment.generation,
                        since: now_millis(),
                        exit_code: None,
                    };
                    let key = replica_status_key(&assignment.host, &assignment.replica);
                    if let Err(error) = lattice.put(Bucket::Status, &key, &status).await {
                        eprintln!("status of {} failed: {error}", assignment.replica);
                    }
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<()>>()
            .await;
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
}

fn spec(index: usize) -> anyhow::Result<AppSpec> {
    let yaml = format!(
        "{{\"component\": \"sim.local/app:1.0\", \"replicas\": 1, \"limits\": {{\"memory\": \"4Mi\"}}, \"routes\": [{{\"path\": \"/app-{index}\"}}]}}"
    );
    Ok(serde_json::from_str(&yaml)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let home = tempfile::tempdir()?;
    let (nats_port, monitor) = (free_port()?, free_port()?);
    let mut processes = Processes(Vec::new());
    let config = home.path().join("nats.conf");
    std::fs::write(&config, "max_payload: 8388608\n")?;
    processes.0.push(
        Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .args(["-m", &monitor.to_string(), "-sd"])
            .arg(home.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (scripts/setup.sh installs it)")?,
    );
    wait_for_port(nats_port)?;
    let url = format!("nats://127.0.0.1:{nats_port}");
    let options = |name: &str| ConnectOptions {
        url: url.clone(),
        lattice: "sim".to_owned(),
        client_name: name.to_owned(),
        auth: NatsAuth::None,
        tls: None,
        ..ConnectOptions::default()
    };
    let scheduler = Command::new(&args.shoal)
        .args(["scheduler", "--id", "s1"])
        .env("SHOAL_NATS", &url)
        .env("SHOAL_LATTICE", "sim")
        .env("SHOAL_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let scheduler_pid = scheduler.id();
    processes.0.push(scheduler);

    let mut connections = Vec::new();
    for index in 0..args.connections.max(1) {
        connections.push(Lattice::connect(&options(&format!("sim-hosts-{index}"))).await?);
    }
    let hosts: Arc<Vec<String>> = Arc::new(
        (0..args.hosts)
            .map(|index| format!("sim-{index}"))
            .collect(),
    );
    let dead = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let beating = tokio::spawn(heartbeats(
        connections.clone(),
        Arc::clone(&hosts),
        Arc::clone(&dead),
        args.heartbeat,
        Arc::clone(&stop),
    ));
    let reporting = tokio::spawn(reporter(
        connections[0].clone(),
        Arc::clone(&dead),
        Arc::clone(&stop),
    ));
    // Every host has written its record once.
    tokio::time::sleep(args.heartbeat + Duration::from_millis(500)).await;
    let idle_rss = rss_mib(scheduler_pid);
    let before = (in_msgs(monitor)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_rate = (in_msgs(monitor)? - before.0) as f64 / before.1.elapsed().as_secs_f64();

    // The scheduler's RSS, sampled while it works.
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max((rss_mib(scheduler_pid) * 1024.0) as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let api = api::Client::new(connections[0].client().clone(), "sim", None);
    let manifests: Vec<AppManifest> = (0..args.apps)
        .map(|index| {
            Ok(AppManifest {
                namespace: "default".to_owned(),
                name: format!("app-{index}"),
                spec: spec(index)?,
                digest: format!("sha256:{}", "0".repeat(64)),
                wasi: None,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let statuses = connections[0]
        .mirror::<AppStatus>(Bucket::Status, "apps.>")
        .await?;
    let assignments = connections[0]
        .mirror::<Assignment>(Bucket::Assignments, ">")
        .await?;
    let applying = (in_msgs(monitor)?, Instant::now());
    let started = Instant::now();
    for batch in manifests.chunks(500) {
        let applied: Vec<AppliedApp> = api
            .call(Apply {
                apps: batch.to_vec(),
            })
            .await
            .map_err(|error| anyhow::anyhow!("apply failed: {error}"))?;
        if applied.len() != batch.len() {
            bail!("{} of {} applied", applied.len(), batch.len());
        }
    }
    let applied_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut placed_in = None;
    let mut changes = statuses.changes();
    loop {
        if placed_in.is_none() && assignments.snapshot().len() >= args.apps {
            placed_in = Some(started.elapsed());
        }
        let ready = statuses
            .snapshot()
            .iter()
            .filter(|status| status.value.ready >= 1)
            .count();
        if ready >= args.apps && placed_in.is_some() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{ready} of {} apps ready after 900 s", args.apps);
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), changes.changed()).await;
    }
    let ready_in = started.elapsed();
    let applying_rate =
        (in_msgs(monitor)? - applying.0) as f64 / applying.1.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let steady = (in_msgs(monitor)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let steady_rate = (in_msgs(monitor)? - steady.0) as f64 / steady.1.elapsed().as_secs_f64();
    let steady_rss = rss_mib(scheduler_pid);

    // A host goes silent: how long until its replicas are placed elsewhere.
    let by_host: HashMap<String, usize> =
        assignments
            .snapshot()
            .into_iter()
            .fold(HashMap::new(), |mut counts, record| {
                *counts.entry(record.value.host).or_default() += 1;
                counts
            });
    let (victim, held) = by_host
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .context("no host holds a replica")?;
    if let Ok(mut dead) = dead.lock() {
        dead.insert(victim.clone());
    }
    // Timed from the host's last heartbeat (a write in flight when it went silent counts).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last_beat = connections[0]
        .get::<HostRecord>(Bucket::Hosts, &victim)
        .await?
        .map_or_else(now_millis, |record| record.value.heartbeat_at);
    let silent = Instant::now()
        .checked_sub(Duration::from_millis(
            now_millis().saturating_sub(last_beat),
        ))
        .unwrap_or_else(Instant::now);
    let mut moved_in = None;
    loop {
        let on_victim = assignments
            .snapshot()
            .iter()
            .filter(|record| record.value.host == victim)
            .count();
        let placed = assignments.snapshot().len();
        if on_victim == 0 && placed >= args.apps {
            moved_in = Some(silent.elapsed());
            break;
        }
        if silent.elapsed() > Duration::from_secs(120) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::join!(beating, reporting, sampling);

    println!(
        "\n| control plane: {} simulated hosts (heartbeat {:?}), {} apps | value |",
        args.hosts, args.heartbeat, args.apps
    );
    println!("| --- | --- |");
    println!(
        "| apply (batches of 500 through the API) | {:.1} s |",
        applied_in.as_secs_f64()
    );
    if let Some(placed_in) = placed_in {
        println!(
            "| apply → every replica placed | {:.1} s |",
            placed_in.as_secs_f64()
        );
    }
    println!(
        "| apply → every app ready | {:.1} s |",
        ready_in.as_secs_f64()
    );
    println!(
        "| scheduler RSS: hosts only / apps placed, idle / peak | {idle_rss:.0} / {steady_rss:.0} / {:.0} MiB |",
        peak.load(Ordering::Relaxed) as f64 / 1024.0
    );
    println!(
        "| nats-server messages in: hosts only / while applying / all placed, idle | {idle_rate:.0} / {applying_rate:.0} / {steady_rate:.0} per s |"
    );
    match moved_in {
        Some(moved_in) => println!(
            "| last heartbeat of a host → its {held} replicas placed elsewhere (host timeout 10 s) | {:.1} s |",
            moved_in.as_secs_f64()
        ),
        None => {
            println!("| host silent → its {held} replicas placed elsewhere | not within 120 s |")
        }
    }
    Ok(())
}
