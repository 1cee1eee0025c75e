//! Spin's own interfaces that Spin SDK 7 components import (WASI 0.3 async functions):
//! `spin:variables@3.0.0` (`variables::get`): a Spin component reads the app's configuration
//! values (`spec.config`, `configFrom`, secrets; `shoal run --config`) as its variables, as it
//! would read `wasi:config/store`; and `spin:key-value@3.0.0` (`key_value::Store`) over the
//! app's own stores, as `wasi:keyvalue` is.
//!
//! Spin names variables in lowercase (`api_key`); Shoal's values are often written in
//! uppercase (`API_KEY`). A name is looked up as written, then regardless of case.

use wasmtime::component::{Accessor, HasData, Linker};

use crate::config::HasConfigValues;

mod bindings {
    wasmtime::component::bindgen!({
        inline: "package spin:variables@3.0.0;
            interface variables {
              get: async func(name: string) -> result<string, error>;
              variant error {
                invalid-name(string),
                undefined(string),
                provider(string),
                other(string),
              }
            }
            world imports { import variables; }",
        world: "imports",
        imports: { default: store },
    });
}

use bindings::spin::variables::variables::{Error, Host, HostWithStore};

/// The `HasData` of the variables interface: the guest state's config values.
struct Variables;

impl HasData for Variables {
    type Data<'a> = &'a std::collections::BTreeMap<String, String>;
}

impl Host for &std::collections::BTreeMap<String, String> {}

impl<T> HostWithStore<T> for Variables {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, Error> {
        if name.is_empty() || name.len() > 256 {
            return Err(Error::InvalidName(name));
        }
        accessor.with(|mut access| {
            let values: &std::collections::BTreeMap<String, String> = access.get();
            values
                .get(&name)
                .or_else(|| {
                    values
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(&name))
                        .map(|(_, value)| value)
                })
                .cloned()
                .ok_or(Error::Undefined(name))
        })
    }
}

/// Adds `spin:variables@3.0.0` to `linker` (it needs the component model's async ABI: a
/// runtime that runs WASI 0.3).
///
/// # Errors
/// When the linker already has it.
pub fn add_to_linker<T: HasConfigValues + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    bindings::spin::variables::variables::add_to_linker::<T, Variables>(linker, |state| {
        state.config_values()
    })
}

/// Spin's `spin:key-value@3.0.0` (the Spin SDK 7's `key_value` module) over the app's own
/// stores, as `wasi:keyvalue` is: a label opens the store of that name the app grants
/// (`spec.keyValue`; Spin's `default` is the store named `default`); any other is
/// `access-denied`.
mod key_value {
    use wasmtime::component::{
        Access, Accessor, FutureReader, HasData, Linker, Resource, StreamReader,
    };

    use crate::keyvalue::{HasStores, KvBucket, KvView, OpenError};

    mod bindings {
        wasmtime::component::bindgen!({
            inline: "package spin:key-value@3.0.0;
                interface key-value {
                  resource store {
                    open: static async func(label: string) -> result<store, error>;
                    get: async func(key: string) -> result<option<list<u8>>, error>;
                    set: async func(key: string, value: list<u8>) -> result<_, error>;
                    delete: async func(key: string) -> result<_, error>;
                    exists: async func(key: string) -> result<bool, error>;
                    get-keys: async func() -> tuple<stream<string>, future<result<_, error>>>;
                  }
                  variant error {
                    store-table-full,
                    no-such-store,
                    access-denied,
                    other(string)
                  }
                }
                world imports { import key-value; }",
            world: "imports",
            imports: { default: store | trappable },
            with: { "spin:key-value/key-value.store": crate::keyvalue::KvBucket },
        });
    }

    use bindings::spin::key_value::key_value::{Error, Host, HostStore, HostStoreWithStore};

    struct SpinKv;

    impl HasData for SpinKv {
        type Data<'a> = KvView<'a>;
    }

    impl Host for KvView<'_> {}

    impl HostStore for KvView<'_> {}

    /// The store a guest's resource holds.
    fn opened<T>(
        accessor: &Accessor<T, SpinKv>,
        store: &Resource<KvBucket>,
    ) -> wasmtime::Result<shoal_lattice::appkv::AppStore> {
        accessor.with(|mut access| {
            Ok(access
                .get()
                .table()
                .get(store)
                .map(|bucket| bucket.store().clone())?)
        })
    }

    fn other(error: impl std::fmt::Display) -> Error {
        Error::Other(error.to_string())
    }

    impl<T> HostStoreWithStore<T> for SpinKv {
        fn drop(
            mut access: Access<'_, T, Self>,
            store: Resource<KvBucket>,
        ) -> wasmtime::Result<()> {
            access.get().table().delete(store)?;
            Ok(())
        }

        async fn open(
            accessor: &Accessor<T, Self>,
            label: String,
        ) -> wasmtime::Result<Result<Resource<KvBucket>, Error>> {
            let Some(stores) = accessor.with(|mut access| access.get().stores()) else {
                return Ok(Err(Error::AccessDenied));
            };
            let store = match stores.0.open(&label).await {
                Ok(store) => store,
                Err(OpenError::AccessDenied) => return Ok(Err(Error::AccessDenied)),
                Err(OpenError::Other(message)) => return Ok(Err(Error::Other(message))),
            };
            accessor.with(|mut access| {
                Ok(access
                    .get()
                    .table()
                    .push(KvBucket::new(store))
                    .map_err(|_| Error::StoreTableFull))
            })
        }

        async fn get(
            accessor: &Accessor<T, Self>,
            store: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
            let store = opened(accessor, &store)?;
            Ok(store
                .get(&key)
                .await
                .map(|value| value.map(|value| value.to_vec()))
                .map_err(other))
        }

        async fn set(
            accessor: &Accessor<T, Self>,
            store: Resource<KvBucket>,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), Error>> {
            let store = opened(accessor, &store)?;
            Ok(store.set(&key, value).await.map_err(other))
        }

        async fn delete(
            accessor: &Accessor<T, Self>,
            store: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<(), Error>> {
            let store = opened(accessor, &store)?;
            Ok(store.delete(&key).await.map_err(other))
        }

        async fn exists(
            accessor: &Accessor<T, Self>,
            store: Resource<KvBucket>,
            key: String,
        ) -> wasmtime::Result<Result<bool, Error>> {
            let store = opened(accessor, &store)?;
            Ok(store
                .get(&key)
                .await
                .map(|value| value.is_some())
                .map_err(other))
        }

        async fn get_keys(
            accessor: &Accessor<T, Self>,
            store: Resource<KvBucket>,
        ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
            let store = opened(accessor, &store)?;
            // Every key, page by page, then handed over as one stream.
            let mut keys = Vec::new();
            let mut after: Option<String> = None;
            let result = loop {
                match store.list(after.as_deref()).await {
                    Ok((page, more)) => {
                        keys.extend(page);
                        match more {
                            Some(next) => after = Some(next),
                            None => break Ok(()),
                        }
                    }
                    Err(error) => break Err(other(error)),
                }
            };
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let _ = sender.send(result);
            accessor.with(|mut access| {
                Ok((
                    StreamReader::new(&mut access, keys)?,
                    FutureReader::new(&mut access, receiver)?,
                ))
            })
        }
    }

    pub(super) fn add<T: HasStores + Send + 'static>(
        linker: &mut Linker<T>,
    ) -> wasmtime::Result<()> {
        bindings::spin::key_value::key_value::add_to_linker::<T, SpinKv>(linker, T::kv)
    }
}

/// Adds `spin:key-value@3.0.0` to `linker` (a runtime that runs WASI 0.3).
///
/// # Errors
/// When the linker already has it.
pub fn add_key_value_to_linker<T: crate::keyvalue::HasStores + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    key_value::add(linker)
}
