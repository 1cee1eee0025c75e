//! The leader's side of fleet upgrades: each pass plans one [`crate::fleet::step`] over the
//! live hosts (the upgrade written compare-and-set first whenever the step changes it or
//! gives orders, so an admin starting or cancelling one meanwhile wins and no order of the
//! stale step is written; then the orders, withdrawals and events), and applies it.

use shoal_lattice::fleet::{FleetUpgrade, UpgradeOrder};
use shoal_lattice::names::{FLEET_UPGRADE, upgrade_order_key};
use shoal_lattice::records::now_millis;
use shoal_lattice::trust::LATTICE_KEY;

use super::plan::{Op, Plan};
use super::*;

/// What one step of the fleet's upgrade writes, over the live `hosts` (labels as placement
/// trusts them), at `now` (ms since the epoch).
pub(super) fn plan_fleet(
    source: &str,
    state: &State,
    hosts: &BTreeMap<String, HostRecord>,
    now: u64,
) -> Plan {
    let mut plan = Plan::default();
    let upgrade = state.fleet.get(FLEET_UPGRADE);
    let orders: BTreeMap<String, UpgradeOrder> = state
        .upgrade_orders
        .snapshot()
        .into_iter()
        .filter_map(|order| {
            let host = shoal_lattice::names::upgrade_order_host(&order.key)?.to_owned();
            Some((host, order.value))
        })
        .collect();
    if upgrade.is_none() && orders.is_empty() {
        return plan;
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
        now,
    );
    if let Some(current) = &upgrade {
        // Orders go out only while the upgrade is the one this step read: the write of
        // the upgrade (unchanged, when only orders change) is the guard.
        let next: FleetUpgrade = step.upgrade.unwrap_or_else(|| current.value.clone());
        let guarded = next != current.value || !step.orders.is_empty();
        // A record the mirrors would refuse would stall the upgrade on every pass.
        if let Err(invalid) = shoal_lattice::Validate::validate(&next) {
            tracing::error!(%invalid, "the fleet upgrade's next step is not valid; not written");
            return Plan::default();
        }
        if guarded {
            plan.push(Op::UpdateFleet {
                upgrade: Box::new(next),
                revision: current.revision,
            });
        }
    }
    for (host, order) in step.orders {
        plan.push(Op::PutUpgradeOrder(host, Box::new(order)));
    }
    for host in step.withdrawn {
        plan.push(Op::DeleteStatus(upgrade_order_key(&host)));
    }
    for event in step.events {
        plan.push(Op::Emit(event));
    }
    plan
}

/// Plans and applies one step.
pub(super) async fn pass(
    lattice: &Lattice,
    source: &str,
    state: &mut State,
    hosts: &BTreeMap<String, HostRecord>,
    now: Instant,
) {
    let plan = plan_fleet(source, state, hosts, now_millis());
    match plan::apply(lattice, state, plan, now).await.stopped {
        // Changed meanwhile (a new upgrade, a cancel): the next pass steps that one.
        None | Some(Error::Conflict { .. }) => {}
        Some(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot write the fleet upgrade's step")
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_lattice::fleet::HostPhase;

    use super::super::harness::Harness;
    use super::*;

    /// An admin's start of upgrade `id`, stored at `revision`.
    fn start(harness: &mut Harness, revision: u64, id: &str) {
        harness.fleet = Some(Versioned {
            key: FLEET_UPGRADE.to_owned(),
            revision,
            value: crate::fleet::example(id),
        });
    }

    fn lattice() -> Harness {
        let mut harness = Harness::new();
        for id in ["h1", "h2"] {
            harness.host(id);
            if let Some(host) = harness.hosts.get_mut(id) {
                host.labels.insert("arch".to_owned(), "x86_64".to_owned());
            }
        }
        harness
    }

    #[test]
    fn a_wave_goes_out_as_orders_once_the_upgrade_is_written_and_a_cancel_takes_them_back() {
        let mut harness = lattice();
        start(&mut harness, 7, "u1");
        let plan = harness.plan_fleet(0);
        assert_eq!(plan.reasons(), ["UpgradeWave"]);
        assert!(harness.apply(plan).stopped.is_none());
        assert_eq!(harness.orders.keys().collect::<Vec<_>>(), ["h1"]);
        let written = harness.fleet.as_ref().map(|record| &record.value);
        assert_eq!(
            written.map(|upgrade| upgrade.hosts["h1"].phase),
            Some(HostPhase::Upgrading)
        );
        // Cancelled: the order goes.
        harness.fleet = None;
        let plan = harness.plan_fleet(1);
        harness.apply(plan);
        assert!(harness.orders.is_empty());
    }

    #[test]
    fn an_upgrade_started_again_meanwhile_wins_and_the_stale_step_writes_no_order() {
        let mut harness = lattice();
        start(&mut harness, 7, "u1");
        let plan = harness.plan_fleet(0);
        // An admin starts another upgrade before the step is written.
        start(&mut harness, 8, "u2");
        let applied = harness.apply(plan);
        assert!(matches!(applied.stopped, Some(Error::Conflict { .. })));
        assert!(harness.orders.is_empty());
        assert!(harness.events.is_empty());
        let plan = harness.plan_fleet(1);
        harness.apply(plan);
        assert_eq!(harness.orders["h1"].upgrade, "u2");
    }
}
