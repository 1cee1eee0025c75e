//! Apps' key-value stores: what a component reaches through `wasi:keyvalue`. Each store an
//! app grants itself (`spec.keyValue`) is a JetStream KV bucket of its own,
//! `shoal-<lattice>-v1-kv_<namespace>_<app>_<store>` (`_` is in no name, so two apps never
//! share one), made by the scheduler with the store's `maxBytes` as its limit, so a write
//! past it fails in the guest. Guests' keys are stored under the first token `=kv` (a
//! token no host id, namespace or app name can be): a host credential may then read and
//! write `$KV.*.=kv.>` and nothing of the lattice's own buckets.
//!
//! Consistency: a write is acknowledged once JetStream stored it; a read is a direct get
//! from the bucket's stream. On one nats-server a guest reads its own writes; on a cluster
//! with replicas a direct get may be answered by a follower that is behind by the
//! replication lag (milliseconds), so a read right after a write may see the value before.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt as _;

use crate::Cause;
use crate::records::KeyValueStore;
use crate::validate::{MAX_KV_KEY, MAX_KV_VALUE};
use crate::{Error, Lattice};

/// The first token of every guest key in a store's bucket.
pub const KEY_PREFIX: &str = "=kv";

/// Most keys one `list-keys` call returns.
pub const PAGE: usize = 100;

/// The bucket of one app's store.
pub fn bucket_name(lattice: &str, namespace: &str, app: &str, store: &str) -> String {
    format!("shoal-{lattice}-v1-kv_{namespace}_{app}_{store}")
}

/// The prefix of the buckets of every store of one app.
fn app_prefix(lattice: &str, namespace: &str, app: &str) -> String {
    format!("shoal-{lattice}-v1-kv_{namespace}_{app}_")
}

/// Why a guest's operation failed, as it is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key is empty, too long, or has characters a store cannot hold.
    #[error(
        "key {0:?} is not valid: 1 to 256 bytes of letters, digits and -/_=. (not starting or ending with .)"
    )]
    Key(String),
    /// The value is larger than a store takes.
    #[error("the value is {0} bytes: a store takes values up to 1 MiB")]
    TooLarge(usize),
    /// The store holds its `maxBytes`.
    #[error("the store is full (its maxBytes): delete keys or raise spec.keyValue[].maxBytes")]
    Full,
    /// A compare-and-swap lost: the key changed since it was read.
    #[error("the key changed since it was read")]
    Conflict,
    /// The value is not a number to increment.
    #[error("the value of {0:?} is not a number")]
    NotANumber(String),
    /// The lattice did not answer.
    #[error("the store is unreachable: {0}")]
    Unreachable(String),
}

fn check_key(key: &str) -> Result<(), StoreError> {
    let valid = !key.is_empty()
        && key.len() <= MAX_KV_KEY
        && !key.starts_with('.')
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-/_=.".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(StoreError::Key(key.chars().take(300).collect()))
    }
}

fn stored_key(key: &str) -> Result<String, StoreError> {
    check_key(key)?;
    Ok(format!("{KEY_PREFIX}.{key}"))
}

fn store_error(error: impl std::fmt::Display) -> StoreError {
    let text = error.to_string();
    if text.contains("maximum bytes exceeded") || text.contains("insufficient resources") {
        StoreError::Full
    } else {
        StoreError::Unreachable(text)
    }
}

/// A value with the revision that last wrote it (0: the key does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value, if the key exists.
    pub value: Option<Bytes>,
    /// Its revision, for a compare-and-swap.
    pub revision: u64,
}

/// One store, opened.
#[derive(Clone)]
pub struct AppStore {
    store: kv::Store,
}

impl AppStore {
    /// The value of `key`.
    ///
    /// # Errors
    /// A bad key, or the lattice not answering.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        Ok(self.read(key).await?.value)
    }

    /// The value of `key` and its revision.
    ///
    /// # Errors
    /// A bad key, or the lattice not answering.
    pub async fn read(&self, key: &str) -> Result<Versioned, StoreError> {
        let entry = self
            .store
            .entry(stored_key(key)?)
            .await
            .map_err(store_error)?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => Versioned {
                value: Some(entry.value),
                revision: entry.revision,
            },
            Some(entry) => Versioned {
                value: None,
                revision: entry.revision,
            },
            None => Versioned {
                value: None,
                revision: 0,
            },
        })
    }

    /// Sets `key` to `value`.
    ///
    /// # Errors
    /// A bad key, a value over 1 MiB, a full store, or the lattice not answering.
    pub async fn set(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        if value.len() > MAX_KV_VALUE {
            return Err(StoreError::TooLarge(value.len()));
        }
        self.store
            .put(stored_key(key)?, value.into())
            .await
            .map(|_| ())
            .map_err(store_error)
    }

    /// Sets `key` to `value` only if it is still at `revision` (0: only if it does not
    /// exist).
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when it changed; otherwise as [`Self::set`].
    pub async fn swap(&self, key: &str, value: Vec<u8>, revision: u64) -> Result<u64, StoreError> {
        if value.len() > MAX_KV_VALUE {
            return Err(StoreError::TooLarge(value.len()));
        }
        let key = stored_key(key)?;
        if revision == 0 {
            self.store
                .create(&key, value.into())
                .await
                .map_err(|error| match error.kind() {
                    kv::CreateErrorKind::AlreadyExists => StoreError::Conflict,
                    _ => store_error(error),
                })
        } else {
            self.store
                .update(&key, value.into(), revision)
                .await
                .map_err(|error| match error.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict,
                    _ => store_error(error),
                })
        }
    }

    /// Deletes `key` (nothing happens if it does not exist).
    ///
    /// # Errors
    /// A bad key, or the lattice not answering.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.store
            .delete(stored_key(key)?)
            .await
            .map_err(store_error)
    }

    /// Adds `delta` to the number at `key` (0 when it does not exist), atomically: a
    /// compare-and-swap on the key's revision, tried again while others win.
    ///
    /// # Errors
    /// [`StoreError::NotANumber`], an overflow, or as [`Self::set`].
    pub async fn increment(&self, key: &str, delta: i64) -> Result<i64, StoreError> {
        loop {
            let current = self.read(key).await?;
            let number = match &current.value {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or_else(|| StoreError::NotANumber(key.to_owned()))?,
            };
            let next = number
                .checked_add(delta)
                .ok_or_else(|| StoreError::NotANumber(key.to_owned()))?;
            match self
                .swap(key, next.to_string().into_bytes(), current.revision)
                .await
            {
                Ok(_) => return Ok(next),
                Err(StoreError::Conflict) => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Up to [`PAGE`] keys after `after` (all keys sorted; `None`: from the first), and the
    /// key to go on after when there are more.
    ///
    /// # Errors
    /// The lattice not answering.
    pub async fn list(
        &self,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let prefix = format!("{}{KEY_PREFIX}.", self.store.prefix);
        let mut subjects = self
            .store
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(store_error)?;
        let mut keys = Vec::new();
        while let Some((subject, _)) = subjects.try_next().await.map_err(store_error)? {
            if let Some(key) = subject.strip_prefix(&prefix) {
                keys.push(key.to_owned());
            }
        }
        keys.sort();
        let start = after.map_or(0, |after| keys.partition_point(|key| key.as_str() <= after));
        let mut page = Vec::new();
        let mut last = None;
        for key in &keys[start..] {
            if page.len() == PAGE {
                return Ok((page, last));
            }
            last = Some(key.clone());
            // A deleted key keeps a marker in the stream: only live keys are listed.
            if self.get(key).await?.is_some() {
                page.push(key.clone());
            }
        }
        Ok((page, None))
    }
}

impl Lattice {
    fn app_store_config(&self, name: String, store: &KeyValueStore) -> kv::Config {
        kv::Config {
            bucket: name,
            history: 1,
            max_bytes: i64::try_from(store.max_bytes()).unwrap_or(i64::MAX),
            // The value, the key and headers.
            max_value_size: i32::try_from(MAX_KV_VALUE + 4096).unwrap_or(i32::MAX),
            num_replicas: self.replicas.max(1),
            ..Default::default()
        }
    }

    /// Makes (or resizes) the bucket of each store `stores` grants app `namespace/app`.
    ///
    /// # Errors
    /// When JetStream refuses (on a secure lattice only schedulers may).
    pub async fn ensure_app_stores(
        &self,
        namespace: &str,
        app: &str,
        stores: &[KeyValueStore],
    ) -> Result<(), Error> {
        let context = self.jetstream();
        for store in stores {
            let name = bucket_name(self.name(), namespace, app, &store.name);
            let failed = |error: Cause| Error::Bucket {
                bucket: name.clone(),
                source: error,
            };
            let config = self.app_store_config(name.clone(), store);
            // Hosts write guests' keys: one with `Nats-Rollup: all` would empty the store,
            // so its stream refuses rollups. A store that exists is resized in place, never
            // taking them again even for a moment; a new one refuses them before any host
            // has a credential for it.
            match context.get_stream(format!("KV_{name}")).await {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|error| failed(error.into()))?;
                    let mut wanted = info.config.clone();
                    wanted.max_bytes = config.max_bytes;
                    wanted.max_message_size = config.max_value_size;
                    wanted.allow_rollup = false;
                    if wanted != info.config {
                        context
                            .update_stream(wanted)
                            .await
                            .map_err(|error| failed(error.into()))?;
                    }
                }
                Err(_) => {
                    context
                        .create_key_value(config)
                        .await
                        .map_err(|error| failed(error.into()))?;
                    crate::store::refuse_rollups(&context, &format!("KV_{name}")).await;
                }
            }
        }
        Ok(())
    }

    /// Deletes the buckets of app `namespace/app`'s stores except those named in `keep`.
    ///
    /// # Errors
    /// When JetStream cannot list or delete them.
    pub async fn remove_app_stores(
        &self,
        namespace: &str,
        app: &str,
        keep: &[KeyValueStore],
    ) -> Result<(), Error> {
        let context = self.jetstream();
        let prefix = format!("KV_{}", app_prefix(self.name(), namespace, app));
        let mut names = context.stream_names();
        let mut doomed = Vec::new();
        while let Some(stream) = names.try_next().await.map_err(|error| Error::Bucket {
            bucket: prefix.clone(),
            source: error.into(),
        })? {
            if let Some(store) = stream.strip_prefix(&prefix)
                && !keep.iter().any(|kept| kept.name == store)
            {
                doomed.push(stream.trim_start_matches("KV_").to_owned());
            }
        }
        for bucket in doomed {
            context
                .delete_key_value(&bucket)
                .await
                .map_err(|error| Error::Bucket {
                    bucket,
                    source: error.into(),
                })?;
        }
        Ok(())
    }

    /// Opens store `store` of app `namespace/app`.
    ///
    /// # Errors
    /// When the bucket does not exist or the lattice does not answer.
    pub async fn open_app_store(
        &self,
        namespace: &str,
        app: &str,
        store: &str,
    ) -> Result<AppStore, StoreError> {
        let name = bucket_name(self.name(), namespace, app, store);
        jetstream::Context::get_key_value(&self.jetstream(), &name)
            .await
            .map(|store| AppStore { store })
            .map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_stored_under_their_own_token() {
        assert_eq!(stored_key("users/42").as_deref(), Ok("=kv.users/42"));
        assert_eq!(stored_key("a.b=c").as_deref(), Ok("=kv.a.b=c"));
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "has space",
            "a*",
            "a>",
            &"k".repeat(257),
        ] {
            assert!(stored_key(bad).is_err(), "{bad:?}");
        }
        // `_` is in no name: two apps' buckets never meet.
        assert_ne!(
            bucket_name("l", "a-b", "c", "default"),
            bucket_name("l", "a", "b-c", "default")
        );
    }
}
