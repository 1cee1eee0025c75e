//! How the scheduler does the verbs on the fleet: start, read and cancel a host upgrade.
//! The waves themselves are the leader's (see `controller::fleet`).

use shoal_lattice::api::{CancelUpgrade, ErrorCode, GetUpgrade, StartUpgrade};
use shoal_lattice::fleet::{FleetUpgrade, UpgradeState};
use shoal_lattice::names::FLEET_UPGRADE;
use shoal_lattice::records::now_millis;
use shoal_lattice::trust::{LATTICE_KEY, TrustPolicy};
use shoal_lattice::{Bucket, Validate};

use super::{ApiError, Context, Handle};

impl Handle for GetUpgrade {
    async fn handle(self, cx: &Context<'_>) -> Result<Option<FleetUpgrade>, ApiError> {
        Ok(cx
            .lattice
            .get::<FleetUpgrade>(Bucket::Status, FLEET_UPGRADE)
            .await?
            .map(|record| record.value))
    }
}

impl Handle for StartUpgrade {
    async fn handle(self, cx: &Context<'_>) -> Result<FleetUpgrade, ApiError> {
        // Hosts run a binary only with a signature by a key of the lattice's trust policy:
        // without one, no host would, and every wave would fail.
        let trusted = cx
            .lattice
            .get::<TrustPolicy>(Bucket::Trust, LATTICE_KEY)
            .await?
            .map(|policy| policy.value.keys)
            .unwrap_or_default();
        if trusted.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                "hosts run a new binary only when a key of the lattice's trust policy signed it, and the lattice trusts no key: shoal trust add KEY.pub, and publish with shoal fleet publish --sign KEY",
            ));
        }
        let upgrade = FleetUpgrade {
            id: nuid::next().to_string().to_ascii_lowercase(),
            reference: self.reference,
            targets: self.targets,
            selector: self.selector,
            wave: self.wave,
            pause_on_failure: self.pause_on_failure,
            timeout: self.timeout,
            by: cx.caller.user.clone(),
            started_at: now_millis(),
            state: UpgradeState::Running,
            hosts: Default::default(),
            waves: 0,
        };
        upgrade.validate().map_err(|invalid| {
            ApiError::new(
                ErrorCode::Invalid,
                format!("the upgrade is not valid: {invalid}"),
            )
        })?;
        cx.lattice
            .put(Bucket::Status, FLEET_UPGRADE, &upgrade)
            .await?;
        Ok(upgrade)
    }
}

impl Handle for CancelUpgrade {
    async fn handle(self, cx: &Context<'_>) -> Result<Option<FleetUpgrade>, ApiError> {
        let upgrade = cx
            .lattice
            .get::<FleetUpgrade>(Bucket::Status, FLEET_UPGRADE)
            .await?
            .map(|record| record.value);
        // The leader takes back the orders of hosts that did not start (an order with no
        // upgrade is stale).
        cx.lattice.delete(Bucket::Status, FLEET_UPGRADE).await?;
        Ok(upgrade)
    }
}
