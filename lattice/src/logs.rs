//! Guest output on the lattice. A host publishes each line a replica writes to stdout or
//! stderr on `shoal.<lattice>.v1.logs.<namespace>.<app>`; one JetStream stream per lattice
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
/// The longest line kept whole; longer ones are cut (and say so).
pub const MAX_LINE: usize = 16 * 1024;

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
            if let Ok(line) = serde_json::from_slice::<LogLine>(&message.payload) {
                return Some(Ok(line));
            }
        }
    }

    /// Whether every line that existed when reading began has been read: what comes next
    /// is new.
    pub fn caught_up(&self) -> bool {
        self.caught_up
    }
}

impl Lattice {
    /// Publishes one line of `namespace/app`'s guest output. Fire and forget: a line lost
    /// while NATS is unreachable is not retried (the guest must never wait on its logs).
    ///
    /// # Errors
    /// [`Error::Logs`] when the line cannot be encoded or the client's buffer is full.
    pub async fn publish_log(
        &self,
        namespace: &str,
        app: &str,
        line: &LogLine,
    ) -> Result<(), Error> {
        let failed = |reason: String| Error::Logs {
            stream: logs_stream(self.name()),
            reason,
        };
        let payload =
            serde_json::to_vec(line).map_err(|error| failed(format!("cannot encode: {error}")))?;
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
            max_message_size: i32::try_from(MAX_LINE * 2).unwrap_or(i32::MAX),
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|error| Error::Logs {
            stream: name,
            reason: format!("{error}; nats-server needs JetStream enabled (-js)"),
        })
}
