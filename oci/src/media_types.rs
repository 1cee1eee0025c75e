//! Media types of the CNCF Wasm OCI artifact layout.
//!
//! `oci-client` ships constants for the legacy `application/vnd.wasm.content.layer.v1+wasm`
//! layout; Shoal speaks the CNCF TAG Runtime layout
//! (<https://tag-runtime.cncf.io/wgs/wasm/deliverables/wasm-oci-artifact/>), named here once.

/// The OCI image manifest that carries a Wasm artifact.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The OCI image index: the host binaries of every architecture under one reference.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The config blob of a Shoal host binary artifact: os, architecture, version.
pub const HOST_BINARY_CONFIG: &str = "application/vnd.shoal.host.config.v1+json";

/// The one layer of a Shoal host binary artifact: the `shoal` executable.
pub const HOST_BINARY_LAYER: &str = "application/vnd.shoal.host.binary.v1";

/// The config blob of a Wasm artifact: architecture, os, layer digests and component metadata.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

/// The one layer of a Wasm artifact: the component binary itself.
pub const WASM_LAYER: &str = "application/wasm";

/// `architecture` in the config of every Wasm artifact.
pub const WASM_ARCHITECTURE: &str = "wasm";

/// `os` in the config of a WASI 0.2 component.
pub const WASIP2_OS: &str = "wasip2";

/// Standard OCI annotation keys Shoal writes on push.
pub mod annotations {
    /// When the artifact was built (RFC 3339).
    pub const CREATED: &str = "org.opencontainers.image.created";
    /// Human-readable title: the component's file name.
    pub const TITLE: &str = "org.opencontainers.image.title";
}
