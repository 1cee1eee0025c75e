//! The lattice's copy of the components its workloads pin: a JetStream object store bucket
//! (`shoal-<lattice>-v1-components`) the leading scheduler fills from the registry, so a
//! host that cannot reach the registry (an air-gapped site, a registry outage) fetches the
//! same bytes from the lattice.
//!
//! Only the control plane writes it. Hosts read objects one message at a time with direct
//! gets (no consumer, no delivery subject) and trust nothing they read: every blob is
//! checked against the digest the assignment pins, as a registry's would be.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectInfo, ObjectStore};
use async_nats::jetstream::stream::{DirectGetErrorKind, StorageType, Stream};
use futures_util::TryStreamExt;

use crate::names::PROTOCOL;
use crate::{Error, Lattice};

/// The object store bucket of `lattice`'s components.
pub fn bucket_name(lattice: &str) -> String {
    format!("shoal-{lattice}-{PROTOCOL}-components")
}

/// The JetStream stream behind [`bucket_name`].
pub fn stream_name(lattice: &str) -> String {
    format!("OBJ_{}", bucket_name(lattice))
}

/// The JetStream domain of a site's leaf nats-server, which keeps the site's copy of the
/// components bucket.
pub const SITE_DOMAIN: &str = "shoal-site";

/// Where an open site's hosts read the site's copy of the components bucket: the JetStream
/// API of the site's domain. A secure site's hosts read it in the account that keeps it,
/// with a reader's credential (`auth::site_copy_reader`).
pub const SITE_API_PREFIX: &str = "$JS.shoal-site.API";

/// The configuration of a site's copy of `lattice`'s components bucket: a mirror of the
/// hub's, whose JetStream API the site reaches at `hub_api` (`$JS.<domain>.API` across an
/// open leaf, the clients' import prefix across a secure one), delivered to the site under
/// `deliver`, at most `max_bytes` large (the oldest objects go first).
pub fn site_copy_config(
    lattice: &str,
    hub_api: &str,
    deliver: &str,
    max_bytes: u64,
) -> SiteCopyConfig {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, External, Source};
    SiteCopyConfig(Config {
        name: stream_name(lattice),
        description: Some("Shoal: this site's copy of the lattice's components".to_owned()),
        mirror: Some(Source {
            name: stream_name(lattice),
            external: Some(External {
                api_prefix: hub_api.to_owned(),
                delivery_prefix: Some(deliver.to_owned()),
            }),
            ..Default::default()
        }),
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        allow_direct: true,
        ..Default::default()
    })
}

/// The configuration of a site's copy, made by [`site_copy_config`].
#[derive(Debug, Clone)]
pub struct SiteCopyConfig(async_nats::jetstream::stream::Config);

/// Makes (or brings up to date) a site's copy of the components in the JetStream of the
/// leaf nats-server at `url`, connecting with the keeper's credential `creds` (a `.creds`
/// file's text) on a secure site. From then on nats-server keeps it current.
///
/// # Errors
/// [`Error::Connect`] when the leaf cannot be reached, [`Error::Bucket`] when its
/// JetStream does not take the copy.
pub async fn make_site_copy(
    url: &str,
    creds: Option<&str>,
    config: SiteCopyConfig,
) -> Result<(), Error> {
    let connect_failed = |source: crate::Cause| Error::Connect {
        url: url.to_owned(),
        source,
    };
    let options = match creds {
        Some(creds) => crate::auth::connect_options(creds)
            .map_err(|error| connect_failed(error.into()))?
            .custom_inbox_prefix(crate::auth::SITE_COPY_KEEPER_INBOX),
        None => async_nats::ConnectOptions::new(),
    };
    let client = options
        .name("shoal site copy")
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|error| connect_failed(error.into()))?;
    let bucket = config.0.name.clone();
    let failed = |source: crate::Cause| Error::Bucket {
        bucket: bucket.clone(),
        source,
    };
    let info = async_nats::jetstream::new(client)
        .create_or_update_stream(config.0)
        .await
        .map_err(|error| failed(error.into()))?;
    // A stream of that name made otherwise (by whoever held the keeper's credential first)
    // is not taken for the copy: say so rather than keep it.
    let made = &info.config;
    let is_copy = made.mirror.is_some()
        && made.subjects.is_empty()
        && made.sources.as_ref().is_none_or(Vec::is_empty)
        && made.republish.is_none();
    if !is_copy {
        return Err(failed(
            format!("{bucket} exists and is not a mirror of the hub's components: delete it from the site's JetStream")
                .into(),
        ));
    }
    Ok(())
}

/// The object holding `part` (for example `layer`) of the component whose manifest digest
/// is `manifest`: `<manifest>/<part>`. Every part of one component shares the prefix, so
/// the copy drops a component by its digest ([`component_of`]).
pub fn object_name(manifest: &str, part: &str) -> String {
    format!("{manifest}/{part}")
}

/// The part holding a component's code compiled for the engine whose compatibility key is
/// `key` (a host's `CompileTarget::key`): `compiled.<key>`.
pub fn compiled_part(key: &str) -> String {
    format!("{COMPILED}{key}")
}

/// The compile key of a part written by [`compiled_part`].
pub fn compiled_key(part: &str) -> Option<&str> {
    part.strip_prefix(COMPILED)
}

const COMPILED: &str = "compiled.";

/// The largest code compiled for a host that is stored, and read (a host reads it into
/// memory): compiled code runs a few times its component's size.
pub const MAX_COMPILED_BYTES: u64 = 64 << 20;

/// The manifest digest an object of the copy belongs to: the text before its first `/`.
pub fn component_of(object: &str) -> &str {
    object
        .split_once('/')
        .map_or(object, |(component, _)| component)
}

/// The subject of an object's description (its metadata message) in `bucket`.
fn meta_subject(bucket: &str, object: &str) -> String {
    format!(
        "$O.{bucket}.M.{}",
        data_encoding::BASE64URL.encode(object.as_bytes())
    )
}

/// The control plane's handle on the components bucket: what is stored, and writes.
#[derive(Clone)]
pub struct ComponentStore {
    store: ObjectStore,
    bucket: String,
}

impl std::fmt::Debug for ComponentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentStore")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl ComponentStore {
    /// The names of the objects stored now.
    ///
    /// # Errors
    /// [`Error::Request`] when JetStream does not answer.
    pub async fn names(&self) -> Result<BTreeSet<String>, Error> {
        let failed = |source: async_nats::Error| Error::Request {
            bucket: self.bucket.clone(),
            source,
        };
        let list = self
            .store
            .list()
            .await
            .map_err(|error| failed(error.into()))?;
        let objects: Vec<ObjectInfo> = list
            .try_collect()
            .await
            .map_err(|error| failed(error.into()))?;
        Ok(objects
            .into_iter()
            .filter(|object| !object.deleted)
            .map(|object| object.name)
            .collect())
    }

    /// Stores `bytes` as `name` (replacing an object of that name).
    ///
    /// # Errors
    /// [`Error::Request`] when JetStream refuses it (the bucket is full, for example).
    pub async fn put(&self, name: &str, bytes: &[u8]) -> Result<(), Error> {
        let mut reader = bytes;
        self.store
            .put(name, &mut reader)
            .await
            .map(|_| ())
            .map_err(|error| Error::Request {
                bucket: self.bucket.clone(),
                source: error.into(),
            })
    }

    /// Deletes the object `name` (its chunks go; a marker says it was deleted).
    ///
    /// # Errors
    /// [`Error::Request`] when JetStream refuses it.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        self.store
            .delete(name)
            .await
            .map_err(|error| Error::Request {
                bucket: self.bucket.clone(),
                source: error.into(),
            })
    }
}

impl Lattice {
    /// Opens the lattice's components bucket, creating it (at most `max_bytes` large) when
    /// missing: for the control plane, which alone may.
    ///
    /// # Errors
    /// [`Error::Bucket`] when JetStream cannot make or open it.
    pub async fn component_store(&self, max_bytes: u64) -> Result<ComponentStore, Error> {
        let bucket = bucket_name(self.name());
        let context = self.jetstream();
        let opened = match context.get_object_store(&bucket).await {
            Ok(store) => Ok(store),
            Err(_) => {
                context
                    .create_object_store(object_store::Config {
                        bucket: bucket.clone(),
                        description: Some(
                            "Shoal: the components the lattice's workloads pin".to_owned(),
                        ),
                        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
                        storage: StorageType::File,
                        num_replicas: self.replicas.max(1),
                        ..Default::default()
                    })
                    .await
            }
        };
        let store = opened.map_err(|error| Error::Bucket {
            bucket: bucket.clone(),
            source: error.into(),
        })?;
        Ok(ComponentStore { store, bucket })
    }

    /// Reads the object `name` from the lattice's components bucket for a caller that
    /// checks the bytes itself (a component's parts, against the digests its assignment
    /// pins): `None` when it is not there (or the bucket does not exist), and an error for
    /// one larger than `limit`. On a site that keeps a copy of the bucket
    /// ([`ConnectOptions::site_copy`](crate::ConnectOptions::site_copy)) the bytes come
    /// from that copy, and so does the object's description when the hub does not answer.
    ///
    /// # Errors
    /// [`Error::Request`] when JetStream does not answer, or the object is larger than
    /// `limit`, incomplete or not the bytes its description names.
    pub async fn component_object(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
        self.read_object(name, limit, Described::ByHubOrSite).await
    }

    /// Reads the object `name` as [`Lattice::component_object`] does, for a caller that
    /// trusts the bytes because only the control plane can write them (code compiled for
    /// a host): the object's description, which names its digest, comes from the hub's
    /// bucket alone, so bytes from a site's copy are taken only when they hash to it.
    ///
    /// # Errors
    /// As [`Lattice::component_object`]'s.
    pub async fn control_plane_object(
        &self,
        name: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, Error> {
        self.read_object(name, limit, Described::ByHub).await
    }

    async fn read_object(
        &self,
        name: &str,
        limit: u64,
        described: Described,
    ) -> Result<Option<Vec<u8>>, Error> {
        let bucket = bucket_name(self.name());
        let failed = |source: crate::Cause| Error::Request {
            bucket: bucket.clone(),
            source,
        };
        let stream = stream_name(self.name());
        let hub = self
            .jetstream()
            .get_stream_no_info(&stream)
            .await
            .map_err(|error| failed(error.into()))?;
        let site = match &self.site_copy {
            Some(context) => context.get_stream_no_info(&stream).await.ok(),
            None => None,
        };
        let meta = meta_subject(&bucket, name);
        let info = match (describe(&hub, &bucket, &meta).await, &site) {
            (Ok(info), _) => info,
            // The hub cannot be asked: the site's copy describes what the caller checks.
            (Err(error), Some(site)) if described == Described::ByHubOrSite => {
                tracing::debug!(error = %crate::Chain(&error), "the hub does not describe {name}: asking the site's copy");
                describe(site, &bucket, &meta).await?
            }
            (Err(error), _) => return Err(failed(error.into())),
        };
        let Some(info) = info else {
            return Ok(None);
        };
        if info.size as u64 > limit {
            return Err(failed(
                format!(
                    "{name} is {} bytes, more than the {limit} allowed",
                    info.size
                )
                .into(),
            ));
        }
        if let Some(site) = &site {
            match from_site_copy(site, &meta, &bucket, &info).await {
                Ok(bytes) => return Ok(Some(bytes)),
                Err(error) => {
                    tracing::debug!(%error, "reading {name} from the hub: the site's copy did not give it");
                }
            }
        }
        read_chunks(&hub, &bucket, &info)
            .await
            .map(Some)
            .map_err(failed)
    }
}

/// Whose description of an object a reader takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Described {
    /// The hub's; the site's copy's when the hub does not answer (the caller checks the
    /// bytes against a digest of its own).
    ByHubOrSite,
    /// The hub's only (the caller trusts the bytes for who wrote them).
    ByHub,
}

/// How long a reader waits for a site's copy to catch up with the hub's description of
/// an object (a copy is a mirror, a moment behind) before it reads the hub's bytes.
const SITE_COPY_LAG: Duration = Duration::from_secs(5);

/// How often a reader looks again whether the site's copy caught up.
const SITE_COPY_POLL: Duration = Duration::from_millis(100);

/// The description of an object in `stream`: `None` when there is none or it was deleted.
async fn describe(
    stream: &Stream<()>,
    bucket: &str,
    meta: &str,
) -> Result<Option<ObjectInfo>, Error> {
    let failed = |source: crate::Cause| Error::Request {
        bucket: bucket.to_owned(),
        source,
    };
    let message = match stream.direct_get_last_for_subject(meta).await {
        Ok(message) => message,
        Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
        Err(error) => return Err(failed(error.into())),
    };
    let info: ObjectInfo =
        serde_json::from_slice(&message.payload).map_err(|error| failed(error.into()))?;
    Ok((!info.deleted).then_some(info))
}

/// The object `info` describes, from a site's copy: once the copy describes it alike
/// (the mirror stores an object's description after its chunks, so then it holds them
/// all), waiting at most [`SITE_COPY_LAG`].
async fn from_site_copy(
    site: &Stream<()>,
    meta: &str,
    bucket: &str,
    info: &ObjectInfo,
) -> Result<Vec<u8>, crate::Cause> {
    // Bytes from the copy are taken only against a digest: without one, the hub's.
    if info.digest.is_none() {
        return Err("its description names no digest".into());
    }
    let deadline = tokio::time::Instant::now() + SITE_COPY_LAG;
    loop {
        match describe(site, bucket, meta).await {
            Ok(Some(copy)) if copy.nuid == info.nuid => break,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(SITE_COPY_POLL).await;
            }
            Ok(_) => return Err("the site's copy has not caught up".into()),
            Err(error) => return Err(error.into()),
        }
    }
    read_chunks(site, bucket, info).await
}

/// The bytes of the object `info` describes, chunk by chunk with direct gets, checked
/// against the size and digest it names.
async fn read_chunks(
    stream: &Stream<()>,
    bucket: &str,
    info: &ObjectInfo,
) -> Result<Vec<u8>, crate::Cause> {
    let name = &info.name;
    // A description read where anyone could have written it bounds nothing by itself:
    // chunks at least `MIN_CHUNK` bytes (all but the last), memory as the bytes arrive.
    if info.chunks > info.size / MIN_CHUNK + 1 {
        return Err(format!(
            "{name} declares {} chunks for {} bytes",
            info.chunks, info.size
        )
        .into());
    }
    let chunks = format!("$O.{bucket}.C.{}", info.nuid);
    let mut bytes = Vec::with_capacity(info.size.min(MAX_FIRST_ALLOCATION));
    let mut next = None;
    for _ in 0..info.chunks {
        let chunk = stream
            .direct_get_next_for_subject(chunks.clone(), next)
            .await?;
        // Every chunk carries bytes: at most `size` of them, whatever `chunks` says.
        if chunk.payload.is_empty() || bytes.len() + chunk.payload.len() > info.size {
            return Err(
                format!("{name} is not stored as it declares ({} bytes)", info.size).into(),
            );
        }
        bytes.extend_from_slice(&chunk.payload);
        next = Some(chunk.sequence.saturating_add(1));
    }
    if bytes.len() != info.size {
        return Err(format!(
            "{name} is incomplete: {} of {} bytes",
            bytes.len(),
            info.size
        )
        .into());
    }
    if let Some(digest) = &info.digest
        && !digest_matches(digest, &bytes)
    {
        return Err(format!("{name} does not match the digest it is stored under").into());
    }
    Ok(bytes)
}

/// The smallest chunk an object is read in (object stores write 128 KiB ones).
const MIN_CHUNK: usize = 1024;

/// The most memory reserved for an object before its bytes arrive.
const MAX_FIRST_ALLOCATION: usize = 8 << 20;

/// Whether `bytes` hash to `digest` as object stores write it (`SHA-256=<base64url>`).
fn digest_matches(digest: &str, bytes: &[u8]) -> bool {
    use sha2::Digest as _;
    let Some(encoded) = digest.strip_prefix("SHA-256=") else {
        return false;
    };
    let actual = data_encoding::BASE64URL.encode(&sha2::Sha256::digest(bytes));
    actual.trim_end_matches('=') == encoded.trim_end_matches('=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_described_on_the_subject_object_stores_use() {
        // async-nats (and every NATS client) names an object's metadata message by the
        // URL-safe base64 of its name, padded.
        assert_eq!(
            meta_subject("b", "sha256:ab/layer"),
            "$O.b.M.c2hhMjU2OmFiL2xheWVy"
        );
        assert_eq!(stream_name("dev"), "OBJ_shoal-dev-v1-components");
    }

    #[test]
    fn bytes_match_the_digest_an_object_store_wrote_only_when_they_hash_to_it() {
        use sha2::Digest as _;
        let bytes = b"compiled code";
        let digest = format!(
            "SHA-256={}",
            data_encoding::BASE64URL.encode(&sha2::Sha256::digest(bytes))
        );
        assert!(digest_matches(&digest, bytes));
        // Unpadded, as some clients write it.
        assert!(digest_matches(digest.trim_end_matches('='), bytes));
        assert!(!digest_matches(&digest, b"compiled cod3"));
        assert!(!digest_matches("SHA-512=abc", bytes));
        assert!(!digest_matches("", bytes));
    }

    #[test]
    fn a_site_s_copy_mirrors_the_hub_s_bucket_under_the_same_name() {
        let config = site_copy_config("dev", "$JS.hub.API", "_INBOX.site.s.copy", 1 << 30).0;
        assert_eq!(config.name, stream_name("dev"));
        let mirror = config.mirror.expect("a mirror");
        assert_eq!(mirror.name, stream_name("dev"));
        let external = mirror.external.expect("across the leaf");
        assert_eq!(external.api_prefix, "$JS.hub.API");
        assert_eq!(
            external.delivery_prefix.as_deref(),
            Some("_INBOX.site.s.copy")
        );
        assert!(config.allow_direct && config.subjects.is_empty());
    }

    #[test]
    fn every_part_of_a_component_is_named_under_its_manifest_digest() {
        let name = object_name("sha256:ab", "signature.cd");
        assert_eq!(name, "sha256:ab/signature.cd");
        assert_eq!(component_of(&name), "sha256:ab");
        assert_eq!(component_of("no-slash"), "no-slash");
    }
}
