//! `shoal-bench`: serves the same components with `shoal run`, `wasmtime serve` and a native
//! axum server on this machine, drives each with `wrk`, and prints throughput, latency,
//! startup time and memory as tables with ratios to `wasmtime serve`.
//!
//! One run measures everything (or one part, `--only`), so the ratios compare like with like
//! on the same (noisy) machine: the WASI 0.2 hello, a CPU-bound guest under limits, and the
//! Spin SDK's WASI 0.3 hello against `wasmtime serve -S p3=y`. `bench/run.sh` builds what
//! this needs and calls it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use wrk::Load;

mod wrk;

#[derive(Parser, Debug)]
#[command(about = "Benchmark shoal run against wasmtime serve and a native axum server")]
struct Args {
    /// The `shoal` binary (a release build).
    #[arg(long)]
    shoal: PathBuf,
    /// The `wasmtime` CLI binary, the same version Shoal embeds.
    #[arg(long)]
    wasmtime: PathBuf,
    /// The native axum hello server (`native-hello`, a release build).
    #[arg(long)]
    native: PathBuf,
    /// Directory holding hello_http.wasm and http_fixtures.wasm.
    #[arg(long)]
    guests: PathBuf,
    /// How long wrk drives each server.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    duration: u64,
    /// wrk threads.
    #[arg(long, default_value = "2")]
    threads: u32,
    /// wrk connections.
    #[arg(long, default_value = "32")]
    connections: u32,
    /// Units of work per request of the CPU-bound guest (one unit is 10,000 xorshift steps).
    #[arg(long, default_value = "50")]
    work_units: u32,
    /// Run one part only: `hello` (WASI 0.2), `cpu` (limits' cost) or `wasi-03` (the Spin SDK
    /// hello, a WASI 0.3 component).
    #[arg(long, value_parser = ["hello", "cpu", "wasi-03"])]
    only: Option<String>,
}

/// A way of serving a component.
#[derive(Clone, Copy, PartialEq)]
enum Server {
    Wasmtime,
    Shoal,
    Native,
}

/// One configuration to measure.
struct Case {
    label: String,
    server: Server,
    component: PathBuf,
    extra: Vec<String>,
    path: String,
}

/// What one case measured.
struct Measured {
    label: String,
    cold_start: Duration,
    warm_start: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    load: Load,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for tool in [&args.shoal, &args.wasmtime, &args.native] {
        if !tool.is_file() {
            bail!("{} does not exist; bench/run.sh builds it", tool.display());
        }
    }
    let hello = args.guests.join("hello_http.wasm");
    let fixtures = args.guests.join("http_fixtures.wasm");
    let spin = args.guests.join("hello_spin.wasm");
    for component in [&hello, &fixtures, &spin] {
        if !component.is_file() {
            bail!(
                "{} does not exist; run scripts/build-guests.sh",
                component.display()
            );
        }
    }
    println!(
        "wrk -t{} -c{} -d{}s on {} cores; RUST_BACKTRACE unset for every server\n",
        args.threads,
        args.connections,
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let hello_cases = [
        case("wasmtime serve", Server::Wasmtime, &hello, &[], "/"),
        case("shoal run", Server::Shoal, &hello, &[], "/"),
        case(
            "shoal run --pool-keep-resident 0",
            Server::Shoal,
            &hello,
            &["--pool-keep-resident", "0"],
            "/",
        ),
        case(
            "wasmtime serve --max-instance-reuse-count 128",
            Server::Wasmtime,
            &hello,
            &["--max-instance-reuse-count", "128"],
            "/",
        ),
        case(
            "shoal run --instance-reuse 128",
            Server::Shoal,
            &hello,
            &["--instance-reuse", "128"],
            "/",
        ),
        case("native axum", Server::Native, &hello, &[], "/"),
    ];
    let part = |name: &str| args.only.as_deref().is_none_or(|only| only == name);
    if part("wasi-03") {
        wasi_03(&args, &spin)?;
    }
    if part("hello") {
        hello_part(&args, &hello_cases)?;
    }
    if part("cpu") {
        cpu_part(&args, &fixtures)?;
    }
    Ok(())
}

const PEER_FRESH: &str = "wasmtime serve -S p3=y (instance per request)";
const PEER_SHARED: &str = "wasmtime serve -S p3=y (defaults: 16 at once, 128 each)";
const SHOAL_SHARED: &str = "shoal run --instance-concurrency 16 --instance-reuse 128";

fn case(label: &str, server: Server, component: &Path, extra: &[&str], path: &str) -> Case {
    Case {
        label: label.to_owned(),
        server,
        component: component.to_owned(),
        extra: extra.iter().map(|&extra| extra.to_owned()).collect(),
        path: path.to_owned(),
    }
}

/// The requests per second of the case labelled `label`.
fn rate(results: &[Measured], label: &str) -> f64 {
    results
        .iter()
        .find(|result| result.label == label)
        .map_or(f64::NAN, |result| result.load.requests_per_second)
}

/// The Spin SDK's hello (a WASI 0.3 component) under `shoal run` and `wasmtime serve -S
/// p3=y`: an instance per request in both, then each one's way of serving several
/// requests per instance; and latency at concurrency 1.
fn wasi_03(args: &Args, spin: &Path) -> anyhow::Result<()> {
    let fresh = [
        "-S",
        "p3=y",
        "--max-instance-reuse-count",
        "1",
        "--max-instance-concurrent-reuse-count",
        "1",
    ];
    let cases = [
        case(PEER_FRESH, Server::Wasmtime, spin, &fresh, "/"),
        case("shoal run", Server::Shoal, spin, &[], "/"),
        case(PEER_SHARED, Server::Wasmtime, spin, &["-S", "p3=y"], "/"),
        case(
            SHOAL_SHARED,
            Server::Shoal,
            spin,
            &["--instance-concurrency", "16", "--instance-reuse", "128"],
            "/",
        ),
    ];
    let mut results = Vec::new();
    for case in &cases {
        results.push(measure(args, case)?);
    }
    println!("WASI 0.3 hello: the Spin SDK 7 example (GET /)");
    println!("{}\n", table(&results, true));
    println!(
        "instance per request: shoal run / wasmtime serve = {:.2}",
        rate(&results, "shoal run") / rate(&results, PEER_FRESH)
    );
    println!(
        "several per instance: shoal run / wasmtime serve = {:.2}",
        rate(&results, SHOAL_SHARED) / rate(&results, PEER_SHARED)
    );
    // One request at a time: the latency a single client sees.
    for case in &cases[..2] {
        let cache = tempfile::tempdir()?;
        let (child, _, url) = start(args, case, cache.path())?;
        let load = wrk::run(1, 1, args.duration, &format!("{url}/"));
        stop(child);
        let load = load?;
        println!(
            "concurrency 1, {}: p50 {} p99 {} ({:.0} req/s)",
            case.label,
            format_duration(load.p50),
            format_duration(load.p99),
            load.requests_per_second
        );
    }
    println!();
    Ok(())
}

fn hello_part(args: &Args, hello_cases: &[Case]) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for case in hello_cases {
        results.push(measure(args, case)?);
    }
    println!("hello component (GET /)");
    println!("{}\n", table(&results, true));
    println!(
        "fresh instance per request: shoal run / wasmtime serve = {:.2}",
        rate(&results, "shoal run") / rate(&results, "wasmtime serve")
    );
    println!(
        "instance reuse (128): shoal run / wasmtime serve = {:.2}\n",
        rate(&results, "shoal run --instance-reuse 128")
            / rate(&results, "wasmtime serve --max-instance-reuse-count 128")
    );

    Ok(())
}

fn cpu_part(args: &Args, fixtures: &Path) -> anyhow::Result<()> {
    let work = format!("/work?units={}", args.work_units);
    let fuel = u64::MAX.to_string();
    // A budget that never binds: what counting costs (epochs, the deadline and CPU
    // accounting, are always on in shoal).
    let shoal_fuel = (1u64 << 52).to_string();
    let cpu_cases = [
        case("wasmtime serve", Server::Wasmtime, fixtures, &[], &work),
        case(
            "wasmtime serve -W fuel",
            Server::Wasmtime,
            fixtures,
            &["-W", &format!("fuel={fuel}")],
            &work,
        ),
        case("shoal run", Server::Shoal, fixtures, &[], &work),
        case(
            "shoal run --cpu 2 --memory 64Mi",
            Server::Shoal,
            fixtures,
            &["--cpu", "2", "--memory", "64Mi"],
            &work,
        ),
        case(
            "shoal run --fuel (never binds)",
            Server::Shoal,
            fixtures,
            &["--fuel", &shoal_fuel],
            &work,
        ),
    ];
    let mut results = Vec::new();
    for case in &cpu_cases {
        results.push(measure(args, case)?);
    }
    println!(
        "CPU-bound guest (GET {work}); limits that never bind, so this is their bookkeeping cost"
    );
    println!("{}", table(&results, false));
    let throughput = |label: &str| rate(&results, label);
    println!(
        "limit overhead in shoal: {:.1}%; fuel overhead in shoal: {:.1}%; fuel overhead in wasmtime: {:.1}%",
        overhead(
            throughput("shoal run"),
            throughput("shoal run --cpu 2 --memory 64Mi")
        ),
        overhead(
            throughput("shoal run"),
            throughput("shoal run --fuel (never binds)")
        ),
        overhead(
            throughput("wasmtime serve"),
            throughput("wasmtime serve -W fuel")
        ),
    );
    Ok(())
}

/// How much slower `limited` is than `free`, in percent.
fn overhead(free: f64, limited: f64) -> f64 {
    (1.0 - limited / free) * 100.0
}

/// Starts the case twice (cold caches, then warm), measures memory while idle, then load.
fn measure(args: &Args, case: &Case) -> anyhow::Result<Measured> {
    eprintln!("measuring {} on {}", case.label, case.path);
    let cache = tempfile::tempdir()?;
    let (child, cold_start, _) = start(args, case, cache.path())?;
    stop(child);
    let (child, warm_start, url) = start(args, case, cache.path())?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss_kib = memory(child.id(), "VmRSS:");
    let load = wrk(args, &format!("{url}{}", case.path));
    let peak_rss_kib = memory(child.id(), "VmHWM:");
    stop(child);
    Ok(Measured {
        label: case.label.clone(),
        cold_start,
        warm_start,
        idle_rss_kib,
        peak_rss_kib,
        load: load?,
    })
}

/// Starts the server on a free port; returns it, the time to its first 200 and its URL.
fn start(args: &Args, case: &Case, cache: &Path) -> anyhow::Result<(Child, Duration, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut command = match case.server {
        Server::Wasmtime => {
            let mut command = Command::new(&args.wasmtime);
            command
                .args(["serve", "-S", "cli=y", "--addr", &address])
                .args(&case.extra)
                .arg(&case.component)
                // wasmtime's compile cache lives under the XDG cache directory.
                .env("XDG_CACHE_HOME", cache);
            command
        }
        Server::Shoal => {
            let mut command = Command::new(&args.shoal);
            command
                .arg("run")
                .arg(&case.component)
                .args(["--listen", &address])
                .args(&case.extra)
                .env("SHOAL_CACHE_DIR", cache);
            command
        }
        Server::Native => {
            let mut command = Command::new(&args.native);
            command.arg(&address);
            command
        }
    };
    let started = Instant::now();
    let mut child = command
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .env_remove("SHOAL_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", case.label))?;
    let url = format!("http://{address}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let deadline = started + Duration::from_secs(60);
    loop {
        if let Ok(response) = agent.get(&format!("{url}{}", case.path)).call()
            && response.status() == 200
        {
            return Ok((child, started.elapsed(), url));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{} exited with {status} before serving", case.label);
        }
        if Instant::now() > deadline {
            stop(child);
            bail!("{} did not answer 200 within 60 s", case.label);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A `/proc/PID/status` memory field in KiB (0 where unavailable).
fn memory(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|value| value.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn wrk(args: &Args, url: &str) -> anyhow::Result<Load> {
    wrk::run(args.threads, args.connections, args.duration, url)
}

fn table(results: &[Measured], with_startup: bool) -> String {
    let baseline = results
        .iter()
        .find(|result| result.label.starts_with("wasmtime serve"))
        .map(|result| (result.load.requests_per_second, result.load.p50));
    let mut table = Table::new();
    table.load_style(UTF8_FULL_CONDENSED);
    let mut header = vec![
        "server",
        "req/s",
        "× wasmtime",
        "p50",
        "× wasmtime",
        "p99",
        "errors",
    ];
    if with_startup {
        header.extend([
            "first 200 (cold)",
            "first 200 (warm)",
            "idle RSS",
            "peak RSS",
        ]);
    }
    table.set_header(header);
    for result in results {
        let (rate_ratio, p50_ratio) = baseline.map_or((f64::NAN, f64::NAN), |(rate, p50)| {
            (
                result.load.requests_per_second / rate,
                result.load.p50.as_secs_f64() / p50.as_secs_f64(),
            )
        });
        let mut row = vec![
            result.label.clone(),
            format!("{:.0}", result.load.requests_per_second),
            format!("{rate_ratio:.2}"),
            format_duration(result.load.p50),
            format!("{p50_ratio:.2}"),
            format_duration(result.load.p99),
            result.load.errors.to_string(),
        ];
        if with_startup {
            row.extend([
                format_duration(result.cold_start),
                format_duration(result.warm_start),
                format!("{:.1} MiB", result.idle_rss_kib as f64 / 1024.0),
                format!("{:.1} MiB", result.peak_rss_kib as f64 / 1024.0),
            ]);
        }
        table.add_row(row);
    }
    table.to_string()
}

fn format_duration(duration: Duration) -> String {
    if duration < Duration::from_millis(1) {
        format!("{} µs", duration.as_micros())
    } else {
        format!("{:.2} ms", duration.as_secs_f64() * 1e3)
    }
}
