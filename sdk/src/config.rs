//! The app's configuration, read through `wasi:config/store`: `spec.config` and the config
//! objects of `spec.configFrom` on a lattice, `--config KEY=VALUE` under `shoal run`. Any
//! host that implements `wasi:config` (0.2.0-rc.1) gives its values the same way.
//!
//! ```no_run,standalone_crate
//! let greeting = shoal_sdk::config::get("GREETING").unwrap_or_else(|| "hello".into());
//! ```

mod bindings {
    wit_bindgen::generate!({ world: "sdk", path: "wit", generate_all });
}

use bindings::wasi::config::store;

/// The value of `key`, if the app has one. A host that cannot read its configuration
/// answers `None` too (the error is in [`try_get`]).
pub fn get(key: &str) -> Option<String> {
    try_get(key).ok().flatten()
}

/// The value of `key`, or the host's error reading it.
///
/// # Errors
/// The host's message, when its configuration source failed.
pub fn try_get(key: &str) -> Result<Option<String>, String> {
    store::get(key).map_err(describe)
}

/// Every key and value of the app's configuration, sorted by key.
///
/// # Errors
/// The host's message, when its configuration source failed.
pub fn all() -> Result<Vec<(String, String)>, String> {
    let mut all = store::get_all().map_err(describe)?;
    all.sort();
    Ok(all)
}

fn describe(error: store::Error) -> String {
    match error {
        store::Error::Upstream(message) | store::Error::Io(message) => message,
    }
}
