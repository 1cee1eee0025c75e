//! End-to-end tests of the lattice: real nats-server, real registry, real `shoal host` and
//! `shoal scheduler` processes, killed with signals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::lattice::{Lattice, hello_manifest};
use support::{Signal, eventually, free_port};

const PATIENCE: Duration = Duration::from_secs(30);

/// A `shoal` process stopped on drop with SIGTERM: a `shoal up` then stops the nats-server
/// it started.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        support::stop_up(&mut self.0);
    }
}

#[test]
fn placement_spreads_over_zones_honours_requires_and_waits_for_a_fitting_host() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let a = lattice.host("host-a", &["zone=a"]);
    let _b = lattice.host("host-b", &["zone=b"]);
    let _c = lattice.host("host-c", &["zone=c"]);
    let hello = lattice.push_hello("1.0");

    let applied = lattice.apply(&hello_manifest(
        "spread",
        &hello,
        3,
        "  placement: {spreadBy: zone}\n",
    ));
    assert!(applied.contains("app default/spread created"), "{applied}");
    let by_host = lattice.wait_ready("spread", 3, PATIENCE);
    assert_eq!(
        by_host.values().copied().collect::<Vec<_>>(),
        [1, 1, 1],
        "{by_host:?}"
    );
    let (status, body) = eventually(PATIENCE, "host-a to route /spread", || {
        a.get("/spread").filter(|(status, _)| *status == 200)
    });
    assert_eq!((status, body.as_str()), (200, "hello from Shoal\n"));

    lattice.apply(&hello_manifest(
        "pinned",
        &hello,
        2,
        "  placement: {requires: {zone: b}}\n",
    ));
    let by_host = lattice.wait_ready("pinned", 2, PATIENCE);
    assert_eq!(by_host.keys().collect::<Vec<_>>(), ["host-b"]);

    // Nothing fits: the app stays unplaced and describe says why.
    lattice.apply(&hello_manifest(
        "eu",
        &hello,
        1,
        "  placement: {requires: {zone: eu}}\n",
    ));
    let described = eventually(
        PATIENCE,
        "describe to explain the placement failure",
        || {
            let described = lattice.ok(&["describe", "app", "eu"]);
            described
                .contains("0 of 3 hosts fit: 3 lack label zone=eu")
                .then_some(described)
        },
    );
    assert!(described.contains("Unschedulable"), "{described}");

    // A fitting host joins: the app is placed there.
    let _eu = lattice.host("host-eu", &["zone=eu"]);
    let by_host = lattice.wait_ready("eu", 1, PATIENCE);
    assert_eq!(by_host.keys().collect::<Vec<_>>(), ["host-eu"]);
    let described = lattice.ok(&["describe", "app", "eu"]);
    assert!(described.contains("AllPlaced"), "{described}");
}

#[test]
fn a_lost_host_s_replicas_move_and_a_returning_host_keeps_no_duplicates() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut hosts = [
        lattice.host("h1", &[]),
        lattice.host("h2", &[]),
        lattice.host("h3", &[]),
    ];
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 2, ""));
    let before = lattice.wait_ready("hello", 2, PATIENCE);

    // kill -9 one host that runs a replica.
    let victim = before.keys().next().unwrap().clone();
    let index = hosts.iter().position(|host| host.id == victim).unwrap();
    hosts[index].kill();
    let killed = Instant::now();
    let after = eventually(PATIENCE, "the replicas to run elsewhere", || {
        let ready = lattice.ready_by_host("hello");
        (ready.values().sum::<usize>() == 2 && !ready.contains_key(&victim)).then_some(ready)
    });
    let moved_in = killed.elapsed();
    eprintln!("host killed → replicas ready elsewhere in {moved_in:?}");
    // Host timeout 1 s (heartbeats every 250 ms), plus a margin for a loaded CI machine.
    assert!(moved_in < Duration::from_secs(10), "took {moved_in:?}");
    assert!(!after.contains_key(&victim));

    // A host that stops answering (SIGSTOP) but comes back: what moved away stops there.
    let frozen = after.keys().next().unwrap().clone();
    let index = hosts.iter().position(|host| host.id == frozen).unwrap();
    let pid = hosts[index].pid();
    assert!(support::signal(pid, Signal::Stop));
    eventually(PATIENCE, "replicas to leave the frozen host", || {
        let ready = lattice.ready_by_host("hello");
        (ready.values().sum::<usize>() == 2 && !ready.contains_key(&frozen)).then_some(())
    });
    assert!(support::signal(pid, Signal::Cont));
    eventually(
        PATIENCE,
        "the returning host to run nothing that moved away",
        || {
            let replicas = lattice.replicas();
            let hello: Vec<_> = replicas
                .iter()
                .filter(|(app, _, _)| app == "hello")
                .collect();
            let log = hosts[index].log();
            (hello.len() == 2
                && hello.iter().all(|(_, host, _)| *host != frozen)
                && log.contains("replica stopped"))
            .then_some(())
        },
    );
}

#[test]
fn schedulers_hand_over_without_disturbing_what_is_placed() {
    let lattice = Lattice::start();
    let mut first = lattice.scheduler("s1");
    let _host = lattice.host("h1", &[]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 2, ""));
    lattice.wait_ready("hello", 2, PATIENCE);
    let placed = lattice.replica_ids("hello");

    // kill -9 the only scheduler and start another: nothing placed changes.
    first.kill();
    let mut second = lattice.scheduler("s2");
    eventually(PATIENCE, "s2 to lead", || {
        second.log().contains("now leads").then_some(())
    });
    let _third = lattice.scheduler("s3");
    lattice.wait_acting("s2", PATIENCE);
    assert_eq!(lattice.replica_ids("hello"), placed);

    // Kill the leader: the standby takes the lease and acts on a change.
    second.kill();
    lattice.ok(&["scale", "app", "hello", "--replicas", "3"]);
    let started = Instant::now();
    lattice.wait_ready("hello", 3, PATIENCE);
    eprintln!(
        "leader killed → standby placed the scaled replica in {:?}",
        started.elapsed()
    );
    let now = lattice.replica_ids("hello");
    assert!(
        placed.iter().all(|id| now.contains(id)),
        "{placed:?} {now:?}"
    );
}

#[test]
fn apps_and_assignments_survive_a_nats_restart_and_hosts_reconnect() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, ""));
    lattice.wait_ready("hello", 1, PATIENCE);
    let placed = lattice.replica_ids("hello");

    lattice.nats.restart();
    // The host keeps serving while the lattice is away, and afterwards.
    assert_eq!(host.get("/hello").map(|(status, _)| status), Some(200));
    assert_eq!(lattice.replica_ids("hello"), placed);
    eventually(PATIENCE, "the host to heartbeat again", || {
        let hosts: serde_json::Value =
            serde_json::from_str(&lattice.ok(&["get", "hosts", "-o", "json"])).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        hosts
            .as_array()
            .unwrap()
            .iter()
            .any(|host| {
                host["id"] == "h1"
                    && now.saturating_sub(host["heartbeatAt"].as_u64().unwrap()) < 1000
            })
            .then_some(())
    });
    // The scheduler and host act on new desired state after the restart.
    lattice.ok(&["scale", "app", "hello", "--replicas", "2"]);
    lattice.wait_ready("hello", 2, PATIENCE);
}

#[test]
fn bad_manifests_are_refused_with_the_field_path_and_nothing_is_stored() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let hello = lattice.push_hello("1.0");
    let good = hello_manifest("good", &hello, 1, "");
    let cases = [
        (
            good.replace("replicas: 1", "replicas: 1\n  replica: 2"),
            "spec.replica: unknown field `replica`",
        ),
        (
            good.replace("replicas: 1", "replicas: 1\n  limits: {memory: 64Q}"),
            "spec.limits.memory",
        ),
        (
            good.replace(&format!("  component: {hello}\n"), ""),
            "missing field `component`",
        ),
        (format!("{good}---\n{good}"), "appears more than once"),
        (
            format!(
                "{good}---\n{}",
                hello_manifest(
                    "ghost",
                    &lattice.registry.reference("examples/ghost:1.0"),
                    1,
                    ""
                )
            ),
            "app default/ghost: spec.component",
        ),
    ];
    for (manifest, expected) in cases {
        let file = lattice.shoal.home.path().join("bad.yaml");
        std::fs::write(&file, &manifest).unwrap();
        let (ok, _, stderr) = lattice.shoal(&["apply", "-f", file.to_str().unwrap()]);
        assert!(!ok, "applied:\n{manifest}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(stderr.contains("nothing was applied"), "{stderr}");
        assert_eq!(lattice.ok(&["get", "apps", "-o", "json"]).trim(), "[]");
    }
}

#[test]
fn shoal_up_insecure_is_open_and_says_so() {
    let shoal = support::Shoal::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut up = open_up(&shoal, &port, data.path());
    let mut stderr = BufReader::new(up.0.stderr.take().unwrap());
    let mut warning = String::new();
    stderr.read_line(&mut warning).unwrap();
    assert!(
        warning.starts_with("warning: --insecure: any client"),
        "{warning}"
    );
    // Any client may, without a credential; none is left in the working directory.
    let nats = format!("nats://127.0.0.1:{port}");
    eventually(PATIENCE, "an open lattice to answer", || {
        up_hosts_answer(&shoal, &nats)
    });
    assert!(!shoal.home.path().join(".shoal/admin.creds").exists());
}

/// `shoal up` on `port` with its data in `data`, from the test's home, for the `nats-server`
/// on PATH.
fn up_command(shoal: &support::Shoal, port: &str, data: &std::path::Path) -> std::process::Command {
    let mut command = shoal.command();
    command
        .args(["up", "--nats-port", port, "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(data)
        .env_remove("SHOAL_NATS")
        .env("PATH", std::env::var("PATH").unwrap());
    command
}

/// `shoal up --insecure` on `port` and `data`, its stderr piped.
fn open_up(shoal: &support::Shoal, port: &str, data: &std::path::Path) -> StopOnDrop {
    StopOnDrop(
        up_command(shoal, port, data)
            .arg("--insecure")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Whether the lattice at `nats` lists the host `shoal up` starts (as an anonymous client:
/// only an open lattice answers).
fn up_hosts_answer(shoal: &support::Shoal, nats: &str) -> Option<()> {
    let output = shoal
        .command()
        .env("SHOAL_NATS", nats)
        .args(["get", "hosts", "-o", "json"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .contains("local-1")
        .then_some(())
}

/// Whether process `pid` runs (and is not a zombie).
fn runs(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| !line.is_empty())
}

#[test]
fn a_shoal_up_killed_with_sigkill_leaves_nothing_in_the_next_one_s_way() {
    let shoal = support::Shoal::new();
    let data = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let nats = format!("nats://127.0.0.1:{port}");
    let hosts_answer = || up_hosts_answer(&shoal, &nats);
    let mut first = open_up(&shoal, &port, data.path());
    eventually(PATIENCE, "the first lattice to answer", hosts_answer);
    let pid_file = data.path().join("nats-server.pid");
    let server: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SIGKILL: shoal up cannot stop its nats-server, which runs in its own process group.
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    assert!(runs(server), "the server outlived its shoal up");

    let mut second = open_up(&shoal, &port, data.path());
    let mut stderr = BufReader::new(second.0.stderr.take().unwrap());
    let said = eventually(PATIENCE, "the second shoal up to stop the leftover", || {
        let mut line = String::new();
        stderr.read_line(&mut line).ok()?;
        line.contains("stopping the nats-server").then_some(line)
    });
    assert!(said.contains(&format!("(pid {server})")), "{said}");
    eventually(PATIENCE, "the second lattice to answer", hosts_answer);
    assert!(!runs(server), "the leftover server still runs");
    drop(second);

    // A port held by something else is refused, naming what holds it.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port().to_string();
    let other = tempfile::tempdir().unwrap();
    let mut refused = open_up(&shoal, &taken, other.path());
    let status = refused.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refused.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "port {taken} is taken by pid {}",
            std::process::id()
        )),
        "{stderr}"
    );
}

#[test]
fn shoal_up_serves_the_example_app() {
    let lattice = Lattice::start();
    let hello = lattice.push_hello("1.0");
    let manifest = lattice.shoal.home.path().join("hello.yaml");
    std::fs::write(&manifest, hello_manifest("hello", &hello, 1, "")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let mut up = StopOnDrop(
        up_command(&lattice.shoal, &port, data.path())
            .arg("--example")
            .arg(&manifest)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = BufReader::new(up.0.stdout.take().unwrap());
    let mut url = None;
    let mut dashboard = None;
    let mut printed = String::new();
    for _ in 0..10 {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        printed.push_str(&line);
        if let Some(address) = line.trim().strip_prefix("host local-1 ingress ") {
            url = Some(address.to_owned());
        }
        if let Some(address) = line.trim().strip_prefix("dashboard ") {
            dashboard = Some(address.trim_end_matches('/').to_owned());
        }
        if line.contains("created") {
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("no ingress printed:\n{printed}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let body = eventually(PATIENCE, "the example app to answer", || {
        let mut response = agent.get(&format!("{url}/hello")).call().ok()?;
        (response.status() == 200).then(|| response.body_mut().read_to_string().unwrap())
    });
    assert_eq!(body, "hello from Shoal\n");
    // The dashboard runs beside it, as the lattice's admin.
    let dashboard = dashboard.unwrap_or_else(|| panic!("no dashboard printed:\n{printed}"));
    eventually(PATIENCE, "the dashboard to show the example app", || {
        let mut response = agent
            .get(&format!("{dashboard}/api/snapshot"))
            .call()
            .ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        text.contains("\"name\":\"hello\"").then_some(())
    });

    // Secure by default: a client without the credential is refused; commands run in the
    // directory `shoal up` ran in use the admin credential it left there.
    let nats = format!("nats://127.0.0.1:{port}");
    let elsewhere = tempfile::tempdir().unwrap();
    let refused = lattice
        .shoal
        .command()
        .current_dir(elsewhere.path())
        .env("SHOAL_NATS", &nats)
        .args(["get", "apps"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused this client"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let allowed = lattice
        .shoal
        .command()
        .env("SHOAL_NATS", &nats)
        .args(["get", "apps", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        allowed.status.success() && String::from_utf8_lossy(&allowed.stdout).contains("hello"),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    // What its host saves to serve offline lives with the lattice's data, so another
    // `shoal up` with another data directory does not find it.
    assert!(
        data.path().join("hosts/local-1").is_dir(),
        "no host state in the data directory"
    );
    // And `shoal auth` there mints with the identity `shoal up` made, wherever its data is.
    let minted = lattice.shoal.home.path().join("h9.creds");
    lattice
        .shoal
        .ok(&["auth", "host", "h9", "-o", minted.to_str().unwrap()]);
    let listed = lattice.shoal.ok(&["auth", "list"]).stdout();
    assert!(listed.contains("h9"), "{listed}");
    support::signal(up.0.id(), Signal::Int);
    let status = up.0.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_restarted_host_reads_its_assignments_and_serves_them_again() {
    let lattice = Lattice::start();
    let mut scheduler = lattice.scheduler("s1");
    let mut host = lattice.host("h1", &[]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 2, ""));
    lattice.wait_ready("hello", 2, PATIENCE);
    let placed = lattice.replica_ids("hello");

    // With no scheduler to move anything, the restarted host alone must converge on what
    // is assigned to it. (One that never leads answers `shoal get`.)
    let _reader = lattice.api_only("reader");
    scheduler.kill();
    host.kill();
    let host = lattice.host("h1", &[]);
    lattice.wait_ready("hello", 2, PATIENCE);
    assert_eq!(lattice.replica_ids("hello"), placed);
    let (status, body) = eventually(PATIENCE, "the restarted host to serve", || {
        host.get("/hello").filter(|(status, _)| *status == 200)
    });
    assert_eq!((status, body.as_str()), (200, "hello from Shoal\n"));
}

#[test]
fn the_lattice_connection_takes_nats_credentials() {
    let nats = support::nats::Nats::with_user("shoal", "s3cret");
    let shoal = support::Shoal::new();
    let command = |user: Option<(&str, &str)>| {
        let mut command = shoal.command();
        command
            .env("SHOAL_NATS", nats.url())
            .env("SHOAL_LATTICE", "secured")
            .env_remove("SHOAL_NATS_USER")
            .env_remove("SHOAL_NATS_PASSWORD");
        if let Some((user, password)) = user {
            command
                .env("SHOAL_NATS_USER", user)
                .env("SHOAL_NATS_PASSWORD", password);
        }
        command
    };
    let mut scheduler = command(Some(("shoal", "s3cret")))
        .args(["scheduler"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let refused = command(None).args(["get", "apps"]).output().unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("refused this client"), "{stderr}");
    assert!(stderr.to_lowercase().contains("authorization"), "{stderr}");

    let wrong = command(Some(("shoal", "guess")))
        .args(["get", "apps"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());

    let allowed = command(Some(("shoal", "s3cret")))
        .args(["get", "apps", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&allowed.stdout).trim(), "[]");
    let _ = scheduler.kill();
    let _ = scheduler.wait();
}

#[test]
fn the_lattice_connection_verifies_a_tls_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("nats.pem"), dir.path().join("nats.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let nats = support::nats::Nats::with_config(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\" }}\n",
        cert.display(),
        key.display()
    ));
    let shoal = support::Shoal::new();
    let mut scheduler = shoal
        .command()
        .env("SHOAL_NATS", nats.url())
        .env("SHOAL_LATTICE", "tls")
        .args(["scheduler", "--nats-ca", cert.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let get = |extra: &[&str]| {
        shoal
            .command()
            .env("SHOAL_NATS", nats.url())
            .env("SHOAL_LATTICE", "tls")
            .args(["get", "apps", "-o", "json"])
            .args(extra)
            .output()
            .unwrap()
    };
    // Without the CA the server's certificate is not trusted.
    let refused = get(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot connect to NATS"));
    let trusted = get(&["--nats-ca", cert.to_str().unwrap()]);
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&trusted.stdout).trim(), "[]");
    let _ = scheduler.kill();
    let _ = scheduler.wait();
}

#[test]
fn logs_show_what_replicas_wrote_on_any_host_and_follow_new_lines() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut writer = lattice.host("writer", &["role=writer"]);
    let front = lattice.host("front", &["role=front"]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    lattice.apply(&format!(
        "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: printer}}\nspec:\n  component: {fixtures}\n  replicas: 1\n  routes: [{{path: /}}]\n  placement: {{requires: {{role: writer}}}}\n"
    ));
    lattice.wait_ready("printer", 1, PATIENCE);
    let replica = lattice.replica_ids("printer").remove(0);

    // Written on the writer host, asked for through the other one (once it routes there,
    // so that nothing is printed twice).
    eventually(PATIENCE, "the front host to route to printer", || {
        front.get("/hello").filter(|(status, _)| *status == 200)
    });
    let printed = front.get("/print?out=first-line&err=oops&partial=no-line-end");
    assert_eq!(printed, Some((200, "printed\n".to_owned())));
    let expected =
        format!("{replica} first-line\n{replica} (stderr) oops\n{replica} no-line-end\n");
    let logs = eventually(PATIENCE, "the lines in shoal logs", || {
        let logs = lattice.ok(&["logs", "printer"]);
        (logs == expected).then_some(logs)
    });
    assert_eq!(logs, expected);

    let json = lattice.ok(&["logs", "printer", "-o", "json", "--tail", "2"]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[0]["line"], "oops");
    assert_eq!(lines[0]["output"], "stderr");
    assert_eq!(lines[0]["host"], "writer");
    assert_eq!(lines[0]["replica"], replica.as_str());
    assert_eq!(lines[0]["revision"], 1);
    assert_eq!(lines[1]["line"], "no-line-end");
    assert_eq!(lattice.ok(&["logs", "printer", "--replica", "other"]), "");
    let stamped = lattice.ok(&["logs", "printer", "--timestamps", "--since", "1h"]);
    assert_eq!(stamped.lines().count(), 3, "{stamped}");
    for line in stamped.lines() {
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(time.starts_with("20") && time.ends_with('Z'), "{line}");
        assert!(rest.starts_with(&replica), "{line}");
    }

    // -f prints what is there, then what comes.
    let mut follow = lattice.command();
    follow
        .args(["logs", "printer", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = follow.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _follow = StopOnDrop(child);
    let (seen, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if seen.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| -> String {
        lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("shoal logs -f printed no {what}"))
    };
    assert_eq!(next_line("backlog"), format!("{replica} first-line"));
    next_line("backlog");
    next_line("backlog");
    let (status, _) = front.get("/print?out=second-line").unwrap();
    assert_eq!(status, 200);
    assert_eq!(next_line("new line"), format!("{replica} second-line"));

    // A burst arrives whole and in order (hosts send what is queued in batches).
    let (status, _) = front.get("/print?out=burst&repeat=2000").unwrap();
    assert_eq!(status, 200);
    let burst: Vec<String> = eventually(PATIENCE, "the whole burst in shoal logs", || {
        let logs = lattice.ok(&["logs", "printer", "--tail", "2000"]);
        let burst: Vec<String> = logs
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("{replica} burst-")))
            .map(str::to_owned)
            .collect();
        (burst.len() == 2000).then_some(burst)
    });
    let expected: Vec<String> = (0..2000).map(|n| n.to_string()).collect();
    assert_eq!(burst, expected);
    for _ in 0..2000 {
        next_line("burst line");
    }

    // The lines outlive the host that wrote them.
    writer.kill();
    let logs = lattice.ok(&["logs", "printer", "--tail", "1"]);
    assert_eq!(logs, format!("{replica} burst-1999\n"));

    let (ok, _, stderr) = lattice.shoal(&["logs", "nope"]);
    assert!(!ok);
    assert!(stderr.contains("there is no app default/nope"), "{stderr}");
}

#[test]
fn events_tell_what_the_scheduler_and_the_hosts_did() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut hosts = [lattice.host("a", &[]), lattice.host("b", &[])];
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, ""));
    let first = lattice
        .wait_ready("hello", 1, PATIENCE)
        .into_keys()
        .next()
        .unwrap();
    let replica = lattice.replica_ids("hello").remove(0);
    let events = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["events", "-o", "json"];
        all.extend_from_slice(args);
        lattice
            .ok(&all)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let find = |events: &[serde_json::Value], reason: &str, host: &str| {
        events
            .iter()
            .find(|event| event["reason"] == reason && event["host"] == host)
            .cloned()
    };
    let (placed, ready) = eventually(PATIENCE, "Placed and Ready events", || {
        let events = events(&["--app", "hello"]);
        Some((
            find(&events, "Placed", &first)?,
            find(&events, "Ready", &first)?,
        ))
    });
    assert_eq!(placed["source"], "scheduler s1");
    assert_eq!(placed["replica"], replica.as_str());
    assert_eq!(placed["app"], "hello");
    assert_eq!(
        placed["message"],
        format!("replica {replica} placed on host {first} (revision 1)")
    );
    assert_eq!(ready["source"], format!("host {first}"));

    // The host running the replica dies: the scheduler says so and places it again.
    let other = if first == "a" { "b" } else { "a" };
    hosts
        .iter_mut()
        .find(|host| host.id == first)
        .unwrap()
        .kill();
    let (lost, removed) = eventually(PATIENCE, "the loss and the replacement as events", || {
        let events = events(&[]);
        find(&events, "Ready", other)?;
        find(&events, "Placed", other)?;
        Some((
            find(&events, "HostLost", &first)?,
            find(&events, "Removed", &first)?,
        ))
    });
    assert_eq!(lost["source"], "scheduler s1");
    assert!(lost["app"].is_null());
    assert_eq!(
        removed["message"],
        format!("replica {replica} removed from host {first}: its host is lost")
    );
    // Host events are not an app's; text for people has the reason and the object.
    assert!(find(&events(&["--app", "hello"]), "HostLost", &first).is_none());
    let text = lattice.ok(&["events", "--since", "1h"]);
    assert!(
        text.lines()
            .any(|line| line.contains("HostLost") && line.contains(&format!("host {first}"))),
        "{text}"
    );
}

#[test]
fn a_host_keeps_serving_while_the_lattice_is_away() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("edge", &[]);
    let hello = lattice.push_hello("1.0");
    lattice.apply(&hello_manifest("hello", &hello, 1, ""));
    lattice.wait_ready("hello", 1, PATIENCE);
    assert_eq!(host.get("/hello").map(|(status, _)| status), Some(200));

    // The uplink is gone for several heartbeats and mirror resyncs: every request is still
    // answered by the replica the host already runs.
    lattice.nats.stop();
    let away = Instant::now();
    let mut answered = 0;
    while away.elapsed() < Duration::from_secs(6) {
        let status = host.get("/hello").map(|(status, _)| status);
        assert_eq!(status, Some(200), "after {:?} without NATS", away.elapsed());
        answered += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered > 20, "{answered}");

    lattice.nats.restart();
    assert_eq!(host.get("/hello").map(|(status, _)| status), Some(200));
    // Back on the lattice, it still acts on desired state.
    lattice.ok(&["scale", "app", "hello", "--replicas", "2"]);
    lattice.wait_ready("hello", 2, PATIENCE);
}
