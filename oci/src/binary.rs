//! Host binaries as OCI artifacts: one manifest per architecture (a config naming the
//! architecture and version, and the binary as its one layer) under an image index, so one
//! reference serves a mixed fleet. Signatures are those of components: of each manifest's
//! digest, stored beside it (see [`crate::signature`]).

use oci_client::manifest::{OciImageIndex, OciImageManifest, Platform};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use serde::{Deserialize, Serialize};

use crate::artifact::{Blob, descriptor};
use crate::client::{Client, MemorySink};
use crate::digest::Digest;
use crate::error::Error;
use crate::media_types::{HOST_BINARY_CONFIG, HOST_BINARY_LAYER, OCI_INDEX, OCI_MANIFEST};

/// Most bytes a host binary may have.
pub const MAX_BINARY_SIZE: u64 = 512 << 20;

/// The config of a host binary artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BinaryConfig {
    /// `linux`.
    pub os: String,
    /// The architecture as hosts label themselves (`x86_64`, `aarch64`).
    pub architecture: String,
    /// The version the binary reports.
    pub version: String,
}

/// One architecture's binary, as published or resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishedBinary {
    /// Its manifest's digest: what is signed and pinned.
    pub manifest: Digest,
    /// The binary's digest.
    pub binary: Digest,
    /// The binary's size.
    pub size: u64,
    /// Its config.
    pub config: BinaryConfig,
}

/// The OCI architecture name of a host's `arch` label.
fn oci_architecture(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Client {
    /// Pushes each binary's manifest by digest, then an index of them all at `reference`'s
    /// tag.
    ///
    /// # Errors
    /// Registry errors; [`Error::PushByDigest`] for a reference with a digest.
    pub async fn push_binaries(
        &self,
        reference: &Reference,
        binaries: &[(Vec<u8>, BinaryConfig)],
    ) -> Result<(Digest, Vec<PublishedBinary>), Error> {
        let whole = reference.whole();
        if reference.digest().is_some() {
            return Err(Error::PushByDigest { reference: whole });
        }
        let registry = reference.resolve_registry().to_owned();
        let failed = |error| Error::from_registry(&registry, &whole, error);
        let client = self.registry_client(&registry);
        let auth = self.credentials_for(&registry);
        client
            .auth(reference, &auth, RegistryOperation::Push)
            .await
            .map_err(failed)?;
        let mut published = Vec::new();
        let mut entries = Vec::new();
        for (binary, config) in binaries {
            let size = binary.len() as u64;
            if size > MAX_BINARY_SIZE {
                return Err(Error::TooLarge {
                    size,
                    limit: MAX_BINARY_SIZE,
                });
            }
            let config_bytes = serde_json::to_vec(config).map_err(|error| Error::Registry {
                registry: registry.clone(),
                reference: whole.clone(),
                message: format!("could not encode the config: {error}"),
            })?;
            let binary_digest = Digest::of(binary);
            let config_digest = Digest::of(&config_bytes);
            let manifest = OciImageManifest {
                schema_version: 2,
                media_type: Some(OCI_MANIFEST.to_owned()),
                config: descriptor(
                    HOST_BINARY_CONFIG,
                    &config_digest,
                    config_bytes.len() as u64,
                ),
                layers: vec![descriptor(HOST_BINARY_LAYER, &binary_digest, size)],
                artifact_type: None,
                annotations: None,
                subject: None,
            };
            let manifest_bytes =
                serde_json::to_vec(&manifest).map_err(|error| Error::Registry {
                    registry: registry.clone(),
                    reference: whole.clone(),
                    message: format!("could not encode the manifest: {error}"),
                })?;
            let manifest_digest = Digest::of(&manifest_bytes);
            if !client
                .blob_exists(reference, binary_digest.as_str())
                .await
                .map_err(failed)?
            {
                self.upload(&client, reference, binary, binary_digest.as_str())
                    .await
                    .map_err(failed)?;
            }
            client
                .push_blob(reference, config_bytes, config_digest.as_str())
                .await
                .map_err(failed)?;
            let pinned = Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                manifest_digest.to_string(),
            );
            client
                .push_manifest_raw(
                    &pinned,
                    manifest_bytes.clone(),
                    http::HeaderValue::from_static(OCI_MANIFEST),
                )
                .await
                .map_err(failed)?;
            entries.push(oci_client::manifest::ImageIndexEntry {
                media_type: OCI_MANIFEST.to_owned(),
                digest: manifest_digest.to_string(),
                size: i64::try_from(manifest_bytes.len()).unwrap_or(i64::MAX),
                platform: Some(Platform {
                    architecture: oci_architecture(&config.architecture).into(),
                    os: config.os.as_str().into(),
                    os_version: None,
                    os_features: None,
                    variant: None,
                    features: None,
                }),
                annotations: None,
                artifact_type: None,
            });
            published.push(PublishedBinary {
                manifest: manifest_digest,
                binary: binary_digest,
                size,
                config: config.clone(),
            });
        }
        let index = OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: entries,
            artifact_type: None,
            annotations: None,
        };
        let index_bytes = serde_json::to_vec(&index).map_err(|error| Error::Registry {
            registry: registry.clone(),
            reference: whole.clone(),
            message: format!("could not encode the index: {error}"),
        })?;
        let index_digest = Digest::of(&index_bytes);
        client
            .push_manifest_raw(
                reference,
                index_bytes,
                http::HeaderValue::from_static(OCI_INDEX),
            )
            .await
            .map_err(failed)?;
        Ok((index_digest, published))
    }

    /// The binaries `reference` names (an index of them, or one), each with its config.
    ///
    /// # Errors
    /// Registry errors; [`Error::NotHostBinary`] for what is not a host binary.
    pub async fn resolve_binaries(
        &self,
        reference: &Reference,
    ) -> Result<Vec<PublishedBinary>, Error> {
        let registry = reference.resolve_registry().to_owned();
        let whole = reference.whole();
        let client = self.registry_client(&registry);
        let auth = self.credentials_for(&registry);
        let (bytes, _) = self.manifest(&client, reference, &auth).await?;
        let index: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|error| not_binary(reference, error))?;
        let manifests: Vec<Digest> = if index.get("manifests").is_some() {
            let index: OciImageIndex =
                serde_json::from_value(index).map_err(|error| not_binary(reference, error))?;
            index
                .manifests
                .iter()
                .map(|entry| entry.digest.parse::<Digest>())
                .collect::<Result<_, _>>()
                .map_err(|error| not_binary(reference, error))?
        } else {
            vec![Digest::of(&bytes)]
        };
        let mut binaries = Vec::new();
        for digest in manifests {
            let pinned = Reference::with_digest(
                reference.registry().to_owned(),
                reference.repository().to_owned(),
                digest.to_string(),
            );
            let (manifest, layer) = self
                .binary_manifest(&client, &pinned, &auth, &digest)
                .await?;
            let config_blob = Blob {
                media_type: HOST_BINARY_CONFIG.to_owned(),
                digest: manifest
                    .config
                    .digest
                    .parse()
                    .map_err(|error| not_binary(&pinned, error))?,
                size: u64::try_from(manifest.config.size).unwrap_or(0),
            };
            if config_blob.size > crate::artifact::MAX_CONFIG_SIZE {
                return Err(not_binary(&pinned, "its config is too large"));
            }
            let mut sink = MemorySink::default();
            self.fetch(&client, &pinned, &config_blob, "config", &mut sink)
                .await?;
            let config: BinaryConfig =
                serde_json::from_slice(&sink.bytes).map_err(|error| not_binary(&pinned, error))?;
            binaries.push(PublishedBinary {
                manifest: digest,
                binary: layer.digest,
                size: layer.size,
                config,
            });
        }
        if binaries.is_empty() {
            return Err(Error::Registry {
                registry,
                reference: whole,
                message: "the index names no binary".to_owned(),
            });
        }
        Ok(binaries)
    }

    /// Pulls the binary of manifest `reference` (pinned by digest) into the cache, checking
    /// that it is `expected`; returns the cached file.
    ///
    /// # Errors
    /// Registry errors, [`Error::DigestMismatch`] for a manifest or binary that is not the one
    /// pinned.
    pub async fn pull_binary(
        &self,
        reference: &Reference,
        expected: &Digest,
    ) -> Result<std::path::PathBuf, Error> {
        let registry = reference.resolve_registry().to_owned();
        let client = self.registry_client(&registry);
        let auth = self.credentials_for(&registry);
        let pinned: Digest = reference
            .digest()
            .ok_or_else(|| not_binary(reference, "the reference is not pinned by digest"))?
            .parse()
            .map_err(|error| not_binary(reference, error))?;
        let (_, layer) = self
            .binary_manifest(&client, reference, &auth, &pinned)
            .await?;
        if layer.digest != *expected {
            return Err(Error::DigestMismatch {
                reference: reference.whole(),
                what: "binary",
                expected: expected.clone(),
                actual: layer.digest,
            });
        }
        // Only once the (signed) manifest names it as a host binary does a cached copy serve.
        if let crate::cache::Lookup::Hit(path) = self.cache().verify(expected)? {
            return Ok(path);
        }
        let mut writer = self.cache().writer()?;
        self.fetch(&client, reference, &layer, "layer", &mut writer)
            .await?;
        match writer.commit(&layer.digest)? {
            Ok(path) => Ok(path),
            Err(actual) => Err(crate::client::mismatch(reference, "layer", &layer, actual)),
        }
    }

    /// The manifest `reference` names, raw, within the size a manifest may have.
    async fn manifest(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Vec<u8>, String), Error> {
        let registry = reference.resolve_registry();
        let whole = reference.whole();
        let (bytes, digest) = client
            .pull_manifest_raw(reference, auth, &[OCI_MANIFEST, OCI_INDEX])
            .await
            .map_err(|error| Error::from_registry(registry, &whole, error))?;
        if bytes.len() as u64 > crate::artifact::MAX_MANIFEST_SIZE {
            return Err(not_binary(reference, "its manifest is too large"));
        }
        Ok((bytes.to_vec(), digest))
    }

    /// The host binary manifest `digest`, checked by digest and shape; returns it and its
    /// layer.
    async fn binary_manifest(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        auth: &RegistryAuth,
        digest: &Digest,
    ) -> Result<(OciImageManifest, Blob), Error> {
        let (bytes, _) = self.manifest(client, reference, auth).await?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(Error::DigestMismatch {
                reference: reference.whole(),
                what: "manifest",
                expected: digest.clone(),
                actual,
            });
        }
        check_binary_manifest(&bytes).map_err(|problem| match problem {
            Problem::TooLarge(size) => Error::TooLarge {
                size,
                limit: MAX_BINARY_SIZE,
            },
            Problem::Shape(problem) => not_binary(reference, problem),
        })
    }
}

/// Why a manifest is not a host binary's.
#[derive(Debug, PartialEq)]
enum Problem {
    /// Its layer is larger than a host binary may be.
    TooLarge(u64),
    /// It is not shaped like one.
    Shape(String),
}

/// Checks a host binary's manifest: its config's media type, one layer of the binary's
/// media type within [`MAX_BINARY_SIZE`]; returns it and its layer.
fn check_binary_manifest(bytes: &[u8]) -> Result<(OciImageManifest, Blob), Problem> {
    let shape = |problem: String| Problem::Shape(problem);
    let manifest: OciImageManifest =
        serde_json::from_slice(bytes).map_err(|error| shape(error.to_string()))?;
    if manifest.config.media_type != HOST_BINARY_CONFIG {
        return Err(shape(format!(
            "its config is {}",
            manifest.config.media_type
        )));
    }
    let [layer] = manifest.layers.as_slice() else {
        return Err(shape("it must have exactly one layer".to_owned()));
    };
    if layer.media_type != HOST_BINARY_LAYER {
        return Err(shape(format!("its layer is {}", layer.media_type)));
    }
    let size =
        u64::try_from(layer.size).map_err(|_| shape("its layer's size is negative".to_owned()))?;
    if size > MAX_BINARY_SIZE {
        return Err(Problem::TooLarge(size));
    }
    let blob = Blob {
        media_type: layer.media_type.clone(),
        digest: layer
            .digest
            .parse()
            .map_err(|error: crate::digest::InvalidDigest| shape(error.to_string()))?,
        size,
    };
    Ok((manifest, blob))
}

fn not_binary(reference: &Reference, problem: impl std::fmt::Display) -> Error {
    Error::NotHostBinary {
        reference: reference.whole(),
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn manifest(config: &str, layers: &[(&str, i64)]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config, "digest": LAYER, "size": 10},
            "layers": layers.iter().map(|(media_type, size)| serde_json::json!({
                "mediaType": media_type, "digest": LAYER, "size": size
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn only_a_manifest_of_one_host_binary_layer_within_the_limit_is_a_host_binary() {
        let (_, layer) =
            check_binary_manifest(&manifest(HOST_BINARY_CONFIG, &[(HOST_BINARY_LAYER, 5)]))
                .unwrap();
        assert_eq!(layer.digest.as_str(), LAYER);
        assert_eq!(layer.size, 5);
        let refused = [
            // A component (or anything else) signed by a trusted key is not a binary.
            manifest(crate::media_types::WASM_CONFIG, &[(HOST_BINARY_LAYER, 5)]),
            manifest(HOST_BINARY_CONFIG, &[(crate::media_types::WASM_LAYER, 5)]),
            manifest(HOST_BINARY_CONFIG, &[]),
            manifest(
                HOST_BINARY_CONFIG,
                &[(HOST_BINARY_LAYER, 5), (HOST_BINARY_LAYER, 5)],
            ),
            manifest(HOST_BINARY_CONFIG, &[(HOST_BINARY_LAYER, -1)]),
            b"not json".to_vec(),
        ];
        for bytes in refused {
            assert!(
                matches!(check_binary_manifest(&bytes), Err(Problem::Shape(_))),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let huge = i64::try_from(MAX_BINARY_SIZE + 1).unwrap();
        assert_eq!(
            check_binary_manifest(&manifest(HOST_BINARY_CONFIG, &[(HOST_BINARY_LAYER, huge)]))
                .err(),
            Some(Problem::TooLarge(MAX_BINARY_SIZE + 1))
        );
    }
}
