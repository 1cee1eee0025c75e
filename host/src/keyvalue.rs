//! `wasi:keyvalue` for guests at `0.2.0-draft` (wasmtime's `wasmtime-wasi-keyvalue`,
//! wasmCloud) and `0.2.0-draft2` (Spin; adds compare-and-swap and string cursors): `store`,
//! `atomics` and `batch`, backed by the app's own JetStream KV buckets (see
//! [`shoal_lattice::appkv`]). A guest opens only the stores its app grants
//! (`spec.keyValue`); any other name is `access-denied`.
//!
//! The WIT is wasmtime-wasi-keyvalue's (draft) and upstream's (draft2), in `host/wit-keyvalue`; the
//! bindings are generated here because that crate's are private and synchronous, and every
//! operation here is a network round trip.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use shoal_lattice::appkv::{AppStore, StoreError};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// Why a store could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The app does not grant this store.
    AccessDenied,
    /// The lattice is unreachable or the bucket is missing.
    Other(String),
}

/// The stores one replica's guests may open.
pub trait Stores: Send + Sync + 'static {
    /// Opens the store `name`, if the app grants it.
    fn open<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<AppStore, OpenError>> + Send + 'a>>;
}

/// A shared [`Stores`] in a replica's options.
#[derive(Clone)]
pub struct StoresLink(pub Arc<dyn Stores>);

impl std::fmt::Debug for StoresLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoresLink")
    }
}

/// An open store, as a guest holds it.
pub struct KvBucket(AppStore);

impl KvBucket {
    /// `store`, to be held by a guest.
    pub(crate) fn new(store: AppStore) -> Self {
        Self(store)
    }

    /// The store.
    pub(crate) fn store(&self) -> &AppStore {
        &self.0
    }
}

/// A value read for a compare-and-swap (draft2's `cas`).
pub struct KvCas {
    store: AppStore,
    key: String,
    revision: u64,
    current: Option<Bytes>,
}

/// What the bindings reach in a store's data.
pub struct KvView<'a> {
    table: &'a mut ResourceTable,
    stores: Option<&'a StoresLink>,
}

impl<'a> KvView<'a> {
    /// A view of `table` and the replica's `stores`.
    pub fn new(table: &'a mut ResourceTable, stores: Option<&'a StoresLink>) -> Self {
        Self { table, stores }
    }

    /// The replica's stores, if it has any.
    pub(crate) fn stores(&self) -> Option<StoresLink> {
        self.stores.cloned()
    }

    /// The guest's resources.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        self.table
    }

    async fn open(&mut self, name: &str) -> Result<Resource<KvBucket>, OpenError> {
        let Some(stores) = self.stores else {
            return Err(OpenError::AccessDenied);
        };
        let store = stores.0.open(name).await?;
        self.table
            .push(KvBucket(store))
            .map_err(|error| OpenError::Other(error.to_string()))
    }

    fn bucket(&self, bucket: &Resource<KvBucket>) -> Result<AppStore, StoreError> {
        self.table
            .get(bucket)
            .map(|bucket| bucket.0.clone())
            .map_err(|error| StoreError::Unreachable(error.to_string()))
    }
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvView<'a>;
}

/// Something that holds a replica's stores and a resource table.
pub trait HasStores {
    /// The view the bindings use.
    fn kv(&mut self) -> KvView<'_>;
}

mod draft {
    wasmtime::component::bindgen!({
        path: "wit-keyvalue/draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": super::KvBucket },
    });
}

mod draft2 {
    wasmtime::component::bindgen!({
        path: "wit-keyvalue/draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::KvBucket,
            "wasi:keyvalue/atomics.cas": super::KvCas,
        },
    });
}

/// The guest-visible text of a store error (never a value).
fn other(error: &StoreError) -> String {
    error.to_string()
}

/// One version's `store`, `atomics` and `batch` over [`KvView`]: the two versions differ
/// only in cursor and delta types and in draft2's compare-and-swap.
macro_rules! common {
    ($version:ident) => {
        use self::$version::wasi::keyvalue::{batch, store};

        fn from_open(error: OpenError) -> store::Error {
            match error {
                OpenError::AccessDenied => store::Error::AccessDenied,
                OpenError::Other(message) => store::Error::Other(message),
            }
        }

        fn from_store(error: StoreError) -> store::Error {
            store::Error::Other(other(&error))
        }

        impl store::Host for KvView<'_> {
            async fn open(
                &mut self,
                identifier: String,
            ) -> wasmtime::Result<Result<Resource<KvBucket>, store::Error>> {
                Ok(KvView::open(self, &identifier).await.map_err(from_open))
            }
        }

        impl batch::Host for KvView<'_> {
            async fn get_many(
                &mut self,
                bucket: Resource<KvBucket>,
                keys: Vec<String>,
            ) -> wasmtime::Result<Result<Vec<Option<(String, Vec<u8>)>>, store::Error>> {
                let store = match self.bucket(&bucket) {
                    Ok(store) => store,
                    Err(error) => return Ok(Err(from_store(error))),
                };
                let mut found = Vec::with_capacity(keys.len());
                for key in keys {
                    match store.get(&key).await {
                        Ok(value) => found.push(value.map(|value| (key, value.to_vec()))),
                        Err(error) => return Ok(Err(from_store(error))),
                    }
                }
                Ok(Ok(found))
            }

            async fn set_many(
                &mut self,
                bucket: Resource<KvBucket>,
                key_values: Vec<(String, Vec<u8>)>,
            ) -> wasmtime::Result<Result<(), store::Error>> {
                let store = match self.bucket(&bucket) {
                    Ok(store) => store,
                    Err(error) => return Ok(Err(from_store(error))),
                };
                for (key, value) in key_values {
                    if let Err(error) = store.set(&key, value).await {
                        return Ok(Err(from_store(error)));
                    }
                }
                Ok(Ok(()))
            }

            async fn delete_many(
                &mut self,
                bucket: Resource<KvBucket>,
                keys: Vec<String>,
            ) -> wasmtime::Result<Result<(), store::Error>> {
                let store = match self.bucket(&bucket) {
                    Ok(store) => store,
                    Err(error) => return Ok(Err(from_store(error))),
                };
                for key in keys {
                    if let Err(error) = store.delete(&key).await {
                        return Ok(Err(from_store(error)));
                    }
                }
                Ok(Ok(()))
            }
        }
    };
}

/// The bucket's methods shared by both versions (all but `list-keys`).
macro_rules! bucket_methods {
    () => {
        async fn get(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
            Ok(match self.bucket(&bucket) {
                Ok(store) => store
                    .get(&key)
                    .await
                    .map(|value| value.map(|value| value.to_vec()))
                    .map_err(from_store),
                Err(error) => Err(from_store(error)),
            })
        }

        async fn set(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), store::Error>> {
            Ok(match self.bucket(&bucket) {
                Ok(store) => store.set(&key, value).await.map_err(from_store),
                Err(error) => Err(from_store(error)),
            })
        }

        async fn delete(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<(), store::Error>> {
            Ok(match self.bucket(&bucket) {
                Ok(store) => store.delete(&key).await.map_err(from_store),
                Err(error) => Err(from_store(error)),
            })
        }

        async fn exists(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<bool, store::Error>> {
            Ok(match self.bucket(&bucket) {
                Ok(store) => store
                    .get(&key)
                    .await
                    .map(|value| value.is_some())
                    .map_err(from_store),
                Err(error) => Err(from_store(error)),
            })
        }

        async fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
            self.table.delete(bucket)?;
            Ok(())
        }
    };
}

mod draft_impl {
    use super::*;

    common!(draft);
    use self::draft::wasi::keyvalue::atomics;

    impl store::HostBucket for KvView<'_> {
        bucket_methods!();

        async fn list_keys(
            &mut self,
            bucket: Resource<KvBucket>,
            cursor: Option<u64>,
        ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
            // The cursor is the number of keys already listed (in key order).
            let store = match self.bucket(&bucket) {
                Ok(store) => store,
                Err(error) => return Ok(Err(from_store(error))),
            };
            let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
            let mut after: Option<String> = None;
            let mut seen = 0usize;
            loop {
                let (keys, more) = match store.list(after.as_deref()).await {
                    Ok(page) => page,
                    Err(error) => return Ok(Err(from_store(error))),
                };
                if seen + keys.len() > skip || more.is_none() {
                    let start = skip.saturating_sub(seen).min(keys.len());
                    let listed = keys.len();
                    let page: Vec<String> = keys.into_iter().skip(start).collect();
                    let next = more.map(|_| (seen + listed) as u64);
                    return Ok(Ok(store::KeyResponse {
                        keys: page,
                        cursor: next,
                    }));
                }
                seen += keys.len();
                after = more;
            }
        }
    }

    impl atomics::Host for KvView<'_> {
        async fn increment(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
            delta: u64,
        ) -> wasmtime::Result<Result<u64, store::Error>> {
            let store = match self.bucket(&bucket) {
                Ok(store) => store,
                Err(error) => return Ok(Err(from_store(error))),
            };
            let Ok(delta) = i64::try_from(delta) else {
                return Ok(Err(store::Error::Other("delta is too large".to_owned())));
            };
            Ok(store
                .increment(&key, delta)
                .await
                .map_err(from_store)
                .and_then(|value| {
                    u64::try_from(value)
                        .map_err(|_| store::Error::Other(format!("{key} is negative")))
                }))
        }
    }

    pub(super) fn add<T: HasStores + Send + 'static>(
        linker: &mut Linker<T>,
    ) -> wasmtime::Result<()> {
        store::add_to_linker::<T, HasKv>(linker, T::kv)?;
        atomics::add_to_linker::<T, HasKv>(linker, T::kv)?;
        batch::add_to_linker::<T, HasKv>(linker, T::kv)
    }
}

mod draft2_impl {
    use super::*;

    common!(draft2);
    use self::draft2::wasi::keyvalue::atomics;

    impl store::HostBucket for KvView<'_> {
        bucket_methods!();

        async fn list_keys(
            &mut self,
            bucket: Resource<KvBucket>,
            cursor: Option<String>,
        ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
            // The cursor is the last key of the previous page.
            Ok(match self.bucket(&bucket) {
                Ok(store) => store
                    .list(cursor.as_deref())
                    .await
                    .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
                    .map_err(from_store),
                Err(error) => Err(from_store(error)),
            })
        }
    }

    impl atomics::Host for KvView<'_> {
        async fn increment(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
            delta: i64,
        ) -> wasmtime::Result<Result<i64, store::Error>> {
            Ok(match self.bucket(&bucket) {
                Ok(store) => store.increment(&key, delta).await.map_err(from_store),
                Err(error) => Err(from_store(error)),
            })
        }

        async fn swap(
            &mut self,
            cas: Resource<KvCas>,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), atomics::CasError>> {
            let cas = self.table.delete(cas)?;
            match cas.store.swap(&cas.key, value, cas.revision).await {
                Ok(_) => Ok(Ok(())),
                Err(StoreError::Conflict) => {
                    // Lost: the guest gets the key as it is now, to try again.
                    let fresh = match cas.store.read(&cas.key).await {
                        Ok(fresh) => fresh,
                        Err(error) => {
                            return Ok(Err(atomics::CasError::StoreError(from_store(error))));
                        }
                    };
                    let again = self.table.push(KvCas {
                        store: cas.store,
                        key: cas.key,
                        revision: fresh.revision,
                        current: fresh.value,
                    })?;
                    Ok(Err(atomics::CasError::CasFailed(again)))
                }
                Err(error) => Ok(Err(atomics::CasError::StoreError(from_store(error)))),
            }
        }
    }

    impl atomics::HostCas for KvView<'_> {
        async fn new(
            &mut self,
            bucket: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<Resource<KvCas>, store::Error>> {
            let store = match self.bucket(&bucket) {
                Ok(store) => store,
                Err(error) => return Ok(Err(from_store(error))),
            };
            let read = match store.read(&key).await {
                Ok(read) => read,
                Err(error) => return Ok(Err(from_store(error))),
            };
            Ok(Ok(self.table.push(KvCas {
                store,
                key,
                revision: read.revision,
                current: read.value,
            })?))
        }

        async fn current(
            &mut self,
            cas: Resource<KvCas>,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
            let cas = self.table.get(&cas)?;
            Ok(Ok(cas.current.as_ref().map(|value| value.to_vec())))
        }

        async fn drop(&mut self, cas: Resource<KvCas>) -> wasmtime::Result<()> {
            self.table.delete(cas)?;
            Ok(())
        }
    }

    pub(super) fn add<T: HasStores + Send + 'static>(
        linker: &mut Linker<T>,
    ) -> wasmtime::Result<()> {
        store::add_to_linker::<T, HasKv>(linker, T::kv)?;
        atomics::add_to_linker::<T, HasKv>(linker, T::kv)?;
        batch::add_to_linker::<T, HasKv>(linker, T::kv)
    }
}

/// Adds both versions of `wasi:keyvalue` to `linker`.
///
/// # Errors
/// When the linker already has one of them.
pub fn add_to_linker<T: HasStores + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    draft_impl::add(linker)?;
    draft2_impl::add(linker)
}
