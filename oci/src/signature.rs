//! Signatures of artifacts in cosign's layout, so that `cosign verify --key` accepts what
//! `shoal sign` writes and Shoal accepts what `cosign sign --key` writes.
//!
//! The signatures of manifest `sha256:H` live in the same repository under the tag
//! `sha256-H.sig`: an OCI image manifest with one layer per signature. Each layer is a
//! simple-signing payload (JSON naming the signed digest) whose ECDSA P-256 signature
//! (base64 DER) is the layer annotation `dev.cosignproject.cosign/signature`. No
//! transparency log and no network but the registry: a host at the edge verifies against
//! the keys its lattice trusts, from its cache when the registry is out of reach.

use std::collections::BTreeMap;

use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::{Reference, RegistryOperation};
use serde::{Deserialize, Serialize};

use crate::artifact::Blob;
use crate::client::{Client, MemorySink};
use crate::digest::Digest;
use crate::error::Error;
use crate::keys::{PrivateKey, PublicKey};
use crate::media_types;

/// Media type of a simple-signing payload layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a cosign signature.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// Media type of the signature manifest's config.
const IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Most signatures read for one artifact, and the largest payload and manifest: a registry
/// (or whoever wrote the tag) cannot make a host read without end.
const MAX_SIGNATURES: usize = 64;
const MAX_PAYLOAD: u64 = 64 * 1024;
pub(crate) const MAX_MANIFEST: usize = 512 * 1024;

/// The tag that holds the signatures of `digest`: `sha256-<hex>.sig`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("sha256-{}.sig", digest.hex())
}

/// A simple-signing payload (containers-signature(5) as cosign writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimpleSigning {
    /// What the signature vouches for.
    pub critical: Critical,
    /// Claims the signer added; not checked.
    #[serde(default)]
    pub optional: Option<BTreeMap<String, serde_json::Value>>,
}

/// The part of a payload a verifier checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Critical {
    /// The repository the signer named (cosign ignores it; so does Shoal: an artifact
    /// copied to another registry keeps its signatures).
    pub identity: Identity,
    /// The signed manifest.
    pub image: Image,
    /// Always [`SIGNATURE_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
}

/// The signer's name for the repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `registry/repository`.
    #[serde(rename = "docker-reference")]
    pub docker_reference: String,
}

/// The signed manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:…`.
    #[serde(rename = "docker-manifest-digest", alias = "Docker-manifest-digest")]
    pub docker_manifest_digest: String,
}

impl SimpleSigning {
    /// The payload that signs `digest` in `repository` (`registry/repository`).
    pub fn new(repository: &str, digest: &Digest) -> Self {
        SimpleSigning {
            critical: Critical {
                identity: Identity {
                    docker_reference: repository.to_owned(),
                },
                image: Image {
                    docker_manifest_digest: digest.to_string(),
                },
                kind: SIGNATURE_TYPE.to_owned(),
            },
            optional: None,
        }
    }
}

/// One signature as stored: the payload bytes and the signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The payload, byte for byte as signed.
    pub payload: Vec<u8>,
    /// Base64 of the DER ECDSA signature.
    pub signature: String,
}

/// Why an artifact's signatures are not good enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// There is no signature at all.
    #[error("{0}")]
    Missing(String),
    /// There are signatures, but none by a trusted key for this digest.
    #[error("{0}")]
    Invalid(String),
}

impl SignatureError {
    /// The reason a replica's status shows: `SignatureMissing` or `SignatureInvalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            SignatureError::Missing(_) => "SignatureMissing",
            SignatureError::Invalid(_) => "SignatureInvalid",
        }
    }
}

/// Which trusted key signed, and how many signatures were looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The id of the key whose signature holds.
    pub key_id: String,
}

/// Checks that one of `signatures` is a signature of `digest` by one of `keys`.
///
/// # Errors
/// [`SignatureError::Missing`] when there are none; [`SignatureError::Invalid`] naming what
/// each one lacks (not by a trusted key, for another digest, not a cosign payload).
pub fn verify(
    digest: &Digest,
    signatures: &[Signature],
    keys: &[PublicKey],
) -> Result<Verified, SignatureError> {
    if signatures.is_empty() {
        return Err(SignatureError::Missing(format!(
            "{digest} has no signature (tag {}); sign it with shoal sign --key or cosign sign --key",
            signature_tag(digest)
        )));
    }
    let mut problems = Vec::new();
    for signature in signatures {
        let Some(key) = keys
            .iter()
            .find(|key| key.verifies(&signature.payload, &signature.signature))
        else {
            problems.push("a signature by a key the lattice does not trust".to_owned());
            continue;
        };
        let payload: SimpleSigning = match serde_json::from_slice(&signature.payload) {
            Ok(payload) => payload,
            Err(error) => {
                problems.push(format!(
                    "a signature by {} over a payload that is not simple signing ({error})",
                    key.id()
                ));
                continue;
            }
        };
        if payload.critical.kind != SIGNATURE_TYPE {
            problems.push(format!(
                "a signature by {} of type {:?}, not {SIGNATURE_TYPE:?}",
                key.id(),
                payload.critical.kind
            ));
            continue;
        }
        if payload.critical.image.docker_manifest_digest != digest.as_str() {
            problems.push(format!(
                "a signature by {} of another digest ({})",
                key.id(),
                payload.critical.image.docker_manifest_digest
            ));
            continue;
        }
        return Ok(Verified { key_id: key.id() });
    }
    problems.dedup();
    Err(SignatureError::Invalid(format!(
        "no valid signature of {digest} by a trusted key: {} signature(s): {}",
        signatures.len(),
        problems.join("; ")
    )))
}

/// What [`Client::sign`] wrote.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signed manifest.
    pub digest: Digest,
    /// `registry/repository:sha256-….sig`.
    pub signature_reference: String,
    /// The signing key's id.
    pub key_id: String,
    /// Whether the same signature was there already (nothing was written then).
    pub already: bool,
}

/// The signature manifest as read: lenient about what verification does not need.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SignatureManifest {
    #[serde(default)]
    layers: Vec<SignatureLayer>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureLayer {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl SignatureManifest {
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() > MAX_MANIFEST {
            return Err(format!(
                "the signature manifest is larger than {MAX_MANIFEST} bytes"
            ));
        }
        serde_json::from_slice(bytes)
            .map_err(|error| format!("the signature manifest is not an OCI manifest: {error}"))
    }

    /// The signature layers, each with its payload descriptor and signature.
    pub(crate) fn signatures(&self) -> impl Iterator<Item = (Blob, &str)> {
        self.layers
            .iter()
            .filter(|layer| layer.media_type == SIMPLE_SIGNING && layer.size <= MAX_PAYLOAD)
            .filter_map(|layer| {
                let digest = layer.digest.parse().ok()?;
                let signature = layer.annotations.get(SIGNATURE_ANNOTATION)?;
                Some((
                    Blob {
                        media_type: layer.media_type.clone(),
                        digest,
                        size: layer.size,
                    },
                    signature.as_str(),
                ))
            })
            .take(MAX_SIGNATURES)
    }
}

impl Client {
    /// The signatures the registry stores for `digest` in `reference`'s repository (none
    /// when the signature tag does not exist); the cached ones when the registry cannot be
    /// reached. What comes from the registry is cached, so a host verifies offline.
    ///
    /// # Errors
    /// When the registry fails (and, unreachable, nothing is cached) or serves content
    /// that does not match its digests.
    pub async fn signatures(
        &self,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Vec<Signature>, Error> {
        let registry = reference.resolve_registry().to_owned();
        let repository = reference.repository().to_owned();
        let tag = signature_tag(digest);
        match self.fetch_signatures(reference, &tag).await {
            Err(error) if error.is_unreachable() => {
                match self.cached_signatures(&registry, &repository, &tag)? {
                    Some(cached) => {
                        tracing::info!(%digest, %error, "registry unreachable; using cached signatures");
                        Ok(cached)
                    }
                    None => Err(error),
                }
            }
            other => other,
        }
    }

    /// Checks that `digest` (of `reference`'s repository) carries a signature by one of
    /// `keys`: with the signatures cached from an earlier check first (offline, nothing else
    /// is needed), then with those the registry holds now (a signature may have been added).
    ///
    /// # Errors
    /// Why not; a registry that fails (and nothing cached) counts as no signature.
    pub async fn verify(
        &self,
        reference: &Reference,
        digest: &Digest,
        keys: &[PublicKey],
    ) -> Result<Verified, SignatureError> {
        let unreadable = |error: Error| {
            SignatureError::Missing(format!(
                "the signatures of {digest} cannot be read: {error}"
            ))
        };
        let registry = reference.resolve_registry();
        if let Ok(Some(cached)) =
            self.cached_signatures(registry, reference.repository(), &signature_tag(digest))
            && let Ok(verified) = verify(digest, &cached, keys)
        {
            return Ok(verified);
        }
        let signatures = self
            .signatures(reference, digest)
            .await
            .map_err(unreadable)?;
        verify(digest, &signatures, keys)
    }

    /// The signature manifest cached for `tag` of `repository` at `registry`, with its
    /// bytes: `None` when none is cached, or it does not read.
    pub(crate) fn cached_signature_manifest(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<(Vec<u8>, SignatureManifest)>, Error> {
        let Some(manifest_digest) = self.cache().lookup_tag(registry, repository, tag)? else {
            return Ok(None);
        };
        let Some(bytes) = self.cached_bytes(&manifest_digest, &mut Vec::new())? else {
            return Ok(None);
        };
        Ok(SignatureManifest::parse(&bytes)
            .ok()
            .map(|manifest| (bytes, manifest)))
    }

    fn cached_signatures(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Vec<Signature>>, Error> {
        let Some((_, manifest)) = self.cached_signature_manifest(registry, repository, tag)? else {
            return Ok(None);
        };
        let mut signatures = Vec::new();
        for (blob, signature) in manifest.signatures() {
            let Some(payload) = self.cached_bytes(&blob.digest, &mut Vec::new())? else {
                return Ok(None);
            };
            signatures.push(Signature {
                payload,
                signature: signature.to_owned(),
            });
        }
        Ok(Some(signatures))
    }

    async fn fetch_signatures(
        &self,
        reference: &Reference,
        tag: &str,
    ) -> Result<Vec<Signature>, Error> {
        let signatures_at = at_tag(reference, tag);
        let whole = signatures_at.whole();
        let registry = signatures_at.resolve_registry().to_owned();
        let client = self.registry_client(&registry);
        let auth = self.credentials_for(&registry);
        let Some(manifest_bytes) = existing_manifest(&client, &signatures_at, &auth).await? else {
            return Ok(Vec::new());
        };
        let manifest =
            SignatureManifest::parse(&manifest_bytes).map_err(|message| Error::Registry {
                registry: registry.clone(),
                reference: whole.clone(),
                message,
            })?;
        let mut signatures = Vec::new();
        for (blob, signature) in manifest.signatures() {
            let payload = match self.cached_bytes(&blob.digest, &mut Vec::new())? {
                Some(payload) => payload,
                None => {
                    let mut sink = MemorySink::default();
                    self.fetch(&client, &signatures_at, &blob, "signature", &mut sink)
                        .await?;
                    self.cache().write(&blob.digest, &sink.bytes)?;
                    sink.bytes
                }
            };
            signatures.push(Signature {
                payload,
                signature: signature.to_owned(),
            });
        }
        let manifest_digest = Digest::of(&manifest_bytes);
        self.cache().write(&manifest_digest, &manifest_bytes)?;
        self.cache()
            .record_tag(&registry, signatures_at.repository(), tag, &manifest_digest)?;
        Ok(signatures)
    }

    /// Signs manifest `digest` of `reference`'s repository with `key`, adding the signature
    /// to those already stored (as cosign does); the same signature twice is written once.
    ///
    /// # Errors
    /// Registry errors.
    pub async fn sign(
        &self,
        reference: &Reference,
        digest: &Digest,
        key: &PrivateKey,
    ) -> Result<Signed, Error> {
        let repository = format!("{}/{}", reference.registry(), reference.repository());
        let tag = signature_tag(digest);
        let at = at_tag(reference, &tag);
        let whole = at.whole();
        let registry = at.resolve_registry().to_owned();
        let failed = |error| Error::from_registry(&registry, &whole, error);
        let client = self.registry_client(&registry);
        let auth = self.credentials_for(&registry);
        client
            .auth(&at, &auth, RegistryOperation::Push)
            .await
            .map_err(failed)?;

        let payload =
            serde_json::to_vec(&SimpleSigning::new(&repository, digest)).map_err(|error| {
                Error::Registry {
                    registry: registry.clone(),
                    reference: whole.clone(),
                    message: format!("could not encode the payload: {error}"),
                }
            })?;
        let signature = key.sign(&payload);
        let payload_digest = Digest::of(&payload);
        let key_id = key.public().id();

        // The layers already there stay, in order; ours goes last.
        let mut layers: Vec<OciDescriptor> = match existing_manifest(&client, &at, &auth).await? {
            Some(bytes) => {
                let existing: OciImageManifest = serde_json::from_slice(&bytes)
                    .ok()
                    .filter(|_| bytes.len() <= MAX_MANIFEST)
                    .ok_or_else(|| Error::Registry {
                        registry: registry.clone(),
                        reference: whole.clone(),
                        message: "the signature manifest there is not one to add to".to_owned(),
                    })?;
                existing.layers
            }
            None => Vec::new(),
        };
        // ECDSA with RFC 6979 nonces: the same key over the same payload gives the same
        // signature, so a signature already there is found by its key.
        let already = layers.iter().any(|layer| {
            layer.digest == payload_digest.as_str()
                && layer
                    .annotations
                    .as_ref()
                    .and_then(|annotations| annotations.get(SIGNATURE_ANNOTATION))
                    .is_some_and(|existing| key.public().verifies(&payload, existing))
        });
        if already {
            return Ok(Signed {
                digest: digest.clone(),
                signature_reference: whole,
                key_id,
                already: true,
            });
        }
        push_blob_once(&client, &at, &payload, &payload_digest)
            .await
            .map_err(failed)?;
        layers.push(OciDescriptor {
            media_type: SIMPLE_SIGNING.to_owned(),
            digest: payload_digest.to_string(),
            size: i64::try_from(payload.len()).unwrap_or(i64::MAX),
            urls: None,
            annotations: Some(
                [(SIGNATURE_ANNOTATION.to_owned(), signature)]
                    .into_iter()
                    .collect(),
            ),
            artifact_type: None,
        });

        // The config lists the layers, as an image config would (cosign writes the same).
        let config = serde_json::json!({
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|layer| layer.digest.clone()).collect::<Vec<_>>(),
            },
        });
        let config = serde_json::to_vec(&config).unwrap_or_default();
        let config_digest = Digest::of(&config);
        push_blob_once(&client, &at, &config, &config_digest)
            .await
            .map_err(failed)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": {
                "mediaType": IMAGE_CONFIG,
                "digest": config_digest.to_string(),
                "size": config.len(),
            },
            "layers": layers,
        });
        let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
        client
            .push_manifest_raw(
                &at,
                manifest,
                http::HeaderValue::from_static(media_types::OCI_MANIFEST),
            )
            .await
            .map_err(failed)?;
        Ok(Signed {
            digest: digest.clone(),
            signature_reference: whole,
            key_id,
            already: false,
        })
    }
}

/// `reference`'s repository at `tag`.
fn at_tag(reference: &Reference, tag: &str) -> Reference {
    Reference::with_tag(
        reference.registry().to_owned(),
        reference.repository().to_owned(),
        tag.to_owned(),
    )
}

/// The signature manifest at `at`, or `None` when the tag does not exist.
async fn existing_manifest(
    client: &oci_client::Client,
    at: &Reference,
    auth: &oci_client::secrets::RegistryAuth,
) -> Result<Option<bytes::Bytes>, Error> {
    match client
        .pull_manifest_raw(at, auth, &[media_types::OCI_MANIFEST, DOCKER_MANIFEST])
        .await
    {
        Ok((bytes, _)) => Ok(Some(bytes)),
        Err(error) => match Error::from_registry(at.resolve_registry(), &at.whole(), error) {
            Error::NotFound { .. } => Ok(None),
            other => Err(other),
        },
    }
}

/// Uploads `bytes` unless the repository has them already.
async fn push_blob_once(
    client: &oci_client::Client,
    at: &Reference,
    bytes: &[u8],
    digest: &Digest,
) -> oci_client::errors::Result<()> {
    if !client.blob_exists(at, digest.as_str()).await? {
        client
            .push_blob(at, bytes.to_vec(), digest.as_str())
            .await?;
    }
    Ok(())
}

/// The Docker manifest type, which older signers wrote signature manifests as.
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Digest {
        Digest::of(&[byte])
    }

    fn signed(key: &PrivateKey, repository: &str, of: &Digest) -> Signature {
        let payload = serde_json::to_vec(&SimpleSigning::new(repository, of)).unwrap();
        Signature {
            signature: key.sign(&payload),
            payload,
        }
    }

    #[test]
    fn the_payload_is_cosigns_simple_signing() {
        let payload =
            serde_json::to_string(&SimpleSigning::new("reg.example/app", &digest(1))).unwrap();
        assert_eq!(
            payload,
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"reg.example/app"}},"image":{{"docker-manifest-digest":"{}"}},"type":"cosign container image signature"}},"optional":null}}"#,
                digest(1)
            )
        );
        assert_eq!(
            signature_tag(&digest(1)),
            format!("sha256-{}.sig", digest(1).hex())
        );
    }

    #[test]
    fn only_a_trusted_key_signing_this_digest_passes() {
        let trusted = PrivateKey::generate();
        let stranger = PrivateKey::generate();
        let keys = [trusted.public()];
        let target = digest(1);

        let good = signed(&trusted, "r/app", &target);
        assert_eq!(
            verify(&target, std::slice::from_ref(&good), &keys).map(|v| v.key_id),
            Ok(trusted.public().id())
        );
        // Another repository's name in the payload does not matter (copies keep signatures).
        assert!(
            verify(
                &target,
                &[signed(&trusted, "elsewhere/app", &target)],
                &keys
            )
            .is_ok()
        );

        assert!(matches!(
            verify(&target, &[], &keys),
            Err(SignatureError::Missing(_))
        ));
        let by_stranger = verify(&target, &[signed(&stranger, "r/app", &target)], &keys);
        assert!(
            matches!(&by_stranger, Err(SignatureError::Invalid(m)) if m.contains("does not trust")),
            "{by_stranger:?}"
        );
        let other_digest = verify(&target, &[signed(&trusted, "r/app", &digest(2))], &keys);
        assert!(
            matches!(&other_digest, Err(SignatureError::Invalid(m)) if m.contains("another digest")),
            "{other_digest:?}"
        );
        // A payload altered after signing.
        let mut tampered = good.clone();
        tampered.payload = String::from_utf8(tampered.payload)
            .unwrap()
            .replace(target.hex(), digest(3).hex())
            .into_bytes();
        assert!(verify(&digest(3), &[tampered], &keys).is_err());
        // One good signature among bad ones is enough.
        assert!(verify(&target, &[signed(&stranger, "r/app", &target), good], &keys).is_ok());
        // No trusted keys: nothing passes.
        assert!(verify(&target, &[signed(&trusted, "r/app", &target)], &[]).is_err());
    }
}
