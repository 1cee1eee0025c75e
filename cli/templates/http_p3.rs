//! {name}: a WASI 0.3 HTTP component for Shoal (it exports `wasi:http/handler@0.3.0`), written
//! with the `wasip3` bindings from crates.io. The handler is an async function: it returns
//! the response while a task it spawned writes the body.
//!
//! `shoal build` makes target/wasm32-wasip2/release/{crate}.wasm; `shoal run` on that file
//! serves it on http://127.0.0.1:8080; `shoal push` sends it to a registry.

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

struct Component;

impl wasip3::exports::http::handler::Guest for Component {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        // `spec.env` on a lattice, `--env GREETING=…` under `shoal run`.
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_owned());
        let path = request.get_path_with_query().unwrap_or_default();
        let body = format!("{greeting} from {name} at {path}\n");
        let (mut writer, reader) = wit_stream::new();
        let (trailers, trailers_reader) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(Fields::new(), Some(reader), trailers_reader);
        wit_bindgen::spawn_local(async move {
            let _ = writer.write_all(body.into_bytes()).await;
            drop(writer);
            let _ = trailers.write(Ok(None)).await;
        });
        Ok(response)
    }
}

wasip3::http::service::export!(Component);
