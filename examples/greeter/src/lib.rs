//! The back tier of the two-tier example: answers every request with `GREETING` from its
//! config (default "hello"), so the frontend has something to pass on.

use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};

struct Greeter;

impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Greeter {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let greeting = shoal_sdk::config::get("GREETING").unwrap_or_else(|| "hello".to_owned());
        http::text(out, 200, &format!("{greeting} from the greeter\n"));
    }
}

shoal_sdk::wasi::http::proxy::export!(Greeter);
