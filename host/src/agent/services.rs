//! Service discovery for guests: `http://<app>` (in the caller's namespace) or
//! `http://<app>.<namespace>` reaches that app through the lattice, a local replica first.
//! Namespaces are a boundary: another namespace's app is reachable only when its
//! `spec.expose` names the caller's namespace (or the lattice); otherwise the name is not a
//! lattice app for the caller, and the request is refused like any outbound one not allowed.

use std::sync::Arc;

use http::{Request, Response};

use super::activator::Activator;
use super::ingress::Uplink;
use crate::guest::Services;
use crate::router::Router;

pub(crate) struct LatticeServices {
    pub(crate) namespace: String,
    pub(crate) router: Arc<Router>,
    pub(crate) uplink: Uplink,
    /// Holds calls to an app scaled to zero while it wakes, as the ingress does.
    pub(crate) activator: Arc<Activator>,
}

impl Services for LatticeServices {
    fn resolve(&self, uri: &http::Uri) -> Option<(String, String)> {
        if uri.scheme_str().is_some_and(|scheme| scheme != "http") || uri.port().is_some() {
            return None;
        }
        let host = uri.host()?;
        let (app, namespace) = match host.split_once('.') {
            None => (host, self.namespace.as_str()),
            Some((app, namespace)) if !namespace.contains('.') => (app, namespace),
            Some(_) => return None,
        };
        self.router
            .reachable(&self.namespace, namespace, app)
            .then(|| (namespace.to_owned(), app.to_owned()))
    }

    fn call(
        &self,
        namespace: String,
        app: String,
        request: Request<wasmtime_wasi_http::WasiBody>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Response<wasmtime_wasi_http::WasiBody>> + Send>,
    > {
        let router = Arc::clone(&self.router);
        let uplink = self.uplink.clone();
        let activator = Arc::clone(&self.activator);
        Box::pin(async move {
            if let Some(lattice) = uplink.lattice()
                && let Err(response) = activator
                    .until_awake(&router, lattice, &namespace, &app)
                    .await
            {
                return response;
            }
            match router.pick(&namespace, &app) {
                Some(component) => component.handle(request).await,
                None => {
                    let timeout = router.timeout_of(&namespace, &app);
                    uplink
                        .forward(&namespace, &app, request, None, timeout)
                        .await
                }
            }
        })
    }
}
