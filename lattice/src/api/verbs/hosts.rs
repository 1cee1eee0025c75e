//! The verbs on hosts and the control plane: list, cordon, drain, and the control plane's
//! health.

use serde::{Deserialize, Serialize};

use super::{Rules, Verb, lattice_read};
use crate::Error;
use crate::api::{ControlPlaneView, HostView};
use crate::auth::Role;
use crate::names::check_host_id;

lattice_read!(
    /// Hosts, with the replicas assigned to each.
    GetHosts,
    Vec<HostView>
);

lattice_read!(
    /// The control plane's health: who leads, when it last acted, what it cannot read.
    GetControlPlane,
    ControlPlaneView
);

/// Cordon a host (no new replicas) or lift its cordon and drain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CordonHost {
    /// The host.
    pub host: String,
    /// Cordoned, or back to normal.
    pub cordoned: bool,
}

impl Rules for CordonHost {
    fn verb(&self) -> &'static str {
        if self.cordoned { "cordon" } else { "uncordon" }
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Admin, Vec::new())
    }

    fn lattice_wide(&self) -> bool {
        true
    }

    fn check_names(&self) -> Result<(), Error> {
        check_host_id(&self.host)
    }
}

impl Verb for CordonHost {
    type Answer = ();
}

/// Cordon a host and move its replicas elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainHost {
    /// The host.
    pub host: String,
}

impl Rules for DrainHost {
    fn verb(&self) -> &'static str {
        "drain"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Admin, Vec::new())
    }

    fn lattice_wide(&self) -> bool {
        true
    }

    fn check_names(&self) -> Result<(), Error> {
        check_host_id(&self.host)
    }
}

impl Verb for DrainHost {
    type Answer = ();
}
