//! A live in-memory copy of part of a KV bucket, kept current by a watch: the informer of
//! Kubernetes controllers. Readers take snapshots; a change counter wakes reconcile loops.
//!
//! Every record is checked with [`Validate`] as it arrives: one that cannot be decoded or
//! breaks the lattice's bounds is left out of snapshots and listed by [`Mirror::invalid`]
//! with the reason, so the reader can report it instead of acting on it.
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
use crate::{Bucket, Error, Lattice, Validate, Versioned};

/// The valid records by key, and the refused ones with why (and the KV revision refused).
struct Records<T> {
    valid: BTreeMap<String, Versioned<T>>,
    invalid: BTreeMap<String, (u64, String)>,
    /// The highest revision seen, deletions included.
    last_revision: u64,
}

impl<T> Default for Records<T> {
    fn default() -> Self {
        Self {
            valid: BTreeMap::new(),
            invalid: BTreeMap::new(),
            last_revision: 0,
        }
    }
}

/// A record the mirror refused: its key, KV revision and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The key.
    pub key: String,
    /// The KV revision refused.
    pub revision: u64,
    /// Why, for people.
    pub reason: String,
}

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
    T: DeserializeOwned + Validate + Send + Sync + 'static,
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
            .map(|records| records.valid.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The highest revision this copy has seen (deletions included): with a mirror of a
    /// whole bucket, the fence for [`Lattice::create_fenced`] when planning against it.
    pub fn last_revision(&self) -> u64 {
        self.records
            .read()
            .map(|records| records.last_revision)
            .unwrap_or(0)
    }

    /// The records left out because they could not be decoded or broke the bounds.
    pub fn invalid(&self) -> Vec<Refused> {
        self.records
            .read()
            .map(|records| {
                records
                    .invalid
                    .iter()
                    .map(|(key, (revision, reason))| Refused {
                        key: key.clone(),
                        revision: *revision,
                        reason: reason.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One record.
    pub fn get(&self, key: &str) -> Option<Versioned<T>> {
        self.records
            .read()
            .ok()
            .and_then(|records| records.valid.get(key).cloned())
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
async fn sync<T: DeserializeOwned + Validate>(
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
    let mut records = Records::default();
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

fn apply<T: DeserializeOwned + Validate>(
    lattice: &Lattice,
    bucket: Bucket,
    records: &mut Records<T>,
    entry: kv::Entry,
) {
    records.invalid.remove(&entry.key);
    records.last_revision = records.last_revision.max(entry.revision);
    if entry.operation != kv::Operation::Put {
        records.valid.remove(&entry.key);
        return;
    }
    let key = entry.key.clone();
    let revision = entry.revision;
    let checked = decode::<T>(lattice.name(), bucket, entry).and_then(|record| {
        match record.value.validate() {
            Ok(()) => Ok(record),
            Err(invalid) => Err(Error::Decode {
                bucket: bucket.name(lattice.name()),
                key: key.clone(),
                reason: invalid.to_string(),
            }),
        }
    });
    match checked {
        Ok(record) => {
            records.valid.insert(key, record);
        }
        Err(error) => {
            tracing::warn!(%error, "skipping a record that breaks the lattice's rules");
            records.valid.remove(&key);
            records.invalid.insert(key, (revision, error.to_string()));
        }
    }
}

/// How long a watch may deliver nothing before the mirror checks it against a fresh copy.
const RESYNC_WHEN_QUIET: Duration = Duration::from_secs(10);

/// Each key's revision, valid or not: what tells two copies apart.
fn revisions<T>(records: &Records<T>) -> BTreeMap<&str, u64> {
    records
        .valid
        .iter()
        .map(|(key, record)| (key.as_str(), record.revision))
        .chain(
            records
                .invalid
                .iter()
                .map(|(key, (revision, _))| (key.as_str(), *revision)),
        )
        .collect()
}

async fn follow<T: DeserializeOwned + Validate>(
    lattice: Lattice,
    bucket: Bucket,
    filter: String,
    mut watch: kv::Watch,
    records: Arc<RwLock<Records<T>>>,
    notify: watch::Sender<u64>,
) {
    loop {
        loop {
            // A watch whose consumer lived on a NATS server that died can go quiet without
            // an error: one quiet for a while is checked against a fresh copy.
            let entry = match tokio::time::timeout(RESYNC_WHEN_QUIET, watch.next()).await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(_quiet) => break,
            };
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
        // Rebuild from a fresh watch, retrying until the server is back.
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            match sync::<T>(&lattice, bucket, &filter).await {
                Ok(fresh) => {
                    let changed = records.write().is_ok_and(|mut records| {
                        let changed = revisions(&records) != revisions(&fresh.records);
                        *records = fresh.records;
                        changed
                    });
                    if changed {
                        notify.send_modify(|count| *count += 1);
                    }
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
