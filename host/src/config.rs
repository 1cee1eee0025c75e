//! `wasi:config/store` for guests, in the three versions toolchains produce today, so a
//! component built for any of them links: `0.2.0-rc.1` (wasmtime's own, and wit-bindgen
//! from the upstream WIT at its release candidate), `0.2.0-draft-2024-09-27` (Spin) and
//! `0.2.0-draft` (the upstream draft; wasmCloud). The three have the same functions.
//!
//! wasmtime's `wasmtime-wasi-config` covers only the first and keeps its values in its own
//! private map, so the three versions here read one shared map of the replica's values
//! instead (no copy per request, no copy per version).

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

/// The values a replica's guests read: zeroed in memory when the replica and its last
/// instance let go of them (secrets are among them), never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ConfigMap(BTreeMap<String, String>);

impl ConfigMap {
    /// Takes `values`.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(values)
    }
}

impl std::ops::Deref for ConfigMap {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Debug for ConfigMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Drop for ConfigMap {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ConfigMap {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// The values a replica's guests read, shared by every instance of it.
pub type ConfigValues = Arc<ConfigMap>;

/// A guest's view of its values, for the duration of one call.
pub struct ConfigStore<'a>(&'a BTreeMap<String, String>);

struct HasConfig;

impl HasData for HasConfig {
    type Data<'a> = ConfigStore<'a>;
}

/// One module of bindings and its implementation per version of the package (`bindgen!`
/// takes its WIT as one literal, so each version's is written out below).
macro_rules! config_version {
    ($module:ident, $wit:literal) => {
        mod $module {
            wasmtime::component::bindgen!({
                inline: $wit,
                world: "imports",
            });

            use self::wasi::config::store::{Error, Host};

            impl Host for super::ConfigStore<'_> {
                fn get(&mut self, key: String) -> Result<Option<String>, Error> {
                    Ok(self.0.get(&key).cloned())
                }

                fn get_all(&mut self) -> Result<Vec<(String, String)>, Error> {
                    Ok(self
                        .0
                        .iter()
                        .map(|(key, value)| (key.clone(), value.clone()))
                        .collect())
                }
            }

            pub(super) fn add<T: 'static>(
                linker: &mut wasmtime::component::Linker<T>,
                view: fn(&mut T) -> super::ConfigStore<'_>,
            ) -> wasmtime::Result<()> {
                wasi::config::store::add_to_linker::<T, super::HasConfig>(linker, view)
            }
        }
    };
}

config_version!(
    rc1,
    "package wasi:config@0.2.0-rc.1;
     interface store {
       variant error { upstream(string), io(string) }
       get: func(key: string) -> result<option<string>, error>;
       get-all: func() -> result<list<tuple<string, string>>, error>;
     }
     world imports { import store; }"
);
config_version!(
    spin,
    "package wasi:config@0.2.0-draft-2024-09-27;
     interface store {
       variant error { upstream(string), io(string) }
       get: func(key: string) -> result<option<string>, error>;
       get-all: func() -> result<list<tuple<string, string>>, error>;
     }
     world imports { import store; }"
);
config_version!(
    draft,
    "package wasi:config@0.2.0-draft;
     interface store {
       variant error { upstream(string), io(string) }
       get: func(key: string) -> result<option<string>, error>;
       get-all: func() -> result<list<tuple<string, string>>, error>;
     }
     world imports { import store; }"
);

/// Something that holds a replica's config values.
pub trait HasConfigValues {
    /// The values.
    fn config_values(&self) -> &BTreeMap<String, String>;
}

fn view<T: HasConfigValues>(state: &mut T) -> ConfigStore<'_> {
    ConfigStore(state.config_values())
}

/// Adds every version of `wasi:config/store` to `linker`.
///
/// # Errors
/// When the linker already has one of them.
pub fn add_to_linker<T: HasConfigValues + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    rc1::add(linker, view::<T>)?;
    spin::add(linker, view::<T>)?;
    draft::add(linker, view::<T>)
}
