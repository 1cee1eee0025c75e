//! `lattice-bench`: times the lattice's two promises on this machine, with real processes:
//! apply to all replicas ready (3 hosts), and host killed (kill -9) to its replicas ready
//! elsewhere, with the scheduler's default host timeout. Each is repeated and the median
//! and worst are printed. Then hello served locally against forwarded over NATS, twice: on
//! the machine's shared CPUs, and with each host held to its own CPU quota (a cgroup), as
//! hosts on machines of their own are; then guest output's cost and a rollout under load.

#[path = "../local.rs"]
mod local;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use local::{Processes, cpu_time, free_port, wait_for_port};
use shoal_lattice::records::{Phase, ReplicaStatus};
use shoal_lattice::{Bucket, ConnectOptions, Lattice, Mirror};

#[derive(Parser, Debug)]
#[command(about = "Time apply-to-ready and host-loss-to-ready on a local lattice")]
struct Args {
    /// The `shoal` binary (a release build).
    #[arg(long)]
    shoal: PathBuf,
    /// hello_http.wasm.
    #[arg(long)]
    component: PathBuf,
    /// greeter.wasm, for the rollout benchmark.
    #[arg(long)]
    greeter: PathBuf,
    /// http_fixtures.wasm, for the guest output benchmark.
    #[arg(long)]
    fixtures: PathBuf,
    /// Repetitions of each measurement.
    #[arg(long, default_value = "5")]
    runs: usize,
    /// Measure only the forwarded path (local vs forwarded, on shared and on own CPUs).
    #[arg(long)]
    only_forwarded: bool,
    /// The CPU each host gets of its own for the second forwarded comparison (a cgroup
    /// quota, as if each host were a machine of its own); 0 skips that comparison.
    #[arg(long, default_value = "0.5")]
    host_cpu: f64,
    /// Rounds of each forwarded comparison (local then forwarded, alternating).
    #[arg(long, default_value = "2")]
    forward_rounds: usize,
}

/// A cgroup holding processes to a CPU quota (cgroup v2's `cpu.max`, or v1's
/// `cpu.cfs_quota_us`); its processes go back to the root cgroup and it is removed on drop.
struct CpuBudget {
    dir: PathBuf,
    root: PathBuf,
    pids: Vec<u32>,
}

impl CpuBudget {
    /// A cgroup named `name` allowing `cpus` CPUs (0.5: half of one); `None` when neither
    /// cgroup version's CPU controller is writable here (not root, or in a container).
    fn new(name: &str, cpus: f64) -> Option<Self> {
        // A short period (10 ms) spreads the quota evenly: with the default 100 ms, a host
        // would serve for 50 ms and then stall for 50.
        let period = 10_000u64;
        let quota = (cpus * period as f64) as u64;
        let v2 = PathBuf::from("/sys/fs/cgroup");
        let v2_has_cpu = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"));
        let (root, file, value) = if v2_has_cpu {
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            (v2, "cpu.max", format!("{quota} {period}"))
        } else {
            (
                PathBuf::from("/sys/fs/cgroup/cpu"),
                "cpu.cfs_quota_us",
                quota.to_string(),
            )
        };
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let budget = CpuBudget {
            dir,
            root,
            pids: Vec::new(),
        };
        if file == "cpu.cfs_quota_us" {
            std::fs::write(budget.dir.join("cpu.cfs_period_us"), period.to_string()).ok()?;
        }
        std::fs::write(budget.dir.join(file), value).ok()?;
        Some(budget)
    }

    /// Moves `pid` (all its threads) into the budget.
    fn hold(&mut self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("cannot move {pid} into {}", self.dir.display()))?;
        self.pids.push(pid);
        Ok(())
    }
}

impl Drop for CpuBudget {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A nats-server config with room for 8 MiB forwarded bodies, as `shoal up` writes.
fn nats_config(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("nats.conf");
    std::fs::write(&path, "max_payload: 9437184\n")?;
    Ok(path)
}

struct Bench {
    shoal: PathBuf,
    home: tempfile::TempDir,
    nats: String,
    lattice: String,
    processes: Processes,
    /// Running hosts: (id, ingress URL).
    hosts: Vec<(String, String)>,
    /// The bench registry, `127.0.0.1:<port>`.
    registry: String,
}

impl Bench {
    /// Pushes `component` as `bench/<name>:1.0`; returns the reference.
    fn push(&self, component: &std::path::Path, name: &str) -> anyhow::Result<String> {
        let reference = format!("{}/bench/{name}:1.0", self.registry);
        let pushed = self
            .command()
            .arg("push")
            .arg(component)
            .arg(&reference)
            .output()?;
        if !pushed.status.success() {
            bail!("push failed: {}", String::from_utf8_lossy(&pushed.stderr));
        }
        Ok(reference)
    }

    /// Writes `manifest` to `<name>.yaml` and applies it.
    fn apply(&self, name: &str, manifest: &str) -> anyhow::Result<()> {
        let file = self.home.path().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest)?;
        let applied = self.command().args(["apply", "-f"]).arg(&file).output()?;
        if !applied.status.success() {
            bail!("apply failed: {}", String::from_utf8_lossy(&applied.stderr));
        }
        Ok(())
    }

    /// The host running `app`'s ready replica, and its ingress URL.
    fn owner(&self, status: &Mirror<ReplicaStatus>, app: &str) -> anyhow::Result<(String, String)> {
        let owner = status
            .snapshot()
            .into_iter()
            .find(|status| status.value.app == app && status.value.phase == Phase::Ready)
            .map(|status| status.value.host)
            .with_context(|| format!("no ready replica of {app}"))?;
        let url = self
            .hosts
            .iter()
            .find(|(id, _)| *id == owner)
            .map(|(_, url)| url.clone())
            .with_context(|| format!("the ingress of {owner} is unknown"))?;
        Ok((owner, url))
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.shoal);
        command
            .env("SHOAL_NATS", &self.nats)
            .env("SHOAL_LATTICE", &self.lattice)
            .env("SHOAL_CACHE_DIR", self.home.path().join("cache"))
            .env_remove("RUST_BACKTRACE")
            .env_remove("SHOAL_LOG");
        command
    }

    fn host(&mut self, id: &str) -> anyhow::Result<()> {
        let mut child = self
            .command()
            .args([
                "host",
                "--id",
                id,
                "--http",
                "127.0.0.1:0",
                "--heartbeat",
                "1s",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        let Some(url) = line.trim().strip_prefix("ingress listening on ") else {
            bail!("host {id} did not start");
        };
        self.hosts.push((id.to_owned(), url.to_owned()));
        self.processes.0.push(child);
        Ok(())
    }
}

fn ready_replicas(status: &Mirror<ReplicaStatus>, app: &str, excluding: Option<&str>) -> usize {
    status
        .snapshot()
        .into_iter()
        .filter(|status| {
            status.value.app == app
                && status.value.phase == Phase::Ready
                && excluding != Some(status.value.host.as_str())
        })
        .count()
}

/// Waits, woken by each status change, until `app` has `count` ready replicas.
async fn wait_ready(
    status: &Mirror<ReplicaStatus>,
    app: &str,
    count: usize,
    excluding: Option<&str>,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut changes = status.changes();
    while ready_replicas(status, app, excluding) != count {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            bail!("{app} did not get {count} ready replicas within 60 s");
        }
    }
    Ok(())
}

fn summary(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let median = times[times.len() / 2];
    let worst = times[times.len() - 1];
    println!(
        "{label:<42} median {:>8.1} ms   worst {:>8.1} ms   ({} runs)",
        median.as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3,
        times.len()
    );
}

#[path = "../wrk.rs"]
mod wrk;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let home = tempfile::tempdir()?;
    let nats_port = free_port()?;
    let registry_port = free_port()?;
    let mut processes = Processes(Vec::new());
    processes.0.push(
        Command::new("nats-server")
            .arg("-c")
            .arg(nats_config(home.path())?)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &nats_port.to_string(),
                "-sd",
            ])
            .arg(home.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start nats-server (scripts/setup.sh installs it)")?,
    );
    let config = home.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{registry_port}\n",
            home.path().join("registry").display()
        ),
    )?;
    processes.0.push(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start docker-registry")?,
    );
    wait_for_port(nats_port)?;
    wait_for_port(registry_port)?;

    let mut bench = Bench {
        shoal: args.shoal.clone(),
        home,
        nats: format!("nats://127.0.0.1:{nats_port}"),
        lattice: "bench".to_owned(),
        processes,
        hosts: Vec::new(),
        registry: format!("127.0.0.1:{registry_port}"),
    };
    let reference = bench.push(&args.component, "hello")?;
    let scheduler = bench
        .command()
        .args(["scheduler", "--host-timeout", "3s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    bench.processes.0.push(scheduler);
    for id in ["h1", "h2", "h3"] {
        bench.host(id)?;
    }
    let lattice = Lattice::connect(&ConnectOptions {
        url: bench.nats.clone(),
        lattice: bench.lattice.clone(),
        client_name: "lattice-bench".to_owned(),
        ..ConnectOptions::default()
    })
    .await?;
    let status: Mirror<ReplicaStatus> = lattice.mirror(Bucket::Status, "replicas.>").await?;
    // Let every host's first heartbeat land before timing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("3 hosts (host timeout 3 s, heartbeat 1 s: a LAN's settings), 3 replicas of hello\n");

    let mut apply_times = Vec::new();
    let mut loss_times = Vec::new();
    let runs = if args.only_forwarded { 0 } else { args.runs };
    for run in 0..runs {
        let app = format!("hello-{run}");
        let manifest = format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {app}}}\nspec:\n  component: {reference}\n  replicas: 3\n  routes: [{{path: /{app}}}]\n"
        );
        let started = Instant::now();
        bench.apply(&app, &manifest)?;
        wait_ready(&status, &app, 3, None).await?;
        apply_times.push(started.elapsed());

        // kill -9 the newest host (the scheduler spreads, so it runs one replica), time
        // until 3 replicas are ready on the others, then start a replacement host.
        let victim_index = bench.processes.0.len() - 1;
        let victim_id = format!("h{}", 4 + run);
        let mut victim = bench.processes.0.remove(victim_index);
        let victim_name = if run == 0 {
            "h3".to_owned()
        } else {
            format!("h{}", 3 + run)
        };
        bench.hosts.retain(|(id, _)| *id != victim_name);
        let killed = Instant::now();
        let _ = victim.kill();
        let _ = victim.wait();
        wait_ready(&status, &app, 3, Some(&victim_name)).await?;
        loss_times.push(killed.elapsed());
        bench.host(&victim_id)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let _ = bench.command().args(["delete", "app", &app]).output();
    }
    if !args.only_forwarded {
        summary("apply → 3 replicas ready", apply_times);
        summary("host killed → its replica ready elsewhere", loss_times);
    }

    // One replica; wrk through its host (local) and through another host (forwarded).
    bench.apply(
        "fw",
        &format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: fw}}\nspec:\n  component: {reference}\n  replicas: 1\n  routes: [{{path: /fw}}]\n"
        ),
    )?;
    wait_ready(&status, "fw", 1, None).await?;
    let (owner, owner_url) = bench.owner(&status, "fw")?;
    let local_url = format!("{owner_url}/fw");
    let remote_url = bench
        .hosts
        .iter()
        .find(|(id, _)| *id != owner)
        .map(|(_, url)| format!("{url}/fw"))
        .context("no other host")?;
    let front = bench
        .hosts
        .iter()
        .position(|(id, _)| *id != owner)
        .context("no other host")?;
    let back = bench
        .hosts
        .iter()
        .position(|(id, _)| *id == owner)
        .context("no owner")?;
    // Processes: nats-server, registry, scheduler, then the hosts in order.
    let pid = |index: usize| {
        bench
            .processes
            .0
            .get(index)
            .map_or(0, std::process::Child::id)
    };
    let watched = [
        ("nats-server", pid(0)),
        ("host with the replica", pid(3 + back)),
        ("host forwarding", pid(3 + front)),
    ];
    let forwarded_rounds = |title: &str| -> anyhow::Result<()> {
        for round in 1..=args.forward_rounds {
            compare_watching(
                &format!("{title}, round {round}"),
                ("local", &local_url),
                ("forwarded over NATS", &remote_url),
                "forwarded / local",
                &watched,
            )?;
        }
        Ok(())
    };
    forwarded_rounds("hello through its own host and through another host")?;
    // On one machine every process shares its CPUs, so the comparison above weighs the
    // forwarding host's and nats-server's work against the app's. Across machines each host
    // has CPUs of its own: hold each to the same quota and compare again.
    if args.host_cpu > 0.0 {
        let budgets = [("app", pid(3 + back)), ("front", pid(3 + front))]
            .into_iter()
            .map(|(name, pid)| {
                let mut budget = CpuBudget::new(&format!("shoal-bench-{name}"), args.host_cpu)?;
                budget.hold(pid).ok()?;
                Some(budget)
            })
            .collect::<Option<Vec<CpuBudget>>>();
        match budgets {
            Some(_held) => forwarded_rounds(&format!(
                "the same, each host held to {} CPU by a cgroup (a machine of its own)",
                args.host_cpu
            ))?,
            None => println!(
                "\n(each host on its own CPU budget: skipped, no writable cgroup CPU controller; run as root)"
            ),
        }
    }
    if args.only_forwarded {
        return Ok(());
    }

    guest_output(&bench, &status, &args.fixtures).await?;
    rollout_under_load(&bench, &status, &args.greeter).await
}

/// Warms both URLs (compile, endpoints), then runs wrk -t2 -c32 -d10s on
/// each in turn and prints both and the ratio of their throughputs (second / first).
fn compare(
    title: &str,
    first: (&str, &str),
    second: (&str, &str),
    ratio: &str,
) -> anyhow::Result<(wrk::Load, wrk::Load)> {
    compare_watching(title, first, second, ratio, &[])
}

/// [`compare`], also printing the CPU time each `watched` process spent per request in
/// each run: where a request's cost goes.
fn compare_watching(
    title: &str,
    (first_label, first_url): (&str, &str),
    (second_label, second_url): (&str, &str),
    ratio: &str,
    watched: &[(&str, u32)],
) -> anyhow::Result<(wrk::Load, wrk::Load)> {
    wrk::run(1, 4, 1, first_url)?;
    wrk::run(1, 4, 1, second_url)?;
    let measured = |url: &str| -> anyhow::Result<(wrk::Load, Vec<Duration>)> {
        let before: Vec<Duration> = watched.iter().map(|(_, pid)| cpu_time(*pid)).collect();
        let load = wrk::run(2, 32, 10, url)?;
        let spent = watched
            .iter()
            .zip(before)
            .map(|((_, pid), before)| cpu_time(*pid).saturating_sub(before))
            .collect();
        Ok((load, spent))
    };
    let (first, first_cpu) = measured(first_url)?;
    let (second, second_cpu) = measured(second_url)?;
    println!("\n{title} (wrk -t2 -c32 -d10s):");
    for (label, load, cpu) in [
        (first_label, &first, &first_cpu),
        (second_label, &second, &second_cpu),
    ] {
        println!(
            "{label:<22} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
            load.requests_per_second,
            load.p50.as_secs_f64() * 1e3,
            load.p99.as_secs_f64() * 1e3,
            load.errors
        );
        let requests = (load.requests_per_second * 10.0).max(1.0);
        for ((name, _), spent) in watched.iter().zip(cpu) {
            println!(
                "    CPU per request, {name:<22} {:>6.1} µs",
                spent.as_secs_f64() * 1e6 / requests
            );
        }
    }
    println!(
        "{ratio} throughput: {:.2}",
        second.requests_per_second / first.requests_per_second
    );
    Ok((first, second))
}

/// The cost of guest output: the same fixture route through its own host, answering
/// without a line and printing one line a request (each published to the lattice's logs).
async fn guest_output(
    bench: &Bench,
    status: &Mirror<ReplicaStatus>,
    fixtures: &std::path::Path,
) -> anyhow::Result<()> {
    let reference = bench.push(fixtures, "fixtures")?;
    bench.apply(
        "printer",
        &format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: printer}}\nspec:\n  component: {reference}\n  replicas: 1\n  routes: [{{path: /print}}]\n"
        ),
    )?;
    wait_ready(status, "printer", 1, None).await?;
    let (_, base) = bench.owner(status, "printer")?;
    let silent = format!("{base}/print");
    let printing =
        format!("{base}/print?out=a-line-of-guest-output-of-about-sixty-bytes-0123456789");
    let (_, logged) = compare(
        "guest output: the same route silent and printing a line a request, local",
        ("no output", &silent),
        ("one line a request", &printing),
        "printing / silent",
    )?;
    let counted = bench
        .command()
        .args(["logs", "printer", "-o", "json"])
        .output()?;
    let kept = String::from_utf8_lossy(&counted.stdout).lines().count();
    println!(
        "lines kept by the lattice: {kept} of about {:.0} printed",
        logged.requests_per_second * 10.0
    );
    Ok(())
}

/// 30 replicas of the greeter over the hosts; wrk through every host while v1 rolls to v2.
async fn rollout_under_load(
    bench: &Bench,
    status: &Mirror<ReplicaStatus>,
    greeter: &std::path::Path,
) -> anyhow::Result<()> {
    let reference = bench.push(greeter, "greeter")?;
    let apply = |version: &str| {
        bench.apply(
            "greeter",
            &format!(
                "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: greeter}}\nspec:\n  component: {reference}\n  replicas: 30\n  routes: [{{path: /greeter}}]\n  config: {{GREETING: {version}}}\n"
            ),
        )
    };
    apply("v1")?;
    wait_ready(status, "greeter", 30, None).await?;
    let urls: Vec<String> = bench
        .hosts
        .iter()
        .map(|(_, url)| format!("{url}/greeter"))
        .collect();
    // Steady state under the same load as the rollout: wrk through every host at once.
    let steady: Vec<_> = urls
        .iter()
        .map(|url| {
            let url = url.clone();
            std::thread::spawn(move || wrk::run(1, 8, 5, &url))
        })
        .collect();
    let mut steady_p99 = Duration::ZERO;
    for load in steady {
        let load = load
            .join()
            .map_err(|_| anyhow::anyhow!("a wrk thread panicked"))??;
        steady_p99 = steady_p99.max(load.p99);
    }

    // wrk through every host for 20 s; the rollout starts 2 s in.
    let loads: Vec<_> = urls
        .iter()
        .map(|url| {
            let url = url.clone();
            std::thread::spawn(move || wrk::run(1, 8, 20, &url))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    apply("v2")?;
    let lattice_revision = 2;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut changes = status.changes();
    loop {
        let done = status
            .snapshot()
            .iter()
            .filter(|replica| replica.value.app == "greeter")
            .filter(|replica| {
                replica.value.phase == Phase::Ready && replica.value.revision == lattice_revision
            })
            .count()
            >= 30
            && status
                .snapshot()
                .iter()
                .filter(|replica| {
                    replica.value.app == "greeter" && replica.value.revision != lattice_revision
                })
                .count()
                == 0;
        if done {
            break;
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            bail!("the rollout of 30 replicas did not finish within 120 s");
        }
    }
    let rollout_time = started.elapsed();
    let mut failed = 0;
    let mut worst_p99 = Duration::ZERO;
    let mut total = 0.0;
    for load in loads {
        let load = load
            .join()
            .map_err(|_| anyhow::anyhow!("a wrk thread panicked"))??;
        failed += load.errors;
        worst_p99 = worst_p99.max(load.p99);
        total += load.requests_per_second;
    }
    println!(
        "\nrollout of 30 replicas over {} hosts under wrk through every host (-t1 -c8 each):",
        urls.len()
    );
    println!(
        "rollout time {:.2} s, {failed} failed requests, {total:.0} req/s in total, p99 during the rollout {:.2} ms vs {:.2} ms steady (worst host, same load)",
        rollout_time.as_secs_f64(),
        worst_p99.as_secs_f64() * 1e3,
        steady_p99.as_secs_f64() * 1e3
    );
    Ok(())
}
