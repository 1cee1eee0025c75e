//! End-to-end tests of the developer loop: `shoal new`, `shoal build`, then `shoal push` and
//! `shoal run` of what was built; `shoal version`, `shoal completion`, usage errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::registry::Registry;
use support::served::Served;
use support::{Shoal, workspace};

/// `shoal build` through the guests' target directory: the SDK's dependencies are compiled
/// there already, so a test builds only the new project.
fn build(shoal: &Shoal, project: &str) -> support::Run {
    support::Run(
        shoal
            .command()
            .env("CARGO_TARGET_DIR", workspace().join("target/guests"))
            .args(["build", project])
            .output()
            .unwrap(),
    )
}

/// The path `shoal build` printed: `built PATH (SIZE, world WORLD)`.
fn built_path(run: &support::Run) -> String {
    let line = run.stdout();
    line.trim()
        .strip_prefix("built ")
        .and_then(|rest| rest.split(" (").next())
        .unwrap_or_else(|| panic!("no path printed: {line}"))
        .to_owned()
}

#[test]
fn a_new_http_project_builds_pushes_and_serves() {
    let shoal = Shoal::new();
    let created = shoal.ok(&["new", "devloop-http"]);
    assert!(
        created.stdout().contains("shoal build devloop-http"),
        "{}",
        created.stdout()
    );
    let built = build(&shoal, "devloop-http");
    assert!(built.0.status.success(), "{}", built.stderr());
    assert!(
        built.stdout().contains("world wasi:http/proxy"),
        "{}",
        built.stdout()
    );
    let wasm = built_path(&built);
    assert!(wasm.ends_with("devloop_http.wasm"), "{wasm}");

    let registry = Registry::start();
    let reference = registry.reference("dev/devloop-http:0.1.0");
    shoal.ok(&["push", &wasm, &reference]);
    let served = Served::start(&shoal, &reference, &["--config", "GREETING=hi"]);
    assert_eq!(
        served.get("/there?x=1"),
        (200, "hi from devloop-http at /there?x=1\n".to_owned())
    );
    // Building again changes nothing and says where the component is.
    let again = build(&shoal, "devloop-http");
    assert_eq!(built_path(&again), wasm);
}

#[test]
fn new_wasi_03_projects_build_with_crates_from_crates_io_and_run() {
    let shoal = Shoal::new();
    let created = shoal.ok(&["new", "devloop-p3", "--wasi", "0.3"]);
    assert!(
        created.stdout().contains("world wasi:http/service@0.3"),
        "{}",
        created.stdout()
    );
    let built = build(&shoal, "devloop-p3");
    assert!(built.0.status.success(), "{}", built.stderr());
    assert!(
        built.stdout().contains("world wasi:http/service@0.3.0"),
        "{}",
        built.stdout()
    );
    let served = Served::start(&shoal, &built_path(&built), &["--env", "GREETING=hi"]);
    assert_eq!(
        served.get("/there?x=1"),
        (200, "hi from devloop-p3 at /there?x=1\n".to_owned())
    );

    shoal.ok(&[
        "new",
        "devloop-p3-job",
        "--wasi",
        "0.3",
        "--template",
        "command",
    ]);
    let built = build(&shoal, "devloop-p3-job");
    assert!(built.0.status.success(), "{}", built.stderr());
    assert!(
        built.stdout().contains("world wasi:cli/command@0.3.0"),
        "{}",
        built.stdout()
    );
    let ran = shoal.ok(&["run", &built_path(&built), "--", "a", "b"]);
    assert_eq!(
        ran.stdout(),
        "hello from devloop-p3-job, arguments [\"a\", \"b\"]\n"
    );
}

#[test]
fn a_new_command_project_builds_and_runs_and_a_wrong_world_is_named() {
    let shoal = Shoal::new();
    shoal.ok(&["new", "devloop-job", "--template", "command"]);
    let built = build(&shoal, "devloop-job");
    assert!(built.0.status.success(), "{}", built.stderr());
    assert!(
        built.stdout().contains("world wasi:cli/command"),
        "{}",
        built.stdout()
    );
    let ran = shoal.ok(&["run", &built_path(&built), "--", "a", "b"]);
    assert_eq!(
        ran.stdout(),
        "hello from devloop-job, arguments [\"a\", \"b\"]\n"
    );

    // The project says http but builds a command: the build says so and what to change.
    let manifest = shoal.home.path().join("devloop-job/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("world = \"command\"", "world = \"http\""),
    )
    .unwrap();
    let wrong = build(&shoal, "devloop-job");
    assert!(!wrong.0.status.success());
    assert!(
        wrong
            .stderr()
            .contains("not wasi:http/proxy@0.2 as Cargo.toml says"),
        "{}",
        wrong.stderr()
    );
    // A world Shoal does not run is refused before cargo runs.
    std::fs::write(
        &manifest,
        text.replace("world = \"command\"", "world = \"reactor\""),
    )
    .unwrap();
    let unknown = build(&shoal, "devloop-job");
    assert!(
        unknown.stderr().contains("use \"http\" or \"command\""),
        "{}",
        unknown.stderr()
    );
}

#[test]
fn new_refuses_bad_names_and_existing_projects() {
    let shoal = Shoal::new();
    assert!(
        shoal
            .fails(&["new", "Hello_World"])
            .contains("lowercase letters")
    );
    shoal.ok(&["new", "taken"]);
    assert!(
        shoal
            .fails(&["new", "taken"])
            .contains("exists and is not empty")
    );
    assert!(
        shoal
            .fails(&["build", "nowhere"])
            .contains("shoal new NAME")
    );
}

#[test]
fn version_completion_and_usage_errors() {
    let shoal = Shoal::new();
    let version = shoal.ok(&["version", "-o", "json"]).json();
    assert_eq!(version["shoal"], env!("CARGO_PKG_VERSION"));
    assert!(
        version["wasmtime"].as_str().unwrap().starts_with("48."),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let script = shoal.ok(&["completion", shell]).stdout();
        assert!(script.contains("rollout"), "{shell}: {script}");
    }
    // Usage errors exit 64 (sysexits' EX_USAGE) with the usage line.
    for wrong in [
        &["bogus"][..],
        &["get"],
        &["scale", "app"],
        &["new", "x", "--template", "nope"],
    ] {
        let run = shoal.run(wrong);
        assert_eq!(run.0.status.code(), Some(64), "{wrong:?}: {}", run.stderr());
        assert!(
            run.stderr().contains("Usage: shoal"),
            "{wrong:?}: {}",
            run.stderr()
        );
    }
    // Help is an answer, not an error.
    assert_eq!(shoal.run(&["--help"]).0.status.code(), Some(0));
}

#[test]
fn up_names_a_nats_server_that_is_too_old_and_what_to_install() {
    use std::os::unix::fs::PermissionsExt as _;
    let shoal = Shoal::new();
    let bin = shoal.home.path().join("old-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.25'\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let run = support::Run(
        shoal
            .command()
            .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
            .env("HOME", shoal.home.path())
            .args(["up", "--nats-port", &support::free_port().to_string()])
            .output()
            .unwrap(),
    );
    assert!(!run.0.status.success());
    let stderr = run.stderr();
    assert!(
        stderr.contains("nats-server 2.10 or newer is needed"),
        "{stderr}"
    );
    assert!(stderr.contains("is 2.9"), "{stderr}");
    assert!(stderr.contains("scripts/setup.sh"), "{stderr}");
}
