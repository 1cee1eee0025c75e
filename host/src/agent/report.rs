//! How a host tells the lattice what happens to its replicas: statuses in the status bucket
//! and events in the journal. Before the host has reached its lattice (it started offline)
//! there is nowhere to write: statuses are skipped (the host reports every replica's
//! current state once it joins, level-triggered) and events wait in a bounded queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use shoal_lattice::names::replica_status_key;
use shoal_lattice::records::{Assignment, Phase, ReplicaStatus, now_millis};
use shoal_lattice::{Bucket, Event, Lattice};

/// Events kept while the lattice has not been reached; older ones are dropped first.
const QUEUED_EVENTS: usize = 256;

/// The host's way to report; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Reporter {
    lattice: Arc<OnceLock<Lattice>>,
    queued: Arc<Mutex<VecDeque<Event>>>,
    /// Per replica restarted in place: how many times, and why last. Every later status
    /// of the replica carries them.
    restarts: Arc<Mutex<HashMap<String, (u32, String)>>>,
}

impl Reporter {
    /// The host has joined `lattice`: reports go there from now on, queued events first.
    pub(crate) async fn joined(&self, lattice: Lattice) {
        let _ = self.lattice.get_or_init(|| lattice);
        self.flush().await;
    }

    /// The lattice, while its connection is up: writes while it is down would each wait for
    /// an ack that cannot come.
    fn reachable(&self) -> Option<&Lattice> {
        self.lattice.get().filter(|lattice| {
            lattice.client().connection_state() == async_nats::connection::State::Connected
        })
    }

    /// Publishes the events kept while the lattice was out of reach.
    pub(crate) async fn flush(&self) {
        let Some(lattice) = self.reachable() else {
            return;
        };
        let queued: Vec<Event> = self
            .queued
            .lock()
            .map(|mut queued| queued.drain(..).collect())
            .unwrap_or_default();
        if !queued.is_empty() {
            tracing::info!(
                events = queued.len(),
                "publishing the events of the time offline"
            );
        }
        for event in queued {
            lattice.emit(event).await;
        }
    }

    /// Publishes `event`, or queues it until the lattice is reached.
    pub(crate) async fn emit(&self, event: Event) {
        match self.reachable() {
            Some(lattice) => lattice.emit(event).await,
            None => {
                if let Ok(mut queued) = self.queued.lock() {
                    if queued.len() == QUEUED_EVENTS {
                        queued.pop_front();
                    }
                    queued.push_back(event);
                }
            }
        }
    }

    /// Writes the status of `assignment`'s replica (nothing before the lattice is reached).
    pub(crate) async fn status(
        &self,
        assignment: &Assignment,
        phase: Phase,
        reason: Option<String>,
        message: Option<String>,
    ) {
        self.status_with_exit(assignment, phase, reason, message, None)
            .await;
    }

    /// [`Self::status`], with a job run's exit code.
    pub(crate) async fn status_with_exit(
        &self,
        assignment: &Assignment,
        phase: Phase,
        reason: Option<String>,
        message: Option<String>,
        exit_code: Option<i32>,
    ) {
        let Some(lattice) = self.reachable() else {
            return;
        };
        let (restarts, last_restart) = self
            .restarts
            .lock()
            .ok()
            .and_then(|restarts| restarts.get(&assignment.replica).cloned())
            .map_or((0, None), |(count, why)| (count, Some(why)));
        let status = ReplicaStatus {
            restarts,
            last_restart,
            replica: assignment.replica.clone(),
            app: assignment.app.clone(),
            namespace: assignment.namespace.clone(),
            revision: assignment.revision,
            host: assignment.host.clone(),
            phase,
            reason,
            message,
            observed_generation: assignment.generation,
            since: now_millis(),
            exit_code,
        };
        if let Err(error) = lattice
            .put(
                Bucket::Status,
                &replica_status_key(&assignment.host, &assignment.replica),
                &status,
            )
            .await
        {
            tracing::warn!(error = %shoal_lattice::Chain(&error), replica = %assignment.replica, "cannot report replica status");
        }
    }

    /// How many times `replica` was restarted in place.
    pub(crate) fn restarts(&self, replica: &str) -> u32 {
        self.restarts
            .lock()
            .ok()
            .and_then(|restarts| restarts.get(replica).map(|(count, _)| *count))
            .unwrap_or(0)
    }

    /// Replica `replica` was restarted in place for the `count`th time, because of `why`.
    pub(crate) fn restarted(&self, replica: &str, count: u32, why: &str) {
        if let Ok(mut restarts) = self.restarts.lock() {
            restarts.insert(replica.to_owned(), (count, why.to_owned()));
        }
    }

    /// Removes the status of replica `replica` of host `host`.
    pub(crate) async fn forget(&self, host: &str, replica: &str) {
        if let Ok(mut restarts) = self.restarts.lock() {
            restarts.remove(replica);
        }
        if let Some(lattice) = self.reachable() {
            let _ = lattice
                .delete(Bucket::Status, &replica_status_key(host, replica))
                .await;
        }
    }
}
