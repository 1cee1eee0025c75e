//! The key-value stores of one replica: the names its app grants (`spec.keyValue`), opened
//! on the lattice connection once and kept for the replica's life (opening reads the
//! bucket's configuration: one round trip, not one per request).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use shoal_lattice::appkv::AppStore;

use super::ingress::Uplink;
use crate::keyvalue::{OpenError, Stores};

/// The stores one replica's guests may open.
pub(crate) struct AppStores {
    pub(crate) namespace: String,
    pub(crate) app: String,
    pub(crate) granted: Vec<String>,
    pub(crate) uplink: Uplink,
    pub(crate) opened: tokio::sync::Mutex<HashMap<String, AppStore>>,
}

impl Stores for AppStores {
    fn open<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<AppStore, OpenError>> + Send + 'a>> {
        Box::pin(async move {
            if !self.granted.iter().any(|granted| granted == name) {
                return Err(OpenError::AccessDenied);
            }
            let mut opened = self.opened.lock().await;
            if let Some(store) = opened.get(name) {
                return Ok(store.clone());
            }
            let Some(lattice) = self.uplink.lattice() else {
                return Err(OpenError::Other(
                    "the lattice is unreachable: key-value stores are not available while the host is offline".to_owned(),
                ));
            };
            let store = lattice
                .open_app_store(&self.namespace, &self.app, name)
                .await
                .map_err(|error| OpenError::Other(error.to_string()))?;
            opened.insert(name.to_owned(), store.clone());
            Ok(store)
        })
    }
}
