//! {name}: a wasi:http component for Shoal.
//!
//! `shoal build` makes target/wasm32-wasip2/release/{crate}.wasm; `shoal run` on that file
//! serves it on http://127.0.0.1:8080; `shoal push` sends it to a registry.

use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};

struct Component;

impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Component {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        // `spec.config` on a lattice, `--config GREETING=…` under `shoal run`.
        let greeting = shoal_sdk::config::get("GREETING").unwrap_or_else(|| "hello".to_owned());
        let path = request.path_with_query().unwrap_or_default();
        http::text(out, 200, &format!("{greeting} from {name} at {path}\n"));
    }
}

shoal_sdk::wasi::http::proxy::export!(Component);
