//! Per-replica limits, cgroup-style.
//!
//! CPU: like cgroups' `cpu.max`, a replica gets `millicores/1000 × period` of guest execution
//! time per period (100 ms). Time is accounted the way a kernel's tick accounting does it:
//! the epoch advances every [`EPOCH_TICK`](crate::engine::EPOCH_TICK), and each epoch callback
//! that fires while the guest runs charges one tick to the replica. Over quota, the guest is
//! made to wait (an async yield) until the period ends: throttled, not killed. This needs no
//! fuel: fuel instruments every basic block, while epoch checks are already there for
//! timeouts. A guest that blocks in a host call and resumes after a tick boundary is charged
//! at most one tick it did not run.
//!
//! Memory: a cap on linear memory per instance; growing past it fails and the failure is
//! recorded so the request is reported as out of memory.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

/// The CPU accounting period.
pub const CPU_PERIOD: Duration = Duration::from_millis(100);

/// The limits of one replica.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Cap on each instance's linear memory, in bytes; `None` for no cap beyond the engine's.
    pub memory: Option<u64>,
    /// CPU quota in millicores (1000 = one core); `None` for unlimited.
    pub cpu_millicores: Option<u32>,
    /// Wall-clock limit per request (per run for commands).
    pub timeout: Duration,
    /// In-flight requests per replica.
    pub concurrency: usize,
    /// Requests that may wait for a slot; beyond that, 503.
    pub queue: usize,
    /// Largest request body accepted, in bytes; beyond that, 413.
    pub max_body: u64,
    /// Largest request head (request line and headers), in bytes; beyond that, 431.
    pub max_header: usize,
    /// Requests one instance serves, one after another, before it is dropped; 1 is a fresh
    /// instance per request (the default).
    pub instance_reuse: u32,
    /// Requests one WASI 0.3 instance serves at once (1, the default: one at a time; see
    /// [`crate::shared`]). WASI 0.2 handlers are synchronous and serve one at a time.
    pub instance_concurrency: usize,
    /// Fuel (wasmtime's instruction count) one request may burn; `None`: not counted. Only
    /// a runtime with fuel enabled ([`crate::engine::Runtime::for_fuel`]) can count it.
    pub fuel: Option<u64>,
}

/// Memory cap of a lattice replica whose app sets none: what placement reserves for it.
pub const DEFAULT_APP_MEMORY: u64 = 64 << 20;

/// Most elements one table of an instance may grow to.
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Most core instances, tables and memories one store may create: far more than any
/// component built by a toolchain needs, far fewer than would exhaust the host.
pub const MAX_INSTANCES: usize = 256;
/// See [`MAX_INSTANCES`].
pub const MAX_TABLES: usize = 256;
/// See [`MAX_INSTANCES`].
pub const MAX_MEMORIES: usize = 64;

impl Limits {
    /// The limits of a lattice replica of an app with `limits`: the app's values, clamped
    /// to the lattice's bounds (the record was checked, but a host trusts no one), and
    /// the reserved memory as the cap when the app sets none.
    pub fn for_app(limits: &shoal_lattice::records::AppLimits) -> Self {
        use shoal_lattice::validate::{
            MAX_BODY, MAX_CONCURRENCY, MAX_CPU_MILLICORES, MAX_FUEL, MAX_INSTANCE_CONCURRENCY,
            MAX_INSTANCE_REUSE, MAX_MEMORY, MAX_TIMEOUT, MIN_MEMORY,
        };
        let defaults = Limits::default();
        Self {
            memory: Some(
                limits
                    .memory
                    .map_or(DEFAULT_APP_MEMORY, |memory| memory.0)
                    .clamp(MIN_MEMORY, MAX_MEMORY),
            ),
            cpu_millicores: limits.cpu.map(|cpu| cpu.0.clamp(1, MAX_CPU_MILLICORES)),
            timeout: limits
                .timeout
                .map_or(defaults.timeout, |timeout| timeout.0)
                .clamp(Duration::from_millis(1), MAX_TIMEOUT),
            concurrency: limits
                .concurrency
                .map_or(defaults.concurrency, |concurrency| {
                    concurrency.clamp(1, MAX_CONCURRENCY) as usize
                }),
            instance_reuse: limits
                .instance_reuse
                .map_or(1, |reuse| reuse.clamp(1, MAX_INSTANCE_REUSE)),
            instance_concurrency: limits.instance_concurrency.map_or(1, |concurrency| {
                concurrency.clamp(1, MAX_INSTANCE_CONCURRENCY)
            }) as usize,
            fuel: limits.fuel.map(|fuel| fuel.clamp(1, MAX_FUEL)),
            max_body: limits
                .max_body
                .map_or(defaults.max_body, |max_body| max_body.0.min(MAX_BODY)),
            ..defaults
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: None,
            cpu_millicores: None,
            timeout: Duration::from_secs(30),
            concurrency: 100,
            queue: 100,
            max_body: 10 * 1024 * 1024,
            max_header: 64 * 1024,
            instance_reuse: 1,
            instance_concurrency: 1,
            fuel: None,
        }
    }
}

/// A replica's CPU quota, shared by all its concurrent requests.
#[derive(Debug)]
pub struct CpuQuota {
    budget: Duration,
    period: Duration,
    window: Mutex<Window>,
    consumed_nanos: AtomicU64,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    used: Duration,
}

impl CpuQuota {
    /// A quota of `millicores` per [`CPU_PERIOD`].
    pub fn new(millicores: u32) -> Self {
        Self::with_period(millicores, CPU_PERIOD)
    }

    /// A quota of `millicores` per `period`.
    pub fn with_period(millicores: u32, period: Duration) -> Self {
        Self {
            budget: period.saturating_mul(millicores) / 1000,
            period,
            window: Mutex::new(Window {
                start: Instant::now(),
                used: Duration::ZERO,
            }),
            consumed_nanos: AtomicU64::new(0),
        }
    }

    /// Charges `ran` of execution at `now`. Returns when the guest may run again if the
    /// replica is over its quota for the current period.
    pub fn charge(&self, ran: Duration, now: Instant) -> Option<Instant> {
        self.consumed_nanos.fetch_add(
            u64::try_from(ran.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let Ok(mut window) = self.window.lock() else {
            return None;
        };
        if now >= window.start + self.period {
            window.start = now;
            window.used = Duration::ZERO;
        }
        window.used += ran;
        (window.used >= self.budget).then(|| window.start + self.period)
    }

    /// Execution time charged since the quota was created.
    pub fn consumed(&self) -> Duration {
        Duration::from_nanos(self.consumed_nanos.load(Ordering::Relaxed))
    }
}

/// The memory cap of one instance, remembering whether the guest hit it.
#[derive(Debug, Default)]
pub struct MemoryCap {
    limit: Option<usize>,
    exceeded: bool,
}

impl MemoryCap {
    /// A cap of `limit` bytes per linear memory.
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit: limit.map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)),
            exceeded: false,
        }
    }

    /// Whether a growth was refused.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// Forgets a refused growth, for an instance that serves again.
    pub fn clear(&mut self) {
        self.exceeded = false;
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if self.limit.is_some_and(|limit| desired > limit) {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_throttles_once_the_budget_of_a_period_is_used() {
        let quota = CpuQuota::with_period(200, Duration::from_millis(100));
        let start = Instant::now();
        let tick = Duration::from_millis(5);
        let mut throttled_at = None;
        for n in 1..=10u32 {
            if let Some(until) = quota.charge(tick, start + tick * n) {
                throttled_at = Some((n, until));
                break;
            }
        }
        let (n, until) = throttled_at.expect("throttled within the period");
        assert_eq!(n, 4, "20 ms of a 100 ms period at 200m is four 5 ms ticks");
        assert!(until > start + tick * n);
        // The next period starts afresh.
        assert_eq!(quota.charge(tick, until + Duration::from_millis(1)), None);
        assert_eq!(quota.consumed(), tick * 5);
    }

    #[test]
    fn app_limits_are_clamped_and_memory_is_capped_by_default() {
        use shoal_lattice::quantity::{Memory, Millicores, Span};
        use shoal_lattice::records::AppLimits;
        let limits = Limits::for_app(&AppLimits::default());
        assert_eq!(limits.memory, Some(DEFAULT_APP_MEMORY));
        let extreme = AppLimits {
            memory: Some(Memory(u64::MAX)),
            cpu: Some(Millicores(u32::MAX)),
            timeout: Some(Span(Duration::MAX)),
            concurrency: Some(u32::MAX),
            instance_reuse: Some(u32::MAX),
            instance_concurrency: Some(u32::MAX),
            max_body: Some(Memory(u64::MAX)),
            fuel: Some(u64::MAX),
        };
        let limits = Limits::for_app(&extreme);
        assert_eq!(limits.fuel, Some(1 << 52));
        assert_eq!(Limits::for_app(&AppLimits::default()).fuel, None);
        assert_eq!(limits.instance_reuse, 10_000);
        assert_eq!(limits.instance_concurrency, 1_000);
        assert_eq!(
            Limits::for_app(&AppLimits::default()).instance_concurrency,
            1
        );
        assert_eq!(limits.max_body, 4 << 30);
        assert_eq!(Limits::for_app(&AppLimits::default()).instance_reuse, 1);
        assert_eq!(limits.memory, Some(4 << 30));
        assert_eq!(limits.timeout, Duration::from_secs(3600));
        assert_eq!(limits.concurrency, 10_000);
        assert_eq!(limits.cpu_millicores, Some(1_000_000));
        let quota = CpuQuota::new(limits.cpu_millicores.unwrap());
        assert!(
            quota
                .charge(Duration::from_millis(5), Instant::now())
                .is_none()
        );
    }

    #[test]
    fn tables_cannot_grow_without_bound() {
        let mut cap = MemoryCap::new(None);
        assert!(cap.table_growing(0, 1000, None).unwrap());
        assert!(!cap.table_growing(0, usize::MAX, None).unwrap());
    }

    #[test]
    fn memory_cap_refuses_and_remembers() {
        let mut cap = MemoryCap::new(Some(1 << 20));
        assert!(cap.memory_growing(0, 1 << 19, None).unwrap());
        assert!(!cap.exceeded());
        assert!(!cap.memory_growing(1 << 19, 2 << 20, None).unwrap());
        assert!(cap.exceeded());
    }
}
