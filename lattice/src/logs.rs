//! Guest output on the lattice. A host publishes the lines replicas write to stdout or
//! stderr on `shoal.<lattice>.v1.logs.<namespace>.<app>`, in batches (a JSON array of
//! [`LogLine`] a message: one line when output is sparse, many under load); one JetStream stream per lattice
//! keeps the most recent lines (bounded by size and age), so `shoal logs` shows what was
//! written before it asked, from replicas on any host, even one that has since died, and
//! can follow what comes next.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::names::{logs_stream, logs_subject, logs_subjects};
use crate::{Error, Lattice};

/// How much guest output the lattice keeps, across all apps: the oldest lines go first.
pub const KEPT_BYTES: i64 = 64 << 20;
/// How long the lattice keeps a line of guest output.
pub const KEPT_FOR: Duration = Duration::from_secs(24 * 3600);
/// The longest line kept whole; longer ones are cut into lines of this size.
pub const MAX_LINE: usize = 16 * 1024;
/// A publisher sends lines in batches whose [`LogLine::cost`] adds up to at most this
/// (plus one line), one message each: JSON escaping at most sextuples text, so a batch
/// stays under NATS's default 1 MiB payload.
pub const MAX_BATCH_BYTES: usize = 128 * 1024;
/// The largest message the logs stream takes.
const MAX_MESSAGE: i32 = 1 << 20;

/// Which of a guest's outputs a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Output {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line a replica wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// The host that ran the replica.
    pub host: String,
    /// The replica.
    pub replica: String,
    /// The app revision the replica runs.
    pub revision: u64,
    /// stdout or stderr.
    pub output: Output,
    /// When the host read it, milliseconds since the Unix epoch.
    pub time: u64,
    /// The text, without its line end.
    pub line: String,
}

impl LogLine {
    /// What the line counts for against [`MAX_BATCH_BYTES`]: its text and room for the
    /// fields around it (ids are at most 63 bytes each).
    pub fn cost(&self) -> usize {
        self.line.len() + 256
    }
}

/// Where reading an app's logs starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    /// The oldest line kept.
    Oldest,
    /// The first line written at or after this time (milliseconds since the Unix epoch).
    Since(u64),
    /// Only lines written from now on.
    New,
}

/// Reads one app's log lines in the order they were written.
pub struct LogReader {
    messages: consumer::pull::Ordered,
    /// Lines of the last batch not handed out yet.
    batch: std::collections::VecDeque<LogLine>,
    /// The stream sequence of the app's last line when reading began; 0 for none.
    backlog_end: u64,
    caught_up: bool,
    follow: bool,
    stream: String,
}

impl LogReader {
    /// The next line. Without follow, `None` once every line that existed when reading
    /// began has been read; with follow, waits for new lines.
    ///
    /// # Errors
    /// [`Error::Logs`] when the stream cannot be read; a line this Shoal cannot decode is
    /// skipped, not an error.
    pub async fn next(&mut self) -> Option<Result<LogLine, Error>> {
        loop {
            if let Some(line) = self.batch.pop_front() {
                return Some(Ok(line));
            }
            if self.caught_up && !self.follow {
                return None;
            }
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(error) => {
                    return Some(Err(Error::Logs {
                        stream: self.stream.clone(),
                        reason: error.to_string(),
                    }));
                }
            };
            let sequence = message.info().map_or(0, |info| info.stream_sequence);
            if sequence >= self.backlog_end {
                self.caught_up = true;
            }
            if let Ok(lines) = serde_json::from_slice::<Vec<LogLine>>(&message.payload) {
                self.batch = lines.into();
            }
        }
    }

    /// Whether every line that existed when reading began has been read: what comes next
    /// is new.
    pub fn caught_up(&self) -> bool {
        self.caught_up && self.batch.is_empty()
    }
}

impl Lattice {
    /// Publishes lines of `namespace/app`'s guest output as one message (keep their
    /// [`LogLine::cost`] within [`MAX_BATCH_BYTES`]). Fire and forget: lines lost while NATS is unreachable
    /// are not retried (a guest must never wait on its logs).
    ///
    /// # Errors
    /// [`Error::Logs`] when the lines cannot be encoded or the client cannot take them.
    pub async fn publish_logs(
        &self,
        namespace: &str,
        app: &str,
        lines: &[LogLine],
    ) -> Result<(), Error> {
        let failed = |reason: String| Error::Logs {
            stream: logs_stream(self.name()),
            reason,
        };
        let payload =
            serde_json::to_vec(lines).map_err(|error| failed(format!("cannot encode: {error}")))?;
        self.client()
            .publish(logs_subject(self.name(), namespace, app), payload.into())
            .await
            .map_err(|error| failed(error.to_string()))
    }

    /// Reads `namespace/app`'s log lines from `start`; with `follow`, goes on with new lines
    /// as they are written, else ends after the last line there was when reading began.
    ///
    /// # Errors
    /// [`Error::Logs`] when the stream cannot be read.
    pub async fn logs(
        &self,
        namespace: &str,
        app: &str,
        start: LogStart,
        follow: bool,
    ) -> Result<LogReader, Error> {
        let name = logs_stream(self.name());
        let failed = |reason: String| Error::Logs {
            stream: name.clone(),
            reason,
        };
        let subject = logs_subject(self.name(), namespace, app);
        let stream = open_logs(&jetstream::new(self.client().clone()), self.name()).await?;
        let deliver_policy = match start {
            LogStart::Oldest => consumer::DeliverPolicy::All,
            LogStart::Since(millis) => consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(millis) * 1_000_000,
                )
                .map_err(|error| failed(format!("bad start time: {error}")))?,
            },
            LogStart::New => consumer::DeliverPolicy::New,
        };
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.clone(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|error| failed(error.to_string()))?;
        // The backlog ends at the app's last line as of now: nothing when the consumer
        // starts with nothing pending, else that line's sequence. Lines written after the
        // consumer was made are pending too, so that line is always reached.
        let backlog_end = if consumer.cached_info().num_pending == 0 {
            0
        } else {
            match stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => message.sequence,
                Err(error) if error.kind() == stream::LastRawMessageErrorKind::NoMessageFound => 0,
                Err(error) => return Err(failed(error.to_string())),
            }
        };
        let messages = consumer
            .messages()
            .await
            .map_err(|error| failed(error.to_string()))?;
        Ok(LogReader {
            messages,
            batch: std::collections::VecDeque::new(),
            backlog_end,
            caught_up: backlog_end == 0,
            follow,
            stream: name,
        })
    }
}

/// Opens the lattice's logs stream, making it when missing.
pub(crate) async fn open_logs(
    context: &jetstream::Context,
    lattice: &str,
) -> Result<stream::Stream, Error> {
    let name = logs_stream(lattice);
    context
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![logs_subjects(lattice)],
            max_bytes: KEPT_BYTES,
            max_age: KEPT_FOR,
            max_message_size: MAX_MESSAGE,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|error| Error::Logs {
            stream: name,
            reason: format!("{error}; nats-server needs JetStream enabled (-js)"),
        })
}
