//! The smallest Shoal app: a wasi:http handler that answers every request with a greeting.

use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};

struct Hello;

impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Hello {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        http::text(out, 200, "hello from Shoal\n");
    }
}

shoal_sdk::wasi::http::proxy::export!(Hello);
