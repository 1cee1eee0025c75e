//! Fleet upgrades as pure logic: given the upgrade, the live hosts and the orders standing,
//! which hosts advance, fail or get their order, and what the upgrade says next. The
//! controller writes what [`step`] returns; everything here is tested without a lattice.
//!
//! One wave at a time: a wave goes out only when no host of the last one is still on its
//! way, so at most the wave size of hosts restart at once. A host is done when its record
//! reports the new binary's digest; it failed when it reports that it could not (it went
//! back to the old binary on its own) or stays silent past the deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_lattice::Event;
use shoal_lattice::fleet::{
    BinaryTarget, FleetUpgrade, HostPhase, HostProgress, MAX_PROGRESS_MESSAGE, MAX_UPGRADE_HOSTS,
    ReportPhase, UpgradeOrder, UpgradeState,
};
use shoal_lattice::quantity::Span;
use shoal_lattice::records::HostRecord;
use shoal_lattice::trust::TrustedKey;
use shoal_lattice::validate::truncate;

/// Time past a host's own rollback deadline after which the control plane counts it
/// failed: the host first pulls the binary, then restarts, then has the deadline to rejoin.
pub const PULL_ALLOWANCE: Duration = Duration::from_secs(120);

/// What one step decided.
#[derive(Debug, Default, PartialEq)]
pub struct Step {
    /// The upgrade as it stands now, when it changed.
    pub upgrade: Option<FleetUpgrade>,
    /// Orders to write, by host.
    pub orders: BTreeMap<String, UpgradeOrder>,
    /// Hosts whose order goes.
    pub withdrawn: Vec<String>,
    /// What to tell.
    pub events: Vec<Event>,
}

/// One step of `upgrade` (none: every order is stale) over the live hosts (with the labels
/// placement trusts), the orders standing, and the lattice's trusted keys.
pub fn step(
    source: &str,
    upgrade: Option<&FleetUpgrade>,
    hosts: &BTreeMap<String, HostRecord>,
    orders: &BTreeMap<String, UpgradeOrder>,
    trusted: &[TrustedKey],
    now: u64,
) -> Step {
    let mut out = Step::default();
    let Some(current) = upgrade else {
        out.withdrawn = orders.keys().cloned().collect();
        return out;
    };
    let mut next = current.clone();
    if next.state != UpgradeState::Complete {
        advance(source, &mut next, hosts, now, &mut out.events);
    }
    // Orders stand for the hosts on their way, and for no one else.
    for (host, progress) in &next.hosts {
        let Some(record) = hosts.get(host) else {
            continue;
        };
        let Some(target) = target_of(&next, record) else {
            continue;
        };
        if progress.phase != HostPhase::Upgrading {
            continue;
        }
        let order = UpgradeOrder {
            upgrade: next.id.clone(),
            target: target.clone(),
            trusted: trusted.to_vec(),
            timeout: next.timeout,
        };
        if orders.get(host) != Some(&order) {
            out.orders.insert(host.clone(), order);
        }
    }
    out.withdrawn = orders
        .keys()
        .filter(|host| {
            next.hosts
                .get(*host)
                .is_none_or(|progress| progress.phase != HostPhase::Upgrading)
        })
        .cloned()
        .collect();
    if next != *current {
        out.upgrade = Some(next);
    }
    out
}

/// The binary `upgrade` has for `host`'s architecture.
fn target_of<'a>(upgrade: &'a FleetUpgrade, host: &HostRecord) -> Option<&'a BinaryTarget> {
    host.labels
        .get("arch")
        .and_then(|arch| upgrade.target(arch))
}

/// Whether `host` reports running `upgrade`'s binary for it (one that has not read its own
/// binary yet does not: its order makes it read it, then it reports).
fn runs_target(upgrade: &FleetUpgrade, host: &HostRecord) -> bool {
    target_of(upgrade, host)
        .is_some_and(|target| host.binary.as_deref() == Some(target.binary.as_str()))
}

/// Moves an upgrade on: settles the wave under way; when running, also takes in new hosts,
/// and sends the next wave or completes (or pauses at a failure).
fn advance(
    source: &str,
    upgrade: &mut FleetUpgrade,
    hosts: &BTreeMap<String, HostRecord>,
    now: u64,
    events: &mut Vec<Event>,
) {
    let running = upgrade.state == UpgradeState::Running;
    if running {
        select(upgrade, hosts, now);
    }
    settle(source, upgrade, hosts, now, events);
    if running {
        next_wave(source, upgrade, hosts, now, events);
    }
}

/// Takes in the hosts that match (joined since, too) and have a binary for their
/// architecture; a waiting host that runs the binary already is upgraded, and an upgraded
/// one that runs another again (restarted from the one its service starts, say) waits.
fn select(upgrade: &mut FleetUpgrade, hosts: &BTreeMap<String, HostRecord>, now: u64) {
    for (id, host) in hosts {
        let matches = upgrade
            .selector
            .iter()
            .all(|(key, value)| host.labels.get(key) == Some(value));
        if !matches || target_of(upgrade, host).is_none() || upgrade.hosts.contains_key(id) {
            continue;
        }
        if upgrade.hosts.len() >= MAX_UPGRADE_HOSTS {
            break;
        }
        let phase = if runs_target(upgrade, host) {
            HostPhase::Upgraded
        } else {
            HostPhase::Waiting
        };
        upgrade.hosts.insert(
            id.clone(),
            HostProgress {
                phase,
                wave: 0,
                since: now,
                message: None,
            },
        );
    }
    // Waiting and upgraded follow what each host reports running now.
    let moved: Vec<(String, HostPhase)> = upgrade
        .hosts
        .iter()
        .filter_map(|(id, progress)| {
            let runs = runs_target(upgrade, hosts.get(id)?);
            match progress.phase {
                HostPhase::Upgraded if !runs => Some((id.clone(), HostPhase::Waiting)),
                HostPhase::Waiting if runs => Some((id.clone(), HostPhase::Upgraded)),
                _ => None,
            }
        })
        .collect();
    for (id, phase) in moved {
        if let Some(progress) = upgrade.hosts.get_mut(&id) {
            progress.phase = phase;
            progress.since = now;
        }
    }
}

/// Settles the hosts on their way: upgraded when they report the binary, failed when they
/// report that they went back or stay silent past the deadline.
fn settle(
    source: &str,
    upgrade: &mut FleetUpgrade,
    hosts: &BTreeMap<String, HostRecord>,
    now: u64,
    events: &mut Vec<Event>,
) {
    let deadline = deadline(upgrade.timeout);
    let mut settled = Vec::new();
    for (id, progress) in &upgrade.hosts {
        if progress.phase != HostPhase::Upgrading {
            continue;
        }
        let record = hosts.get(id);
        let failure = record
            .and_then(|record| record.upgrade.as_ref())
            .filter(|report| report.upgrade == upgrade.id && report.phase == ReportPhase::Failed);
        if let Some(record) = record.filter(|record| runs_target(upgrade, record)) {
            events.push(Event::host(
                source,
                id,
                "HostUpgraded",
                format!("host {id} runs version {}", record.version),
            ));
            settled.push((id.clone(), HostPhase::Upgraded, None));
        } else if let Some(report) = failure {
            let message = report.message.as_deref().map_or_else(
                || "the host could not upgrade".to_owned(),
                |message| truncate(message, MAX_PROGRESS_MESSAGE),
            );
            settled.push((id.clone(), HostPhase::Failed, Some(message)));
        } else if now.saturating_sub(progress.since) > deadline {
            let message = format!(
                "did not come back on the new binary within {} s",
                deadline / 1000
            );
            settled.push((id.clone(), HostPhase::Failed, Some(message)));
        }
    }
    for (id, phase, message) in settled {
        if let Some(message) = &message {
            events.push(Event::host(
                source,
                &id,
                "HostUpgradeFailed",
                format!("host {id}: {message}"),
            ));
        }
        if let Some(progress) = upgrade.hosts.get_mut(&id) {
            progress.phase = phase;
            progress.since = now;
            progress.message = message;
        }
    }
}

/// Pauses at a failure when asked; else sends the next wave once none is on its way, or
/// completes when none is left (skipping the hosts that cannot take one).
fn next_wave(
    source: &str,
    upgrade: &mut FleetUpgrade,
    hosts: &BTreeMap<String, HostRecord>,
    now: u64,
    events: &mut Vec<Event>,
) {
    let failed = upgrade
        .hosts
        .values()
        .any(|progress| progress.phase == HostPhase::Failed);
    if failed && upgrade.pause_on_failure {
        upgrade.state = UpgradeState::Paused;
        events.push(Event::lattice(
            source,
            "UpgradePaused",
            format!(
                "upgrade to {} paused: a host failed (shoal fleet status)",
                upgrade.reference
            ),
        ));
        return;
    }
    let on_the_way = upgrade
        .hosts
        .values()
        .any(|progress| progress.phase == HostPhase::Upgrading);
    if on_the_way {
        return;
    }
    let size = upgrade.wave.of(upgrade.hosts.len());
    let wave: Vec<String> = upgrade
        .hosts
        .iter()
        .filter(|(host, progress)| {
            progress.phase == HostPhase::Waiting
                && hosts.get(*host).is_some_and(|record| !record.draining)
        })
        .map(|(host, _)| host.clone())
        .take(size)
        .collect();
    if wave.is_empty() {
        // Whoever still waits cannot take a wave now (lost, draining): left out, so the
        // upgrade ends (a later upgrade takes them).
        for progress in upgrade.hosts.values_mut() {
            if progress.phase == HostPhase::Waiting {
                progress.phase = HostPhase::Skipped;
                progress.since = now;
                progress.message = Some("not live, or draining, when its wave was due".to_owned());
            }
        }
        upgrade.state = UpgradeState::Complete;
        let count = |phase| {
            upgrade
                .hosts
                .values()
                .filter(|progress| progress.phase == phase)
                .count()
        };
        events.push(Event::lattice(
            source,
            "UpgradeComplete",
            format!(
                "upgrade to {} complete: {} hosts upgraded, {} failed, {} skipped",
                upgrade.reference,
                count(HostPhase::Upgraded),
                count(HostPhase::Failed),
                count(HostPhase::Skipped)
            ),
        ));
        return;
    }
    upgrade.waves += 1;
    for host in &wave {
        if let Some(progress) = upgrade.hosts.get_mut(host) {
            progress.phase = HostPhase::Upgrading;
            progress.wave = upgrade.waves;
            progress.since = now;
        }
    }
    events.push(Event::lattice(
        source,
        "UpgradeWave",
        format!(
            "upgrade to {}: wave {} ({})",
            upgrade.reference,
            upgrade.waves,
            wave.join(", ")
        ),
    ));
}

/// How long the control plane waits for a host of a wave, in ms.
fn deadline(timeout: Span) -> u64 {
    let total = timeout.0 + PULL_ALLOWANCE;
    u64::try_from(total.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) fn example(id: &str) -> FleetUpgrade {
    use shoal_lattice::fleet::{BinaryTarget, WaveSize};
    const NEW: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    FleetUpgrade {
        id: id.to_owned(),
        reference: "registry/shoal:2".to_owned(),
        targets: vec![BinaryTarget {
            arch: "x86_64".to_owned(),
            reference: format!("registry/shoal@{NEW}"),
            binary: NEW.to_owned(),
            size: 1,
            version: "new".to_owned(),
        }],
        selector: BTreeMap::new(),
        wave: WaveSize::Hosts(1),
        pause_on_failure: false,
        timeout: Span(Duration::from_secs(60)),
        by: "admin".to_owned(),
        started_at: 0,
        state: UpgradeState::Running,
        hosts: BTreeMap::new(),
        waves: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_lattice::fleet::{UpgradeReport, WaveSize};

    const OLD: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    const NEW: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn host(id: &str, binary: &str) -> HostRecord {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "labels": {"arch": "x86_64", "zone": "a"},
            "capacity": {"memory": "1Gi", "cpu": "1000m", "maxReplicas": 10},
            "version": "old",
            "startedAt": 0,
            "heartbeatAt": 0,
            "binary": binary,
        }))
        .unwrap()
    }

    fn upgrade(wave: WaveSize, pause_on_failure: bool) -> FleetUpgrade {
        FleetUpgrade {
            wave,
            pause_on_failure,
            ..example("u1")
        }
    }

    fn fleet(ids: &[&str]) -> BTreeMap<String, HostRecord> {
        ids.iter()
            .map(|id| (id.to_string(), host(id, OLD)))
            .collect()
    }

    fn phases(upgrade: &FleetUpgrade) -> Vec<(&str, HostPhase)> {
        upgrade
            .hosts
            .iter()
            .map(|(host, progress)| (host.as_str(), progress.phase))
            .collect()
    }

    /// Runs steps as the controller does (orders written, the upgrade saved), with the
    /// hosts changed by `hosts` between steps.
    fn run(
        upgrade: &mut FleetUpgrade,
        hosts: &BTreeMap<String, HostRecord>,
        orders: &mut BTreeMap<String, UpgradeOrder>,
        now: u64,
    ) -> Step {
        let step = step("test", Some(upgrade), hosts, orders, &[], now);
        for host in &step.withdrawn {
            orders.remove(host);
        }
        orders.extend(step.orders.clone());
        if let Some(next) = &step.upgrade {
            *upgrade = next.clone();
        }
        step
    }

    #[test]
    fn waves_go_one_at_a_time_and_never_more_hosts_than_the_wave_size_at_once() {
        let mut hosts = fleet(&["h1", "h2", "h3"]);
        let mut upgrade = upgrade(WaveSize::Hosts(2), false);
        let mut orders = BTreeMap::new();
        run(&mut upgrade, &hosts, &mut orders, 0);
        assert_eq!(
            phases(&upgrade),
            [
                ("h1", HostPhase::Upgrading),
                ("h2", HostPhase::Upgrading),
                ("h3", HostPhase::Waiting)
            ]
        );
        assert_eq!(orders.keys().collect::<Vec<_>>(), ["h1", "h2"]);
        // h1 is back on the new binary; h2 is not yet: no new wave.
        hosts.get_mut("h1").unwrap().binary = Some(NEW.to_owned());
        run(&mut upgrade, &hosts, &mut orders, 10);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Upgraded);
        assert_eq!(upgrade.hosts["h3"].phase, HostPhase::Waiting);
        assert_eq!(orders.keys().collect::<Vec<_>>(), ["h2"]);
        hosts.get_mut("h2").unwrap().binary = Some(NEW.to_owned());
        run(&mut upgrade, &hosts, &mut orders, 20);
        assert_eq!(upgrade.hosts["h3"].phase, HostPhase::Upgrading);
        assert_eq!(upgrade.waves, 2);
        assert_eq!(orders.keys().collect::<Vec<_>>(), ["h3"]);
        hosts.get_mut("h3").unwrap().binary = Some(NEW.to_owned());
        let last = run(&mut upgrade, &hosts, &mut orders, 30);
        assert_eq!(upgrade.state, UpgradeState::Complete);
        assert!(orders.is_empty());
        assert!(
            last.events
                .iter()
                .any(|event| event.reason == "UpgradeComplete"),
            "{:?}",
            last.events
        );
    }

    #[test]
    fn a_host_that_rolled_back_fails_and_pauses_the_upgrade_when_asked() {
        let mut hosts = fleet(&["h1", "h2", "h3"]);
        let mut upgrade = upgrade(WaveSize::Hosts(2), true);
        let mut orders = BTreeMap::new();
        run(&mut upgrade, &hosts, &mut orders, 0);
        let report = |upgrade: &str| UpgradeReport {
            upgrade: upgrade.to_owned(),
            binary: NEW.to_owned(),
            phase: ReportPhase::Failed,
            message: Some("the new binary exited".to_owned()),
        };
        // A failure reported for another upgrade does not count.
        hosts.get_mut("h1").unwrap().upgrade = Some(report("u0"));
        run(&mut upgrade, &hosts, &mut orders, 5);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Upgrading);
        hosts.get_mut("h1").unwrap().upgrade = Some(report("u1"));
        let step = run(&mut upgrade, &hosts, &mut orders, 10);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Failed);
        assert_eq!(
            upgrade.hosts["h1"].message.as_deref(),
            Some("the new binary exited")
        );
        assert_eq!(upgrade.state, UpgradeState::Paused);
        assert!(
            step.events
                .iter()
                .any(|event| event.reason == "UpgradePaused")
        );
        // h2 was on its way: its order stands; h3 gets none, now or later.
        assert_eq!(orders.keys().collect::<Vec<_>>(), ["h2"]);
        // h2 settles too, paused as the upgrade is; h3 stays where it was.
        hosts.get_mut("h2").unwrap().upgrade = Some(report("u1"));
        run(&mut upgrade, &hosts, &mut orders, 20);
        assert_eq!(upgrade.hosts["h2"].phase, HostPhase::Failed);
        assert_eq!(upgrade.hosts["h3"].phase, HostPhase::Waiting);
        assert!(orders.is_empty());
    }

    #[test]
    fn a_silent_host_fails_after_its_deadline_and_the_next_wave_goes_without_a_pause() {
        let hosts = fleet(&["h1", "h2"]);
        let mut upgrade = upgrade(WaveSize::Hosts(1), false);
        let mut orders = BTreeMap::new();
        run(&mut upgrade, &hosts, &mut orders, 0);
        let deadline = deadline(upgrade.timeout);
        run(&mut upgrade, &hosts, &mut orders, deadline);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Upgrading);
        run(&mut upgrade, &hosts, &mut orders, deadline + 1);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Failed);
        assert_eq!(upgrade.hosts["h2"].phase, HostPhase::Upgrading);
        assert_eq!(orders.keys().collect::<Vec<_>>(), ["h2"]);
    }

    #[test]
    fn only_selected_hosts_of_a_known_architecture_take_part_and_those_already_there_are_done() {
        let mut hosts = fleet(&["h1", "h2", "h3", "h4"]);
        hosts
            .get_mut("h2")
            .unwrap()
            .labels
            .insert("zone".into(), "b".into());
        hosts
            .get_mut("h3")
            .unwrap()
            .labels
            .insert("arch".into(), "riscv64".into());
        hosts.get_mut("h4").unwrap().binary = Some(NEW.to_owned());
        let mut upgrade = upgrade(WaveSize::Percent(100), false);
        upgrade.selector.insert("zone".into(), "a".into());
        let mut orders = BTreeMap::new();
        run(&mut upgrade, &hosts, &mut orders, 0);
        assert_eq!(
            phases(&upgrade),
            [("h1", HostPhase::Upgrading), ("h4", HostPhase::Upgraded)]
        );
        assert_eq!(orders.keys().collect::<Vec<_>>(), ["h1"]);
    }

    #[test]
    fn hosts_that_cannot_take_a_wave_are_skipped_and_one_back_on_another_binary_waits_again() {
        let mut hosts = fleet(&["h1", "h2"]);
        hosts.get_mut("h2").unwrap().draining = true;
        let mut upgrade = upgrade(WaveSize::Hosts(1), false);
        let mut orders = BTreeMap::new();
        run(&mut upgrade, &hosts, &mut orders, 0);
        hosts.get_mut("h1").unwrap().binary = Some(NEW.to_owned());
        run(&mut upgrade, &hosts, &mut orders, 10);
        assert_eq!(upgrade.hosts["h2"].phase, HostPhase::Skipped);
        assert_eq!(upgrade.state, UpgradeState::Complete);

        // While running, a host restarted on its old binary is upgraded again.
        let mut upgrade = self::upgrade(WaveSize::Hosts(1), false);
        let mut hosts = fleet(&["h1", "h2"]);
        hosts.get_mut("h1").unwrap().binary = Some(NEW.to_owned());
        run(&mut upgrade, &hosts, &mut orders, 0);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Upgraded);
        hosts.get_mut("h1").unwrap().binary = Some(OLD.to_owned());
        run(&mut upgrade, &hosts, &mut orders, 5);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Waiting);
        // So is one restarted plainly, which has not read its binary yet (its order makes
        // it read and report it).
        hosts.get_mut("h1").unwrap().binary = Some(NEW.to_owned());
        run(&mut upgrade, &hosts, &mut orders, 6);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Upgraded);
        hosts.get_mut("h1").unwrap().binary = None;
        run(&mut upgrade, &hosts, &mut orders, 7);
        assert_eq!(upgrade.hosts["h1"].phase, HostPhase::Waiting);
    }

    #[test]
    fn without_an_upgrade_every_order_is_withdrawn() {
        let hosts = fleet(&["h1"]);
        let mut upgrade = upgrade(WaveSize::Hosts(1), false);
        let mut orders = BTreeMap::new();
        run(&mut upgrade, &hosts, &mut orders, 0);
        assert_eq!(orders.len(), 1);
        let step = step("test", None, &hosts, &orders, &[], 1);
        assert_eq!(step.withdrawn, ["h1"]);
    }
}
