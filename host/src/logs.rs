//! Lattice replicas' guest output on its way to the lattice's logs: each replica's sink
//! queues its lines without ever waiting (a full queue drops and counts them), and one
//! task per host publishes what is queued in short batches, one message per app.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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

/// A line of one app's guest output, on its way to the lattice.
pub(crate) type ReplicaLine = (String, String, LogLine);

/// Hands a replica's output lines to the host's publisher, never waiting.
pub(crate) struct ReplicaLogs {
    lines: mpsc::Sender<ReplicaLine>,
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
        lines: mpsc::Sender<ReplicaLine>,
        host: &str,
        assignment: &Assignment,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            lines,
            host: host.to_owned(),
            namespace: assignment.namespace.clone(),
            app: assignment.app.clone(),
            replica: assignment.replica.clone(),
            revision: assignment.revision,
            metrics,
        }
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
        if self
            .lines
            .try_send((self.namespace.clone(), self.app.clone(), line))
            .is_err()
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
pub(crate) async fn publish_logs(lattice: Lattice, mut lines: mpsc::Receiver<ReplicaLine>) {
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
                tracing::debug!(%error, lines = batch.len(), "guest output was not published");
            }
        }
    }
}
