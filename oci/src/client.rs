//! Push and pull of Wasm component artifacts against any OCI registry.
//!
//! Pull is cache-first and paranoid: a digest that is cached (and still matches) needs no
//! registry; everything fetched is checked against its descriptor before it is renamed into the
//! cache; a tag whose registry is unreachable falls back to the digest it last resolved to.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::DigestError;
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use serde::Serialize;

use crate::artifact::{self, ArtifactOptions, Blob, CheckedManifest, WasmConfig};
use crate::auth::Credentials;
use crate::cache::{BlobWriter, Cache, CacheError, Lookup};
use crate::component::ComponentInfo;
use crate::digest::Digest;
use crate::error::Error;
use crate::media_types;
use crate::progress::{NoProgress, Progress};

/// The default cap on a component's size: 100 MiB.
pub const DEFAULT_MAX_ARTIFACT_SIZE: u64 = 100 * 1024 * 1024;

/// Blobs are uploaded in pieces of this size, which is also the progress granularity.
const UPLOAD_PIECE: usize = 256 * 1024;

/// Media types a manifest request accepts: the one we want, plus the ones we refuse by name.
const ACCEPTED_MANIFESTS: &[&str] = &[
    media_types::OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// Parses an OCI reference (`registry/repository:tag` or `…@sha256:…`).
///
/// # Errors
/// [`Error::InvalidReference`] with the parser's reason.
pub fn parse_reference(reference: &str) -> Result<Reference, Error> {
    let parsed = crate::reference::parse(reference).map_err(|error| Error::InvalidReference {
        reference: reference.to_owned(),
        reason: error.to_string(),
    })?;
    if let Some(digest) = parsed.digest() {
        digest
            .parse::<Digest>()
            .map_err(|error| Error::InvalidReference {
                reference: reference.to_owned(),
                reason: error.to_string(),
            })?;
    }
    Ok(parsed)
}

/// Whether a registry host is on this machine, where plain HTTP is allowed without `--insecure`.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => registry
            .rsplit_once(':')
            .map_or(registry, |(host, _port)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// How a [`Client`] talks to registries.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Credentials to present.
    pub credentials: Credentials,
    /// Registries (`host[:port]`) that may be reached over plain HTTP; loopback registries
    /// always may.
    pub insecure: Vec<String>,
    /// Refuse components larger than this many bytes, on push and on pull.
    pub max_artifact_size: u64,
    /// CA certificates (PEM) trusted for registries beyond the system's, for registries
    /// signed by a private CA.
    pub extra_ca: Vec<Vec<u8>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            insecure: Vec::new(),
            max_artifact_size: DEFAULT_MAX_ARTIFACT_SIZE,
            extra_ca: Vec::new(),
        }
    }
}

/// The result of a push.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    /// The reference pushed to.
    pub reference: String,
    /// The manifest digest: pin deployments to `reference@digest`.
    pub digest: Digest,
    /// The component layer's digest.
    pub layer_digest: Digest,
    /// The component's size in bytes.
    pub size: u64,
    /// What the component imports and exports.
    pub component: ComponentInfo,
}

/// Where a pulled artifact came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum PullSource {
    /// Fetched from the registry (blobs already cached were reused).
    Registry,
    /// Pulled by digest, entirely from the cache.
    Cache,
    /// The registry was unreachable; the tag's last known digest was served from the cache.
    CachedTag {
        /// Why the registry could not be used.
        reason: String,
    },
    /// Pulled by digest from a mirror (the lattice's copy), every blob checked.
    Mirror,
}

/// A pulled artifact, verified and in the cache.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference as given.
    pub reference: String,
    /// The manifest digest.
    pub digest: Digest,
    /// The manifest's size in bytes.
    pub manifest_size: u64,
    /// The checked manifest.
    pub manifest: CheckedManifest,
    /// The parsed config.
    pub config: WasmConfig,
    /// The component in the cache.
    pub component_path: PathBuf,
    /// Where it came from.
    pub source: PullSource,
    /// Cache entries that were corrupt and were fetched again.
    pub repaired: Vec<Digest>,
}

/// Pushes and pulls Wasm component artifacts, with a verified local cache.
#[derive(Clone)]
pub struct Client {
    options: ClientOptions,
    cache: Cache,
    progress: Arc<dyn Progress>,
}

impl Client {
    /// A client that caches into `cache`.
    pub fn new(cache: Cache, options: ClientOptions) -> Self {
        // TLS uses ring; installing it fails harmlessly when a provider is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            options,
            cache,
            progress: Arc::new(NoProgress),
        }
    }

    /// Reports blob transfers to `progress`.
    #[must_use]
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// The cache this client fills.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The credentials this client has for `registry`.
    pub(crate) fn credentials_for(&self, registry: &str) -> RegistryAuth {
        self.options.credentials.for_registry(registry)
    }

    /// Whether `registry` may be reached over plain HTTP: loopback, or named by `insecure`.
    fn plain_http(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self
                .options
                .insecure
                .iter()
                .any(|insecure| insecure.eq_ignore_ascii_case(registry))
    }

    pub(crate) fn registry_client(&self, registry: &str) -> oci_client::Client {
        let protocol = if self.plain_http(registry) {
            ClientProtocol::HttpsExcept(vec![registry.to_owned()])
        } else {
            ClientProtocol::Https
        };
        oci_client::Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(60)),
            platform_resolver: None,
            user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")),
            extra_root_certificates: self
                .options
                .extra_ca
                .iter()
                .map(|pem| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            ..ClientConfig::default()
        })
    }

    /// Validates `component` and pushes it to `reference` as a CNCF Wasm artifact.
    /// Nothing is sent unless the component is valid and within the size limit.
    ///
    /// # Errors
    /// [`Error::Component`] or [`Error::TooLarge`] before anything is sent; registry errors
    /// ([`Error::Unauthorized`], [`Error::Unreachable`], …) after.
    pub async fn push(
        &self,
        component: &[u8],
        reference: &Reference,
        options: &ArtifactOptions,
    ) -> Result<Pushed, Error> {
        let whole = reference.whole();
        if reference.digest().is_some() {
            return Err(Error::PushByDigest { reference: whole });
        }
        let size = component.len() as u64;
        if size > self.options.max_artifact_size {
            return Err(Error::TooLarge {
                size,
                limit: self.options.max_artifact_size,
            });
        }
        let info = ComponentInfo::from_bytes(component)?;
        let built = artifact::build(component, info, options).map_err(|error| Error::Registry {
            registry: reference.resolve_registry().to_owned(),
            reference: whole.clone(),
            message: format!("could not encode the manifest: {error}"),
        })?;

        let registry = reference.resolve_registry();
        let failed = |error| Error::from_registry(registry, &whole, error);
        let client = self.registry_client(registry);
        let auth = self.options.credentials.for_registry(registry);
        client
            .auth(reference, &auth, RegistryOperation::Push)
            .await
            .map_err(failed)?;

        let layer = built.layer_digest.as_str();
        if !client.blob_exists(reference, layer).await.map_err(failed)? {
            self.upload(&client, reference, component, layer)
                .await
                .map_err(failed)?;
        }
        if !client
            .blob_exists(reference, built.config_digest.as_str())
            .await
            .map_err(failed)?
        {
            client
                .push_blob(
                    reference,
                    built.config.clone(),
                    built.config_digest.as_str(),
                )
                .await
                .map_err(failed)?;
        }
        client
            .push_manifest_raw(
                reference,
                built.manifest.clone(),
                http::HeaderValue::from_static(media_types::OCI_MANIFEST),
            )
            .await
            .map_err(failed)?;
        Ok(Pushed {
            reference: whole,
            digest: built.manifest_digest,
            layer_digest: built.layer_digest,
            size,
            component: built.info,
        })
    }

    pub(crate) async fn upload(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        component: &[u8],
        digest: &str,
    ) -> oci_client::errors::Result<String> {
        let bytes = Bytes::copy_from_slice(component);
        let pieces: Vec<Bytes> = (0..bytes.len())
            .step_by(UPLOAD_PIECE)
            .map(|start| bytes.slice(start..(start + UPLOAD_PIECE).min(bytes.len())))
            .collect();
        let progress = Arc::clone(&self.progress);
        progress.begin(&format!("push {}", short(digest)), bytes.len() as u64);
        // A piece is counted when the client takes it from the stream to send it.
        let counted = Arc::clone(&progress);
        let stream = futures_util::stream::iter(pieces).map(move |piece| {
            counted.advance(piece.len() as u64);
            Ok(piece)
        });
        let result = client
            .push_blob_stream(reference, stream, digest, Some(bytes.len() as u64))
            .await;
        progress.end();
        result
    }

    /// Pulls `reference` into the cache, verifying every blob, and returns where it is.
    ///
    /// # Errors
    /// [`Error::Artifact`] when the manifest is not a Wasm artifact Shoal accepts,
    /// [`Error::DigestMismatch`] when content does not match its digest (nothing is cached
    /// then), registry errors when the registry fails and no cached copy can stand in.
    pub async fn pull(&self, reference: &Reference) -> Result<Pulled, Error> {
        let mut repaired = Vec::new();
        let pinned = match reference.digest() {
            Some(digest) => Some(parse_digest(reference, digest)?),
            None => None,
        };
        if let Some(digest) = &pinned
            && let Some(pulled) =
                self.load_cached(reference, digest, PullSource::Cache, &mut repaired)?
        {
            return Ok(pulled);
        }

        match self
            .fetch_from_registry(reference, pinned.as_ref(), &mut repaired)
            .await
        {
            Err(error) if error.is_unreachable() && pinned.is_none() => {
                let registry = reference.resolve_registry();
                let tag = reference.tag().unwrap_or("latest");
                let cached = self
                    .cache
                    .lookup_tag(registry, reference.repository(), tag)?;
                let Some(digest) = cached else {
                    return Err(error);
                };
                let source = PullSource::CachedTag {
                    reason: error.to_string(),
                };
                tracing::info!(reference = %reference.whole(), %digest, %error, "registry unreachable; using the last digest this tag resolved to");
                match self.load_cached(reference, &digest, source, &mut repaired)? {
                    Some(pulled) => Ok(pulled),
                    None => Err(Error::Unreachable {
                        registry: registry.to_owned(),
                        detail: format!(
                            "{}; the cached copy of {digest}, which this tag last resolved to, is incomplete or was corrupt",
                            match &error {
                                Error::Unreachable { detail, .. } => detail.clone(),
                                other => other.to_string(),
                            }
                        ),
                    }),
                }
            }
            other => other,
        }
    }

    /// The artifact with manifest `digest`, if the cache holds all of it intact.
    pub(crate) fn load_cached(
        &self,
        reference: &Reference,
        digest: &Digest,
        source: PullSource,
        repaired: &mut Vec<Digest>,
    ) -> Result<Option<Pulled>, Error> {
        let Some(manifest_bytes) = self.cached_bytes(digest, repaired)? else {
            return Ok(None);
        };
        let manifest = self.check_manifest(reference, &manifest_bytes)?;
        let Some(config_bytes) = self.cached_bytes(&manifest.config.digest, repaired)? else {
            return Ok(None);
        };
        let config = check_config(reference, &config_bytes, &manifest)?;
        let component_path = match self.cache.verify(&manifest.layer.digest)? {
            Lookup::Hit(path) => path,
            Lookup::Miss => return Ok(None),
            Lookup::Corrupt => {
                repaired.push(manifest.layer.digest.clone());
                return Ok(None);
            }
        };
        // Used now: a cache size budget keeps what ran last over what did not.
        for blob in [digest, &manifest.config.digest, &manifest.layer.digest] {
            self.cache.touch(blob);
        }
        Ok(Some(Pulled {
            reference: reference.whole(),
            digest: digest.clone(),
            manifest_size: manifest_bytes.len() as u64,
            manifest,
            config,
            component_path,
            source,
            repaired: repaired.clone(),
        }))
    }

    pub(crate) fn cached_bytes(
        &self,
        digest: &Digest,
        repaired: &mut Vec<Digest>,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        Ok(match self.cache.read(digest)? {
            Lookup::Hit(bytes) => Some(bytes),
            Lookup::Miss => None,
            Lookup::Corrupt => {
                repaired.push(digest.clone());
                None
            }
        })
    }

    pub(crate) fn check_manifest(
        &self,
        reference: &Reference,
        bytes: &[u8],
    ) -> Result<CheckedManifest, Error> {
        artifact::check_manifest(bytes, self.options.max_artifact_size).map_err(|problem| {
            Error::Artifact {
                reference: reference.whole(),
                problem,
            }
        })
    }

    async fn fetch_from_registry(
        &self,
        reference: &Reference,
        pinned: Option<&Digest>,
        repaired: &mut Vec<Digest>,
    ) -> Result<Pulled, Error> {
        let whole = reference.whole();
        let registry = reference.resolve_registry();
        let failed = |error| Error::from_registry(registry, &whole, error);
        let client = self.registry_client(registry);
        let auth: RegistryAuth = self.options.credentials.for_registry(registry);
        let (manifest_bytes, _) = client
            .pull_manifest_raw(reference, &auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(failed)?;
        let digest = Digest::of(&manifest_bytes);
        if let Some(expected) = pinned
            && *expected != digest
        {
            return Err(Error::DigestMismatch {
                reference: whole,
                what: "manifest",
                expected: expected.clone(),
                actual: digest,
            });
        }
        let manifest = self.check_manifest(reference, &manifest_bytes)?;

        // The config is held in memory and cached only once the layer is in: a refused pull
        // leaves nothing behind.
        let config_bytes = match self.cached_bytes(&manifest.config.digest, repaired)? {
            Some(bytes) => bytes,
            None => {
                let mut sink = MemorySink::default();
                self.fetch(&client, reference, &manifest.config, "config", &mut sink)
                    .await?;
                sink.bytes
            }
        };
        let config = check_config(reference, &config_bytes, &manifest)?;

        let component_path = match self.cache.verify(&manifest.layer.digest)? {
            Lookup::Hit(path) => path,
            lookup => {
                if matches!(lookup, Lookup::Corrupt) {
                    repaired.push(manifest.layer.digest.clone());
                }
                let mut writer = self.cache.writer()?;
                self.fetch(&client, reference, &manifest.layer, "layer", &mut writer)
                    .await?;
                match writer.commit(&manifest.layer.digest)? {
                    Ok(path) => path,
                    Err(actual) => {
                        return Err(mismatch(reference, "layer", &manifest.layer, actual));
                    }
                }
            }
        };
        self.cache.write(&manifest.config.digest, &config_bytes)?;
        self.cache.write(&digest, &manifest_bytes)?;
        if pinned.is_none() {
            let tag = reference.tag().unwrap_or("latest");
            self.cache
                .record_tag(registry, reference.repository(), tag, &digest)?;
        }
        Ok(Pulled {
            reference: whole,
            digest,
            manifest_size: manifest_bytes.len() as u64,
            manifest,
            config,
            component_path,
            source: PullSource::Registry,
            repaired: repaired.clone(),
        })
    }

    /// Streams one blob into `sink`, refusing more bytes than its descriptor announced and
    /// content that does not match its digest.
    pub(crate) async fn fetch(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        blob: &Blob,
        what: &'static str,
        sink: &mut impl BlobSink,
    ) -> Result<(), Error> {
        let whole = reference.whole();
        let registry = reference.resolve_registry();
        let descriptor = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.to_string(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            urls: None,
            annotations: None,
            artifact_type: None,
        };
        let mut stream = client
            .pull_blob_stream(reference, &descriptor)
            .await
            .map_err(|error| Error::from_registry(registry, &whole, error))?;
        let show = what == "layer";
        if show {
            self.progress
                .begin(&format!("pull {}", short(blob.digest.as_str())), blob.size);
        }
        let result = async {
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    // oci-client checks the digest at the end of the stream too; report it as
                    // ours so the message is the same whoever notices first.
                    Err(error) if is_digest_error(&error) => {
                        return Err(mismatch(reference, what, blob, sink.digest()));
                    }
                    Err(error) => {
                        return Err(Error::Registry {
                            registry: registry.to_owned(),
                            reference: whole.clone(),
                            message: format!("download of the {what} failed: {error}"),
                        });
                    }
                };
                if sink.len() + chunk.len() as u64 > blob.size {
                    return Err(Error::Oversize {
                        reference: whole.clone(),
                        what,
                        limit: blob.size,
                    });
                }
                sink.put(&chunk)?;
                if show {
                    self.progress.advance(chunk.len() as u64);
                }
            }
            let actual = sink.digest();
            if actual == blob.digest {
                Ok(())
            } else {
                Err(mismatch(reference, what, blob, actual))
            }
        }
        .await;
        if show {
            self.progress.end();
        }
        result
    }
}

fn check_config(
    reference: &Reference,
    bytes: &[u8],
    manifest: &CheckedManifest,
) -> Result<WasmConfig, Error> {
    artifact::check_config(bytes, &manifest.layer.digest).map_err(|problem| Error::Artifact {
        reference: reference.whole(),
        problem,
    })
}

fn parse_digest(reference: &Reference, digest: &str) -> Result<Digest, Error> {
    digest.parse().map_err(
        |error: crate::digest::InvalidDigest| Error::InvalidReference {
            reference: reference.whole(),
            reason: error.to_string(),
        },
    )
}

pub(crate) fn mismatch(
    reference: &Reference,
    what: &'static str,
    blob: &Blob,
    actual: Digest,
) -> Error {
    Error::DigestMismatch {
        reference: reference.whole(),
        what,
        expected: blob.digest.clone(),
        actual,
    }
}

fn is_digest_error(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<DigestError>().is_some())
}

/// `sha256:0123456789ab` for progress labels.
fn short(digest: &str) -> &str {
    digest.get(..19).unwrap_or(digest)
}

/// Where downloaded bytes go: memory for configs, a cache temp file for components.
pub(crate) trait BlobSink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CacheError>;
    fn len(&self) -> u64;
    fn digest(&self) -> Digest;
}

#[derive(Default)]
pub(crate) struct MemorySink {
    pub(crate) bytes: Vec<u8>,
}

impl BlobSink for MemorySink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
    fn digest(&self) -> Digest {
        Digest::of(&self.bytes)
    }
}

impl BlobSink for BlobWriter {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CacheError> {
        self.write(bytes)
    }
    fn len(&self) -> u64 {
        self.written()
    }
    fn digest(&self) -> Digest {
        BlobWriter::digest(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for registry in [
            "localhost:5000",
            "127.0.0.1:5000",
            "[::1]:5000",
            "localhost",
            "127.8.9.1",
        ] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in [
            "ghcr.io",
            "registry.example:5000",
            "10.0.0.1:5000",
            "[2001:db8::1]:443",
        ] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }

    #[test]
    fn plain_http_only_for_loopback_and_the_registries_named() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(
            Cache::open(dir.path()).unwrap(),
            ClientOptions {
                insecure: vec!["registry.lan:5000".into()],
                ..ClientOptions::default()
            },
        );
        assert!(client.plain_http("localhost:5000"));
        assert!(client.plain_http("Registry.LAN:5000"));
        assert!(!client.plain_http("registry.lan:5001"));
        assert!(!client.plain_http("ghcr.io"));
    }

    #[test]
    fn references_that_do_not_parse_say_why() {
        let error = parse_reference("localhost:5000/Bad Name:1.0").unwrap_err();
        assert!(matches!(error, Error::InvalidReference { .. }));
        assert!(error.to_string().contains("Bad Name"), "{error}");
        let error = parse_reference("localhost:5000/hello@sha256:1234").unwrap_err();
        assert!(matches!(error, Error::InvalidReference { .. }), "{error}");
    }
}
