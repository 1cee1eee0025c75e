//! The lattice's copy of the components its workloads pin: a JetStream object store bucket
//! (`shoal-<lattice>-v1-components`) the leading scheduler fills from the registry, so a
//! host that cannot reach the registry (an air-gapped site, a registry outage) fetches the
//! same bytes from the lattice.
//!
//! Only the control plane writes it. Hosts read objects one message at a time with direct
//! gets (no consumer, no delivery subject) and trust nothing they read: every blob is
//! checked against the digest the assignment pins, as a registry's would be.

use std::collections::BTreeSet;

use async_nats::jetstream::object_store::{self, ObjectInfo, ObjectStore};
use async_nats::jetstream::stream::{DirectGetErrorKind, StorageType};
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

    /// Reads the object `name` from the lattice's components bucket: `None` when it is not
    /// there (or the bucket does not exist), and an error for one larger than `limit`.
    /// Read with direct gets only (what a host's credential allows), so the bytes are as
    /// the bucket holds them: callers check them against the digest they expect.
    ///
    /// # Errors
    /// [`Error::Request`] when JetStream does not answer, or the object is larger than
    /// `limit` or incomplete.
    pub async fn component_object(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, Error> {
        let bucket = bucket_name(self.name());
        let failed = |source: crate::Cause| Error::Request {
            bucket: bucket.clone(),
            source,
        };
        let stream = self
            .jetstream()
            .get_stream_no_info(stream_name(self.name()))
            .await
            .map_err(|error| failed(error.into()))?;
        let info = match stream
            .direct_get_last_for_subject(meta_subject(&bucket, name))
            .await
        {
            Ok(message) => message,
            Err(error) if matches!(error.kind(), DirectGetErrorKind::NotFound) => return Ok(None),
            Err(error) => return Err(failed(error.into())),
        };
        let info: ObjectInfo =
            serde_json::from_slice(&info.payload).map_err(|error| failed(error.into()))?;
        if info.deleted {
            return Ok(None);
        }
        if info.size as u64 > limit {
            return Err(failed(
                format!(
                    "{name} is {} bytes, more than the {limit} allowed",
                    info.size
                )
                .into(),
            ));
        }
        let chunks = format!("$O.{bucket}.C.{}", info.nuid);
        let mut bytes = Vec::with_capacity(info.size);
        let mut next = None;
        for _ in 0..info.chunks {
            let chunk = stream
                .direct_get_next_for_subject(chunks.clone(), next)
                .await
                .map_err(|error| failed(error.into()))?;
            // Every chunk carries bytes: at most `size` of them, whatever `chunks` says.
            if chunk.payload.is_empty() || bytes.len() + chunk.payload.len() > info.size {
                return Err(failed(
                    format!("{name} is not stored as it declares ({} bytes)", info.size).into(),
                ));
            }
            bytes.extend_from_slice(&chunk.payload);
            next = Some(chunk.sequence.saturating_add(1));
        }
        if bytes.len() != info.size {
            return Err(failed(
                format!(
                    "{name} is incomplete: {} of {} bytes",
                    bytes.len(),
                    info.size
                )
                .into(),
            ));
        }
        Ok(Some(bytes))
    }
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
    fn every_part_of_a_component_is_named_under_its_manifest_digest() {
        let name = object_name("sha256:ab", "signature.cd");
        assert_eq!(name, "sha256:ab/signature.cd");
        assert_eq!(component_of(&name), "sha256:ab");
        assert_eq!(component_of("no-slash"), "no-slash");
    }
}
