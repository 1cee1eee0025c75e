//! Guest output on the lattice. A host publishes the lines replicas write to stdout or
//! stderr on `shoal.<lattice>.v1.logs.<namespace>.<app>.<host>`, in batches (a JSON array of
//! [`LogLine`] a message: one line when output is sparse, many under load); the lattice's
//! logs [`Journal`] keeps the most recent lines (64 MiB, 24 hours), so `shoal logs` shows what was
//! written before it asked, from replicas on any host, even one that has since died, and
//! can follow what comes next.

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, Reader, Start};
use crate::{Error, Lattice};

/// The longest line kept whole; longer ones are cut into lines of this size.
pub const MAX_LINE: usize = 16 * 1024;
/// A publisher sends lines in batches whose [`LogLine::cost`] adds up to at most this
/// (plus one line), one message each: JSON escaping at most sextuples text, so a batch
/// stays under NATS's default 1 MiB payload.
pub const MAX_BATCH_BYTES: usize = 128 * 1024;

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

impl crate::journal::Attributed for LogLine {
    /// A line is the publishing host's: it names no other host, whatever it says.
    fn attribute(&mut self, _namespace: &str, _app: &str, publisher: &str) {
        publisher.clone_into(&mut self.host);
    }
}

/// Reads one app's log lines in the order they were written.
pub type LogReader = Reader<LogLine>;

impl Lattice {
    /// Publishes lines of `namespace/app`'s guest output as one message (keep their
    /// [`LogLine::cost`] within [`MAX_BATCH_BYTES`]). Fire and forget: a guest must never
    /// wait on its logs.
    ///
    /// # Errors
    /// [`Error::Stream`] when the lines cannot be encoded or the client cannot take them.
    pub async fn publish_logs(
        &self,
        namespace: &str,
        app: &str,
        lines: &[LogLine],
    ) -> Result<(), Error> {
        self.publish_to(
            Journal::Logs,
            &format!("{namespace}.{app}.{}", self.origin),
            lines,
        )
        .await
    }

    /// Reads `namespace/app`'s log lines from `start`; with `follow`, goes on with new lines
    /// as they are written, else ends after the last line there was when reading began.
    ///
    /// # Errors
    /// [`Error::Stream`] when the stream cannot be read.
    pub async fn logs(
        &self,
        namespace: &str,
        app: &str,
        start: Start,
        follow: bool,
    ) -> Result<LogReader, Error> {
        self.read(
            Journal::Logs,
            &format!("{namespace}.{app}.>"),
            start,
            follow,
        )
        .await
    }
}
