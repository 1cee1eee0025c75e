//! A lattice for one test: its own nats-server, registry and lattice name, plus helpers to
//! run `shoal host` and `shoal scheduler` processes and query state through the CLI.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::nats::Nats;
use super::registry::Registry;
use super::{Shoal, eventually, guest};

pub struct Lattice {
    pub shoal: Shoal,
    pub nats: Nats,
    /// The other servers of a NATS cluster, when the lattice runs on one.
    pub peers: Vec<Nats>,
    pub registry: Registry,
    pub name: String,
    /// A secure lattice's auth directory; commands then run as its admin.
    pub auth: Option<tempfile::TempDir>,
}

/// A `shoal host` or `shoal scheduler` process, killed on drop.
pub struct Process {
    child: Child,
    pub id: String,
    /// The ingress URL, for hosts.
    pub url: Option<String>,
    log: Arc<Mutex<String>>,
    /// Runs in a process group of its own, killed as a whole (a host that restarts into
    /// another binary may end up in another process of that group).
    group: bool,
}

impl Process {
    /// SIGKILL: no goodbye, as when a machine dies.
    pub fn kill(&mut self) {
        if self.group {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.id())])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        super::sigterm(self.child.id());
        self.child.wait().unwrap()
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`, asserting it was sent.
    pub fn signal(&self, signal: super::Signal) {
        assert!(
            super::signal(self.child.id(), signal),
            "cannot send {signal:?} to {}",
            self.child.id()
        );
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the process's log contains `text`.
    pub fn wait_log(&self, patience: Duration, text: &str) {
        eventually(patience, &format!("{} to log {text:?}", self.id), || {
            self.log().contains(text).then_some(())
        });
    }

    /// The ingress address, `IP:PORT`, for raw connections.
    pub fn address(&self) -> String {
        let url = self.url.as_ref().unwrap();
        url.split_once("://")
            .map_or(url.as_str(), |(_, address)| address)
            .to_owned()
    }

    /// Probes `path` through this host's ingress from now on until it answers 200 and
    /// returns how long that took; see [`super::until_served`] (this process's log on
    /// failure).
    pub fn until_served(&self, patience: Duration, what: &str, path: &str) -> Duration {
        let url = format!("{}{path}", self.url.as_ref().unwrap());
        super::until_served(patience, what, &url, || self.log())
    }

    /// GET `path` through this host's ingress: status, body and the x-served-by header.
    pub fn get_served(&self, path: &str) -> Option<(u16, String, String)> {
        let url = format!("{}{path}", self.url.as_ref().unwrap());
        let mut response = agent().get(&url).call().ok()?;
        let status = response.status().as_u16();
        let served_by = response
            .headers()
            .get("x-served-by")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Some((
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
            served_by,
        ))
    }

    /// GET `path` through this host's ingress: status and body.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("{}{path}", self.url.as_ref().unwrap());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut response = agent.get(&url).call().ok()?;
        let status = response.status().as_u16();
        Some((
            status,
            response.body_mut().read_to_string().unwrap_or_default(),
        ))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client that returns every status as a response.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

/// `count` GETs of `url` at once: each one's status and `Retry-After`.
pub fn burst(url: &str, count: usize) -> Vec<(u16, Option<String>)> {
    let clients: Vec<_> = (0..count)
        .map(|_| {
            let url = url.to_owned();
            std::thread::spawn(move || {
                let response = agent().get(&url).call().unwrap();
                let retry = response
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_owned());
                (response.status().as_u16(), retry)
            })
        })
        .collect();
    clients
        .into_iter()
        .map(|client| client.join().unwrap())
        .collect()
}

fn copy_lines(pipe: impl std::io::Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

impl Lattice {
    fn unique_name() -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        format!(
            "t{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        )
    }

    pub fn start() -> Self {
        Self::on(Nats::start())
    }

    /// A lattice on `nats` (a server with extra configuration, say).
    pub fn on(nats: Nats) -> Self {
        Self {
            shoal: Shoal::new(),
            nats,
            peers: Vec::new(),
            registry: Registry::start(),
            name: Self::unique_name(),
            auth: None,
        }
    }

    /// A secure lattice: `shoal auth init` made its identity, nats-server runs in operator
    /// mode with it, and commands run as an admin user (`SHOAL_NATS_CREDS`).
    pub fn start_secure() -> Self {
        Self::start_secure_with("")
    }

    /// [`Self::start_secure`] with more nats-server configuration.
    pub fn start_secure_with(extra_config: &str) -> Self {
        let shoal = Shoal::new();
        let name = Self::unique_name();
        let auth = tempfile::tempdir().unwrap();
        super::succeeded(
            shoal
                .command()
                .env("SHOAL_LATTICE", &name)
                .args(["auth", "--dir"])
                .arg(auth.path())
                .arg("init")
                .output()
                .unwrap(),
        );
        // nats-server includes files by paths relative to its config: inline it instead.
        let nats = Nats::with_config(&format!(
            "{}{extra_config}",
            std::fs::read_to_string(auth.path().join("nats-auth.conf")).unwrap()
        ));
        let lattice = Self {
            shoal,
            nats,
            peers: Vec::new(),
            registry: Registry::start(),
            name,
            auth: Some(auth),
        };
        lattice.mint(&["user", "admin", "--role", "admin"], "admin");
        lattice
    }

    /// The secure lattice's auth directory (where `mint` writes credentials).
    pub fn auth_dir(&self) -> &std::path::Path {
        self.auth.as_ref().expect("a secure lattice").path()
    }

    /// Mints a credential (`shoal auth ARGS -o <dir>/<file>.creds`) and returns its path.
    pub fn mint(&self, args: &[&str], file: &str) -> std::path::PathBuf {
        let dir = self.auth.as_ref().expect("a secure lattice").path();
        let path = dir.join(format!("{file}.creds"));
        let output = self
            .shoal
            .command()
            .env("SHOAL_LATTICE", &self.name)
            .args(["auth", "--dir"])
            .arg(dir)
            .args(args)
            .arg("-o")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        path
    }

    /// Runs `shoal auth ARGS` on this lattice's auth directory.
    pub fn auth(&self, args: &[&str]) -> (bool, String, String) {
        let dir = self.auth.as_ref().expect("a secure lattice").path();
        let output = self
            .command()
            .args(["auth", "--dir"])
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// A lattice on a three-server NATS cluster, its buckets and streams kept by all three.
    pub fn start_cluster() -> Self {
        let mut servers = Nats::cluster(3);
        let nats = servers.remove(0);
        Self {
            shoal: Shoal::new(),
            nats,
            peers: servers,
            registry: Registry::start(),
            name: Self::unique_name(),
            auth: None,
        }
    }

    /// Every server's URL, comma-separated.
    pub fn nats_urls(&self) -> String {
        std::iter::once(&self.nats)
            .chain(&self.peers)
            .map(Nats::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A `shoal` command aimed at this lattice.
    pub fn command(&self) -> Command {
        self.aim(self.shoal.command())
    }

    /// `command` (a `shoal` command) aimed at this lattice.
    pub fn aim(&self, mut command: Command) -> Command {
        command
            .env("SHOAL_NATS", self.nats_urls())
            .env("SHOAL_LATTICE_REPLICAS", (1 + self.peers.len()).to_string())
            .env("SHOAL_LATTICE", &self.name)
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            );
        if let Some(auth) = &self.auth {
            command.env("SHOAL_NATS_CREDS", auth.path().join("admin.creds"));
        }
        command
    }

    /// Runs `shoal ARGS` against the lattice: exit success, stdout, stderr.
    pub fn shoal(&self, args: &[&str]) -> (bool, String, String) {
        let output = self.command().args(args).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs `shoal ARGS`, panicking with stderr on failure; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.shoal(args);
        assert!(ok, "shoal {args:?} failed:\n{stderr}");
        stdout
    }

    /// Pushes hello-http and returns its reference.
    pub fn push_hello(&self, tag: &str) -> String {
        self.push_guest("hello-http", tag)
    }

    /// Pushes the guest `name` (built from examples/) and returns its reference.
    pub fn push_guest(&self, name: &str, tag: &str) -> String {
        let reference = self.registry.reference(&format!("examples/{name}:{tag}"));
        let path = guest(name);
        self.shoal.ok(&["push", path.to_str().unwrap(), &reference]);
        reference
    }

    /// `shoal events -o json ARGS…`, one JSON value per event.
    pub fn events(&self, args: &[&str]) -> Vec<serde_json::Value> {
        let mut all = vec!["events", "-o", "json"];
        all.extend_from_slice(args);
        self.ok(&all)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Writes a manifest and applies it: exit success, stdout, stderr.
    pub fn try_apply(&self, manifest: &str) -> (bool, String, String) {
        let file = self
            .shoal
            .home
            .path()
            .join(format!("app-{}.yaml", rand_suffix()));
        std::fs::write(&file, manifest).unwrap();
        self.shoal(&["apply", "-f", file.to_str().unwrap()])
    }

    /// Writes a manifest and applies it.
    pub fn apply(&self, manifest: &str) -> String {
        let (ok, stdout, stderr) = self.try_apply(manifest);
        assert!(ok, "shoal apply failed:\n{stderr}");
        stdout
    }

    /// `app`'s row of `shoal get apps -o json`: its record and `status` (null when absent).
    pub fn app(&self, app: &str) -> serde_json::Value {
        self.row("apps", app)
    }

    /// The row named `name` of `shoal get KIND -o json` (null when absent).
    pub fn row(&self, kind: &str, name: &str) -> serde_json::Value {
        let rows: serde_json::Value =
            serde_json::from_str(&self.ok(&["get", kind, "-o", "json"])).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|row| row["name"] == name)
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces the one replica of `app` with a new one (scaled to 0, gone, scaled to 1,
    /// ready): a replica that starts after a policy changed.
    pub fn replace_replica(&self, app: &str, patience: Duration) {
        self.ok(&["scale", "app", app, "--replicas", "0"]);
        eventually(patience, "the old replica to go", || {
            self.replica_ids(app).is_empty().then_some(())
        });
        self.ok(&["scale", "app", app, "--replicas", "1"]);
        self.wait_ready(app, 1, patience);
    }

    /// Waits until the scheduler has seen the latest change of `app`: its status's
    /// `observedGeneration` is the app's generation. What a test then finds placed is what
    /// the scheduler decided for that change, not what it has yet to get to.
    pub fn wait_observed(&self, app: &str, patience: Duration) {
        eventually(patience, &format!("the scheduler to observe {app}"), || {
            let row = self.app(app);
            (row["generation"].as_u64().is_some()
                && row["status"]["observedGeneration"] == row["generation"])
                .then_some(())
        });
    }

    /// Waits until scheduler `id` leads and has finished a pass: the control plane's health,
    /// which the leader writes after a pass goes through, names it.
    pub fn wait_acting(&self, id: &str, patience: Duration) {
        eventually(patience, &format!("scheduler {id} to act"), || {
            let (_, stdout, _) = self.shoal(&["status", "-o", "json"]);
            let view: serde_json::Value = serde_json::from_str(&stdout).ok()?;
            (view["status"]["leader"] == id).then_some(())
        });
    }

    pub fn spawn(&self, args: &[&str], id: &str, wait_for_url: bool) -> Process {
        self.spawn_command(self.command(), args, id, wait_for_url)
    }

    /// [`Self::spawn`] with `command` (aimed at the lattice) instead of the `shoal` under test.
    pub fn spawn_command(
        &self,
        mut command: Command,
        args: &[&str],
        id: &str,
        wait_for_url: bool,
    ) -> Process {
        let mut child = command
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        copy_lines(child.stderr.take().unwrap(), Arc::clone(&log));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let url = if wait_for_url {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            let url = line
                .trim()
                .strip_prefix("ingress listening on ")
                .unwrap_or_else(|| panic!("{id} printed no address; log:\n{}", log.lock().unwrap()))
                .to_owned();
            Some(url)
        } else {
            None
        };
        copy_lines(stdout.into_inner(), Arc::clone(&log));
        Process {
            child,
            id: id.to_owned(),
            url,
            log,
            group: false,
        }
    }

    /// `shoal keygen` into `dir/<name>.key|.pub`, sealed with [`super::KEY_PASSWORD`].
    pub fn keygen(&self, dir: &std::path::Path, name: &str) {
        super::succeeded(
            self.command()
                .env("SHOAL_KEY_PASSWORD", super::KEY_PASSWORD)
                .args(["keygen", "--output-key-prefix"])
                .arg(dir.join(name))
                .output()
                .unwrap(),
        );
    }

    /// Starts `shoal host --id ID EXTRA…` with a fast heartbeat, and waits until its host
    /// record is in the lattice (the ingress address is printed a moment before).
    pub fn host_with(&self, id: &str, extra: &[&str]) -> Process {
        self.start_host(self.command(), id, extra)
    }

    /// [`Self::host_with`] in a process group of its own, killed as a whole.
    pub fn host_in_group(&self, id: &str, extra: &[&str]) -> Process {
        let mut command = self.command();
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut host = self.start_host(command, id, extra);
        host.group = true;
        host
    }

    /// `command` run as `shoal host --id ID EXTRA…`, once its record is in the lattice.
    fn start_host(&self, command: Command, id: &str, extra: &[&str]) -> Process {
        let mut args = host_args(id);
        args.extend_from_slice(extra);
        let host = self.spawn_command(command, &args, id, true);
        self.wait_registered(id);
        host
    }

    /// Starts `shoal host --id ID --label …`; see [`Self::host_with`].
    pub fn host(&self, id: &str, labels: &[&str]) -> Process {
        let mut extra = Vec::new();
        for label in labels {
            extra.push("--label");
            extra.push(*label);
        }
        self.host_with(id, &extra)
    }

    /// Waits until the host record of `id` is in the lattice, so placement can see it.
    /// A scheduler that is still starting (on a cold three-server cluster, its buckets can
    /// take longer than the CLI waits for an answer) is waited for too.
    pub fn wait_registered(&self, id: &str) {
        let quoted = format!("\"id\": \"{id}\"");
        eventually(
            Duration::from_secs(30),
            &format!("host {id} to register"),
            || {
                let (ok, stdout, _) = self.shoal(&["get", "hosts", "-o", "json"]);
                (ok && stdout.contains(&quoted)).then_some(())
            },
        );
    }

    /// `shoal scheduler s1` with its own credential (a secure lattice), a 1 s lease and
    /// `host_timeout`.
    pub fn secure_scheduler(&self, host_timeout: &str) -> Process {
        self.secure_scheduler_with(host_timeout, &[])
    }

    /// [`Self::secure_scheduler`] with `extra` arguments. It holds the lattice's secrets
    /// key and store key, as `shoal auth init` wrote them.
    pub fn secure_scheduler_with(&self, host_timeout: &str, extra: &[&str]) -> Process {
        let creds = self.mint(&["scheduler", "s1"], "s1");
        let secrets = self.auth_dir().join("secrets.xk");
        let stores = self.auth_dir().join("stores.nk");
        let mut args = vec![
            "scheduler",
            "--id",
            "s1",
            "--host-timeout",
            host_timeout,
            "--lease",
            "1s",
            "--nats-creds",
            creds.to_str().unwrap(),
            "--secrets-key",
            secrets.to_str().unwrap(),
            "--store-key",
            stores.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.spawn(&args, "s1", false)
    }

    /// A host with its own credential (a secure lattice), registered.
    pub fn secure_host(&self, id: &str) -> Process {
        let creds = self.mint(&["host", id], id);
        self.host_with(id, &["--nats-creds", creds.to_str().unwrap()])
    }

    /// Starts `shoal scheduler` with a 1 s host timeout and lease.
    pub fn scheduler(&self, id: &str) -> Process {
        self.scheduler_with(id, &[])
    }

    /// [`Self::scheduler`] with `extra` arguments.
    pub fn scheduler_with(&self, id: &str, extra: &[&str]) -> Process {
        let mut args = vec![
            "scheduler",
            "--id",
            id,
            "--host-timeout",
            "1s",
            "--lease",
            "1s",
        ];
        args.extend_from_slice(extra);
        self.spawn(&args, id, false)
    }

    /// A scheduler that counts a silent host lost only after a minute: for tests about what
    /// hosts do while the lattice is away, not about failover.
    pub fn patient_scheduler(&self, id: &str) -> Process {
        self.spawn(
            &[
                "scheduler",
                "--id",
                id,
                "--host-timeout",
                "60s",
                "--lease",
                "1s",
            ],
            id,
            false,
        )
    }

    /// Starts a scheduler that answers the control API but never leads while another
    /// holds the lease (its lease is an hour): reads and writes with nothing placed.
    pub fn api_only(&self, id: &str) -> Process {
        self.spawn(&["scheduler", "--id", id, "--lease", "1h"], id, false)
    }

    /// `shoal get replicas -o json`: (app, host, phase) of every replica.
    pub fn replicas(&self) -> Vec<(String, String, String)> {
        let stdout = self.ok(&["get", "replicas", "-o", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    row["app"].as_str().unwrap().to_owned(),
                    row["host"].as_str().unwrap().to_owned(),
                    row["status"]["phase"]
                        .as_str()
                        .unwrap_or("pending")
                        .to_owned(),
                )
            })
            .collect()
    }

    /// The ids of `app`'s replicas, sorted.
    pub fn replica_ids(&self, app: &str) -> Vec<String> {
        let stdout = self.ok(&["get", "replicas", "-o", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let mut ids: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["app"] == app)
            .map(|row| row["replica"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// The name of the lattice's KV bucket `suffix` (`assignments`, `status`…).
    pub fn bucket(&self, suffix: &str) -> String {
        format!("shoal-{}-v1-{suffix}", self.name)
    }

    /// Ready replicas of `app` per host.
    pub fn ready_by_host(&self, app: &str) -> BTreeMap<String, usize> {
        let mut hosts = BTreeMap::new();
        for (name, host, phase) in self.replicas() {
            if name == app && phase == "ready" {
                *hosts.entry(host).or_insert(0) += 1;
            }
        }
        hosts
    }

    /// Waits until `app` has exactly `count` replicas, all ready; returns them per host.
    pub fn wait_ready(
        &self,
        app: &str,
        count: usize,
        patience: Duration,
    ) -> BTreeMap<String, usize> {
        eventually(
            patience,
            &format!("{count} ready replicas of {app}"),
            || {
                let replicas: Vec<_> = self
                    .replicas()
                    .into_iter()
                    .filter(|(name, _, _)| name == app)
                    .collect();
                (replicas.len() == count && replicas.iter().all(|(_, _, phase)| phase == "ready"))
                    .then(|| self.ready_by_host(app))
            },
        )
    }
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `shoal host --id ID` with the tests' flags: any free ingress port, a fast heartbeat
/// (250 ms), a short drain (2 s).
pub fn host_args(id: &str) -> Vec<&str> {
    vec![
        "host",
        "--id",
        id,
        "--http",
        "127.0.0.1:0",
        "--heartbeat",
        "250ms",
        "--drain",
        "2s",
    ]
}

/// A manifest for hello-http.
pub fn hello_manifest(name: &str, component: &str, replicas: u32, extra: &str) -> String {
    format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: {name}}}\nspec:\n  component: {component}\n  replicas: {replicas}\n  routes: [{{path: /{name}}}]\n{extra}"
    )
}
