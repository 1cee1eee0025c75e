//! The HTTP example of the Spin SDK for Rust (spin-sdk 7), as Spin's documentation writes it:
//! built with `cargo build --target wasm32-wasip2`, it exports `wasi:http/handler@0.3.0`.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

/// A simple Spin HTTP component.
#[http_service]
async fn hello(req: Request) -> impl IntoResponse {
    format!("spin-sdk hello {}\n", req.uri().path())
}
