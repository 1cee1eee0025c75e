//! Spin's own `spin:variables@3.0.0`, which the Spin SDK 7's `variables::get` imports: a
//! Spin component reads the app's configuration values (`spec.config`, `configFrom`,
//! secrets; `shoal run --config`) as its variables, as it would read `wasi:config/store`.
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
