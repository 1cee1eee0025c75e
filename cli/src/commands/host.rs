//! `shoal host`: joins a lattice as a host, runs the replicas assigned to it and serves
//! them on its HTTP ingress.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shoal_host::agent::{Agent, AgentOptions, Fetch, FetchError, Fetched};
use shoal_host::{Runtime, RuntimeOptions};
use shoal_lattice::quantity::{Memory, Millicores};
use shoal_lattice::records::Capacity;
use shoal_lattice::trust::TrustedKey;
use shoal_oci::{Client, parse_reference};

use crate::lattice::LatticeArgs;
use crate::registry::RegistryArgs;

/// Join a lattice as a host: run the replicas the scheduler assigns here.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// Host id, unique in the lattice [default: the id of a host credential (--nats-creds),
    /// else this machine's hostname and a random suffix kept in the cache directory, so
    /// devices cloned from one image still get distinct ids].
    #[arg(long)]
    pub id: Option<String>,

    /// A label for placement, KEY=VALUE (repeatable); `arch` and `os` are added.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Address of the HTTP ingress; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,

    /// Memory replicas may reserve [default: 80% of this machine's memory].
    #[arg(long)]
    pub memory: Option<Memory>,

    /// CPU replicas may reserve [default: all cores].
    #[arg(long)]
    pub cpu: Option<Millicores>,

    /// Most replicas this host runs.
    #[arg(long, default_value = "100")]
    pub max_replicas: u32,

    /// The WASI versions this host runs. `--wasi 0.2` keeps WASI 0.3 (the component model's
    /// async ABI, which wasmtime 48 calls experimental) off this host: the scheduler gives
    /// it no 0.3 component.
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.3", value_parser = ["0.2", "0.3"])]
    pub wasi: Vec<String>,

    /// How often the host record is refreshed.
    #[arg(long, default_value = "2s", value_parser = crate::duration::parse)]
    pub heartbeat: Duration,

    /// How long the scheduler waits for this host's heartbeat before it counts the host
    /// lost and places its replicas elsewhere [default: the scheduler's --host-timeout].
    /// Raise it for hosts on slow or lossy links (cellular, satellite).
    #[arg(long, value_parser = crate::duration::parse)]
    pub lost_after: Option<Duration>,

    /// Where the host keeps what it needs to serve while its lattice is unreachable (its
    /// assignments and routes; components and compiled code stay in the cache)
    /// [default: <cache dir>/hosts/<id>].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Follow the lattice as it is, even when it is not the one the saved state came from
    /// (a NATS server wiped or replaced): saved replicas it does not assign here stop.
    /// Without it, such a host keeps serving and reports the mismatch.
    #[arg(long)]
    pub adopt_lattice: bool,

    /// How long in-flight requests may take to finish on shutdown.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub drain: Duration,

    /// Serve the ingress over TLS with this certificate chain (PEM); repeat with --tls-key
    /// for several certificates, chosen per connection by the name the client asks for.
    #[arg(
        long = "tls-cert",
        value_name = "FILE",
        requires = "tls_keys",
        help_heading = "Ingress TLS"
    )]
    pub tls_certs: Vec<PathBuf>,

    /// The private key (PEM) of the --tls-cert at the same position.
    #[arg(
        long = "tls-key",
        value_name = "FILE",
        requires = "tls_certs",
        help_heading = "Ingress TLS"
    )]
    pub tls_keys: Vec<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics: requests and latencies per app
    /// (local and forwarded), replicas, dropped guest output [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Most open ingress connections; more are closed as soon as they are accepted.
    #[arg(long, default_value = "10000", help_heading = "Ingress limits")]
    pub max_connections: usize,

    /// How long a client may take to send its first byte, a whole request head, or its
    /// next request on a kept-alive connection before the connection is closed.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse, help_heading = "Ingress limits")]
    pub header_timeout: Duration,

    /// How long a request body may go without sending a byte before the request fails.
    #[arg(long, default_value = "30s", value_parser = crate::duration::parse, help_heading = "Ingress limits")]
    pub body_timeout: Duration,

    /// Most bytes of forwarded request and response bodies this host holds at once (bodies
    /// up to 1 MiB travel whole, larger ones stream with a 1 MiB window each); past it,
    /// forwarded requests get 503 with Retry-After.
    #[arg(long, default_value = "64Mi", help_heading = "Ingress limits")]
    pub forward_buffer: Memory,

    /// Most requests held per app while an app scaled to zero wakes up; more get 503 with
    /// Retry-After at once.
    #[arg(long, default_value = "100", help_heading = "Ingress limits")]
    pub hold_requests: usize,

    /// Longest a request waits for an app scaled to zero to wake up before it gets 503
    /// with Retry-After.
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse, help_heading = "Ingress limits")]
    pub hold_timeout: Duration,

    /// Most bytes the artifact and compiled-code caches may hold together; the least
    /// recently used go first, never what a running replica needs to start again offline.
    #[arg(long, default_value = "2Gi")]
    pub cache_size: Memory,

    /// Do not use the pooling allocator (for machines with little address space, and under
    /// qemu-user, which backs its reservation with real memory).
    #[arg(long)]
    pub no_pooling: bool,

    /// Most memory compiling one component may take. Components are compiled in a child
    /// process, so a component the compiler needs too much memory for fails to start
    /// (CompileFailed) while the host and its other replicas keep running [default: no cap
    /// beyond the machine's].
    #[arg(long)]
    pub compile_memory: Option<Memory>,

    /// A public key (PEM) this host accepts new binaries signed by, in a fleet upgrade
    /// (repeatable). The key must be in the lattice's trust policy too: the control plane
    /// alone cannot make a host run native code. Without one, the host takes no upgrade.
    #[arg(long = "upgrade-key", value_name = "FILE")]
    pub upgrade_keys: Vec<PathBuf>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn parse_label(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() && !value.is_empty() => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{value:?} is not KEY=VALUE")),
    }
}

/// This machine's hostname, made into a valid host id.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let id: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if id.is_empty() { "host".to_owned() } else { id }
}

/// 80% of MemTotal, or 1 GiB when /proc/meminfo cannot be read.
fn default_memory() -> Memory {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|value| value.split_whitespace().next()?.parse::<u64>().ok())
        });
    // Rounded down to whole MiB so it reads well in `shoal get hosts`.
    Memory(total_kib.map_or(1 << 30, |kib| kib * 8 / 10 / 1024 * (1 << 20)))
}

/// The NATS servers' addresses given by IP in `urls` (comma-separated): guests may not
/// call them unless an allowlist entry names them.
pub fn nats_addresses(urls: &str) -> Vec<SocketAddr> {
    urls.split(',')
        .filter_map(|url| {
            let authority = url.trim().split("://").last()?;
            let authority = authority.rsplit('@').next()?;
            authority.parse::<SocketAddr>().ok()
        })
        .collect()
}

/// Longest a host handed a listening socket waits to join before it accepts on it.
const ACCEPT_AFTER_JOIN: Duration = Duration::from_secs(5);

/// How often the cache budget is enforced.
const CACHE_PRUNE_PERIOD: Duration = Duration::from_secs(60);

/// Sweeps temporary files at start, then keeps the caches within `budget` whenever the
/// replicas' components change (and every minute), never evicting the artifacts `in_use`
/// names. Nothing is evicted before the replicas have started: until then, what they need
/// is not known.
async fn keep_cache_budget(
    oci: shoal_oci::Cache,
    compiled: PathBuf,
    mut in_use: tokio::sync::watch::Receiver<std::collections::BTreeSet<String>>,
    budget: u64,
) {
    let mut limit = u64::MAX;
    loop {
        let pinned = in_use.borrow_and_update().clone();
        let (oci, compiled) = (oci.clone(), compiled.clone());
        let pruned = tokio::task::spawn_blocking(move || {
            crate::cache_budget::prune(&oci, &compiled, &pinned, limit)
        })
        .await
        .unwrap_or_default();
        if pruned.files > 0 || pruned.temporary > 0 {
            tracing::info!(
                removed = pruned.files,
                removed_bytes = pruned.bytes,
                temporary = pruned.temporary,
                kept_bytes = pruned.kept,
                budget,
                "kept the caches within their budget"
            );
        }
        if limit == budget && pruned.kept > budget {
            tracing::warn!(
                kept_bytes = pruned.kept,
                budget,
                "what the running replicas need is more than --cache-size"
            );
        }
        tokio::select! {
            changed = in_use.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep(CACHE_PRUNE_PERIOD) => {}
        }
        limit = budget;
    }
}

/// Pulls components through the OCI cache.
pub struct OciFetch(pub Client);

/// The lattice's copy of components, as the OCI client reads a mirror.
struct LatticeCopy<'a>(&'a shoal_lattice::Lattice);

impl shoal_oci::mirror::Mirror for LatticeCopy<'_> {
    async fn object(
        &self,
        component: &shoal_oci::Digest,
        part: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, String> {
        let name = shoal_lattice::components::object_name(component.as_str(), part);
        self.0
            .component_object(&name, limit)
            .await
            .map_err(|error| shoal_lattice::Chain(&error).to_string())
    }
}

impl Fetch for OciFetch {
    async fn fetch(
        &self,
        reference: &str,
        trusted: &[TrustedKey],
        lattice: Option<&shoal_lattice::Lattice>,
    ) -> Result<Fetched, FetchError> {
        let parsed =
            parse_reference(reference).map_err(|error| FetchError::pull(error.to_string()))?;
        let pulled = match self.0.pull(&parsed).await {
            Ok(pulled) => pulled,
            // The registry cannot be reached or fails: the lattice's copy, checked by digest
            // as the registry's would be. Not when the registry refuses this host or says
            // the component is not there: the copy must not give a host more than its own
            // registry credentials do.
            Err(error) => {
                let unavailable = matches!(
                    error,
                    shoal_oci::Error::Unreachable { .. } | shoal_oci::Error::Registry { .. }
                );
                let Some(lattice) = lattice.filter(|_| unavailable) else {
                    return Err(FetchError::pull(format!(
                        "cannot pull {reference}: {error}"
                    )));
                };
                let pulled = self
                    .0
                    .pull_from_mirror(&parsed, &LatticeCopy(lattice))
                    .await
                    .map_err(|copy| {
                        FetchError::pull(format!("cannot pull {reference}: {error}; {copy}"))
                    })?;
                tracing::info!(%reference, registry_error = %error, "fetched from the lattice's copy");
                pulled
            }
        };
        // Checked after the pull, against the digest the pull verified the bytes by.
        if !trusted.is_empty() {
            let keys = crate::commands::trust::public_keys(trusted);
            let verified = self
                .0
                .verify(&parsed, &pulled.digest, &keys)
                .await
                .map_err(|error| FetchError {
                    reason: error.reason(),
                    message: error.to_string(),
                })?;
            tracing::info!(%reference, key = %verified.key_id, "signature verified");
        }
        let bytes = tokio::fs::read(&pulled.component_path)
            .await
            .map_err(|error| {
                FetchError::pull(format!(
                    "cannot read {}: {error}",
                    pulled.component_path.display()
                ))
            })?;
        Ok(Fetched {
            bytes,
            layer_digest: pulled.manifest.layer.digest.to_string(),
        })
    }
}

impl HostArgs {
    /// The ingress TLS configuration, when certificates were given.
    pub fn tls(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        if self.tls_certs.is_empty() {
            return Ok(None);
        }
        if self.tls_certs.len() != self.tls_keys.len() {
            bail!(
                "{} --tls-cert but {} --tls-key: give one key per certificate, in the same order",
                self.tls_certs.len(),
                self.tls_keys.len()
            );
        }
        let pairs: Vec<(PathBuf, PathBuf)> = self
            .tls_certs
            .iter()
            .cloned()
            .zip(self.tls_keys.iter().cloned())
            .collect();
        Ok(Some(shoal_host::tls::server_config(&pairs)?))
    }

    pub fn agent_options(&self, id: String, lattice: &str) -> anyhow::Result<AgentOptions> {
        let mut labels: BTreeMap<String, String> = self.labels.iter().cloned().collect();
        labels.insert("arch".to_owned(), std::env::consts::ARCH.to_owned());
        labels.insert("os".to_owned(), std::env::consts::OS.to_owned());
        let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
        let state_dir = match &self.state_dir {
            Some(dir) => dir.clone(),
            None => self.registry.cache_root()?.join("hosts").join(&id),
        };
        Ok(AgentOptions {
            id,
            lattice: lattice.to_owned(),
            lost_after: self.lost_after,
            state_dir: Some(state_dir),
            adopt_lattice: self.adopt_lattice,
            wait_for_lattice: false,
            labels,
            capacity: Capacity {
                memory: self.memory.unwrap_or_else(default_memory),
                cpu: self
                    .cpu
                    .unwrap_or(Millicores(u32::try_from(cores * 1000).unwrap_or(u32::MAX))),
                max_replicas: self.max_replicas,
            },
            heartbeat: self.heartbeat,
            drain: self.drain,
            tls: None,
            connections: shoal_host::server::ConnectionLimits {
                max_connections: self.max_connections,
                header_timeout: self.header_timeout,
                body_timeout: self.body_timeout,
                ..shoal_host::server::ConnectionLimits::default()
            },
            forward_buffer: usize::try_from(self.forward_buffer.0).unwrap_or(usize::MAX),
            own_listeners: self.metrics.into_iter().collect(),
            hold: shoal_host::agent::HoldLimits {
                requests: self.hold_requests,
                timeout: self.hold_timeout,
            },
            credential: None,
            version: crate::build_label::version(),
            binary: Arc::new(std::sync::OnceLock::new()),
            upgrader: None,
            failed_upgrade: None,
            accept_after_join: None,
        })
    }

    /// The runtime, sharing the cache directory with `shoal run`.
    pub fn runtime(&self) -> anyhow::Result<Arc<Runtime>> {
        let memory = self.memory.unwrap_or_else(default_memory);
        let runtime = Runtime::new(RuntimeOptions {
            cache_dir: self.registry.cache_root()?,
            pooling: !self.no_pooling,
            instance_slots: shoal_host::engine::instance_slots(memory.0),
            keep_resident: shoal_host::engine::KEEP_RESIDENT,
            // Apps with a fuel budget get a second runtime that counts it, when one starts.
            fuel: false,
            wasi_03: self.wasi.iter().any(|version| version == "0.3"),
            // Compiling in a child keeps Cranelift's code and memory out of a long-lived
            // host, and a component the compiler chokes on from taking the host down.
            compiler: self.compile_worker(),
        })?;
        Ok(Arc::new(runtime))
    }

    /// The compile worker, with `--compile-memory`; none where this binary cannot be
    /// started again by path (then components compile in the host, uncapped).
    fn compile_worker(&self) -> Option<shoal_host::compile::Worker> {
        let worker = super::compile_worker::worker();
        if worker.is_none() {
            tracing::warn!(
                "no /proc/self/exe: components compile in the host's own process, and --compile-memory does not apply"
            );
        }
        worker.map(|worker| shoal_host::compile::Worker {
            memory_limit: self.compile_memory.map(|memory| memory.0),
            ..worker
        })
    }
}

/// This host's id: `--id`, the credential's, or hostname + a suffix kept on disk.
fn host_id(args: &HostArgs, lattice: &LatticeArgs) -> anyhow::Result<String> {
    let credential = lattice.holder()?.filter(|holder| holder.kind == "host");
    let id = match (&args.id, &credential) {
        (Some(id), Some(holder)) if *id != holder.name => bail!(
            "the credential is for host {:?}, not {id:?}: run with --id {} or mint one with shoal auth host {id}",
            holder.name,
            holder.name
        ),
        (Some(id), _) => id.clone(),
        (None, Some(holder)) => holder.name.clone(),
        (None, None) => {
            let file = args.registry.cache_root()?.join("host-id");
            match std::fs::read_to_string(&file) {
                Ok(id) if shoal_lattice::names::check_host_id(id.trim()).is_ok() => {
                    id.trim().to_owned()
                }
                _ => {
                    let suffix: String = nuid::next()
                        .to_string()
                        .to_ascii_lowercase()
                        .chars()
                        .rev()
                        .take(6)
                        .collect();
                    let mut base = hostname();
                    base.truncate(63 - 7);
                    let id = format!("{base}-{suffix}");
                    if let Some(dir) = file.parent() {
                        std::fs::create_dir_all(dir)
                            .with_context(|| format!("cannot create {}", dir.display()))?;
                    }
                    std::fs::write(&file, format!("{id}\n")).with_context(|| {
                        format!("cannot keep the host id in {}", file.display())
                    })?;
                    id
                }
            }
        }
    };
    shoal_lattice::names::check_host_id(&id)?;
    Ok(id)
}

/// Says which `--label`s the host's credential does not grant: on a secure lattice,
/// placement matches a host only by the labels its credential grants.
fn warn_ungranted_labels(
    args: &HostArgs,
    lattice: &LatticeArgs,
    id: &str,
    jwt: Option<&str>,
) -> anyhow::Result<()> {
    let (Some(jwt), Some(holder)) = (jwt, lattice.holder()?) else {
        return Ok(());
    };
    let Ok(grant) = shoal_lattice::auth::host_grant(jwt, &holder.issuer, id) else {
        return Ok(());
    };
    for (key, value) in &args.labels {
        if grant.labels.get(key) != Some(value) {
            eprintln!(
                "warning: the label {key}={value} is not granted by this host's credential: placement does not match the host by it (shoal auth host {id} --label {key}={value} mints one that grants it)"
            );
        }
    }
    Ok(())
}

pub async fn run(
    args: HostArgs,
    lattice: &LatticeArgs,
    handover: crate::upgrade::Handover,
) -> anyhow::Result<u8> {
    let id = host_id(&args, lattice)?;
    let anchors = args
        .upgrade_keys
        .iter()
        .map(|path| {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --upgrade-key {}", path.display()))?;
            shoal_oci::keys::PublicKey::from_pem(&pem)
                .with_context(|| format!("--upgrade-key {} is not a public key", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls = args.tls().context("cannot set up ingress TLS")?;
    let runtime = args.runtime()?;
    let client = args.registry.client()?;
    // A host restarting into a new binary hands over its listening socket: clients wait in
    // its backlog meanwhile instead of being refused.
    let handed_over = handover.listener.is_some();
    let listener = match handover.listener {
        Some(listener) => listener,
        None => tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen on {}", args.http))?
            .into_std()?,
    };
    listener.set_nonblocking(true)?;
    // Kept for the next binary, should an upgrade come.
    let kept = listener.try_clone()?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let address = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("ingress listening on {scheme}://{address}");
    eprintln!(
        "host {id} joining lattice {:?} at {}",
        lattice.lattice,
        lattice.url()
    );
    let mut options = args.agent_options(id.clone(), &lattice.lattice)?;
    options.tls = tls;
    options.credential = lattice.credential_jwt()?;
    warn_ungranted_labels(&args, lattice, &id, options.credential.as_deref())?;
    options.own_listeners.extend(nats_addresses(lattice.url()));
    // Each host its own: hosts sharing a cache directory must not prune each other's.
    let binaries = args.registry.cache_root()?.join("host-binaries").join(&id);
    if let Some(binary) = handover.binary {
        let _ = options.binary.set(binary);
    }
    options.failed_upgrade = handover.failed;
    if handed_over {
        options.accept_after_join = Some(ACCEPT_AFTER_JOIN);
    }
    options.upgrader = Some(Arc::new(crate::upgrade::OciUpgrader {
        client: client.clone(),
        dir: binaries.clone(),
        anchors,
    }));
    let compiled = runtime.compiled_dir();
    let agent = Agent::new(runtime, OciFetch(client), options);
    let budget = tokio::spawn(keep_cache_budget(
        shoal_oci::Cache::open(args.registry.cache_root()?.join("oci"))?,
        compiled,
        agent.in_use(),
        args.cache_size.0,
    ));
    let connect = {
        let lattice = lattice.clone();
        move || {
            let lattice = lattice.clone();
            let id = id.clone();
            async move { lattice.connect_lattice(&format!("host {id}"), &id).await }
        }
    };
    let metrics = match args.metrics {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} for metrics"))?;
            eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
            Some(tokio::spawn(shoal_host::metrics::serve(
                agent.metrics(),
                listener,
                std::future::pending(),
            )))
        }
        None => None,
    };
    if let Some(watchdog) = handover.watchdog {
        let mut joined = agent.joined();
        tokio::spawn(async move {
            if joined.wait_for(|joined| *joined).await.is_ok() {
                crate::upgrade::rejoined(watchdog, &binaries).await;
            }
        });
    }
    let result = agent
        .run(listener, connect, crate::signals::shutdown())
        .await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    budget.abort();
    match result? {
        shoal_host::agent::Stopped::Shutdown => Ok(0),
        shoal_host::agent::Stopped::Upgrade(prepared) => {
            Err(crate::upgrade::restart_into(&prepared, &kept))
        }
    }
}
