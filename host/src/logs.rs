//! Lattice replicas' guest output on its way to the lattice's logs: each replica's sink
//! queues its lines without ever waiting (a full queue drops and counts them), and one
//! task per host publishes what is queued in short batches, one message per app.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_lattice::logs::MAX_BATCH_BYTES;
use shoal_lattice::records::{Assignment, now_millis};
use shoal_lattice::{Lattice, LogLine, Output};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::output::LineSink;

/// Guest output lines waiting to be published, per host; past this, new lines are dropped
/// rather than holding a guest up.
pub(crate) const LOG_BUFFER: usize = 4096;

/// Bytes of guest output waiting to be published, per host: with lines of up to 16 KiB,
/// the line count alone would allow 64 MiB.
pub(crate) const LOG_BUFFER_BYTES: usize = 4 << 20;

/// A line of one app's guest output, on its way to the lattice.
pub(crate) type ReplicaLine = (String, String, LogLine);

/// The sending side of a host's queue of guest output, bounded in lines and in bytes.
#[derive(Clone)]
pub(crate) struct LogQueue {
    lines: mpsc::Sender<ReplicaLine>,
    queued_bytes: Arc<AtomicUsize>,
}

/// The publisher's side of the queue.
pub(crate) struct LogReceiver {
    lines: mpsc::Receiver<ReplicaLine>,
    queued_bytes: Arc<AtomicUsize>,
}

/// A host's queue of guest output lines.
pub(crate) fn log_queue() -> (LogQueue, LogReceiver) {
    let (sender, receiver) = mpsc::channel(LOG_BUFFER);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        LogQueue {
            lines: sender,
            queued_bytes: Arc::clone(&queued_bytes),
        },
        LogReceiver {
            lines: receiver,
            queued_bytes,
        },
    )
}

impl LogQueue {
    /// Queues a line unless the queue is full in lines or bytes; never waits.
    fn offer(&self, line: ReplicaLine) -> bool {
        let size = line.2.line.len();
        let before = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if before.saturating_add(size) > LOG_BUFFER_BYTES || self.lines.try_send(line).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl LogReceiver {
    async fn recv(&mut self) -> Option<ReplicaLine> {
        let line = self.lines.recv().await?;
        self.queued_bytes
            .fetch_sub(line.2.line.len(), Ordering::Relaxed);
        Some(line)
    }
}

/// Hands a replica's output lines to the host's publisher, never waiting.
pub(crate) struct ReplicaLogs {
    lines: LogQueue,
    host: String,
    namespace: String,
    app: String,
    replica: String,
    revision: u64,
    metrics: Arc<Metrics>,
}

impl ReplicaLogs {
    /// The sink of `assignment`'s replica on `host`.
    pub(crate) fn new(
        lines: LogQueue,
        host: &str,
        assignment: &Assignment,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            lines,
            host: host.to_owned(),
            namespace: assignment.namespace.clone(),
            app: log_name(assignment),
            replica: assignment.replica.clone(),
            revision: assignment.revision,
            metrics,
        }
    }
}

/// What `assignment`'s lines are published under: its app, or `job=<name>` for a job's
/// run (a token no app name can be, so a job's logs never mix with an app's of that name).
pub fn log_name(assignment: &Assignment) -> String {
    match assignment.job {
        Some(_) => shoal_lattice::jobs::log_name(&assignment.app),
        None => assignment.app.clone(),
    }
}

impl LineSink for ReplicaLogs {
    fn line(&self, output: Output, line: &str) {
        tracing::debug!(target: "shoal::guest", app = %self.app, replica = %self.replica, ?output, "{line}");
        let line = LogLine {
            host: self.host.clone(),
            replica: self.replica.clone(),
            revision: self.revision,
            output,
            time: now_millis(),
            line: line.to_owned(),
        };
        if !self
            .lines
            .offer((self.namespace.clone(), self.app.clone(), line))
        {
            let dropped = self
                .metrics
                .log_lines_dropped
                .fetch_add(1, Ordering::Relaxed);
            if dropped.is_multiple_of(1000) {
                tracing::warn!(app = %self.app, dropped = dropped + 1, "guest output dropped: the lattice is not keeping up");
            }
        }
    }
}

/// How long the publisher gathers lines after the first of a batch: output reaches
/// `shoal logs -f` at most this much later, and a chatty guest costs the lattice one
/// message per app per period instead of one per line.
const LOG_BATCH_WINDOW: Duration = Duration::from_millis(20);

/// Publishes guest output lines to the lattice's logs, in order, until the host leaves:
/// what arrives within [`LOG_BATCH_WINDOW`] of a batch's first line (up to
/// [`MAX_BATCH_BYTES`]) goes out together, one message per app.
pub(crate) async fn publish_logs(lattice: Lattice, mut lines: LogReceiver) {
    let mut batches: BTreeMap<(String, String), Vec<LogLine>> = BTreeMap::new();
    while let Some(first) = lines.recv().await {
        let deadline = tokio::time::Instant::now() + LOG_BATCH_WINDOW;
        let mut bytes = 0;
        let mut next = Some(first);
        while let Some((namespace, app, line)) = next {
            bytes += line.cost();
            batches.entry((namespace, app)).or_default().push(line);
            next = if bytes < MAX_BATCH_BYTES {
                tokio::time::timeout_at(deadline, lines.recv())
                    .await
                    .ok()
                    .flatten()
            } else {
                None
            };
        }
        for ((namespace, app), batch) in std::mem::take(&mut batches) {
            if let Err(error) = lattice.publish_logs(&namespace, &app, &batch).await {
                tracing::debug!(error = %shoal_lattice::Chain(&error), lines = batch.len(), "guest output was not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> ReplicaLine {
        let line = LogLine {
            host: "h".into(),
            replica: "r".into(),
            revision: 1,
            output: Output::Stdout,
            time: 0,
            line: text.to_owned(),
        };
        ("default".into(), "app".into(), line)
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_and_frees_what_is_published() {
        let (queue, mut receiver) = log_queue();
        let long = "x".repeat(16 << 10);
        let mut accepted = 0;
        while queue.offer(line(&long)) {
            accepted += 1;
        }
        assert_eq!(accepted, LOG_BUFFER_BYTES / (16 << 10));
        assert!(accepted < LOG_BUFFER);
        // Short lines still fit in what the count allows, once bytes are freed.
        receiver.recv().await.unwrap();
        assert!(queue.offer(line(&long)));
        assert!(!queue.offer(line("short")));
    }
}
