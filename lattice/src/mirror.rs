//! A live in-memory copy of part of a KV bucket, kept current by a watch: the informer of
//! Kubernetes controllers. Readers take snapshots; a change counter wakes reconcile loops.
//!
//! Every record is checked with [`Validate`] as it arrives: one that cannot be decoded or
//! breaks the lattice's bounds is not taken (snapshots keep the key's last valid value, if
//! it had one) and is listed by [`Mirror::invalid`] with the reason, so the reader can
//! report it instead of acting on it. Fields a record has and this version does not know
//! are ignored: a newer version may add them.
//!
//! When the watch breaks (the NATS server restarted, the connection dropped), the mirror
//! builds a fresh copy from a new watch and swaps it in whole, so readers never see a
//! half-synced state.
//!
//! The watch is an ordered push consumer of the bucket's stream, named so that its filter
//! is part of the subject of the request that makes it: on a secure lattice nats-server lets
//! a host watch only the keys its credential names (its own assignments, say).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{consumer, kv};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::Cause;
use crate::{Bucket, Error, Lattice, Validate, Versioned};

/// A watch: the bucket's messages under a key filter, the latest value of each key first.
type Watch = consumer::push::Ordered;

/// One change a watch delivers.
struct Entry {
    key: String,
    revision: u64,
    deleted: bool,
    value: Bytes,
    /// Messages still pending after this one: 0 once the watch has caught up.
    delta: u64,
}

impl Entry {
    /// Reads a KV change from a stream message; `None` for one that is not (no info).
    fn from_message(prefix: &str, message: async_nats::jetstream::Message) -> Option<Self> {
        let info = message.info().ok()?;
        let (revision, delta) = (info.stream_sequence, info.pending);
        let key = message.subject.strip_prefix(prefix)?.to_owned();
        // A delete or purge carries `KV-Operation`; an expired key a marker reason.
        let deleted = message.headers.as_ref().is_some_and(|headers| {
            headers.get("KV-Operation").is_some() || headers.get("Nats-Marker-Reason").is_some()
        });
        Some(Self {
            key,
            revision,
            deleted,
            value: message.payload.clone(),
            delta,
        })
    }
}

/// Starts a watch of `filter` (a key filter) in `store`, from the latest value of each key.
async fn watch(lattice: &Lattice, store: &kv::Store, filter: &str) -> Result<Watch, String> {
    store
        .stream
        .create_consumer(consumer::push::OrderedConfig {
            name: Some(crate::names::unguessable()),
            deliver_subject: lattice.client().new_inbox(),
            description: Some("shoal mirror".to_owned()),
            filter_subject: format!("{}{filter}", store.prefix),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|error| error.to_string())?
        .messages()
        .await
        .map_err(|error| error.to_string())
}

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
    /// What follows the bucket; `None` for a [`Mirror::fixed`] one.
    task: Option<tokio::task::JoinHandle<()>>,
}

impl<T> Drop for Mirror<T> {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// An empty mirror that follows nothing: what a state not yet opened (or a test's) holds.
impl<T> Default for Mirror<T> {
    fn default() -> Self {
        Self::fixed([])
    }
}

impl<T> Mirror<T> {
    /// A mirror of `records` that follows no bucket and never changes: what a controller
    /// test plans against, without nats-server. Its last revision is the highest of theirs.
    pub fn fixed(records: impl IntoIterator<Item = Versioned<T>>) -> Self {
        let mut fixed = Records::default();
        for record in records {
            fixed.last_revision = fixed.last_revision.max(record.revision);
            fixed.valid.insert(record.key.clone(), record);
        }
        let (_, changes) = watch::channel(0u64);
        Self {
            records: Arc::new(RwLock::new(fixed)),
            changes,
            task: None,
        }
    }

    /// This mirror, also holding records it refused (as a following one does when a record
    /// does not decode or breaks the rules): for tests of what reads one.
    #[must_use]
    pub fn refusing(self, refused: impl IntoIterator<Item = Refused>) -> Self {
        if let Ok(mut records) = self.records.write() {
            for Refused {
                key,
                revision,
                reason,
            } in refused
            {
                records.last_revision = records.last_revision.max(revision);
                records.invalid.insert(key, (revision, reason));
            }
        }
        self
    }
}

impl<T> Mirror<T>
where
    T: DeserializeOwned + Validate + Clone + Send + Sync + 'static,
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
            task: Some(task),
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
    watch: Watch,
}

/// Opens a watch and reads it until it has delivered the current value of every key.
async fn sync<T: DeserializeOwned + Validate>(
    lattice: &Lattice,
    bucket: Bucket,
    filter: &str,
) -> Result<Synced<T>, Error> {
    let store = lattice.store(bucket)?;
    let failed = |error: Cause| Error::Request {
        bucket: bucket.name(lattice.name()),
        source: error,
    };
    // A watch over no keys delivers nothing, not even a "caught up" mark: ask the stream
    // first whether any key matches.
    let any = store
        .stream
        .info_with_subjects(format!("{}{filter}", store.prefix))
        .await
        .map_err(|error| failed(error.into()))?
        .try_next()
        .await
        .map_err(|error| failed(error.into()))?
        .is_some();
    let mut watch = watch(lattice, store, filter)
        .await
        .map_err(|error| failed(error.into()))?;
    let mut records = Records::default();
    if any {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .map_err(|_| failed("watch delivered nothing for 10 s".into()))?;
            let Some(message) = next else {
                return Err(failed("watch ended".into()));
            };
            let message = message.map_err(|error| failed(error.into()))?;
            let Some(entry) = Entry::from_message(&store.prefix, message) else {
                continue;
            };
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
    entry: Entry,
) {
    records.invalid.remove(&entry.key);
    records.last_revision = records.last_revision.max(entry.revision);
    if entry.deleted {
        records.valid.remove(&entry.key);
        return;
    }
    let key = entry.key.clone();
    let revision = entry.revision;
    let refused = |source: Cause| Error::Decode {
        bucket: bucket.name(lattice.name()),
        key: key.clone(),
        source,
    };
    let checked = serde_json::from_slice::<T>(&entry.value)
        .map_err(|error| refused(error.into()))
        .and_then(|value| match value.validate() {
            Ok(()) => Ok(Versioned {
                key: key.clone(),
                revision,
                value,
            }),
            Err(invalid) => Err(refused(invalid.into())),
        });
    match checked {
        Ok(record) => {
            records.valid.insert(key, record);
        }
        Err(error) => {
            // The last valid value of the key stays: a record a newer version wrote in a
            // shape this one cannot read must not stop what runs from the older one.
            let error = crate::Chain(&error).to_string();
            tracing::warn!(%error, "skipping a record that breaks the lattice's rules");
            records.invalid.insert(key, (revision, error));
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

async fn follow<T: DeserializeOwned + Validate + Clone>(
    lattice: Lattice,
    bucket: Bucket,
    filter: String,
    mut watch: Watch,
    records: Arc<RwLock<Records<T>>>,
    notify: watch::Sender<u64>,
) {
    let prefix = match lattice.store(bucket) {
        Ok(store) => store.prefix.clone(),
        Err(_) => return,
    };
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
                Ok(message) => {
                    let Some(entry) = Entry::from_message(&prefix, message) else {
                        continue;
                    };
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
                Ok(mut fresh) => {
                    let changed = records.write().is_ok_and(|mut records| {
                        // A fresh copy sees only each key's newest value: the last valid one
                        // of a key now invalid is carried over.
                        for key in fresh.records.invalid.keys() {
                            if !fresh.records.valid.contains_key(key)
                                && let Some(good) = records.valid.get(key)
                            {
                                fresh.records.valid.insert(key.clone(), good.clone());
                            }
                        }
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
                    tracing::debug!(error = %crate::Chain(&error), "resyncing a mirror");
                }
            }
        }
    }
}
