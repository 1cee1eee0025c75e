//! Shoal's lattice protocol: the only home of wire types, bucket and subject names, and the
//! typed JetStream KV client that hosts, the scheduler and the CLI share.
//!
//! State is level-triggered, like Kubernetes: desired state (apps, assignments) and observed
//! state (hosts, status) live in KV buckets; every party converges on what it reads, and
//! writes that can race are compare-and-set on the key's revision.

pub mod api;
pub mod appkv;
pub mod auth;
pub mod components;
pub mod error;
pub mod events;
pub mod fleet;
pub mod jobs;
pub mod journal;
pub mod logs;
pub mod mirror;
pub mod names;
pub mod presence;
pub mod quantity;
pub mod records;
pub mod secrets;
pub mod store;
pub mod streams;
pub mod trust;
pub mod validate;

pub use error::{Cause, Chain, Error};
pub use events::Event;
pub use journal::{Journal, Reader, Start};
pub use logs::{LogLine, LogReader, Output};
pub use mirror::{Mirror, Refused};
pub use names::Bucket;
pub use store::{AppMessage, ConnectOptions, Lattice, NatsAuth, NatsTls, SiteCopy, Versioned};
pub use validate::{Invalid, Problem, Validate};
