//! The verbs on the fleet's hosts as a whole: start an upgrade of their binary, see it, stop
//! it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Rules, Verb, lattice_read};
use crate::Error;
use crate::auth::Role;
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

impl Rules for StartUpgrade {
    fn verb(&self) -> &'static str {
        "upgrade"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Admin, Vec::new())
    }

    fn lattice_wide(&self) -> bool {
        true
    }

    fn check_names(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl Verb for StartUpgrade {
    type Answer = FleetUpgrade;
}

/// Stop the fleet's host upgrade: no more waves, and hosts not restarted yet stay as they
/// are (hosts already on the new binary keep it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelUpgrade {}

impl Rules for CancelUpgrade {
    fn verb(&self) -> &'static str {
        "cancel"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Admin, Vec::new())
    }

    fn lattice_wide(&self) -> bool {
        true
    }

    fn check_names(&self) -> Result<(), Error> {
        Ok(())
    }
}

impl Verb for CancelUpgrade {
    type Answer = Option<FleetUpgrade>;
}
