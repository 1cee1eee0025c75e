//! The native baseline: the hello server written directly against axum, no Wasm involved.
//! It answers every path with the same body as `examples/hello-http`.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let app = axum::Router::new().fallback(|| async { "hello from Shoal\n" });
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
