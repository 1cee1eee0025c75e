//! The leader lease: several schedulers may run; the one holding the lease key acts.
//!
//! The lease is a KV key renewed by compare-and-set on its revision. Followers watch the
//! revision on their own clock (no cross-machine clock comparison): when it has not moved
//! for a whole lease period, the holder is presumed dead and a follower takes the lease
//! with a compare-and-set at the revision it saw, so only one of several followers wins.

use std::time::{Duration, Instant};

use shoal_lattice::names::SCHEDULER_LEASE;
use shoal_lattice::records::{Lease, now_millis};
use shoal_lattice::{Bucket, Error, Lattice};

/// Holds or waits for the scheduler lease.
#[derive(Debug)]
pub struct LeaseKeeper {
    lattice: Lattice,
    holder: String,
    duration: Duration,
    /// When this scheduler last renewed the lease it holds, and the revision it wrote.
    held: Option<(Instant, u64)>,
    /// The lease revision last seen held by someone else, and since when.
    observed: Option<(u64, Instant)>,
    /// Since when the lease record has been unreadable (whatever its revisions).
    unreadable_since: Option<Instant>,
    last_attempt: Option<Instant>,
}

impl LeaseKeeper {
    /// A keeper for `holder` with leases of `duration`.
    pub fn new(lattice: Lattice, holder: String, duration: Duration) -> Self {
        Self {
            lattice,
            holder,
            duration,
            held: None,
            observed: None,
            unreadable_since: None,
            last_attempt: None,
        }
    }

    /// Whether this scheduler holds a lease it renewed less than a lease period ago.
    pub fn is_leader(&self) -> bool {
        self.held
            .is_some_and(|(renewed, _)| renewed.elapsed() < self.duration)
    }

    /// Renews or tries to take the lease, at most every third of a lease period.
    /// Returns whether this scheduler leads.
    pub async fn tick(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last_attempt
            .is_some_and(|last| now.duration_since(last) < self.duration / 3)
        {
            return self.is_leader();
        }
        self.last_attempt = Some(now);
        if let Err(error) = self.attempt(now).await {
            tracing::debug!(error = %shoal_lattice::Chain(&error), "lease attempt failed");
        }
        self.is_leader()
    }

    async fn attempt(&mut self, now: Instant) -> Result<(), Error> {
        let lease = Lease {
            holder: self.holder.clone(),
            renewed_at: now_millis(),
        };
        // An unreadable record (torn, written by hand, or by nats-server itself: a JetStream
        // answer or publish ack whose reply subject someone aimed at the lease key) is a
        // lease no one holds. The scheduler that held it takes it back at once; the others
        // take it once it has stayed unreadable for a whole lease period, however often it
        // was rewritten meanwhile (a rewrite does not restart the wait), so it delays
        // leadership by one period at most.
        let current = self
            .lattice
            .get_checked::<Lease>(Bucket::Leases, SCHEDULER_LEASE)
            .await?
            .map(|record| match record {
                Ok(record) => (record.revision, Some(record.value.holder)),
                Err(revision) => (revision, None),
            });
        if !matches!(current, Some((_, None))) {
            self.unreadable_since = None;
        }
        let written = match current {
            None => {
                self.lattice
                    .create(Bucket::Leases, SCHEDULER_LEASE, &lease)
                    .await
            }
            Some((revision, Some(holder))) if holder == self.holder => {
                self.lattice
                    .update(Bucket::Leases, SCHEDULER_LEASE, &lease, revision)
                    .await
            }
            Some((revision, None)) => {
                let since = *self.unreadable_since.get_or_insert_with(|| {
                    tracing::warn!(
                        revision,
                        "the scheduler lease record is unreadable: replacing it"
                    );
                    now
                });
                let held = self.is_leader();
                if !held && now.duration_since(since) < self.duration {
                    self.held = None;
                    return Ok(());
                }
                if !held {
                    tracing::warn!("taking the place of the unreadable scheduler lease");
                }
                self.lattice
                    .update(Bucket::Leases, SCHEDULER_LEASE, &lease, revision)
                    .await
            }
            Some((revision, Some(previous))) => {
                let since = match self.observed {
                    Some((seen, since)) if seen == revision => since,
                    _ => {
                        self.observed = Some((revision, now));
                        now
                    }
                };
                self.held = None;
                if now.duration_since(since) < self.duration {
                    return Ok(());
                }
                tracing::info!(%previous, "the scheduler lease expired; taking it");
                self.lattice
                    .update(Bucket::Leases, SCHEDULER_LEASE, &lease, revision)
                    .await
            }
        };
        match written {
            Ok(revision) => {
                if self.held.is_none() {
                    tracing::info!(holder = %self.holder, "this scheduler now leads");
                }
                self.held = Some((now, revision));
                Ok(())
            }
            Err(error) => {
                if self.held.take().is_some() {
                    tracing::warn!(error = %shoal_lattice::Chain(&error), "lost the scheduler lease");
                }
                Err(error)
            }
        }
    }

    /// Gives the lease up so another scheduler can take over at once.
    pub async fn release(&mut self) {
        if let Some((_, revision)) = self.held.take() {
            let _ = self
                .lattice
                .delete_at(Bucket::Leases, SCHEDULER_LEASE, revision)
                .await;
        }
    }
}
