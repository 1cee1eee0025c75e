//! `shoal run`: one component on this machine, sandboxed and bounded, no lattice.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shoal_host::command::{self, CommandOutcome};
use shoal_host::guest::DirGrant;
use shoal_host::http::{HttpComponent, is_http, serve};
use shoal_host::{GuestOptions, Limits, OutboundPolicy, Runtime, RuntimeOptions};
use shoal_lattice::quantity::Millicores;
use shoal_oci::{ComponentInfo, Digest};

use crate::registry::{RegistryArgs, looks_like_a_file, parse_size};

/// Run a Wasm component on this machine, like `docker run`.
///
/// An HTTP component (wasi:http/proxy, or a WASI 0.3 wasi:http/service) is served on --listen
/// until ctrl-c or SIGTERM, each request in a fresh instance; a command (wasi:cli/command)
/// runs to completion with your terminal's stdio and its exit code becomes shoal's. Guests get
/// WASI 0.2 and 0.3 and nothing else: no files, no environment, no network, unless granted
/// with --dir, --env, --allow-outbound.
///
/// Examples: shoal run localhost:5000/examples/hello:1.0 --listen 127.0.0.1:0
///           shoal run ./hello-cli.wasm --env NAME=edge -- first-arg
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A registry reference (pulled through the cache) or a .wasm file.
    pub target: String,

    /// Address to serve an HTTP component on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Cap on each instance's linear memory (64Mi, 512MiB, …). Past it the request fails
    /// (500, out_of_memory) and the process goes on: a guest cannot take the machine's
    /// memory, as apps cannot.
    #[arg(long, value_parser = parse_size, default_value = "256Mi", help_heading = "Limits")]
    pub memory: u64,

    /// CPU quota in millicores, like cgroups' cpu.max (250m, 0.5, 2). Over quota the guest is
    /// throttled, not killed. Default: unlimited.
    #[arg(long, value_parser = parse_cpu, help_heading = "Limits")]
    pub cpu: Option<u32>,

    /// Wall-clock limit per request (per run for a command); past it, 504.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse, help_heading = "Limits")]
    pub timeout: Duration,

    /// In-flight requests at once; more wait in a queue of the same length, then get 503.
    #[arg(long, default_value_t = 100, help_heading = "Limits")]
    pub concurrency: usize,

    /// Requests one instance may serve, one after another, before a fresh one is made
    /// (1: a fresh instance per request, the default). Faster, but what a request leaves in
    /// the instance (globals, heap) is seen by the next ones; an instance that traps or
    /// times out is never reused, an idle one is dropped after 1s.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000), help_heading = "Limits")]
    pub instance_reuse: u32,

    /// Requests one instance of a WASI 0.3 component serves at once (1: one at a time, the
    /// default). Those requests share the instance's memory and its fate: one that traps or
    /// runs past its timeout ends the others in it. An instance then serves --instance-reuse
    /// requests in all (128 when that is 1). Not with --fuel.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000), help_heading = "Limits", conflicts_with = "fuel")]
    pub instance_concurrency: u32,

    /// Largest request body accepted; past it, 413.
    #[arg(long, default_value = "10MiB", value_parser = parse_size, help_heading = "Limits")]
    pub max_body: u64,

    /// Instructions one request (or the command) may run, counted by wasmtime's fuel: the
    /// same work on any machine, unlike --timeout. Past it the request fails with 508 (a
    /// command stops as on a trap). Counting costs some speed; without it nothing is counted.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=(1u64 << 52)), help_heading = "Limits")]
    pub fuel: Option<u64>,

    /// Largest request head (request line and headers; at least 8KiB); past it, 431.
    #[arg(long, default_value = "64KiB", value_parser = parse_size, help_heading = "Limits")]
    pub max_header: u64,

    /// Set an environment variable in the guest (repeatable); nothing is inherited.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env, help_heading = "Grants")]
    pub env: Vec<(String, String)>,

    /// A value the component reads through wasi:config/store (repeatable), as an app's
    /// spec.config gives it on the lattice.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_env, help_heading = "Grants")]
    pub config: Vec<(String, String)>,

    /// Grant a host directory as HOST:GUEST (read-only) or HOST:GUEST:rw (repeatable).
    #[arg(long = "dir", value_name = "HOST:GUEST[:rw]", help_heading = "Grants")]
    pub dirs: Vec<DirGrant>,

    /// Allow outbound HTTP to this origin, e.g. https://api.example.com or http://*.internal
    /// (repeatable). Everything else is refused.
    #[arg(long = "allow-outbound", value_name = "URL", help_heading = "Grants")]
    pub allow_outbound: Vec<String>,

    /// How long in-flight requests may finish after ctrl-c or SIGTERM.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub drain: Duration,

    /// Use on-demand instance allocation instead of the pooling allocator.
    #[arg(long)]
    pub no_pooling: bool,

    /// Bytes of a free pooling slot's linear memory kept resident (rewritten, not unmapped)
    /// for the next instance: fewer page faults per request, at most 16 slots' worth of
    /// memory held. 0 unmaps it all.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    pub pool_keep_resident: u64,

    #[command(flatten)]
    pub registry: RegistryArgs,

    /// Arguments passed to a command component.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// Parses `250m`, `0.5` or `2` into millicores, as manifests do.
fn parse_cpu(value: &str) -> Result<u32, String> {
    value.parse::<Millicores>().map(|millicores| millicores.0)
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{value:?} is not KEY=VALUE")),
    }
}

/// Reads the component: from a file, or pulled (through the cache) from a registry.
async fn fetch(args: &RunArgs) -> anyhow::Result<(Vec<u8>, Digest)> {
    if !looks_like_a_file(&args.target) {
        let (pulled, bytes) = args.registry.pull_component(&args.target).await?;
        return Ok((bytes, pulled.manifest.layer.digest));
    }
    let path = Path::new(&args.target);
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    ComponentInfo::from_bytes(&bytes).with_context(|| format!("cannot run {}", path.display()))?;
    let digest = Digest::of(&bytes);
    Ok((bytes, digest))
}

pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let (bytes, digest) = fetch(&args).await?;
    let runtime = Runtime::new(RuntimeOptions {
        cache_dir: args.registry.cache_root()?,
        pooling: !args.no_pooling,
        // One component: at most its concurrency in instances at once.
        instance_slots: u32::try_from(args.concurrency)
            .unwrap_or(u32::MAX)
            .clamp(16, 10_000),
        keep_resident: usize::try_from(args.pool_keep_resident).unwrap_or(usize::MAX),
        fuel: args.fuel.is_some(),
        wasi_03: true,
        // One component, compiled once before serving: in this process.
        compiler: None,
    })?;
    let loaded = runtime.load(&bytes, digest.as_str())?;
    if loaded.cache_hit {
        eprintln!(
            "loaded {digest} from the compile cache in {:.0?}",
            loaded.elapsed
        );
    } else {
        eprintln!(
            "compiled {digest} in {:.0?} (cached for next time)",
            loaded.elapsed
        );
    }
    let outbound = OutboundPolicy::new(&args.allow_outbound).map_err(anyhow::Error::msg)?;
    let limits = Limits {
        memory: Some(args.memory),
        cpu_millicores: args.cpu,
        timeout: args.timeout,
        concurrency: args.concurrency,
        queue: args.concurrency,
        max_body: args.max_body,
        max_header: usize::try_from(args.max_header).unwrap_or(usize::MAX),
        instance_reuse: args.instance_reuse,
        instance_concurrency: args.instance_concurrency as usize,
        fuel: args.fuel,
    };
    let mut guest_args = vec![args.target.clone()];
    guest_args.extend(args.args.iter().cloned());
    let options = GuestOptions {
        env: args.env.clone(),
        config: std::sync::Arc::new(args.config.iter().cloned().collect()),
        stores: None,
        // No lattice: nothing to publish to.
        publisher: None,
        dirs: args.dirs.clone(),
        outbound,
        args: guest_args,
        name: args.target.clone(),
        services: None,
        output: None,
    };

    if !is_http(runtime.engine(), &loaded.component) {
        let CommandOutcome { code, failure } =
            command::run(&runtime, &loaded.component, &options, &limits, true).await?;
        if let Some((cause, message)) = failure {
            eprintln!("error: the component failed ({cause}): {message}");
        }
        return Ok(u8::try_from(code & 0xff).unwrap_or(1));
    }

    let component = Arc::new(HttpComponent::new(
        &runtime,
        &loaded.component,
        options,
        limits,
    )?);
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot listen on {}: the address is already in use; pick another with --listen (port 0 picks a free one)",
            args.listen
        ),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot listen on {}", args.listen));
        }
    };
    let address = listener.local_addr()?;
    // stdout carries only the address, for scripts and tests to read.
    println!("listening on http://{address}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    serve(
        listener,
        Arc::clone(&component),
        async {
            crate::signals::shutdown().await;
            eprintln!("shutting down: draining in-flight requests");
        },
        args.drain,
    )
    .await;
    let stats = component.stats();
    eprintln!("stopped after serving {} requests", stats.served());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quotas_parse_like_kubernetes() {
        assert_eq!(parse_cpu("250m"), Ok(250));
        assert_eq!(parse_cpu("0.5"), Ok(500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("fast").is_err());
    }
}
