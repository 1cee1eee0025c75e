//! The lattice's identity as this host knows it: the replicas it serves were assigned under
//! one lattice; a lattice that comes back with another identity (rebuilt, or another one at
//! the same address) does not stop them, and the host says so until an operator decides.

use std::time::Duration;

use shoal_lattice::Lattice;

use super::*;

/// How often a host serving another lattice's state says so in its log.
pub(super) const MISMATCH_REMINDER: Duration = Duration::from_secs(60);

/// What the host knows about the lattice its replicas came from.
#[derive(Default)]
pub(super) struct Provenance {
    /// The identity the running replicas were assigned under.
    pub(super) expected: Option<String>,
    /// Set while the joined lattice's identity is not `expected`: what it has instead.
    pub(super) mismatch: Option<Option<String>>,
    /// When the mismatch was last said in the log.
    pub(super) reminded: Option<tokio::time::Instant>,
}

impl<F: Fetch> Agent<F> {
    /// Compares the joined lattice's identity with the one the running replicas came from;
    /// enters (and says) or keeps the mismatch when they differ. `false` when the identity
    /// could not be read: nothing should be stopped on that.
    pub(super) async fn check_lattice(
        &self,
        lattice: &Lattice,
        provenance: &mut Provenance,
        supervisor: &Supervisor<F>,
        reporter: &Reporter,
    ) -> bool {
        let found = match lattice.identity().await {
            Ok(found) => found.map(|identity| identity.id),
            Err(error) => {
                tracing::debug!(error = %shoal_lattice::Chain(&error), "cannot read the lattice's identity");
                return false;
            }
        };
        let matches = match (&provenance.expected, &found) {
            (None, _) => true,
            (Some(expected), Some(found)) => expected == found,
            (Some(_), None) => false,
        };
        if matches || self.options.adopt_lattice {
            if !matches {
                tracing::warn!(was = ?provenance.expected, now = ?found, "adopting the lattice as it is (--adopt-lattice)");
            }
            provenance.expected = found.or(provenance.expected.take());
            provenance.mismatch = None;
            return true;
        }
        let fresh = provenance.mismatch.as_ref() != Some(&found);
        provenance.mismatch = Some(found);
        if fresh {
            let message = self.mismatch_message(provenance, supervisor);
            tracing::warn!("{message}");
            provenance.reminded = Some(tokio::time::Instant::now());
            self.tell(reporter, "LatticeMismatch", message).await;
        }
        true
    }

    pub(super) fn mismatch_message(
        &self,
        provenance: &Provenance,
        supervisor: &Supervisor<F>,
    ) -> String {
        let apps: std::collections::BTreeSet<String> = supervisor
            .replicas
            .values()
            .map(|replica| {
                format!(
                    "{}/{}",
                    replica.assignment.namespace, replica.assignment.app
                )
            })
            .collect();
        let now = match provenance.mismatch.as_ref() {
            Some(Some(found)) => format!("state {found}"),
            _ => "no state".to_owned(),
        };
        format!(
            "host {} keeps serving {} replicas ({}) assigned by lattice state {}, but the lattice now has {now}: it was wiped or replaced. Apply the apps again (their new replicas replace these), or restart the host with --adopt-lattice to drop them",
            self.options.id,
            supervisor.replicas.len(),
            apps.into_iter().collect::<Vec<_>>().join(", "),
            provenance.expected.as_deref().unwrap_or("unknown"),
        )
    }

    /// Says again, now and then, that the host serves another lattice's state.
    pub(super) fn remind(&self, provenance: &mut Provenance, supervisor: &Supervisor<F>) {
        if provenance.mismatch.is_none() {
            return;
        }
        let due = provenance
            .reminded
            .is_none_or(|at| at.elapsed() >= MISMATCH_REMINDER);
        if due {
            tracing::warn!("{}", self.mismatch_message(provenance, supervisor));
            provenance.reminded = Some(tokio::time::Instant::now());
        }
    }
}
