//! What the lattice benchmarks share: child processes that die with the benchmark, free
//! ports, waiting for a port to listen.

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Child processes killed on drop.
pub struct Processes(pub Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nothing listens on.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits up to 20 s for something to listen on `port`.
pub fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {port} after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
