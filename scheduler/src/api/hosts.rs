//! How the scheduler does the verbs on hosts and the control plane.

use std::collections::HashMap;

use shoal_lattice::api::{
    ControlPlaneView, CordonHost, DrainHost, ErrorCode, GetControlPlane, GetHosts, HostView,
};
use shoal_lattice::names::host_control_key;
use shoal_lattice::records::{ControlPlaneStatus, HostControl, HostRecord, now_millis};
use shoal_lattice::{Bucket, Lattice};

use super::apps::replicas;
use super::{ApiError, Context, Handle};

impl Handle for GetHosts {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<HostView>, ApiError> {
        let controls: HashMap<String, HostControl> = cx
            .lattice
            .list::<HostControl>(Bucket::Status, "hosts.")
            .await?
            .into_iter()
            .map(|record| {
                let host = record.key.trim_start_matches("hosts.").to_owned();
                (host, record.value)
            })
            .collect();
        let replicas = replicas(cx.lattice).await?;
        Ok(cx
            .lattice
            .list::<HostRecord>(Bucket::Hosts, "")
            .await?
            .into_iter()
            .map(|record| HostView {
                replicas: replicas
                    .iter()
                    .filter(|replica| replica.assignment.host == record.value.id)
                    .count(),
                control: controls.get(&record.value.id).cloned(),
                host: record.value,
            })
            .collect())
    }
}

impl Handle for GetControlPlane {
    async fn handle(self, cx: &Context<'_>) -> Result<ControlPlaneView, ApiError> {
        let status = cx
            .lattice
            .get_checked::<ControlPlaneStatus>(Bucket::Status, shoal_lattice::names::CONTROL_PLANE)
            .await?
            .and_then(Result::ok)
            .map(|record| record.value);
        Ok(ControlPlaneView::of(status, now_millis()))
    }
}

impl Handle for CordonHost {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let key = host_control_key(&self.host);
        if self.cordoned {
            known_host(cx.lattice, &self.host).await?;
            let control = HostControl {
                cordoned: true,
                draining: false,
                by: cx.caller.user.clone(),
                since: now_millis(),
            };
            cx.lattice.put(Bucket::Status, &key, &control).await?;
        } else {
            cx.lattice.delete(Bucket::Status, &key).await?;
        }
        Ok(())
    }
}

impl Handle for DrainHost {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        known_host(cx.lattice, &self.host).await?;
        let control = HostControl {
            cordoned: true,
            draining: true,
            by: cx.caller.user.clone(),
            since: now_millis(),
        };
        cx.lattice
            .put(Bucket::Status, &host_control_key(&self.host), &control)
            .await?;
        Ok(())
    }
}

/// Refuses a host that is not in the lattice.
async fn known_host(lattice: &Lattice, host: &str) -> Result<(), ApiError> {
    match lattice.get::<HostRecord>(Bucket::Hosts, host).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("there is no host {host}; shoal get hosts lists them"),
        )),
    }
}
