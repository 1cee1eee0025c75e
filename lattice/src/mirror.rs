//! A live in-memory copy of part of a KV bucket, kept current by a watch: the informer of
//! Kubernetes controllers. Readers take snapshots; a change counter wakes reconcile loops.
//!
//! When the watch breaks (the NATS server restarted, the connection dropped), the mirror
//! builds a fresh copy from a new watch and swaps it in whole, so readers never see a
//! half-synced state.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::store::decode;
use crate::{Bucket, Error, Lattice, Versioned};

type Records<T> = BTreeMap<String, Versioned<T>>;

/// A live copy of the records under one key filter.
pub struct Mirror<T> {
    records: Arc<RwLock<Records<T>>>,
    changes: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl<T> Drop for Mirror<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T> Mirror<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    pub(crate) async fn start(
        lattice: Lattice,
        bucket: Bucket,
        filter: String,
    ) -> Result<Self, Error> {
        let first = sync(&lattice, bucket, &filter).await?;
        let records = Arc::new(RwLock::new(first.records));
        let (notify, changes) = watch::channel(0u64);
        let task = tokio::spawn(follow(
            lattice,
            bucket,
            filter,
            first.watch,
            Arc::clone(&records),
            notify,
        ));
        Ok(Self {
            records,
            changes,
            task,
        })
    }
}

impl<T: Clone> Mirror<T> {
    /// Every record, by key.
    pub fn snapshot(&self) -> Vec<Versioned<T>> {
        self.records
            .read()
            .map(|records| records.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One record.
    pub fn get(&self, key: &str) -> Option<Versioned<T>> {
        self.records
            .read()
            .ok()
            .and_then(|records| records.get(key).cloned())
    }
}

impl<T> Mirror<T> {
    /// A receiver that changes whenever the mirror does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

struct Synced<T> {
    records: Records<T>,
    watch: kv::Watch,
}

/// Opens a watch and reads it until it has delivered the current value of every key.
async fn sync<T: DeserializeOwned>(
    lattice: &Lattice,
    bucket: Bucket,
    filter: &str,
) -> Result<Synced<T>, Error> {
    let store = lattice.store(bucket)?;
    let failed = |error: &dyn std::fmt::Display| Error::Request {
        bucket: bucket.name(lattice.name()),
        reason: error.to_string(),
    };
    // A watch over no keys delivers nothing, not even a "caught up" mark: ask the stream
    // first whether any key matches.
    let any = store
        .stream
        .info_with_subjects(format!("{}{filter}", store.prefix))
        .await
        .map_err(|error| failed(&error))?
        .try_next()
        .await
        .map_err(|error| failed(&error))?
        .is_some();
    let mut watch = store
        .watch_with_history(filter)
        .await
        .map_err(|error| failed(&error))?;
    let mut records = BTreeMap::new();
    if any {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .map_err(|_| failed(&"watch delivered nothing for 10 s"))?;
            let Some(entry) = next else {
                return Err(failed(&"watch ended"));
            };
            let entry = entry.map_err(|error| failed(&error))?;
            let caught_up = entry.delta == 0;
            apply(lattice, bucket, &mut records, entry);
            if caught_up {
                break;
            }
        }
    }
    Ok(Synced { records, watch })
}

fn apply<T: DeserializeOwned>(
    lattice: &Lattice,
    bucket: Bucket,
    records: &mut Records<T>,
    entry: kv::Entry,
) {
    if entry.operation != kv::Operation::Put {
        records.remove(&entry.key);
        return;
    }
    let key = entry.key.clone();
    match decode(lattice.name(), bucket, entry) {
        Ok(record) => {
            records.insert(key, record);
        }
        Err(error) => {
            tracing::warn!(%error, "skipping a record");
            records.remove(&key);
        }
    }
}

async fn follow<T: DeserializeOwned>(
    lattice: Lattice,
    bucket: Bucket,
    filter: String,
    mut watch: kv::Watch,
    records: Arc<RwLock<Records<T>>>,
    notify: watch::Sender<u64>,
) {
    loop {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(entry) => {
                    if let Ok(mut records) = records.write() {
                        apply(&lattice, bucket, &mut records, entry);
                    }
                    notify.send_modify(|count| *count += 1);
                }
                Err(error) => {
                    tracing::debug!(%error, bucket = %bucket.name(lattice.name()), "watch failed");
                    break;
                }
            }
        }
        // The watch ended: rebuild from a fresh one, retrying until the server is back.
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match sync::<T>(&lattice, bucket, &filter).await {
                Ok(fresh) => {
                    if let Ok(mut records) = records.write() {
                        *records = fresh.records;
                    }
                    notify.send_modify(|count| *count += 1);
                    watch = fresh.watch;
                    break;
                }
                Err(error) => {
                    tracing::debug!(%error, "resyncing a mirror");
                }
            }
        }
    }
}
