//! The control plane's health: after its passes, the leader writes who leads, when it last
//! acted and the records it cannot read (`controlplane` in the status bucket), at most once
//! a second. `shoal get hosts`, `shoal status` and the dashboard show it and warn when it
//! grows old, so a control plane that stopped acting never looks healthy.

use super::*;
use shoal_lattice::records::ControlPlaneStatus;

/// How often the leader writes its health.
const EVERY: Duration = Duration::from_secs(1);

/// Writes the health with this pass's deferred writes, when a second has passed since the
/// last write. Only the leader passes, so only the leader writes.
pub(super) fn report(lattice: &Lattice, options: &Options, state: &mut State, now: Instant) {
    if state
        .health_written
        .is_some_and(|written| now.duration_since(written) < EVERY)
    {
        return;
    }
    state.health_written = Some(now);
    let status = ControlPlaneStatus {
        leader: options.id.clone(),
        pass_at: now_millis(),
        lease_ms: u64::try_from(options.lease.as_millis()).unwrap_or(u64::MAX),
        unreadable: unreadable(state),
    };
    state.deferred.put(
        lattice,
        Bucket::Status,
        shoal_lattice::names::CONTROL_PLANE.to_owned(),
        status,
    );
}

/// The records the mirrors refused, as `<what>/<key>: <why>`, the first
/// [`ControlPlaneStatus::MAX_UNREADABLE`] of them.
fn unreadable(state: &State) -> Vec<String> {
    // Desired state and policies first: hosts may write records of their own (their
    // record, their replicas' statuses), and a host writing many unreadable ones must not
    // push the lattice's own out of the list.
    let refused = [
        ("trust", state.trust.invalid()),
        ("status", state.egress.invalid()),
        ("apps", state.apps.invalid()),
        ("assignments", state.assignments.invalid()),
        ("secrets", state.secrets.invalid()),
        ("jobs", state.jobs.invalid()),
        ("cronjobs", state.cron_jobs.invalid()),
        ("status", state.controls.invalid()),
        ("hosts", state.hosts.invalid()),
        ("status", state.replicas.invalid()),
    ];
    refused
        .into_iter()
        .flat_map(|(bucket, refused)| {
            refused
                .into_iter()
                .map(move |refused| format!("{bucket}/{}: {}", refused.key, refused.reason))
        })
        .map(|entry| shoal_lattice::validate::truncate(&entry, 1024))
        .take(ControlPlaneStatus::MAX_UNREADABLE)
        .collect()
}
