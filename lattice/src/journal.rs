//! Journals: JetStream streams that keep a lattice's recent records of one kind (guest log
//! lines, events), bounded by size and age. Records are published fire and forget, a JSON
//! array a message (a batch of one or many), and read back in order, from the oldest, a
//! start time or only new ones, either to the end of what was there when reading began
//! or on as they come.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Cause;
use crate::names::PROTOCOL;
use crate::{Error, Lattice};

/// The largest message a journal takes (NATS's default payload limit).
const MAX_MESSAGE: i32 = 1 << 20;

/// A lattice's journals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    /// Guest output, subjects `…logs.<namespace>.<app>`.
    Logs,
    /// What happened in the lattice, subjects `…events.<namespace>.<app>` and
    /// `…events._hosts.<host>`.
    Events,
}

impl Journal {
    /// Every journal, for setup.
    pub const ALL: [Journal; 2] = [Journal::Logs, Journal::Events];

    fn suffix(self) -> &'static str {
        match self {
            Journal::Logs => "logs",
            Journal::Events => "events",
        }
    }

    /// The stream's name: `shoal-<lattice>-v1-<journal>`.
    pub fn stream(self, lattice: &str) -> String {
        format!("shoal-{lattice}-{PROTOCOL}-{}", self.suffix())
    }

    /// The subject of records about `tail` (dot-separated tokens): `shoal.<lattice>.v1.<journal>.<tail>`.
    pub fn subject(self, lattice: &str, tail: &str) -> String {
        format!("shoal.{lattice}.{PROTOCOL}.{}.{tail}", self.suffix())
    }

    /// How much the journal keeps, over the whole lattice: the oldest records go first.
    pub fn kept_bytes(self) -> i64 {
        match self {
            Journal::Logs => 64 << 20,
            Journal::Events => 16 << 20,
        }
    }

    /// How long the journal keeps a record.
    pub fn kept_for(self) -> Duration {
        match self {
            Journal::Logs => Duration::from_secs(24 * 3600),
            Journal::Events => Duration::from_secs(3600),
        }
    }
}

/// Where reading a journal starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record kept.
    Oldest,
    /// The first record written at or after this time (milliseconds since the Unix epoch).
    Since(u64),
    /// Only records written from now on.
    New,
}

/// A journal record that says who published it. The reader sets that from the subject the
/// record came on, `…<journal>.<first>.<second>.<publisher>` (a host may publish only under
/// its own id there, which nats-server checks), never from what the payload claims.
pub trait Attributed {
    /// Makes the record say it came from `publisher` (a host id or the scheduler's origin)
    /// about `first.second` (`<namespace>.<app>`, or `_hosts.<host>`).
    fn attribute(&mut self, first: &str, second: &str, publisher: &str);
}

/// Reads records of one journal subject filter in the order they were written.
pub struct Reader<T> {
    messages: consumer::pull::Ordered,
    /// Records of the last message not handed out yet.
    batch: VecDeque<T>,
    /// Messages of the backlog (pending when reading began) not read yet: an ordered
    /// consumer delivers them first, in order, each once.
    backlog_left: u64,
    caught_up: bool,
    follow: bool,
    stream: String,
    /// The journal's subject prefix, `shoal.<lattice>.v1.<journal>.`.
    prefix: String,
    _records: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned + Attributed> Reader<T> {
    /// The next record. Without follow, `None` once every record that existed when reading
    /// began has been read; with follow, waits for new ones.
    ///
    /// # Errors
    /// [`Error::Stream`] when the stream cannot be read; a message this Shoal cannot decode
    /// is skipped, not an error.
    pub async fn next(&mut self) -> Option<Result<T, Error>> {
        loop {
            if let Some(record) = self.batch.pop_front() {
                return Some(Ok(record));
            }
            if self.caught_up && !self.follow {
                return None;
            }
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(error) => {
                    return Some(Err(Error::Stream {
                        stream: self.stream.clone(),
                        source: error.into(),
                    }));
                }
            };
            self.backlog_left = self.backlog_left.saturating_sub(1);
            if self.backlog_left == 0 {
                self.caught_up = true;
            }
            let tokens = message
                .subject
                .strip_prefix(self.prefix.as_str())
                .map(|tail| tail.split('.').collect::<Vec<_>>());
            // A message on a subject of another shape was not published by Shoal: skipped.
            let Some([first, second, publisher]) = tokens.as_deref() else {
                continue;
            };
            if let Ok(mut records) = serde_json::from_slice::<Vec<T>>(&message.payload) {
                for record in &mut records {
                    record.attribute(first, second, publisher);
                }
                self.batch = records.into();
            }
        }
    }

    /// Whether every record that existed when reading began has been read: what comes
    /// next is new.
    pub fn caught_up(&self) -> bool {
        self.caught_up && self.batch.is_empty()
    }
}

impl Lattice {
    /// Publishes `records` to `journal` on the subject ending in `tail`, as one message.
    /// Fire and forget: records lost while NATS is unreachable are not retried.
    ///
    /// # Errors
    /// [`Error::Stream`] when the records cannot be encoded or the client cannot take them.
    pub async fn publish_to<T: Serialize>(
        &self,
        journal: Journal,
        tail: &str,
        records: &[T],
    ) -> Result<(), Error> {
        let failed = |source: Cause| Error::Stream {
            stream: journal.stream(self.name()),
            source,
        };
        let payload = serde_json::to_vec(records).map_err(|error| failed(error.into()))?;
        self.client()
            .publish(journal.subject(self.name(), tail), payload.into())
            .await
            .map_err(|error| failed(error.into()))
    }

    /// Reads `journal`'s records on subjects matching `tail` (wildcards allowed) from
    /// `start`; with `follow`, goes on with new ones as they are written.
    ///
    /// # Errors
    /// [`Error::Stream`] when the stream cannot be read.
    pub async fn read<T: DeserializeOwned>(
        &self,
        journal: Journal,
        tail: &str,
        start: Start,
        follow: bool,
    ) -> Result<Reader<T>, Error> {
        let name = journal.stream(self.name());
        let failed = |source: Cause| Error::Stream {
            stream: name.clone(),
            source,
        };
        let subject = journal.subject(self.name(), tail);
        let stream = open(&self.jetstream(), self.name(), journal, self.replicas).await?;
        let deliver_policy = match start {
            Start::Oldest => consumer::DeliverPolicy::All,
            Start::Since(millis) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(millis) * 1_000_000,
                )
                .map_err(|error| failed(format!("bad start time: {error}").into()))?,
            },
            Start::New => consumer::DeliverPolicy::New,
        };
        // Named, so the filter is part of the request's subject: nats-server lets a
        // viewer of one namespace create consumers on that namespace's subjects only.
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                name: Some(crate::names::unguessable()),
                filter_subject: subject.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|error| failed(error.into()))?;
        // The backlog is what is pending as the consumer starts; messages written later are
        // delivered after it.
        let backlog_left = consumer.cached_info().num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|error| failed(error.into()))?;
        Ok(Reader {
            messages,
            batch: VecDeque::new(),
            backlog_left,
            caught_up: backlog_left == 0,
            follow,
            stream: name,
            prefix: journal.subject(self.name(), ""),
            _records: PhantomData,
        })
    }
}

/// Opens `journal`'s stream in `lattice`, making it when missing.
pub(crate) async fn open(
    context: &jetstream::Context,
    lattice: &str,
    journal: Journal,
    replicas: usize,
) -> Result<stream::Stream, Error> {
    let name = journal.stream(lattice);
    context
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![journal.subject(lattice, ">")],
            max_bytes: journal.kept_bytes(),
            max_age: journal.kept_for(),
            max_message_size: MAX_MESSAGE,
            discard: stream::DiscardPolicy::Old,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
        .map_err(|error| Error::Stream {
            stream: name,
            source: format!("{error} (nats-server needs JetStream enabled: -js)").into(),
        })
}
