//! `shoal scheduler`: runs a scheduler (control plane) for a lattice until stopped.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use shoal_scheduler::components::{Copier, Part, Source};
use shoal_scheduler::controller::{self, Options, StoreMinter};
use shoal_scheduler::precompile::{CompileFailure, Compiler};

use crate::lattice::LatticeArgs;

/// How large the lattice's copy of components may grow unless `--component-store` says.
pub const DEFAULT_COMPONENT_STORE: &str = "1GiB";

/// Run a scheduler: it places apps' replicas on hosts and heals failures.
///
/// Several schedulers may run; one holds the lease and acts, the others take over when it
/// stops renewing the lease.
#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Scheduler id, for the lease [default: scheduler-<pid>].
    #[arg(long)]
    pub id: Option<String>,

    /// A host whose heartbeat is older than this is lost and its replicas move, unless the
    /// host names its own timeout (`shoal host --lost-after`). The default rides out a few
    /// lost heartbeats on a lossy, slow link (cellular: 300 ms RTT, 5% loss).
    #[arg(long, default_value = "10s", value_parser = crate::duration::parse)]
    pub host_timeout: Duration,

    /// Lease period: a dead leader is replaced after about this long.
    #[arg(long, default_value = "5s", value_parser = crate::duration::parse)]
    pub lease: Duration,

    /// The lattice's secrets key (an xkey seed file): secrets are sealed to it, and the
    /// scheduler opens them only to seal them again to the hosts that run their apps. Give
    /// every scheduler of a lattice the same file (`shoal auth init` writes one as
    /// secrets.xk); a missing file is created. Without it, apps that list secrets are not
    /// placed.
    #[arg(long, env = "SHOAL_SECRETS_KEY", value_name = "FILE")]
    pub secrets_key: Option<std::path::PathBuf>,

    /// On a secure lattice: the key hosts' credentials for apps' key-value stores are
    /// signed with (`stores.nk`, which `shoal auth init` writes). A host's own credential
    /// reaches no app's store; each assignment of an app with stores carries one for that
    /// app only, sealed to the host's secrets key (so --secrets-key is needed too). Without
    /// it, apps with stores are not placed on a secure lattice.
    #[arg(long, env = "SHOAL_STORE_KEY", value_name = "FILE")]
    pub store_key: Option<std::path::PathBuf>,

    /// How long a store credential lasts (renewed when half is left): how long a host that
    /// lost an app's replicas, or a stolen one, may still reach that app's stores.
    #[arg(long, default_value = "1h", value_parser = crate::duration::parse)]
    pub store_credential_lifetime: Duration,

    /// On a secure lattice: a credential of nats-server's system account that may hear
    /// hosts' connections open and close (`presence.creds`, which `shoal auth init`
    /// writes). A host whose process dies is then lost after --disconnect-grace, not
    /// --host-timeout; a host frozen or cut off still goes by its heartbeats.
    #[arg(long, env = "SHOAL_PRESENCE_CREDS", value_name = "FILE")]
    pub presence_creds: Option<std::path::PathBuf>,

    /// How long a host whose connection closed has to connect again before it is lost
    /// (with --presence-creds).
    #[arg(long, default_value = "1s", value_parser = crate::duration::parse)]
    pub disconnect_grace: Duration,

    /// The most the lattice's copy of pinned components may hold (a JetStream object store
    /// the leader fills from the registry, so hosts that cannot reach the registry start
    /// apps from the lattice); 0 keeps no copy. Set when the bucket is first made.
    #[arg(long, default_value = DEFAULT_COMPONENT_STORE, value_parser = crate::registry::parse_size, value_name = "SIZE")]
    pub component_store: u64,

    /// The most memory one compile of precompiled code for hosts may take (in a child
    /// process; past it that compile fails and those hosts compile the component
    /// themselves). 0: hosts compile everything themselves.
    #[arg(long, env = "SHOAL_PRECOMPILE_MEMORY", default_value = "2GiB", value_parser = crate::registry::parse_size, value_name = "SIZE")]
    pub precompile_memory: u64,

    /// Where the leader pulls components from to copy them into the lattice.
    #[command(flatten)]
    pub registry: crate::registry::RegistryArgs,

    /// For tests: read cron schedules by a clock that starts at START when the system clock
    /// reads ANCHOR_MS, running RATE times as fast (`START,ANCHOR_MS,RATE`).
    #[arg(long, hide = true, value_name = "START,ANCHOR_MS,RATE", value_parser = shoal_scheduler::cron::Clock::parse)]
    pub cron_clock: Option<shoal_scheduler::cron::Clock>,
}

impl SchedulerArgs {
    pub fn options(&self) -> anyhow::Result<Options> {
        let secrets_key = match &self.secrets_key {
            Some(path) => {
                let (key, created) = shoal_lattice::secrets::key_file(path)
                    .with_context(|| format!("cannot read or write {}", path.display()))?;
                if created {
                    eprintln!(
                        "created the lattice's secrets key in {}: give every scheduler of this lattice that file",
                        path.display()
                    );
                }
                Some(key)
            }
            None => None,
        };
        Ok(Options {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("scheduler-{}", std::process::id())),
            host_timeout: self.host_timeout,
            lease: self.lease,
            secrets_key,
            clock: self.cron_clock.unwrap_or_default(),
            account: None,
            stores: None,
            presence: None,
            components: None,
        })
    }

    /// How the leader keeps the lattice's copy of components: `None` with
    /// `--component-store 0`.
    pub fn copier(&self) -> anyhow::Result<Option<Copier>> {
        if self.component_store == 0 {
            return Ok(None);
        }
        // Compiled in a child process, as hosts compile: capped, and the scheduler keeps
        // none of the compiler's memory.
        let compiler = (self.precompile_memory > 0)
            .then(super::compile_worker::worker)
            .flatten()
            .map(|mut worker| {
                worker.memory_limit = Some(self.precompile_memory);
                worker.timeout = shoal_scheduler::precompile::COMPILE_DEADLINE;
                std::sync::Arc::new(WorkerCompiler(worker)) as std::sync::Arc<dyn Compiler>
            });
        Ok(Some(Copier {
            source: std::sync::Arc::new(OciSource(self.registry.client()?)),
            max_bytes: self.component_store,
            complete: shoal_oci::mirror::MANIFEST.to_owned(),
            layer: shoal_oci::mirror::LAYER.to_owned(),
            compiler,
        }))
    }

    /// Where hosts' connections are heard opening and closing, on a secure lattice whose
    /// clients' account is `account`: with `--presence-creds`, else `None`.
    pub async fn presence(
        &self,
        lattice: &LatticeArgs,
        account: Option<&str>,
    ) -> anyhow::Result<Option<controller::Presence>> {
        let Some(creds) = &self.presence_creds else {
            return Ok(None);
        };
        let Some(account) = account else {
            anyhow::bail!(
                "--presence-creds is for a secure lattice: this scheduler has no credential of one (--nats-creds)"
            );
        };
        let connection = match lattice.connect_presence(creds).await {
            Ok(connection) => connection,
            // Expired or withdrawn (`shoal auth presence`): hosts are lost by their
            // heartbeats, as without one; the control plane still runs.
            Err(error)
                if matches!(
                    error.downcast_ref::<shoal_lattice::Error>(),
                    Some(shoal_lattice::Error::Unauthorized { .. })
                ) =>
            {
                eprintln!(
                    "warning: nats-server refused the presence credential {} (expired, withdrawn, or another lattice's? shoal auth presence mints a new one): hosts are lost by their heartbeats only",
                    creds.display()
                );
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        Ok(Some(controller::Presence {
            connection,
            clients_account: account.to_owned(),
            grace: self.disconnect_grace,
        }))
    }

    /// What store credentials are minted with, on a secure lattice whose clients' account
    /// is `account`: from `--store-key`, or `None` (with a warning) without it.
    pub fn store_minter(&self, account: Option<&str>) -> anyhow::Result<Option<StoreMinter>> {
        let Some(account) = account else {
            return Ok(None);
        };
        let Some(path) = &self.store_key else {
            eprintln!(
                "warning: no --store-key: apps with key-value stores are not placed on this secure lattice (shoal auth init writes stores.nk)"
            );
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the store key {}", path.display()))?;
        let signer = shoal_lattice::auth::StoreSigner::from_seed(&text)
            .with_context(|| format!("{} is not a store key", path.display()))?;
        Ok(Some(StoreMinter {
            signer: std::sync::Arc::new(signer),
            clients_account: account.to_owned(),
            lifetime: self.store_credential_lifetime,
        }))
    }
}

pub async fn run(args: SchedulerArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let mut options = args.options()?;
    options.account = lattice.account()?;
    options.stores = args.store_minter(options.account.as_deref())?;
    options.presence = args.presence(lattice, options.account.as_deref()).await?;
    options.components = args.copier()?;
    let connection = lattice
        .connect_as(&options.id, shoal_lattice::store::SCHEDULER_ORIGIN)
        .await?;
    eprintln!(
        "scheduler {} on lattice {:?} at {}",
        options.id,
        lattice.lattice,
        lattice.url()
    );
    controller::run(connection, options, crate::signals::shutdown()).await?;
    Ok(0)
}

/// Compiles components for hosts' targets in the host's compile worker.
struct WorkerCompiler(shoal_host::compile::Worker);

impl Compiler for WorkerCompiler {
    fn compile<'a>(
        &'a self,
        target: &'a shoal_lattice::records::CompileTarget,
        wasm: Vec<u8>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, CompileFailure>> + Send + 'a>> {
        Box::pin(async move {
            let (worker, target) = (self.0.clone(), target.clone());
            let compiled = tokio::task::spawn_blocking(move || worker.compile_for(&target, &wasm))
                .await
                .map_err(|error| CompileFailure::Failed(error.to_string()))?;
            compiled.map_err(|error| match error {
                shoal_host::compile::WorkerError::Unavailable(message) => {
                    CompileFailure::Failed(message)
                }
                refused => CompileFailure::Refused(refused.to_string()),
            })
        })
    }
}

/// Pulls components for the lattice's copy through the OCI cache, which verifies them.
struct OciSource(shoal_oci::client::Client);

impl Source for OciSource {
    fn parts<'a>(
        &'a self,
        pinned: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Vec<Part>, String>> + Send + 'a>> {
        Box::pin(async move {
            let reference =
                shoal_oci::client::parse_reference(pinned).map_err(|error| error.to_string())?;
            let parts = self
                .0
                .mirror_parts(&reference)
                .await
                .map_err(|error| error.to_string())?;
            Ok(parts
                .into_iter()
                .map(|part| Part {
                    part: part.part,
                    bytes: part.bytes,
                })
                .collect())
        })
    }
}
