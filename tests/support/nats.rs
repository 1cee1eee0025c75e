//! A real `nats-server` with JetStream on free loopback ports, its data in a temp dir,
//! stopped on drop; restartable with the same ports and data.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port};

pub struct Nats {
    child: Option<Child>,
    /// Extra server configuration (for example an `authorization` block).
    extra_config: String,
    dir: tempfile::TempDir,
    port: u16,
    monitor: u16,
}

impl Nats {
    pub fn start() -> Self {
        Self::with_config("")
    }

    /// A server that wants this user and password.
    pub fn with_user(user: &str, password: &str) -> Self {
        Self::with_config(&format!(
            "authorization {{ user: {user}, password: {password} }}\n"
        ))
    }

    pub fn with_config(extra_config: &str) -> Self {
        let mut nats = Self {
            child: None,
            extra_config: extra_config.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            monitor: free_port(),
        };
        // A port that was free when picked can be taken before the server binds it (by any
        // process's next ephemeral port): a server that exits at start gets new ports.
        for _ in 0..5 {
            nats.spawn();
            if nats.wait_healthy_or_exit() {
                return nats;
            }
            nats.port = free_port();
            nats.monitor = free_port();
        }
        panic!("nats-server did not start on five pairs of free ports");
    }

    /// Waits until the server is healthy (true) or has exited (false).
    fn wait_healthy_or_exit(&mut self) -> bool {
        let health = format!("http://127.0.0.1:{}/healthz", self.monitor);
        eventually(Duration::from_secs(30), "nats-server to be healthy", || {
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return Some(false);
            }
            ureq::get(&health)
                .call()
                .ok()
                .filter(|response| response.status() == 200)
                .map(|_| true)
        })
    }

    /// `n` servers in one JetStream cluster on loopback, each with its own data dir.
    pub fn cluster(n: usize) -> Vec<Nats> {
        // Held open together, so no two of the cluster's ports are the same.
        let listeners: Vec<std::net::TcpListener> = (0..3 * n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut ports: Vec<u16> = listeners
            .iter()
            .map(|listener| listener.local_addr().unwrap().port())
            .collect();
        drop(listeners);
        let routes: Vec<u16> = ports.drain(..n).collect();
        let route_list = routes
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers: Vec<Nats> = routes
            .iter()
            .enumerate()
            .map(|(index, port)| Self {
                child: None,
                extra_config: format!(
                    "server_name: n{index}\ncluster {{ name: shoal, listen: 127.0.0.1:{port}, routes: [{route_list}] }}\n"
                ),
                dir: tempfile::tempdir().unwrap(),
                port: ports[2 * index],
                monitor: ports[2 * index + 1],
            })
            .collect();
        // All start before any is asked for its health: JetStream waits for its peers.
        for server in &mut servers {
            server.spawn();
        }
        for server in &servers {
            server.wait_healthy();
        }
        servers
    }

    fn launch(&mut self) {
        self.spawn();
        self.wait_healthy();
    }

    fn spawn(&mut self) {
        // As `shoal up` does: room for 8 MiB forwarded bodies plus headers.
        let config = self.dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!("max_payload: 9437184\n{}", self.extra_config),
        )
        .unwrap();
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&config)
            .args(["-js", "-a", "127.0.0.1"])
            .args(["-p", &self.port.to_string(), "-m", &self.monitor.to_string()])
            .arg("-sd")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not on PATH: run scripts/setup.sh (tests run through scripts/test.sh put it there)");
        self.child = Some(child);
    }

    fn wait_healthy(&self) {
        let health = format!("http://127.0.0.1:{}/healthz", self.monitor);
        eventually(Duration::from_secs(30), "nats-server to be healthy", || {
            ureq::get(&health)
                .call()
                .ok()
                .filter(|response| response.status() == 200)
        });
    }

    /// A bare NATS connection (no Shoal code involved): its reader past the server's INFO
    /// line, and its writer.
    fn bare(&self) -> (std::io::BufReader<std::net::TcpStream>, std::net::TcpStream) {
        use std::io::BufRead;
        let stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("INFO"), "{line}");
        (reader, stream)
    }

    /// Publishes `payload` on `subject` as a bare NATS client would: no Shoal code involved,
    /// the way a hostile or older client writes a KV record (`$KV.<bucket>.<key>`).
    pub fn publish(&self, subject: &str, payload: &[u8]) {
        use std::io::{BufRead, Write};
        let (mut reader, mut writer) = self.bare();
        let mut line = String::new();
        writer
            .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
            .unwrap();
        writer
            .write_all(format!("PUB {subject} {}\r\n", payload.len()).as_bytes())
            .unwrap();
        writer.write_all(payload).unwrap();
        writer.write_all(b"\r\nPING\r\n").unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if line.starts_with("PONG") {
                return;
            }
        }
    }

    /// The newest value of `key` in KV bucket `bucket`, read as a bare client would (a
    /// JetStream direct get); `None` when the key has none.
    pub fn kv_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        use std::io::{BufRead, Read, Write};
        let (mut reader, mut writer) = self.bare();
        let mut line = String::new();
        let request = format!(
            "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nSUB _INBOX.kvget 1\r\nPUB $JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{key} _INBOX.kvget 0\r\n\r\n"
        );
        writer.write_all(request.as_bytes()).unwrap();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            assert!(!line.starts_with("-ERR"), "{line}");
            if let Some(head) = line.strip_prefix("HMSG ") {
                // HMSG <subject> <sid> <header bytes> <total bytes>
                let fields: Vec<&str> = head.split_whitespace().collect();
                let header: usize = fields[fields.len() - 2].parse().unwrap();
                let total: usize = fields[fields.len() - 1].parse().unwrap();
                let mut message = vec![0; total + 2];
                reader.read_exact(&mut message).unwrap();
                let headers = String::from_utf8_lossy(&message[..header]).to_string();
                // The status line says not found; a header line (its timestamp, say) may
                // hold "404" too.
                if headers.starts_with("NATS/1.0 404") || headers.contains("KV-Operation:") {
                    return None;
                }
                return Some(message[header..total].to_vec());
            }
        }
    }

    /// Kills the server with SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`Self::stop`] or [`Self::kill`], same ports and data.
    pub fn relaunch(&mut self) {
        self.launch();
    }

    /// The monitoring endpoint, like `http://127.0.0.1:8222`.
    /// Where this server keeps its JetStream data.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server with SIGTERM (JetStream flushes to disk) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::sigterm(child.id());
            let _ = child.wait();
        }
    }

    /// Replaces the server with a fresh one on the same ports: stopped, its JetStream state
    /// deleted, started again (a wiped or rebuilt NATS server).
    pub fn wipe(&mut self) {
        self.stop();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().is_dir() {
                std::fs::remove_dir_all(entry.path()).unwrap();
            }
        }
        self.launch();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
