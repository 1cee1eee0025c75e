//! How the scheduler does the verbs on the lattice's policies (the rules are in
//! [`crate::trust`] and [`crate::egress`]).

use shoal_lattice::api::{GetEgress, GetTrust, SetEgress, TrustKey, UntrustKey};
use shoal_lattice::records::EgressPolicy;
use shoal_lattice::trust::TrustView;

use super::{ApiError, Context, Handle};
use crate::{egress, trust};

impl Handle for TrustKey {
    async fn handle(self, cx: &Context<'_>) -> Result<TrustView, ApiError> {
        trust::add(cx.lattice, self.namespace.as_deref(), &self.name, &self.pem).await
    }
}

impl Handle for UntrustKey {
    async fn handle(self, cx: &Context<'_>) -> Result<TrustView, ApiError> {
        trust::remove(cx.lattice, self.namespace.as_deref(), &self.name).await
    }
}

impl Handle for GetTrust {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<TrustView>, ApiError> {
        trust::list(cx.lattice, cx.visible(self.namespace.as_deref())).await
    }
}

impl Handle for SetEgress {
    async fn handle(self, cx: &Context<'_>) -> Result<EgressPolicy, ApiError> {
        egress::set(cx.lattice, &self.range, self.allowed).await
    }
}

impl Handle for GetEgress {
    async fn handle(self, cx: &Context<'_>) -> Result<EgressPolicy, ApiError> {
        Ok(egress::read(cx.lattice).await?.0)
    }
}
