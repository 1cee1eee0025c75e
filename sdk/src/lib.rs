//! Shoal's guest SDK: what a Rust component for Shoal needs beyond the WASI bindings, so
//! that a handler is a few lines. It builds for `wasm32-wasip2` only and depends on nothing
//! of the host's.
//!
//! ```no_run,standalone_crate
//! use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};
//!
//! struct Hello;
//! impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Hello {
//!     fn handle(_request: IncomingRequest, out: ResponseOutparam) {
//!         let greeting = shoal_sdk::config::get("GREETING").unwrap_or_else(|| "hello".into());
//!         http::text(out, 200, &format!("{greeting} from Shoal\n"));
//!     }
//! }
//! shoal_sdk::wasi::http::proxy::export!(Hello);
//! ```

pub mod config;
pub mod http;

/// The WASI 0.2 bindings this SDK is built on, for what it does not wrap.
pub use wasi;
