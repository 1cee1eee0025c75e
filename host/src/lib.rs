//! The Shoal host runtime: runs Wasm components in a wasmtime sandbox with cgroup-style limits.
//!
//! - [`engine`]: one [`engine::Runtime`] per process (one wasmtime `Engine`, pooling allocator
//!   with an on-demand fallback, epoch ticker) and the on-disk compile cache;
//! - [`limits`]: per-replica limits: memory cap, CPU quota, timeout, concurrency, body size;
//! - [`guest`]: what a guest gets (WASI 0.2 and 0.3, nothing inherited, outbound HTTP by
//!   allowlist);
//! - [`config`]: `wasi:config/store` in the versions toolchains produce;
//! - [`keyvalue`]: `wasi:keyvalue` over the app's own JetStream KV buckets;
//! - [`http`]: serving a wasi:http component, a fresh `Store` per request;
//! - [`handler`]: calling a guest's HTTP handler, WASI 0.2 or 0.3, behind one shape;
//! - `shared`: several requests at once in one WASI 0.3 instance (opt-in);
//! - [`spin`]: Spin's `spin:variables`, read from the app's configuration;
//! - [`command`]: running a wasi:cli command component to completion;
//! - [`output`]: guest stdout and stderr cut into lines for a sink (the app's logs);
//! - [`agent`]: `shoal host`, the lattice agent converging on its assignments;
//! - [`logs`]: lattice replicas' guest output, queued and published to the lattice's logs;
//! - [`router`]: the ingress routing table over ready local replicas.

pub mod agent;
mod capabilities;
pub mod command;
pub mod compile;
pub mod config;
pub mod engine;
pub mod error;
pub mod forward;
pub mod guest;
pub mod handler;
pub mod http;
pub mod keyvalue;
pub mod limits;
pub mod logs;
pub mod messaging;
pub mod metrics;
pub mod outbound;
pub mod output;
pub mod router;
pub mod server;
pub(crate) mod shared;
pub mod spin;
pub mod state;
pub mod target;
pub mod tls;

pub use engine::{Loaded, Runtime, RuntimeOptions};
pub use error::{FailureCause, HostError};
pub use guest::{GuestOptions, OutboundPolicy};
pub use limits::Limits;
