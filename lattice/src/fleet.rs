//! Over-the-air host upgrades on the wire: the upgrade an admin starts (`fleet.upgrade` in
//! the status bucket, one at a time), the order the leading scheduler gives each host of a
//! wave (`upgrades.<host>`, which only that host may read), and what a host reports of its
//! own binary in its record.
//!
//! A host binary is an OCI artifact per architecture (see `shoal fleet publish`), signed
//! like components; an upgrade pins each architecture's manifest and binary digests when it
//! starts, so what hosts run is what the admin resolved, whatever the tag says later.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::quantity::Span;
use crate::trust::TrustedKey;

/// Most architectures one upgrade carries.
pub const MAX_TARGETS: usize = 8;

/// Most hosts one upgrade tracks (more are left for the next upgrade).
pub const MAX_UPGRADE_HOSTS: usize = 10_000;

/// Most bytes of a failure message a host's progress keeps (see [`crate::validate::truncate`]).
pub const MAX_PROGRESS_MESSAGE: usize = 512;

/// The shortest time a new binary may be given to rejoin.
pub const MIN_UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many hosts of a wave upgrade at once: a count, or a share of the selected hosts
/// (rounded up, at least one). Written `3` or `10%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaveSize {
    /// This many hosts.
    Hosts(u32),
    /// This percentage of the selected hosts.
    Percent(u32),
}

impl WaveSize {
    /// The hosts in one wave, of `selected` hosts.
    pub fn of(self, selected: usize) -> usize {
        let size = match self {
            WaveSize::Hosts(count) => count as usize,
            WaveSize::Percent(percent) => (selected * percent as usize).div_ceil(100),
        };
        size.max(1)
    }
}

impl Default for WaveSize {
    fn default() -> Self {
        WaveSize::Hosts(1)
    }
}

impl fmt::Display for WaveSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSize::Hosts(count) => write!(f, "{count}"),
            WaveSize::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl FromStr for WaveSize {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let wrong = || format!("{value:?} is not a wave size: a host count (3) or a share (10%)");
        match value.trim().strip_suffix('%') {
            Some(percent) => match percent.trim().parse::<u32>() {
                Ok(percent @ 1..=100) => Ok(WaveSize::Percent(percent)),
                _ => Err(wrong()),
            },
            None => match value.trim().parse::<u32>() {
                Ok(count @ 1..) => Ok(WaveSize::Hosts(count)),
                _ => Err(wrong()),
            },
        }
    }
}

impl Serialize for WaveSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WaveSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The binary for one architecture, pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BinaryTarget {
    /// The architecture as hosts label themselves (`x86_64`, `aarch64`).
    pub arch: String,
    /// `registry/repository@sha256:…` of its manifest: what hosts pull and verify the
    /// signature of.
    pub reference: String,
    /// The binary's digest (`sha256:…`): what a host that runs it reports.
    pub binary: String,
    /// The binary's size in bytes.
    pub size: u64,
    /// The version the binary reports, from the artifact's config.
    pub version: String,
}

/// Where an upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpgradeState {
    /// Waves are going out.
    Running,
    /// A host of a wave failed and the upgrade was started with `--pause-on-failure`: no
    /// new wave until it is started again.
    Paused,
    /// Every selected host runs the new binary, or failed it.
    Complete,
}

/// Where one host of an upgrade stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum HostPhase {
    /// In a wave still to come.
    Waiting,
    /// Ordered to upgrade, not back yet.
    Upgrading,
    /// Runs the new binary.
    Upgraded,
    /// Did not come back on the new binary in time, or said it could not (and runs the old
    /// one again, when it rolled back).
    Failed,
    /// Left out: when the last wave was done it could not take one (lost, draining,
    /// cordoned).
    Skipped,
}

/// One host's progress in an upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostProgress {
    /// Where it stands.
    pub phase: HostPhase,
    /// Its wave (from 1); 0 while waiting.
    #[serde(default)]
    pub wave: u32,
    /// When it reached this phase (ms since the epoch).
    pub since: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An upgrade of the fleet's hosts, in the status bucket at [`crate::names::FLEET_UPGRADE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetUpgrade {
    /// Its id (a new one per start): orders of another id are stale.
    pub id: String,
    /// The reference the admin gave.
    pub reference: String,
    /// The binary per architecture.
    pub targets: Vec<BinaryTarget>,
    /// Only hosts with all these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// Hosts upgrading at once.
    pub wave: WaveSize,
    /// Stop at the first failed host.
    #[serde(default)]
    pub pause_on_failure: bool,
    /// How long a host has, from its order, to come back on the new binary.
    pub timeout: Span,
    /// Who started it.
    pub by: String,
    /// When (ms since the epoch).
    pub started_at: u64,
    /// Where it stands.
    pub state: UpgradeState,
    /// The selected hosts, by id.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostProgress>,
    /// The waves sent so far.
    #[serde(default)]
    pub waves: u32,
}

impl FleetUpgrade {
    /// The binary for hosts of `arch`.
    pub fn target(&self, arch: &str) -> Option<&BinaryTarget> {
        self.targets.iter().find(|target| target.arch == arch)
    }
}

/// What the leading scheduler orders one host to run, in the status bucket at
/// [`crate::names::upgrade_order_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeOrder {
    /// The upgrade's id.
    pub upgrade: String,
    /// The binary.
    pub target: BinaryTarget,
    /// The keys of the lattice's trust policy: the binary runs only with a signature of its
    /// manifest by one of them.
    pub trusted: Vec<TrustedKey>,
    /// How long the new binary has to rejoin healthy before the host goes back to the old
    /// one on its own.
    pub timeout: Span,
}

/// What a host reports of an upgrade it was ordered, in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeReport {
    /// The upgrade's id.
    pub upgrade: String,
    /// The binary it was ordered to run (`sha256:…`).
    pub binary: String,
    /// Where it stands.
    pub phase: ReportPhase,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A host's own account of an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ReportPhase {
    /// Pulling and verifying the binary.
    Preparing,
    /// Stopping to start the new binary.
    Restarting,
    /// It could not, or the new binary did not rejoin and the host went back to the old.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_sizes_read_as_counts_or_shares_and_round_up_to_at_least_one_host() {
        assert_eq!("3".parse::<WaveSize>(), Ok(WaveSize::Hosts(3)));
        assert_eq!("10%".parse::<WaveSize>(), Ok(WaveSize::Percent(10)));
        for wrong in ["0", "0%", "101%", "-1", "ten", "", "%"] {
            assert!(wrong.parse::<WaveSize>().is_err(), "{wrong}");
        }
        assert_eq!(WaveSize::Percent(10).of(3), 1);
        assert_eq!(WaveSize::Percent(50).of(3), 2);
        assert_eq!(WaveSize::Percent(100).of(0), 1);
        assert_eq!(WaveSize::Hosts(2).of(10), 2);
        let json = serde_json::to_string(&WaveSize::Percent(25)).unwrap();
        assert_eq!(json, "\"25%\"");
        assert_eq!(
            serde_json::from_str::<WaveSize>(&json).unwrap(),
            WaveSize::Percent(25)
        );
    }
}
