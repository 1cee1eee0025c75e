//! The verbs on the fleet's hosts as a whole: start an upgrade of their binary, see it, stop
//! it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{lattice_admin, lattice_read};
use crate::fleet::{BinaryTarget, FleetUpgrade, WaveSize};
use crate::quantity::Span;

lattice_read!(
    /// The fleet's host upgrade, if one was started.
    GetUpgrade,
    Option<FleetUpgrade>
);

/// Upgrade the hosts' binary, in waves (replaces an upgrade already under way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartUpgrade {
    /// The reference the admin gave.
    pub reference: String,
    /// The binary per architecture, pinned by the CLI.
    pub targets: Vec<BinaryTarget>,
    /// Only hosts with all these labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Hosts upgrading at once.
    pub wave: WaveSize,
    /// Stop at the first failed host.
    #[serde(default)]
    pub pause_on_failure: bool,
    /// How long a host has to come back on the new binary.
    pub timeout: Span,
}

// The fleet's hosts run what lattice-wide admins decide; the targets are validated as a
// whole where the upgrade is stored.
lattice_admin!(StartUpgrade, "upgrade", FleetUpgrade);

/// Stop the fleet's host upgrade: no more waves, and hosts not restarted yet stay as they
/// are (hosts already on the new binary keep it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelUpgrade {}

lattice_admin!(CancelUpgrade, "cancel", Option<FleetUpgrade>);
