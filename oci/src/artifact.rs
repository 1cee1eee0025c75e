//! The CNCF Wasm OCI artifact: building the config and manifest for push, and checking a pulled
//! manifest before a single blob is fetched.
//!
//! Everything here is pure (bytes in, bytes or a verdict out), so the refusals are unit-tested
//! without a registry.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};

use crate::component::ComponentInfo;
use crate::digest::Digest;
use crate::media_types::{self, annotations};

/// Config blobs are a few hundred bytes; anything past this is not a Wasm config.
pub const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// Manifests are a few hundred bytes; registries themselves cap them at 4 MiB.
pub const MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// The config blob (`application/vnd.wasm.config.v0+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When the artifact was built (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who built it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a WASI 0.2 component.
    pub os: String,
    /// The digests of the layers, in order.
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// What the component imports and exports, and the world it targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<ComponentInfo>,
}

/// What push needs besides the component bytes.
#[derive(Debug, Clone, Default)]
pub struct ArtifactOptions {
    /// `org.opencontainers.image.title`, usually the file name.
    pub title: Option<String>,
    /// Extra annotations (`--annotation k=v`); they override the standard ones.
    pub annotations: BTreeMap<String, String>,
    /// Build time; `None` means now.
    pub created: Option<DateTime<Utc>>,
}

/// A built artifact, ready to push: the exact bytes whose digests the manifest names.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The manifest as pushed; its digest is the artifact's digest.
    pub manifest: Vec<u8>,
    /// `sha256` of [`Self::manifest`].
    pub manifest_digest: Digest,
    /// The config blob.
    pub config: Vec<u8>,
    /// `sha256` of [`Self::config`].
    pub config_digest: Digest,
    /// `sha256` of the component (the one layer).
    pub layer_digest: Digest,
    /// Size of the component in bytes.
    pub layer_size: u64,
    /// The component's imports, exports and world.
    pub info: ComponentInfo,
}

/// Builds the config and manifest for a component that [`ComponentInfo::from_bytes`] accepted.
///
/// # Errors
/// Only if serialising JSON fails, which does not happen for these types.
pub fn build(
    component: &[u8],
    info: ComponentInfo,
    options: &ArtifactOptions,
) -> Result<Artifact, serde_json::Error> {
    let created = options
        .created
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(SecondsFormat::Secs, true);
    let layer_digest = Digest::of(component);
    let layer_size = component.len() as u64;
    let config = serde_json::to_vec(&WasmConfig {
        created: Some(created.clone()),
        author: None,
        architecture: media_types::WASM_ARCHITECTURE.to_owned(),
        os: media_types::WASIP2_OS.to_owned(),
        layer_digests: vec![layer_digest.to_string()],
        component: Some(info.clone()),
    })?;
    let config_digest = Digest::of(&config);

    let mut manifest_annotations = BTreeMap::from([(annotations::CREATED.to_owned(), created)]);
    if let Some(title) = &options.title {
        manifest_annotations.insert(annotations::TITLE.to_owned(), title.clone());
    }
    manifest_annotations.extend(options.annotations.clone());
    let manifest = serde_json::to_vec(&OciImageManifest {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.to_owned()),
        config: descriptor(
            media_types::WASM_CONFIG,
            &config_digest,
            config.len() as u64,
        ),
        layers: vec![descriptor(
            media_types::WASM_LAYER,
            &layer_digest,
            layer_size,
        )],
        subject: None,
        artifact_type: None,
        annotations: Some(manifest_annotations),
    })?;
    let manifest_digest = Digest::of(&manifest);
    Ok(Artifact {
        manifest,
        manifest_digest,
        config,
        config_digest,
        layer_digest,
        layer_size,
        info,
    })
}

/// A descriptor of a blob.
pub(crate) fn descriptor(media_type: &str, digest: &Digest, size: u64) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_owned(),
        digest: digest.to_string(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        urls: None,
        annotations: None,
        artifact_type: None,
    }
}

/// Why a manifest or config is not a Wasm component artifact Shoal will pull.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The manifest is not JSON of the OCI manifest shape.
    #[error("the manifest is not a valid OCI image manifest: {0}")]
    MalformedManifest(String),
    /// An image index, a Docker manifest or something else.
    #[error(
        "unsupported manifest media type {found:?}; a Wasm artifact uses {}",
        media_types::OCI_MANIFEST
    )]
    ManifestMediaType {
        /// The media type the manifest declared.
        found: String,
    },
    /// Not exactly one layer.
    #[error(
        "the manifest has {count} layers; a Wasm component artifact has exactly one {} layer",
        media_types::WASM_LAYER
    )]
    LayerCount {
        /// How many layers it has.
        count: usize,
    },
    /// The config is not the Wasm config media type.
    #[error(
        "unknown config media type {found:?}; a Wasm artifact's config is {}",
        media_types::WASM_CONFIG
    )]
    ConfigMediaType {
        /// The media type found.
        found: String,
    },
    /// The layer is not `application/wasm`.
    #[error(
        "unknown layer media type {found:?}; a Wasm artifact's layer is {}",
        media_types::WASM_LAYER
    )]
    LayerMediaType {
        /// The media type found.
        found: String,
    },
    /// A descriptor's digest is not `sha256:<64 hex>`.
    #[error("the {what} descriptor has an invalid digest: {reason}")]
    Digest {
        /// Which descriptor.
        what: &'static str,
        /// Why the digest is refused.
        reason: crate::digest::InvalidDigest,
    },
    /// A descriptor announces more bytes than allowed.
    #[error("the {what} is {} but the limit is {}; raise it with --max-size or SHOAL_MAX_ARTIFACT_SIZE", bytesize::ByteSize(*size), bytesize::ByteSize(*limit))]
    TooLarge {
        /// Which blob.
        what: &'static str,
        /// Its announced size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// A negative size in a descriptor.
    #[error("the {what} descriptor has a negative size {size}")]
    NegativeSize {
        /// Which descriptor.
        what: &'static str,
        /// The size found.
        size: i64,
    },
    /// The config does not parse or contradicts the manifest.
    #[error("the config is not a valid Wasm config: {0}")]
    MalformedConfig(String),
}

/// A blob a manifest points at, with its digest checked for shape and its size for sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    /// Its media type.
    pub media_type: String,
    /// Its content digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// A manifest that passed [`check_manifest`]: one Wasm config, one Wasm layer, within limits.
#[derive(Debug, Clone)]
pub struct CheckedManifest {
    /// The parsed manifest.
    pub manifest: OciImageManifest,
    /// The config blob.
    pub config: Blob,
    /// The component layer.
    pub layer: Blob,
}

impl CheckedManifest {
    /// The manifest's annotations (empty when it has none).
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.manifest.annotations.clone().unwrap_or_default()
    }
}

/// Checks that `bytes` is a manifest of a Wasm component artifact whose layer is at most
/// `max_layer_size` bytes. Nothing is fetched until this passes.
///
/// # Errors
/// [`ArtifactError`] says which rule the manifest breaks.
pub fn check_manifest(bytes: &[u8], max_layer_size: u64) -> Result<CheckedManifest, ArtifactError> {
    // Read the media type alone first: an image index or a Docker manifest has another shape,
    // and "unsupported media type" says more than "missing field `config`".
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct MediaTypeOnly {
        media_type: Option<String>,
    }
    let declared: MediaTypeOnly = serde_json::from_slice(bytes)
        .map_err(|error| ArtifactError::MalformedManifest(error.to_string()))?;
    if let Some(found) = declared.media_type
        && found != media_types::OCI_MANIFEST
    {
        return Err(ArtifactError::ManifestMediaType { found });
    }
    let manifest: OciImageManifest = serde_json::from_slice(bytes)
        .map_err(|error| ArtifactError::MalformedManifest(error.to_string()))?;
    if manifest.schema_version != 2 {
        return Err(ArtifactError::MalformedManifest(format!(
            "schemaVersion is {}, expected 2",
            manifest.schema_version
        )));
    }
    if manifest.layers.len() != 1 {
        return Err(ArtifactError::LayerCount {
            count: manifest.layers.len(),
        });
    }
    if manifest.config.media_type != media_types::WASM_CONFIG {
        return Err(ArtifactError::ConfigMediaType {
            found: manifest.config.media_type.clone(),
        });
    }
    let layer = &manifest.layers[0];
    if layer.media_type != media_types::WASM_LAYER {
        return Err(ArtifactError::LayerMediaType {
            found: layer.media_type.clone(),
        });
    }
    let config = checked_blob("config", &manifest.config, MAX_CONFIG_SIZE)?;
    let layer = checked_blob("layer", layer, max_layer_size)?;
    Ok(CheckedManifest {
        manifest,
        config,
        layer,
    })
}

fn checked_blob(
    what: &'static str,
    descriptor: &OciDescriptor,
    limit: u64,
) -> Result<Blob, ArtifactError> {
    let digest = descriptor
        .digest
        .parse()
        .map_err(|reason| ArtifactError::Digest { what, reason })?;
    let size = u64::try_from(descriptor.size).map_err(|_| ArtifactError::NegativeSize {
        what,
        size: descriptor.size,
    })?;
    if size > limit {
        return Err(ArtifactError::TooLarge { what, size, limit });
    }
    Ok(Blob {
        media_type: descriptor.media_type.clone(),
        digest,
        size,
    })
}

/// Parses a config blob and checks it against the manifest's layer.
///
/// # Errors
/// [`ArtifactError::MalformedConfig`] when it does not parse, is not `architecture: wasm`, or
/// lists layer digests other than the manifest's.
pub fn check_config(bytes: &[u8], layer: &Digest) -> Result<WasmConfig, ArtifactError> {
    let config: WasmConfig = serde_json::from_slice(bytes)
        .map_err(|error| ArtifactError::MalformedConfig(error.to_string()))?;
    if config.architecture != media_types::WASM_ARCHITECTURE {
        return Err(ArtifactError::MalformedConfig(format!(
            "architecture is {:?}, expected {:?}",
            config.architecture,
            media_types::WASM_ARCHITECTURE
        )));
    }
    if !config.layer_digests.is_empty() && config.layer_digests != [layer.to_string()] {
        return Err(ArtifactError::MalformedConfig(format!(
            "layerDigests {:?} do not match the manifest's layer {layer}",
            config.layer_digests
        )));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn built() -> Artifact {
        let options = ArtifactOptions {
            title: Some("hello.wasm".into()),
            annotations: BTreeMap::from([("team".into(), "edge".into())]),
            created: None,
        };
        build(COMPONENT, ComponentInfo::default(), &options).unwrap()
    }

    fn manifest_json(artifact: &Artifact) -> serde_json::Value {
        serde_json::from_slice(&artifact.manifest).unwrap()
    }

    #[test]
    fn built_artifact_follows_the_cncf_layout() {
        let artifact = built();
        let manifest = manifest_json(&artifact);
        assert_eq!(manifest["mediaType"], media_types::OCI_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], media_types::WASM_CONFIG);
        assert_eq!(manifest["layers"][0]["mediaType"], media_types::WASM_LAYER);
        assert_eq!(manifest["layers"][0]["size"], COMPONENT.len());
        assert_eq!(manifest["annotations"][annotations::TITLE], "hello.wasm");
        assert_eq!(manifest["annotations"]["team"], "edge");
        assert!(manifest["annotations"][annotations::CREATED].is_string());

        let config: serde_json::Value = serde_json::from_slice(&artifact.config).unwrap();
        assert_eq!(config["architecture"], "wasm");
        assert_eq!(config["os"], "wasip2");
        assert_eq!(config["layerDigests"][0], artifact.layer_digest.as_str());
        assert!(config["component"]["exports"].is_array());

        let checked = check_manifest(&artifact.manifest, 1024).unwrap();
        assert_eq!(checked.layer.digest, artifact.layer_digest);
        check_config(&artifact.config, &artifact.layer_digest).unwrap();
    }

    #[test]
    fn refuses_two_layers() {
        let artifact = built();
        let mut manifest = manifest_json(&artifact);
        let layer = manifest["layers"][0].clone();
        manifest["layers"] = serde_json::json!([layer.clone(), layer]);
        let error = check_manifest(&serde_json::to_vec(&manifest).unwrap(), 1024).unwrap_err();
        assert!(
            matches!(error, ArtifactError::LayerCount { count: 2 }),
            "{error}"
        );
    }

    #[test]
    fn refuses_unknown_media_types() {
        let artifact = built();
        let mut manifest = manifest_json(&artifact);
        manifest["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let error = check_manifest(&serde_json::to_vec(&manifest).unwrap(), 1024).unwrap_err();
        assert!(
            error.to_string().contains("unknown config media type"),
            "{error}"
        );

        let mut manifest = manifest_json(&artifact);
        manifest["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into();
        let error = check_manifest(&serde_json::to_vec(&manifest).unwrap(), 1024).unwrap_err();
        assert!(
            error.to_string().contains("unknown layer media type"),
            "{error}"
        );
    }

    #[test]
    fn refuses_layers_over_the_limit_and_bad_digests() {
        let artifact = built();
        let error = check_manifest(&artifact.manifest, 4).unwrap_err();
        assert!(
            matches!(error, ArtifactError::TooLarge { what: "layer", .. }),
            "{error}"
        );

        let mut manifest = manifest_json(&artifact);
        manifest["layers"][0]["digest"] = "sha256:../../../etc/passwd".into();
        let error = check_manifest(&serde_json::to_vec(&manifest).unwrap(), 1024).unwrap_err();
        assert!(
            matches!(error, ArtifactError::Digest { what: "layer", .. }),
            "{error}"
        );
    }

    #[test]
    fn refuses_configs_that_contradict_the_manifest() {
        let artifact = built();
        let other = Digest::of(b"other");
        let error = check_config(&artifact.config, &other).unwrap_err();
        assert!(error.to_string().contains("layerDigests"), "{error}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        fn mutate(mut bytes: Vec<u8>, edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
            for (at, byte, kind) in edits {
                if bytes.is_empty() {
                    break;
                }
                let at = at.index(bytes.len());
                match kind {
                    0 => bytes[at] = byte,
                    1 => bytes.insert(at, byte),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            bytes
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Registry answers with random edits are refused or accepted, never a panic;
            /// what is accepted names a well-formed digest.
            #[test]
            fn mutated_manifests_and_configs_never_panic(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..10),
                limit in any::<u64>(),
            ) {
                let artifact = built();
                let manifest = mutate(artifact.manifest.clone(), edits.clone());
                if let Ok(checked) = check_manifest(&manifest, limit) {
                    prop_assert!(checked.layer.digest.to_string().starts_with("sha256:"));
                }
                let config = mutate(artifact.config.clone(), edits);
                let _ = check_config(&config, &artifact.layer_digest);
            }

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = check_manifest(&bytes, u64::MAX);
                let _ = check_config(&bytes, &Digest::of(b"x"));
                let _ = crate::component::ComponentInfo::from_bytes(&bytes);
                let mut component = COMPONENT.to_vec();
                component.extend_from_slice(&bytes);
                let _ = crate::component::ComponentInfo::from_bytes(&component);
            }
        }
    }
}
