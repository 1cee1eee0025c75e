//! A TCP proxy that delays every byte by a fixed time in each direction: with packet loss
//! added in the kernel (nftables in a network namespace), it stands in for a slow, lossy
//! link such as a cellular uplink, where this machine's kernel has no netem.
//!
//! `slow-link LISTEN UPSTREAM DELAY_MS`: each direction of each connection is delayed by
//! DELAY_MS (order kept, no bandwidth limit), so the round trip grows by twice that.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), Some(delay)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: slow-link LISTEN UPSTREAM DELAY_MS");
    };
    let delay = Duration::from_millis(delay.parse().context("DELAY_MS is a number")?);
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    loop {
        let (client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::join!(
                carry(client_read, server_write, delay),
                carry(server_read, client_write, delay)
            );
        });
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (chunks, mut delayed) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = delayed.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0; 64 * 1024];
    while let Ok(read) = from.read(&mut buffer).await {
        if read == 0
            || chunks
                .send((Instant::now() + delay, buffer[..read].to_vec()))
                .is_err()
        {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
}
