//! Wasm components as OCI artifacts in the CNCF layout.
//!
//! - [`component`] reads a component binary: valid or why not, imports, exports, world;
//! - [`artifact`] builds the config and manifest for push and checks them on pull;
//! - [`reference`] parses references without a regex engine's memory;
//! - [`client`] pushes to and pulls from any OCI registry, with [`auth`] and [`progress`];
//! - [`signature`] signs and verifies artifacts in cosign's layout, with [`keys`] in
//!   cosign's formats;
//! - [`cache`] is the verified, content-addressed store that pulls fill and that serves
//!   pinned digests with no registry at all.

pub mod artifact;
pub mod auth;
pub mod binary;
pub mod cache;
pub mod client;
pub mod component;
pub mod digest;
pub mod error;
pub mod keys;
pub mod media_types;
pub mod mirror;
pub mod progress;
pub mod reference;
pub mod signature;

pub use artifact::{ArtifactOptions, WasmConfig};
pub use auth::Credentials;
pub use cache::Cache;
pub use client::{
    Client, ClientOptions, DEFAULT_MAX_ARTIFACT_SIZE, PullSource, Pulled, Pushed, parse_reference,
};
pub use component::{ComponentError, ComponentInfo};
pub use digest::Digest;
pub use error::Error;
pub use oci_client::Reference;
