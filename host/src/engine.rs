//! One wasmtime `Engine` per process, its epoch ticker, the compile cache, and the
//! pre-instantiated components shared by every replica that runs the same component.
//!
//! Compiled code is cached on disk under `<cache>/compiled/<digest>-<compile key>.cwasm`, where
//! the compile key is a sha256 of wasmtime's precompile compatibility hash (target, CPU
//! features, settings, wasmtime version): a restart or a second replica of the same component
//! compiles nothing, and an engine upgrade never loads stale code. Each file starts with the
//! sha256 of the rest, checked before wasmtime sees the bytes. A host compiles in a child
//! process ([`crate::compile`]) and loads what it wrote to the cache; code the control plane
//! compiled for the same key ([`Runtime::compile_target`]) enters the cache the same way.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::error::HostError;
use crate::handler::HandlerPre;
use crate::limits::Limits;
use crate::target::{TargetSettings, check_target, compile_key, native_target};

/// How often the epoch advances: the granularity of timeouts and CPU accounting.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// How the runtime is set up.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Where compiled components are cached.
    pub cache_dir: PathBuf,
    /// Try the pooling allocator (falls back to on-demand allocation when the address-space
    /// reservation fails, as on small devices).
    pub pooling: bool,
    /// The most instances alive at once with the pooling allocator (its slots); see
    /// [`instance_slots`]. A request past them is answered 503, never queued unbounded.
    pub instance_slots: u32,
    /// Bytes of a free slot's linear memory kept resident for the next instance (0: all of
    /// it is unmapped, and the next instance faults its pages in again).
    pub keep_resident: usize,
    /// Count fuel: compiled code counts the instructions it runs, so a request can be given
    /// a budget (`limits.fuel`). It slows every guest, so a host enables it only in a second
    /// runtime made for the apps that ask ([`Runtime::for_fuel`]).
    pub fuel: bool,
    /// Run WASI 0.3 components (the component model's async ABI, which wasmtime 48 calls
    /// experimental); without it, only 0.2.
    pub wasi_03: bool,
    /// Where a component not in the compile cache is compiled: in this process (`None`), or
    /// by a compile worker, a child process that writes the cache entry this one loads.
    pub compiler: Option<crate::compile::Worker>,
}

/// What the engine's compiled code depends on: the compile worker builds its engine from the
/// same settings as the runtime that asks, so what it writes loads there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EngineSettings {
    /// Compiled code counts fuel.
    pub fuel: bool,
    /// The component model's async ABI (WASI 0.3).
    pub wasi_03: bool,
    /// The pooling allocator's slots and warm bytes; `None`: on-demand allocation.
    pub pool: Option<PoolSettings>,
    /// The machine to compile for; `None`: this one, with the CPU features it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetSettings>,
}
/// The pooling allocator's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSettings {
    /// Instances alive at once.
    pub slots: u32,
    /// Bytes of a free slot's linear memory kept resident.
    pub keep_resident: usize,
}

impl EngineSettings {
    /// The settings of the engine that makes code for a host's `target`: no pool (it does
    /// not change code), the target's triple and CPU features.
    pub fn for_target(target: &shoal_lattice::records::CompileTarget) -> Self {
        Self {
            fuel: target.fuel,
            wasi_03: target.wasi_03,
            pool: None,
            target: Some(TargetSettings {
                triple: target.triple.clone(),
                isa_flags: target.isa_flags.clone(),
            }),
        }
    }

    /// The wasmtime configuration these settings describe.
    ///
    /// # Errors
    /// [`HostError::Engine`] for a target triple wasmtime does not know.
    #[allow(unsafe_code)]
    pub fn config(&self) -> Result<Config, HostError> {
        let mut config = base_config(self.fuel, self.wasi_03);
        if let Some(pool) = self.pool {
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(pool)));
        }
        if let Some(target) = &self.target {
            check_target(target)?;
            config.target(&target.triple).map_err(|error| {
                HostError::Engine(format!("unknown target {:?}: {error:#}", target.triple))
            })?;
            for flag in &target.isa_flags {
                // SAFETY: code using a CPU feature a machine lacks would fault on it; these
                // are the features a host found on itself, and what they make is loaded only
                // by engines whose compile key (which covers every setting) is this one's.
                unsafe {
                    config.cranelift_flag_enable(flag);
                }
            }
        }
        Ok(config)
    }

    /// The engine these settings describe.
    ///
    /// # Errors
    /// [`HostError::Engine`] when wasmtime refuses them (with a pool: when the address
    /// space cannot be reserved; a target it does not know or cannot compile for).
    pub fn engine(&self) -> Result<Engine, HostError> {
        Engine::new(&self.config()?).map_err(|error| HostError::Engine(format!("{error:#}")))
    }
}

/// The WASI versions Shoal runs, newest last.
pub const WASI_VERSIONS: [&str; 2] = ["0.2", "0.3"];

/// Bytes of a free pool slot's linear memory kept resident for the next instance, unless a
/// runtime says otherwise.
pub const KEEP_RESIDENT: usize = 1 << 20;

/// The smallest linear memory a live instance holds, for sizing the pool: a Rust guest's
/// 1 MiB stack plus a little heap.
const MEMORY_PER_INSTANCE: u64 = 2 << 20;

/// Pool slots for a host that gives replicas `memory` bytes: as many instances as that
/// memory can hold at [`MEMORY_PER_INSTANCE`] each, at least 16, at most 1,000. A small
/// device reserves a fraction of the address space a fixed 1,000 would.
pub fn instance_slots(memory: u64) -> u32 {
    u32::try_from(memory / MEMORY_PER_INSTANCE)
        .unwrap_or(u32::MAX)
        .clamp(16, 1000)
}

/// A compiled component, and whether it came from the cache.
pub struct Loaded {
    /// The compiled component.
    pub component: Component,
    /// True when nothing was compiled.
    pub cache_hit: bool,
    /// How long loading took.
    pub elapsed: Duration,
}

/// The process-wide wasmtime engine and what goes with it.
pub struct Runtime {
    engine: Engine,
    /// What the engine was built from (with the pool only when it could be reserved).
    settings: EngineSettings,
    ticker: Option<Ticker>,
    /// Linked and pre-instantiated HTTP components by content digest, while any replica
    /// holds one: a thousand apps of one component keep one copy of its code and linking.
    shared: Mutex<HashMap<String, Weak<HandlerPre>>>,
    /// One lock per component being prepared, so replicas of it that start together load
    /// and link it once, not once each (which also kept the heap at its peak).
    preparing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The runtime that counts fuel, made the first time an app with a fuel budget starts
    /// here, with this one's options (its own pool: the address space reserved doubles
    /// once a host runs such an app).
    fuel_runtime: std::sync::OnceLock<Arc<Runtime>>,
    /// What it was made with (`fuel`: whether it counts fuel).
    options: RuntimeOptions,
    /// The engine's compile key ([`compile_key`]).
    key: String,
    /// This machine as its compiler sees it ([`native_target`]).
    native: Option<TargetSettings>,
}

struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base_config(fuel: bool, wasi_03: bool) -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // WASI 0.3 components: the async ABI, streams and futures.
    config.wasm_component_model_async(wasi_03);
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    // A trap's message is enough for the log; capturing wasm backtraces costs time on every
    // trap and a stack overflow's runs to thousands of frames.
    config.wasm_backtrace_max_frames(None);
    config
}

fn pooling(settings: PoolSettings) -> PoolingAllocationConfig {
    let slots = settings.slots.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // A component instance of a Rust guest holds a few core instances and tables.
    pool.total_component_instances(slots);
    pool.total_core_instances(slots.saturating_mul(4));
    pool.total_memories(slots);
    pool.total_tables(slots.saturating_mul(4));
    pool.total_stacks(slots);
    // A slot's linear memory is reset for the next instance by rewriting the pages the last
    // one touched (found with PAGEMAP_SCAN where the kernel has it, Linux 6.7+), up to 1 MiB,
    // instead of unmapping it: the next request takes no page faults for them. At most 16
    // free slots stay warm, so this holds at most 16 MiB (at the default 1 MiB).
    pool.linear_memory_keep_resident(settings.keep_resident);
    pool.table_keep_resident(64 << 10);
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    pool.max_unused_warm_slots(slots.min(16));
    pool
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker.
    ///
    /// # Errors
    /// [`HostError::Engine`] when wasmtime refuses the configuration.
    pub fn new(options: RuntimeOptions) -> Result<Self, HostError> {
        let on_demand = EngineSettings {
            fuel: options.fuel,
            wasi_03: options.wasi_03,
            pool: None,
            target: None,
        };
        let pooled = EngineSettings {
            pool: Some(PoolSettings {
                slots: options.instance_slots.max(1),
                keep_resident: options.keep_resident,
            }),
            ..on_demand.clone()
        };
        let (engine, settings) = match options.pooling.then(|| pooled.engine()) {
            Some(Ok(engine)) => {
                tracing::debug!(slots = options.instance_slots, "pooling allocator");
                (engine, pooled)
            }
            Some(Err(error)) => {
                tracing::info!(%error, "pooling allocator unavailable (address space reservation failed?); using on-demand allocation");
                (on_demand.engine()?, on_demand)
            }
            None => (on_demand.engine()?, on_demand),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let engine = engine.clone();
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("shoal-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|error| {
                    HostError::Engine(format!("cannot start the epoch ticker: {error}"))
                })?
        };
        Ok(Self {
            key: compile_key(&engine),
            native: native_target(),
            engine,
            settings,
            options,
            fuel_runtime: std::sync::OnceLock::new(),
            ticker: Some(Ticker {
                stop,
                thread: Some(thread),
            }),
            shared: Mutex::new(HashMap::new()),
            preparing: Mutex::new(HashMap::new()),
        })
    }

    /// The pre-instantiated component of `content_digest`: the one a running replica holds,
    /// else `prepare`'s, made once however many replicas ask at the same time (the others
    /// wait for it). Blocks: call it from a blocking thread.
    ///
    /// # Errors
    /// `prepare`'s.
    pub(crate) fn shared_pre_or<E>(
        &self,
        content_digest: &str,
        prepare: impl FnOnce() -> Result<HandlerPre, E>,
    ) -> Result<Arc<HandlerPre>, E> {
        if let Some(pre) = self.shared_pre(content_digest) {
            return Ok(pre);
        }
        let lock = self.preparing.lock().ok().map(|mut preparing| {
            Arc::clone(preparing.entry(content_digest.to_owned()).or_default())
        });
        let _prepared_once = lock.as_ref().map(|lock| lock.lock());
        if let Some(pre) = self.shared_pre(content_digest) {
            return Ok(pre);
        }
        let pre = self.share_pre(content_digest, prepare()?);
        if let Ok(mut preparing) = self.preparing.lock() {
            preparing.remove(content_digest);
        }
        Ok(pre)
    }

    /// The pre-instantiated component of `content_digest` that a running replica holds.
    fn shared_pre(&self, content_digest: &str) -> Option<Arc<HandlerPre>> {
        self.shared
            .lock()
            .ok()?
            .get(content_digest)
            .and_then(Weak::upgrade)
    }

    /// Shares `pre` as the pre-instantiated component of `content_digest` (or the one
    /// another replica shared meanwhile); forgets components no replica holds any more.
    fn share_pre(&self, content_digest: &str, pre: HandlerPre) -> Arc<HandlerPre> {
        let Ok(mut shared) = self.shared.lock() else {
            return Arc::new(pre);
        };
        if let Some(live) = shared.get(content_digest).and_then(Weak::upgrade) {
            return live;
        }
        shared.retain(|_, pre| pre.strong_count() > 0);
        let pre = Arc::new(pre);
        shared.insert(content_digest.to_owned(), Arc::downgrade(&pre));
        pre
    }

    /// The WASI versions this runtime runs, as its host's record tells placement.
    pub fn wasi_versions(&self) -> Vec<String> {
        let count = if self.options.wasi_03 { 2 } else { 1 };
        WASI_VERSIONS[..count]
            .iter()
            .map(|version| (*version).to_owned())
            .collect()
    }

    /// Whether this runtime runs WASI 0.3 components.
    pub fn runs_wasi_03(&self) -> bool {
        self.options.wasi_03
    }

    /// The runtime for a replica with `limits`: this one, or for a fuel budget the one that
    /// counts fuel (made on first use; its compiled code is cached apart, as the engine
    /// differs).
    ///
    /// # Errors
    /// [`HostError::Engine`] when the fuel runtime cannot be made.
    pub fn for_fuel(self: &Arc<Self>, limits: &Limits) -> Result<Arc<Runtime>, HostError> {
        if limits.fuel.is_none() || self.options.fuel {
            return Ok(Arc::clone(self));
        }
        if let Some(runtime) = self.fuel_runtime.get() {
            return Ok(Arc::clone(runtime));
        }
        let runtime = Arc::new(Runtime::new(RuntimeOptions {
            fuel: true,
            ..self.options.clone()
        })?);
        Ok(Arc::clone(self.fuel_runtime.get_or_init(|| runtime)))
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.settings.pool.is_some() && self.ticker.is_some()
    }

    fn cache_path(&self, content_digest: &str) -> PathBuf {
        let hex = content_digest.trim_start_matches("sha256:");
        self.options
            .cache_dir
            .join("compiled")
            .join(format!("{hex}-{}.cwasm", self.key))
    }

    /// What this runtime's compiled code is for, as its host's record tells the control
    /// plane (which then compiles pinned components for it); `None` where Cranelift cannot
    /// tell this machine's features.
    pub fn compile_target(&self) -> Option<shoal_lattice::records::CompileTarget> {
        let native = self.native.as_ref()?;
        Some(shoal_lattice::records::CompileTarget {
            triple: native.triple.clone(),
            isa_flags: native.isa_flags.clone(),
            fuel: self.settings.fuel,
            wasi_03: self.settings.wasi_03,
            key: self.key.clone(),
        })
    }

    /// The engine's compile key: code compiled elsewhere for it loads here.
    pub fn compile_key(&self) -> &str {
        &self.key
    }

    /// Whether the compile cache holds `content_digest`'s code for this engine.
    pub fn has_compiled(&self, content_digest: &str) -> bool {
        self.cache_path(content_digest).is_file()
    }

    /// Puts code compiled elsewhere for this engine's key into the compile cache as
    /// `content_digest`'s: `entry` is a cache entry (`<sha256><compiled>`), written only when
    /// its checksum holds. [`Runtime::load`] then loads it (wasmtime checking again that it
    /// was made for this engine) or, should it not load, compiles.
    ///
    /// # Errors
    /// A message when the checksum does not hold or the entry cannot be written.
    pub fn adopt_compiled(&self, content_digest: &str, entry: &[u8]) -> Result<(), String> {
        let compiled = checked_entry(entry)
            .ok_or_else(|| "the precompiled code does not match its checksum".to_owned())?;
        let path = self.cache_path(content_digest);
        store_compiled(&path, compiled)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))
    }

    /// Compiles `bytes` (whose sha256 digest is `content_digest`), or loads it from the
    /// compile cache.
    ///
    /// # Errors
    /// [`HostError::Compile`] when the component does not compile.
    pub fn load(&self, bytes: &[u8], content_digest: &str) -> Result<Loaded, HostError> {
        let started = Instant::now();
        let path = self.cache_path(content_digest);
        if let Some(component) = self.load_cached(&path) {
            return Ok(Loaded {
                component,
                cache_hit: true,
                elapsed: started.elapsed(),
            });
        }
        let (component, compiled_by) = match &self.options.compiler {
            None => (self.compile_here(bytes, &path)?, "this process"),
            Some(worker) => match worker.compile(&self.settings, bytes, &path) {
                // Not compiled again here: the worker is where a compile is capped.
                Ok(()) => match self.load_cached(&path) {
                    Some(component) => (component, "the compile worker"),
                    None => {
                        return Err(HostError::Compile(format!(
                            "the compile worker's output at {} does not load",
                            path.display()
                        )));
                    }
                },
                Err(crate::compile::WorkerError::Refused(message)) => {
                    return Err(self.compile_error(message));
                }
                Err(crate::compile::WorkerError::Died(message)) => {
                    return Err(HostError::Compile(message));
                }
                Err(crate::compile::WorkerError::Unavailable(message)) => {
                    tracing::warn!(error = %message, "no compile worker; compiling in this process");
                    (self.compile_here(bytes, &path)?, "this process")
                }
            },
        };
        let elapsed = started.elapsed();
        tracing::info!(
            digest = content_digest,
            elapsed_ms = elapsed.as_millis(),
            by = compiled_by,
            "component compiled"
        );
        Ok(Loaded {
            component,
            cache_hit: false,
            elapsed,
        })
    }

    /// Compiles `bytes` with this process's engine and keeps the result at `path`.
    fn compile_here(&self, bytes: &[u8], path: &Path) -> Result<Component, HostError> {
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|error| self.compile_error(format!("{error:#}")))?;
        if let Err(error) = store_compiled(path, &compiled) {
            tracing::warn!(path = %path.display(), %error, "cannot write the compile cache; the next start compiles again");
        }
        deserialize(&self.engine, &compiled)
            .map_err(|error| HostError::Compile(format!("{error:#}")))
    }

    /// Why a component does not compile, in the words a user can act on.
    fn compile_error(&self, message: String) -> HostError {
        if !self.settings.wasi_03 && message.contains("component model async") {
            HostError::Compile(
                "a WASI 0.3 component, and this host runs WASI 0.2 only (shoal host --wasi)"
                    .to_owned(),
            )
        } else {
            HostError::Compile(message)
        }
    }

    /// The compiled-code cache's files, for a size budget: each named
    /// `<layer digest hex>-<compile key>.cwasm`.
    pub fn compiled_dir(&self) -> PathBuf {
        self.options.cache_dir.join("compiled")
    }

    fn load_cached(&self, path: &Path) -> Option<Component> {
        let file = std::fs::read(path).ok()?;
        // Its last use, so a size budget evicts what has not run for longest.
        if let Ok(handle) = std::fs::File::options().append(true).open(path) {
            let _ = handle.set_modified(std::time::SystemTime::now());
        }
        let Some(compiled) = checked_entry(&file) else {
            tracing::warn!(path = %path.display(), "compile cache entry is corrupt; compiling again");
            let _ = std::fs::remove_file(path);
            return None;
        };
        match deserialize(&self.engine, compiled) {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "compile cache entry unusable; compiling again");
                None
            }
        }
    }
}

/// The compiled code of a compile cache entry (`<sha256><compiled>`, as [`store_compiled`]
/// writes it), when its checksum holds.
fn checked_entry(entry: &[u8]) -> Option<&[u8]> {
    let (checksum, compiled) = entry.split_at_checked(32)?;
    (Sha256::digest(compiled).as_slice() == checksum).then_some(compiled)
}

/// Turns precompiled bytes back into a component.
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, compiled: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: the bytes are either what `precompile_component` just produced with this engine,
    // or a compile cache file whose sha256 matched the checksum we wrote beside that output, in
    // a directory only this host writes; wasmtime also checks the engine compatibility header.
    unsafe { Component::deserialize(engine, compiled) }
}

/// Writes `<sha256><compiled>` via a temp file and a rename, so a crash leaves no half entry.
pub(crate) fn store_compiled(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(&Sha256::digest(compiled))?;
    file.write_all(compiled)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(target: Option<TargetSettings>) -> EngineSettings {
        EngineSettings {
            fuel: false,
            wasi_03: true,
            pool: None,
            target,
        }
    }

    fn key(settings: &EngineSettings) -> String {
        compile_key(&settings.engine().unwrap())
    }

    #[test]
    fn code_compiled_for_a_host_s_reported_target_has_that_host_s_key() {
        // What the control plane compiles from a host's record loads on that host only if
        // both engines hash alike: the reported triple and CPU features must make it so.
        let native = native_target().expect("Cranelift supports this machine");
        assert!(!native.isa_flags.is_empty(), "{native:?}");
        let here = key(&settings(None));
        assert_eq!(here.len(), shoal_lattice::validate::COMPILE_KEY_LEN);
        assert_eq!(key(&settings(Some(native.clone()))), here);
        // A CPU feature fewer, fuel, or another machine: another key, never loaded here.
        let fewer = TargetSettings {
            isa_flags: native.isa_flags[1..].to_vec(),
            ..native.clone()
        };
        assert_ne!(key(&settings(Some(fewer))), here);
        let fuel = EngineSettings {
            fuel: true,
            ..settings(None)
        };
        assert_ne!(key(&fuel), here);
        let other = if native.triple.starts_with("x86_64") {
            "aarch64-unknown-linux-gnu"
        } else {
            "x86_64-unknown-linux-gnu"
        };
        let other = settings(Some(TargetSettings {
            triple: other.to_owned(),
            isa_flags: Vec::new(),
        }));
        // This build compiles for the other architecture too.
        assert_ne!(key(&other), here);
        let empty = b"\0asm\x0d\x00\x01\x00";
        assert!(other.engine().unwrap().precompile_component(empty).is_ok());
    }

    #[test]
    fn a_target_wasmtime_does_not_know_is_an_error_not_a_crash() {
        for triple in ["", "no-such-machine", "riscv64gc-unknown-linux-gnu\n"] {
            let target = TargetSettings {
                triple: triple.to_owned(),
                isa_flags: vec!["has_nothing".to_owned()],
            };
            assert!(settings(Some(target)).engine().is_err(), "{triple:?}");
        }
        // Only CPU features: not a compiler setting (a slow or unchecked compile), not a
        // preset, not a value.
        let native = native_target().unwrap();
        for flag in [
            "has_nothing",
            "regalloc_checker",
            "enable_verifier",
            "opt_level=none",
        ] {
            let unknown = TargetSettings {
                isa_flags: vec![flag.to_owned()],
                ..native.clone()
            };
            assert!(settings(Some(unknown)).engine().is_err(), "{flag}");
        }
    }

    #[test]
    fn code_from_elsewhere_enters_the_cache_only_with_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = Runtime::new(RuntimeOptions {
            cache_dir: dir.path().to_owned(),
            pooling: false,
            instance_slots: 1,
            keep_resident: 0,
            fuel: false,
            wasi_03: false,
            compiler: None,
        })
        .unwrap();
        let target = runtime.compile_target().unwrap();
        assert_eq!(target.key, runtime.compile_key());
        let empty = b"\0asm\x0d\x00\x01\x00";
        let compiled = runtime.engine().precompile_component(empty).unwrap();
        let mut entry = Sha256::digest(&compiled).to_vec();
        entry.extend_from_slice(&compiled);
        let mut corrupt = entry.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert!(runtime.adopt_compiled("sha256:aa", &corrupt).is_err());
        assert!(runtime.adopt_compiled("sha256:aa", &entry[..10]).is_err());
        assert!(!runtime.has_compiled("sha256:aa"));
        runtime.adopt_compiled("sha256:aa", &entry).unwrap();
        assert!(runtime.has_compiled("sha256:aa"));
        assert!(
            runtime
                .load(b"not even wasm", "sha256:aa")
                .unwrap()
                .cache_hit
        );
    }

    #[test]
    fn pool_slots_follow_the_memory_replicas_get() {
        assert_eq!(instance_slots(0), 16);
        assert_eq!(instance_slots(410 << 20), 205);
        assert_eq!(instance_slots(19 << 30), 1000);
        assert_eq!(instance_slots(u64::MAX), 1000);
    }
}
