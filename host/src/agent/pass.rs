//! One convergence pass: what the lattice assigns this host (or, before it joined, what it
//! saved) becomes running replicas and a routing table; records this host cannot read are
//! reported once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use shoal_lattice::Event;
use shoal_lattice::records::{Assignment, RouteRecord};

use super::*;

/// What the routing table is built from, in brief: the routing records' highest KV
/// revision and a fingerprint of the ready local replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RoutingInputs {
    pub(super) records: u64,
    pub(super) ready: u64,
}

impl RoutingInputs {
    pub(super) fn of(records: u64, replicas: &HashMap<String, supervisor::Replica>) -> Self {
        use std::hash::{Hash as _, Hasher as _};
        // Order-free: a sum of each ready replica's hash (its id and the very component
        // that serves it, so a restart counts as a change).
        let ready = replicas
            .iter()
            .filter_map(|(id, replica)| match &replica.state {
                supervisor::ReplicaState::Serving {
                    component,
                    ready: true,
                    ..
                } => {
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    id.hash(&mut hasher);
                    Arc::as_ptr(component).cast::<()>().hash(&mut hasher);
                    Some(hasher.finish())
                }
                _ => None,
            })
            .fold(0u64, u64::wrapping_add);
        Self { records, ready }
    }
}

impl<F: Fetch> Agent<F> {
    /// One convergence pass; returns the state to save, when the host follows the lattice.
    pub(super) async fn pass(
        &self,
        joined: Option<&Joined>,
        saved: &mut Option<HostState>,
        provenance: &mut Provenance,
        supervisor: &mut Supervisor<F>,
        reporter: &Reporter,
        reported: &mut HashSet<(String, u64)>,
    ) -> Option<HostState> {
        let Some(link) = joined else {
            // Not joined yet: the saved replicas run, with the saved routes.
            self.serve_saved(saved.as_ref(), supervisor);
            return None;
        };
        self.report_invalid(link, reporter, reported).await;
        let desired: Vec<Assignment> = link
            .assignments
            .snapshot()
            .into_iter()
            .map(|record| record.value)
            .collect();
        if provenance.mismatch.is_some() {
            if desired.is_empty() {
                self.serve_saved(saved.as_ref(), supervisor);
                return None;
            }
            // Desired state written anew for this host: the new lattice is the one to follow.
            let found = provenance.mismatch.take().flatten();
            tracing::warn!(lattice_id = ?found, "the lattice assigns replicas here again: following it, the saved replicas it does not assign stop");
            self.tell(
                reporter,
                "LatticeAdopted",
                format!(
                    "host {} follows the lattice's new state: it assigned replicas here again",
                    self.options.id
                ),
            )
            .await;
            provenance.expected = found;
        }
        // An assignment this version cannot read keeps its replica running as it was.
        let keep: HashSet<String> = link
            .assignments
            .invalid()
            .into_iter()
            .filter_map(|refused| {
                refused
                    .key
                    .split_once('.')
                    .map(|(_, replica)| replica.to_owned())
            })
            .collect();
        let wanted: HashSet<&str> = desired.iter().map(|a| a.replica.as_str()).collect();
        let stopping = supervisor
            .replicas
            .keys()
            .any(|replica| !wanted.contains(replica.as_str()) && !keep.contains(replica));
        // Before stopping what runs, make sure the lattice is still the one that assigned it
        // (a wiped NATS server has no assignments at all); and learn its identity once.
        if stopping || provenance.expected.is_none() {
            let verified = self
                .check_lattice(&link.lattice, provenance, supervisor, reporter)
                .await;
            if stopping && (!verified || provenance.mismatch.is_some()) {
                supervisor.count();
                return None;
            }
        }
        supervisor.converge(&desired, &keep).await;
        let records = link.routing.last_revision();
        let routes: Vec<RouteRecord> = link
            .routing
            .snapshot()
            .into_iter()
            .map(|record| record.value)
            .collect();
        self.route(Some(records), &routes, &supervisor.replicas);
        supervisor.count();
        let served: HashSet<(&str, &str)> = supervisor
            .replicas
            .values()
            .map(|replica| {
                (
                    replica.assignment.namespace.as_str(),
                    replica.assignment.app.as_str(),
                )
            })
            .collect();
        // A job's run is not saved: a host restarted offline serves, it does not run a
        // job again that the lattice may have finished or placed elsewhere.
        let mut assignments: Vec<Assignment> = supervisor
            .replicas
            .values()
            .filter(|replica| replica.assignment.job.is_none())
            .map(|replica| replica.assignment.clone())
            .collect();
        assignments.sort_by(|a, b| a.replica.cmp(&b.replica));
        // `saved_at` is stamped when written, so states compare by what they hold.
        let state = HostState {
            host: self.options.id.clone(),
            lattice: self.options.lattice.clone(),
            lattice_id: provenance.expected.clone(),
            saved_at: 0,
            assignments,
            routes: routes
                .into_iter()
                .filter(|route| served.contains(&(route.namespace.as_str(), route.app.as_str())))
                .collect(),
        };
        *saved = Some(state.clone());
        Some(state)
    }

    /// Builds the routing table, unless it was built from the same inputs (`records`, the
    /// routing mirror's revision; `None` for routes that did not come from it). The routes
    /// are copied only when it is built.
    pub(super) fn route(
        &self,
        records: Option<u64>,
        routes: &[RouteRecord],
        replicas: &HashMap<String, supervisor::Replica>,
    ) {
        let inputs = records.map(|records| RoutingInputs::of(records, replicas));
        if let Ok(mut built) = self.routing_built.lock() {
            if inputs.is_some() && *built == inputs {
                return;
            }
            *built = inputs;
        }
        self.metrics
            .routing_rebuilds
            .fetch_add(1, Ordering::Relaxed);
        self.router.set(routing_table(routes.to_vec(), replicas));
    }

    /// Tells the lattice's events something about this host.
    pub(super) async fn tell(&self, reporter: &Reporter, reason: &str, message: String) {
        let source = format!("host {}", self.options.id);
        reporter
            .emit(Event::host(&source, &self.options.id, reason, message))
            .await;
    }

    /// Tells of each record this host could not read, once: an assignment is not run (a
    /// replica it had keeps running), a routing record keeps its last readable routes.
    pub(super) async fn report_invalid(
        &self,
        link: &Joined,
        reporter: &Reporter,
        reported: &mut HashSet<(String, u64)>,
    ) {
        let refused = link
            .assignments
            .invalid()
            .into_iter()
            .map(|refused| ("assignment", refused))
            .chain(
                link.routing
                    .invalid()
                    .into_iter()
                    .map(|refused| ("routing record", refused)),
            );
        for (kind, refused) in refused {
            if !reported.insert((refused.key.clone(), refused.revision)) {
                continue;
            }
            tracing::warn!(key = %refused.key, reason = %refused.reason, "skipping a record this host cannot use");
            self.tell(
                reporter,
                "InvalidRecord",
                format!(
                    "{kind} {} is skipped (what runs from it goes on): {}",
                    refused.key, refused.reason
                ),
            )
            .await;
        }
    }
}
