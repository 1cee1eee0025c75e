//! The back tier of the two-tier example: answers every request with `GREETING` from its
//! config (default "hello"), so the frontend has something to pass on.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Greeter;

impl wasi::exports::http::incoming_handler::Guest for Greeter {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_owned());
        let response = OutgoingResponse::new(Fields::new());
        let Ok(body) = response.body() else {
            return;
        };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = body.write() {
            let _ = stream
                .blocking_write_and_flush(format!("{greeting} from the greeter\n").as_bytes());
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

wasi::http::proxy::export!(Greeter);
