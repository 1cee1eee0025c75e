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
