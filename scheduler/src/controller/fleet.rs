//! The leader's side of fleet upgrades: each pass, one [`crate::fleet::step`] over the
//! live hosts, its upgrade record written compare-and-set (an admin starting or cancelling
//! one meanwhile wins), then the hosts' orders and the events.

use shoal_lattice::fleet::{FleetUpgrade, UpgradeOrder};
use shoal_lattice::names::{FLEET_UPGRADE, upgrade_order_key};
use shoal_lattice::records::now_millis;
use shoal_lattice::trust::LATTICE_KEY;

use super::*;

/// Moves the fleet's upgrade on by one step over the live `hosts` (labels as placement
/// trusts them).
pub(super) async fn pass(
    lattice: &Lattice,
    source: &str,
    state: &State,
    hosts: &BTreeMap<String, HostRecord>,
) {
    let upgrade = state.fleet.get(FLEET_UPGRADE);
    let orders: BTreeMap<String, UpgradeOrder> = state
        .upgrade_orders
        .snapshot()
        .into_iter()
        .filter_map(|order| {
            let host = order.key.strip_prefix("upgrades.")?.to_owned();
            Some((host, order.value))
        })
        .collect();
    if upgrade.is_none() && orders.is_empty() {
        return;
    }
    let trusted = state
        .trust
        .get(LATTICE_KEY)
        .map(|policy| policy.value.keys)
        .unwrap_or_default();
    let step = crate::fleet::step(
        source,
        upgrade.as_ref().map(|record| &record.value),
        hosts,
        &orders,
        &trusted,
        now_millis(),
    );
    if let (Some(next), Some(current)) = (&step.upgrade, &upgrade)
        && !write(lattice, next, current.revision).await
    {
        // Changed meanwhile (a new upgrade, a cancel): the next pass steps that one.
        return;
    }
    for (host, order) in &step.orders {
        if let Err(error) = lattice
            .put(Bucket::Status, &upgrade_order_key(host), order)
            .await
        {
            tracing::warn!(%host, error = %shoal_lattice::Chain(&error), "cannot write a host's upgrade order");
        }
    }
    for host in &step.withdrawn {
        if let Err(error) = lattice
            .delete(Bucket::Status, &upgrade_order_key(host))
            .await
        {
            tracing::warn!(%host, error = %shoal_lattice::Chain(&error), "cannot withdraw a host's upgrade order");
        }
    }
    for event in step.events {
        lattice.emit(event).await;
    }
}

async fn write(lattice: &Lattice, upgrade: &FleetUpgrade, revision: u64) -> bool {
    match lattice
        .update(Bucket::Status, FLEET_UPGRADE, upgrade, revision)
        .await
    {
        Ok(_) => true,
        Err(Error::Conflict { .. }) => false,
        Err(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot write the fleet upgrade");
            false
        }
    }
}
