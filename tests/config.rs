//! End-to-end tests of app configuration through `wasi:config/store`: inline values and
//! config objects read by a component built with plain wit-bindgen (every version of the
//! interface), a config change rolled out as a revision, a bad value rolled back, and the
//! environment (`spec.env`, and `spec.config` for manifests written before it). Real
//! nats-server, registry and `shoal` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::eventually;
use support::lattice::{Lattice, hello_manifest};

const PATIENCE: Duration = Duration::from_secs(30);

/// The text a GET through `host`'s ingress answers with status 200.
fn body(host: &support::lattice::Process, path: &str) -> Option<String> {
    host.get(path)
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body)
}

#[test]
fn config_objects_reach_components_and_a_change_rolls_out_and_back() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let reader = lattice.push_guest("config-reader", "1.0");
    let motd = lattice.shoal.home.path().join("motd.txt");
    std::fs::write(&motd, "welcome\nto the edge").unwrap();
    let motd_arg = format!("motd={}", motd.display());

    // An app may not name a config object that does not exist.
    let manifest = hello_manifest(
        "reader",
        &reader,
        2,
        "  config: {INLINE: yes, greeting: inline-loses}\n  configFrom: [settings]\n  health: {path: /healthz}\n  rollout: {progressDeadline: 5s}\n",
    );
    let (ok, _, stderr) = lattice.try_apply(&manifest);
    assert!(
        !ok && stderr.contains("there is no config \"settings\" in namespace default"),
        "{stderr}"
    );

    // A record written around the API (a raw NATS client) is not used, and creating the
    // object again replaces it.
    lattice.nats.publish(
        &format!("$KV.shoal-{}-v1-configs.default.settings", lattice.name),
        br#"{"name":"settings","data":"not a map"}"#,
    );
    let (ok, _, stderr) = lattice.try_apply(&manifest);
    assert!(
        !ok && stderr.contains("the stored config \"settings\" is not a valid config object"),
        "{stderr}"
    );
    let created = lattice.ok(&[
        "config",
        "create",
        "settings",
        "--from-literal",
        "greeting=hello",
        "--from-file",
        &motd_arg,
    ]);
    assert!(
        created.contains("config default/settings created"),
        "{created}"
    );
    lattice.apply(&manifest);
    lattice.wait_ready("reader", 2, PATIENCE);
    // Every version of wasi:config reads the same values (the fixture checks they agree);
    // the inline value wins over the object's.
    eventually(PATIENCE, "the reader to serve its config", || {
        body(&host, "/reader/config/greeting")
    });
    assert_eq!(
        body(&host, "/reader/config/greeting").as_deref(),
        Some("inline-loses")
    );
    assert_eq!(
        body(&host, "/reader/config/motd").as_deref(),
        Some("welcome\nto the edge")
    );
    assert_eq!(body(&host, "/reader/config/INLINE").as_deref(), Some("yes"));
    assert_eq!(host.get("/reader/config/missing").unwrap().0, 404);

    // A new value in the object: the app rolls out as a new revision that reads it.
    lattice.apply(&manifest.replace(", greeting: inline-loses", ""));
    eventually(
        PATIENCE,
        "revision 2 to serve the object's greeting",
        || (body(&host, "/reader/config/greeting").as_deref() == Some("hello")).then_some(()),
    );
    let updated = lattice.ok(&[
        "config",
        "create",
        "settings",
        "--from-literal",
        "greeting=bonjour",
        "--from-file",
        &motd_arg,
    ]);
    assert!(
        updated.contains("updated to version 2")
            && updated.contains("app default/reader rolls out revision 3"),
        "{updated}"
    );
    lattice.ok(&["rollout", "status", "reader", "--timeout", "60s"]);
    assert_eq!(
        body(&host, "/reader/config/greeting").as_deref(),
        Some("bonjour")
    );
    let described = lattice.ok(&["describe", "app", "reader"]);
    assert!(
        described.contains("Config from: settings (version 2)"),
        "{described}"
    );
    let history = lattice.ok(&["rollout", "history", "reader"]);
    assert!(
        history.contains("config settings: version 1 → 2 (changed greeting)"),
        "{history}"
    );
    // The same values again: nothing rolls out.
    let again = lattice.ok(&[
        "config",
        "create",
        "settings",
        "--from-literal",
        "greeting=bonjour",
        "--from-file",
        &motd_arg,
    ]);
    assert!(again.contains("unchanged (version 2)"), "{again}");
    assert!(!again.contains("rolls out"), "{again}");

    // A value that fails readiness: its revision never serves and is rolled back.
    lattice.ok(&[
        "config",
        "create",
        "settings",
        "--from-literal",
        "greeting=bonjour",
        "--from-literal",
        "healthy=no",
    ]);
    let (ok, _, stderr) = lattice.shoal(&["rollout", "status", "reader", "--timeout", "60s"]);
    assert!(!ok, "the rollout of the bad value should fail");
    assert!(stderr.contains("rolled back to revision 3"), "{stderr}");
    assert_eq!(
        body(&host, "/reader/config/greeting").as_deref(),
        Some("bonjour")
    );
    assert_eq!(host.get("/reader/config/healthy").unwrap().0, 404);

    // Listing shows keys, never values; describing shows the values and who uses them.
    let listed = lattice.ok(&["get", "configs"]);
    assert!(
        listed.contains("settings") && listed.contains("greeting,healthy"),
        "{listed}"
    );
    assert!(!listed.contains("bonjour"), "{listed}");
    let described = lattice.ok(&["describe", "config", "settings"]);
    assert!(
        described.contains("greeting: bonjour") && described.contains("Used by:     reader"),
        "{described}"
    );
    // In use: not deleted.
    let (ok, _, stderr) = lattice.shoal(&["delete", "config", "settings"]);
    assert!(!ok && stderr.contains("in use by reader"), "{stderr}");
    lattice.ok(&["delete", "app", "reader"]);
    lattice.ok(&["delete", "config", "settings"]);
    let (ok, _, stderr) = lattice.shoal(&["describe", "config", "settings"]);
    assert!(!ok && stderr.contains("there is no config"), "{stderr}");
}

#[test]
fn env_sets_the_environment_and_config_still_does_for_older_manifests() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let host = lattice.host("h1", &[]);
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    let manifest = |extra: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {{name: fixture}}\nspec:\n  component: {fixtures}\n  routes: [{{path: /env}}]\n  config: {{GREETING: hi}}\n{extra}"
        )
    };
    // Written before spec.env: config is the environment, as it was.
    lattice.apply(&manifest(""));
    let older = eventually(PATIENCE, "the fixture to answer /env", || {
        body(&host, "/env")
    });
    assert!(older.contains("GREETING=hi"), "{older}");
    // With spec.env, only env is.
    lattice.apply(&manifest("  env: {MODE: edge}\n"));
    let newer = eventually(PATIENCE, "revision 2 to answer /env", || {
        body(&host, "/env").filter(|env| env.contains("MODE"))
    });
    assert!(newer.contains("MODE=edge"), "{newer}");
    assert!(!newer.contains("GREETING"), "{newer}");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| {
                bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            }) {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_secret_reaches_only_the_host_that_runs_its_app_and_its_value_appears_nowhere_else() {
    const PLANTED: &str = "PLANTED-s3cr3t-9d41f";
    let lattice = Lattice::start();
    let key = lattice.shoal.home.path().join("lattice-secrets.xk");
    let scheduler = lattice.spawn(
        &[
            "scheduler",
            "--id",
            "s1",
            "--host-timeout",
            "1s",
            "--lease",
            "1s",
            "--secrets-key",
            key.to_str().unwrap(),
        ],
        "s1",
        false,
    );
    // Hosts log at every level: no line may hold the value.
    let states = tempfile::tempdir().unwrap();
    let host = |id: &str, label: &str| {
        let mut command = lattice.command();
        command.env("SHOAL_LOG", "trace");
        let state = states.path().join(id);
        let mut args = support::lattice::host_args(id);
        args.extend_from_slice(&["--label", label, "--state-dir", state.to_str().unwrap()]);
        let process = lattice.spawn_command(command, &args, id, true);
        lattice.wait_registered(id);
        process
    };
    let runner = host("h1", "role=app");
    let other = host("h2", "role=spare");
    let reader = lattice.push_guest("config-reader", "1.0");

    let created = lattice.ok(&[
        "secret",
        "create",
        "db",
        "--from-literal",
        &format!("token={PLANTED}"),
        "--from-literal",
        "user=reader",
    ]);
    assert!(
        created.contains("secret default/db created (keys: token, user)"),
        "{created}"
    );
    // A key both config and a secret define is refused, naming both, not the value.
    let manifest = |extra: &str| {
        hello_manifest(
            "reader",
            &reader,
            1,
            &format!("  secrets: [db]\n  placement: {{requires: {{role: app}}}}\n{extra}"),
        )
    };
    let (ok, stdout, stderr) = lattice.try_apply(&manifest("  config: {token: inline}\n"));
    assert!(
        !ok && stderr.contains("token (secret db and spec.config)"),
        "{stderr}"
    );
    let mut outputs = vec![stdout, stderr];
    outputs.push(lattice.apply(&manifest("")));
    lattice.wait_ready("reader", 1, PATIENCE);
    // The guest reads it through wasi:config, like any value.
    let value = eventually(PATIENCE, "the reader to read its secret", || {
        body(&runner, "/reader/config/token")
    });
    assert_eq!(value, PLANTED);
    assert_eq!(
        body(&runner, "/reader/config/user").as_deref(),
        Some("reader")
    );

    // Only h1 runs the app: its assignment carries the secret, sealed to h1's key; h2 has
    // no assignment at all, and nothing sealed or clear in its state.
    let replicas = lattice.ok(&["get", "replicas", "-o", "json"]);
    let replicas: serde_json::Value = serde_json::from_str(&replicas).unwrap();
    let replicas = replicas.as_array().unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!(replicas[0]["host"], "h1");
    assert!(replicas[0]["secrets"]["sealed"].is_string());
    outputs.push(replicas[0].to_string());

    // A new version rolls the app out; the new value is served.
    let updated = lattice.ok(&[
        "secret",
        "create",
        "db",
        "--from-literal",
        &format!("token={PLANTED}-v2"),
        "--from-literal",
        "user=reader",
    ]);
    assert!(updated.contains("rolls out revision 2"), "{updated}");
    outputs.push(updated);
    lattice.ok(&["rollout", "status", "reader", "--timeout", "60s"]);
    // The rollout is complete once the new replica is ready and the old one removed; the
    // host's routing table follows a moment later.
    eventually(PATIENCE, "the new value to be served", || {
        body(&runner, "/reader/config/token").filter(|value| *value == format!("{PLANTED}-v2"))
    });
    let (ok, stdout, stderr) = lattice.shoal(&["delete", "secret", "db"]);
    assert!(!ok && stderr.contains("in use by reader"), "{stderr}");
    outputs.extend([stdout, stderr]);

    // Everything a person or a script can read: no value.
    for args in [
        &["get", "apps", "-o", "yaml"][..],
        &["get", "replicas", "-o", "yaml"],
        &["get", "hosts", "-o", "yaml"],
        &["get", "secrets", "-o", "yaml"],
        &["get", "secrets"],
        &["describe", "app", "reader", "-o", "yaml"],
        &["describe", "app", "reader"],
        &["rollout", "history", "reader"],
        &["events", "-o", "json"],
        &["logs", "reader"],
    ] {
        let (_, stdout, stderr) = lattice.shoal(args);
        outputs.push(format!("shoal {args:?}: {stdout}{stderr}"));
    }
    let (_, stdout, stderr) = lattice.shoal(&["describe", "secret", "db"]);
    outputs.push(format!("{stdout}{stderr}"));
    outputs.extend([runner.log(), other.log(), scheduler.log()]);
    for output in &outputs {
        assert!(!output.contains(PLANTED), "the value leaked: {output}");
    }
    assert!(
        runner.log().contains("TRACE") || runner.log().contains("DEBUG"),
        "the hosts did not log at trace level"
    );
    // At rest: not in nats-server's JetStream files, nor in either host's state (h1 keeps
    // it sealed to its own key for an offline restart).
    assert_eq!(
        files_containing(lattice.nats.data_dir(), PLANTED),
        Vec::<std::path::PathBuf>::new()
    );
    assert_eq!(
        files_containing(states.path(), PLANTED),
        Vec::<std::path::PathBuf>::new()
    );
    let saved = std::fs::read_to_string(states.path().join("h1/state.json")).unwrap();
    assert!(saved.contains("\"secrets\""), "h1 saved no sealed secrets");
    assert!(
        !states.path().join("h2/state.json").exists()
            || !std::fs::read_to_string(states.path().join("h2/state.json"))
                .unwrap()
                .contains("\"secrets\"")
    );
}
