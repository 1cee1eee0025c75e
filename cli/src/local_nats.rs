//! The nats-server a local lattice (`shoal up`) runs: the pid file it keeps beside its
//! data, a leftover server of a `shoal up` that was killed (SIGKILL gives it no chance to
//! stop the server, which runs in its own process group), and who holds a port it needs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How long a leftover server gets to flush JetStream and exit after SIGTERM.
const STOP_PATIENCE: Duration = Duration::from_secs(10);

/// The pid file of the nats-server whose config is `config` (beside it).
pub fn pid_file(config: &Path) -> PathBuf {
    config.with_file_name("nats-server.pid")
}

/// Stops the nats-server a killed `shoal up` left running with `config`, if its pid file
/// names one: a process that still runs that config (a pid reused by anything else is left
/// alone). Says what it did.
///
/// # Errors
/// When the leftover does not exit.
pub fn stop_leftover(config: &Path) -> anyhow::Result<()> {
    let file = pid_file(config);
    let Some(pid) = std::fs::read_to_string(&file)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return Ok(());
    };
    if !command_line(pid).is_some_and(|line| runs_config(&line, config)) {
        // Not ours any more (it exited, and perhaps its pid was reused).
        let _ = std::fs::remove_file(&file);
        return Ok(());
    }
    eprintln!(
        "stopping the nats-server (pid {pid}) a previous shoal up left running with {}",
        config.display()
    );
    signal(pid, "TERM");
    let deadline = Instant::now() + STOP_PATIENCE;
    while command_line(pid).is_some_and(|line| runs_config(&line, config)) {
        if Instant::now() >= deadline {
            signal(pid, "KILL");
            anyhow::bail!(
                "the nats-server (pid {pid}) a previous shoal up left running did not stop within {STOP_PATIENCE:?}; it was killed, run shoal up again"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// Refuses a taken port with what holds it, so the user knows what to stop (or to pick
/// another port).
///
/// # Errors
/// When `port` on 127.0.0.1 cannot be listened on.
pub fn check_port_free(port: u16, flag: &str) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(error) => {
            let holder = port_holder(port).map_or_else(
                || "another process".to_owned(),
                |(pid, line)| format!("pid {pid} ({line})"),
            );
            Err(error).with_context(|| {
                format!(
                    "port {port} is taken by {holder}: stop it, or give shoal up another port with {flag}"
                )
            })
        }
    }
}

/// Whether a command line runs nats-server with `config`.
fn runs_config(line: &str, config: &Path) -> bool {
    line.contains("nats-server") && line.contains(&*config.to_string_lossy())
}

/// A process's command line, its arguments joined by spaces; `None` when it is gone.
fn command_line(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let words: Vec<String> = raw
        .split(|byte| *byte == 0)
        .filter(|word| !word.is_empty())
        .map(|word| String::from_utf8_lossy(word).into_owned())
        .collect();
    // A zombie (exited, not yet reaped) has no command line left.
    (!words.is_empty()).then(|| words.join(" "))
}

/// Sends `signal` (`TERM`, `KILL`) to `pid`, as `kill` does; one that is gone is no error.
pub fn signal(pid: i32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The process listening on `port` (TCP, any address), read from /proc: the socket's inode
/// in /proc/net/tcp{,6}, then the process holding a descriptor of it.
fn port_holder(port: u16) -> Option<(i32, String)> {
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .find_map(|table| listening_inode(&table, port))?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.as_os_str() == socket.as_str())
                })
            })
        })
        .and_then(|pid| Some((pid, command_line(pid)?)))
}

/// The inode of the socket listening on `port` in a /proc/net/tcp table.
fn listening_inode(table: &str, port: u16) -> Option<u64> {
    const LISTEN: &str = "0A";
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
        (local_port == port && *fields.get(3)? == LISTEN)
            .then(|| fields.get(9)?.parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_in_the_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:10F6 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:10F7 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 654321 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inode(table, 4342), Some(123_456));
        // Connected, not listening.
        assert_eq!(listening_inode(table, 4343), None);
    }

    #[test]
    fn the_holder_of_a_port_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pid, _) = port_holder(port).expect("this test's own listener");
        assert_eq!(pid, i32::try_from(std::process::id()).unwrap());
        let refused = check_port_free(port, "--nats-port").unwrap_err();
        assert!(
            format!("{refused:#}").contains(&format!("port {port} is taken by pid {pid}")),
            "{refused:#}"
        );
    }
}
