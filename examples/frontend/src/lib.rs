//! The front tier of the two-tier example. `GET /` calls `http://greeter/` (another app,
//! reached through the lattice by name, no DNS) and answers with what it said;
//! `GET …/external?url=U` tries an outbound request to `U`, which the host refuses unless
//! the app's `allowedOutbound` lists it.

use shoal_sdk::http::{self, IncomingRequest, ResponseOutparam};

struct Frontend;

impl shoal_sdk::wasi::exports::http::incoming_handler::Guest for Frontend {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        // Routes keep the whole path: `/two-tier/external?url=U` arrives as it was sent.
        if let Some((_, url)) = path.split_once("/external?url=") {
            match http::get(url) {
                Ok(response) => {
                    http::text(out, 200, &format!("{url} answered {}\n", response.status))
                }
                Err(error) => http::text(
                    out,
                    502,
                    &format!("outbound request to {url} failed: {error}\n"),
                ),
            }
            return;
        }
        match http::get("http://greeter/") {
            Ok(response) if response.status == 200 => http::text(
                out,
                200,
                &format!("the frontend asked the greeter: {}", response.text()),
            ),
            Ok(response) => http::text(
                out,
                502,
                &format!(
                    "the greeter answered {}: {}",
                    response.status,
                    response.text()
                ),
            ),
            Err(error) => http::text(out, 502, &format!("cannot reach the greeter: {error}\n")),
        }
    }
}

shoal_sdk::wasi::http::proxy::export!(Frontend);
