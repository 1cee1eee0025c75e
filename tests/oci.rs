//! End-to-end tests of `shoal push`, `pull` and `inspect` against a real OCI registry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::process::Stdio;

use sha2::{Digest as _, Sha256};
use support::registry::Registry;
use support::{Shoal, guest};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn hello() -> (std::path::PathBuf, Vec<u8>) {
    let path = guest("hello-http");
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

/// Pushes hello to `repo:tag` and returns the manifest digest printed on stdout.
fn push_hello(shoal: &Shoal, registry: &Registry, repository_and_tag: &str) -> String {
    let (path, _) = hello();
    let reference = registry.reference(repository_and_tag);
    let digest = shoal
        .ok(&["push", path.to_str().unwrap(), &reference])
        .stdout();
    let digest = digest.trim().to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest:?}"
    );
    digest
}

#[test]
fn push_then_pull_returns_identical_bytes_and_the_config_lists_exports() {
    let registry = Registry::start();
    let (path, bytes) = hello();
    let pusher = Shoal::new();
    let reference = registry.reference("examples/hello:1.0");
    let pushed = pusher
        .ok(&[
            "push",
            path.to_str().unwrap(),
            &reference,
            "--annotation",
            "dev.shoal.team=edge",
        ])
        .stdout();
    let pushed = pushed.trim();

    // The artifact in the registry follows the CNCF layout.
    let manifest = registry.get_manifest("examples/hello", "1.0");
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], WASM_CONFIG);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(manifest["layers"][0]["digest"], sha256(&bytes));
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.title"],
        "hello_http.wasm"
    );
    assert_eq!(manifest["annotations"]["dev.shoal.team"], "edge");
    assert!(manifest["annotations"]["org.opencontainers.image.created"].is_string());
    let config: serde_json::Value = serde_json::from_slice(&registry.get_blob(
        "examples/hello",
        manifest["config"]["digest"].as_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["layerDigests"][0], sha256(&bytes));
    let exports = config["component"]["exports"].as_array().unwrap();
    assert!(
        exports.iter().any(|export| export
            .as_str()
            .unwrap()
            .starts_with("wasi:http/incoming-handler@")),
        "{exports:?}"
    );
    assert!(
        config["component"]["target"]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/proxy@")
    );
    assert!(
        !config["component"]["imports"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A fresh machine (another cache) pulls the same bytes under the same digest.
    let puller = Shoal::new();
    let out = puller.home.path().join("hello.wasm");
    let pulled = puller.ok(&["pull", &reference, "-o", out.to_str().unwrap()]);
    assert_eq!(pulled.stdout().trim(), pushed);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    let inspected = puller.ok(&["inspect", &reference, "-o", "json"]).json();
    assert_eq!(inspected["digest"], pushed);
    assert_eq!(inspected["layer"]["digest"], sha256(&bytes));
    assert_eq!(inspected["config"]["mediaType"], WASM_CONFIG);
    assert_eq!(inspected["annotations"]["dev.shoal.team"], "edge");
    assert_eq!(
        inspected["component"]["exports"],
        config["component"]["exports"]
    );

    let text = puller.ok(&["inspect", &reference]).stdout();
    assert!(
        text.contains(pushed) && text.contains("wasi:http/proxy@"),
        "{text}"
    );
}

#[test]
fn inspect_reads_a_local_file_without_a_registry() {
    let shoal = Shoal::new();
    let (path, bytes) = hello();
    let report = shoal
        .ok(&["inspect", path.to_str().unwrap(), "-o", "json"])
        .json();
    assert_eq!(report["digest"], sha256(&bytes));
    assert_eq!(report["size"], bytes.len());
    assert!(
        report["component"]["target"]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/proxy@")
    );
    let yaml = shoal
        .ok(&["inspect", path.to_str().unwrap(), "-o", "yaml"])
        .stdout();
    assert!(yaml.contains("exports:"), "{yaml}");
}

#[test]
fn cached_digests_need_no_registry_and_tags_fall_back_when_it_is_gone() {
    let mut registry = Registry::start();
    let shoal = Shoal::new();
    let digest = push_hello(&shoal, &registry, "examples/hello:1.0");
    let by_tag = registry.reference("examples/hello:1.0");
    let by_digest = registry.reference(&format!("examples/hello@{digest}"));
    shoal.ok(&["pull", &by_tag]);

    registry.stop();

    let run = shoal.ok(&["pull", &by_digest]);
    assert_eq!(run.stdout().trim(), digest);
    assert!(
        run.stderr().contains("from the local cache"),
        "{}",
        run.stderr()
    );
    assert!(!run.stderr().contains("warning"), "{}", run.stderr());

    let run = shoal.ok(&["pull", &by_tag]);
    assert_eq!(run.stdout().trim(), digest);
    let stderr = run.stderr();
    assert!(
        stderr.contains("warning: cannot reach registry"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("using {digest}")), "{stderr}");

    // Inspect works offline too.
    let inspected = shoal.ok(&["inspect", &by_digest, "-o", "json"]).json();
    assert_eq!(inspected["digest"], digest);

    // What was never pulled cannot come from anywhere.
    let stderr = shoal.fails(&["pull", &registry.reference("examples/hello:2.0")]);
    assert!(stderr.contains("cannot reach registry"), "{stderr}");
}

#[test]
fn a_tampered_cache_entry_is_detected_and_fetched_again() {
    let registry = Registry::start();
    let shoal = Shoal::new();
    let (_, bytes) = hello();
    push_hello(&shoal, &registry, "examples/hello:1.0");
    let reference = registry.reference("examples/hello:1.0");
    shoal.ok(&["pull", &reference]);

    let cached = shoal
        .cache_dir()
        .join("oci/blobs/sha256")
        .join(sha256(&bytes).trim_start_matches("sha256:"));
    let mut tampered = std::fs::read(&cached).unwrap();
    tampered[100] ^= 0xff;
    std::fs::write(&cached, &tampered).unwrap();

    let out = shoal.home.path().join("out.wasm");
    let run = shoal.ok(&["pull", &reference, "-o", out.to_str().unwrap()]);
    assert!(run.stderr().contains("was corrupt"), "{}", run.stderr());
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        bytes,
        "the cache entry was repaired"
    );

    // A truncated cached manifest is caught the same way.
    let manifest = shoal
        .cache_dir()
        .join("oci/blobs/sha256")
        .join(run.stdout().trim().trim_start_matches("sha256:"));
    std::fs::write(&manifest, b"{").unwrap();
    let run = shoal.ok(&[
        "pull",
        &registry.reference(&format!("examples/hello@{}", run.stdout().trim())),
    ]);
    assert!(run.stderr().contains("was corrupt"), "{}", run.stderr());
}

#[test]
fn push_refuses_what_is_not_a_component_and_pushes_nothing() {
    let registry = Registry::start();
    let shoal = Shoal::new();
    let (_, bytes) = hello();
    let dir = tempfile::tempdir().unwrap();
    let reference = registry.reference("refused/thing:1.0");

    let text = dir.path().join("script.wasm");
    std::fs::write(&text, "#!/bin/sh\necho hi\n").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\x00\x00\x00").unwrap();
    let truncated = dir.path().join("truncated.wasm");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();

    for (file, cause) in [
        (&text, "not a WebAssembly binary"),
        (&core, "a core WebAssembly module, not a component"),
        (&truncated, "truncated"),
    ] {
        let stderr = shoal.fails(&["push", file.to_str().unwrap(), &reference]);
        assert!(stderr.contains(cause), "{}: {stderr}", file.display());
        assert!(
            stderr.contains(file.to_str().unwrap()),
            "names the file: {stderr}"
        );
    }

    let (path, _) = hello();
    let stderr = shoal.fails(&[
        "push",
        path.to_str().unwrap(),
        &reference,
        "--max-size",
        "1KiB",
    ]);
    assert!(
        stderr.contains("artifact size limit is 1.0 KiB"),
        "{stderr}"
    );

    let stderr = shoal.fails(&[
        "push",
        path.to_str().unwrap(),
        &registry.reference("Not A/Valid:ref"),
    ]);
    assert!(stderr.contains("invalid reference"), "{stderr}");

    assert!(
        registry.repositories().is_empty(),
        "{:?}",
        registry.repositories()
    );
}

/// Uploads `manifest` (as JSON) with its config and layer blobs, returning the reference.
fn upload_artifact(
    registry: &Registry,
    repository: &str,
    config: &serde_json::Value,
    layers: &[(&str, &[u8])],
    config_media_type: &str,
) -> (String, String) {
    let config_bytes = serde_json::to_vec(config).unwrap();
    let config_digest = registry.upload_blob(repository, &config_bytes);
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(media_type, bytes)| {
            let digest = registry.upload_blob(repository, bytes);
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers,
        "annotations": {"org.opencontainers.image.title": "hand-built.wasm"},
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = registry.put_manifest(repository, "1.0", OCI_MANIFEST, &manifest_bytes);
    (registry.reference(&format!("{repository}:1.0")), digest)
}

fn wasm_config(layer: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "created": "2026-11-21T00:00:00Z",
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [sha256(layer)],
        "component": {"exports": ["wasi:http/incoming-handler@0.2.0"], "imports": []},
    })
}

#[test]
fn pull_refuses_artifacts_that_are_not_one_wasm_layer_and_caches_nothing() {
    let registry = Registry::start();
    let (_, bytes) = hello();
    let config = wasm_config(&bytes);

    let (two_layers, _) = upload_artifact(
        &registry,
        "bad/two-layers",
        &config,
        &[
            ("application/wasm", &bytes),
            ("application/wasm", b"\0asm\x0d\x00\x01\x00"),
        ],
        WASM_CONFIG,
    );
    let (image_config, _) = upload_artifact(
        &registry,
        "bad/image-config",
        &config,
        &[("application/wasm", &bytes)],
        "application/vnd.oci.image.config.v1+json",
    );
    let (tar_layer, _) = upload_artifact(
        &registry,
        "bad/tar-layer",
        &config,
        &[("application/vnd.oci.image.layer.v1.tar+gzip", &bytes)],
        WASM_CONFIG,
    );

    for (reference, cause) in [
        (&two_layers, "has 2 layers"),
        (
            &image_config,
            "unknown config media type \"application/vnd.oci.image.config.v1+json\"",
        ),
        (
            &tar_layer,
            "unknown layer media type \"application/vnd.oci.image.layer.v1.tar+gzip\"",
        ),
    ] {
        let shoal = Shoal::new();
        let stderr = shoal.fails(&["pull", reference]);
        assert!(stderr.contains(cause), "{reference}: {stderr}");
        assert!(stderr.contains("nothing was cached"), "{stderr}");
        assert_eq!(
            shoal.cached_files(),
            Vec::<std::path::PathBuf>::new(),
            "{reference}"
        );
    }

    // Above the size limit, refused before the layer is downloaded.
    let shoal = Shoal::new();
    let (fine, _) = upload_artifact(
        &registry,
        "fine/hello",
        &config,
        &[("application/wasm", &bytes)],
        WASM_CONFIG,
    );
    let stderr = shoal.fails(&["pull", &fine, "--max-size", "10KiB"]);
    assert!(stderr.contains("the layer is "), "{stderr}");
    assert!(
        stderr.contains(" but the limit is 10.0 KiB; raise it with --max-size"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("the limit is").count(),
        1,
        "said once: {stderr}"
    );
    assert_eq!(shoal.cached_files(), Vec::<std::path::PathBuf>::new());
    // And accepted at the default limit.
    shoal.ok(&["pull", &fine]);
}

#[test]
fn pull_refuses_a_blob_whose_bytes_do_not_match_its_digest() {
    let registry = Registry::start();
    let pusher = Shoal::new();
    let (_, bytes) = hello();
    push_hello(&pusher, &registry, "examples/hello:1.0");
    registry.corrupt_blob(&sha256(&bytes));

    let shoal = Shoal::new();
    let stderr = shoal.fails(&["pull", &registry.reference("examples/hello:1.0")]);
    assert!(stderr.contains("does not match its digest"), "{stderr}");
    assert!(
        stderr.contains(&sha256(&bytes)),
        "names the expected digest: {stderr}"
    );
    assert_eq!(shoal.cached_files(), Vec::<std::path::PathBuf>::new());
    let leftovers: Vec<_> = std::fs::read_dir(shoal.cache_dir().join("oci/tmp"))
        .unwrap()
        .collect();
    assert!(
        leftovers.is_empty(),
        "temp files left behind: {leftovers:?}"
    );
}

#[test]
fn an_artifact_built_by_hand_in_the_cncf_layout_pulls_and_inspects() {
    let registry = Registry::start();
    let (_, bytes) = hello();
    let (reference, digest) = upload_artifact(
        &registry,
        "interop/hello",
        &wasm_config(&bytes),
        &[("application/wasm", &bytes)],
        WASM_CONFIG,
    );
    let shoal = Shoal::new();
    let out = shoal.home.path().join("hello.wasm");
    let pulled = shoal.ok(&["pull", &reference, "-o", out.to_str().unwrap()]);
    assert_eq!(pulled.stdout().trim(), digest);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);

    let report = shoal.ok(&["inspect", &reference, "-o", "json"]).json();
    assert_eq!(report["digest"], digest);
    assert_eq!(
        report["annotations"]["org.opencontainers.image.title"],
        "hand-built.wasm"
    );
    // Imports and exports come from the binary itself, not from what the config claims.
    let exports = report["component"]["exports"].as_array().unwrap();
    assert!(
        exports[0]
            .as_str()
            .unwrap()
            .starts_with("wasi:http/incoming-handler@0.2.")
    );
    assert!(
        !report["component"]["imports"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn credentials_come_from_flags_environment_or_docker_config() {
    let registry = Registry::with_auth("shoal", "s3cret");
    let (path, _) = hello();
    let path = path.to_str().unwrap();
    let reference = registry.reference("private/hello:1.0");
    let shoal = Shoal::new();

    let stderr = shoal.fails(&["push", path, &reference]);
    assert!(stderr.contains("denied access"), "{stderr}");
    assert!(
        stderr.contains("--password-stdin"),
        "says what to do: {stderr}"
    );

    let stderr = shoal.fails(&["push", path, &reference, "--username", "shoal"]);
    assert!(stderr.contains("needs a password"), "{stderr}");

    // --password-stdin
    let mut child = shoal
        .command()
        .args([
            "push",
            path,
            &reference,
            "--username",
            "shoal",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Environment variables.
    let output = shoal
        .command()
        .args(["pull", &reference])
        .env("SHOAL_REGISTRY_USERNAME", "shoal")
        .env("SHOAL_REGISTRY_PASSWORD", "s3cret")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // What `docker login` leaves in config.json.
    use base64::Engine as _;
    let docker = shoal.home.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("shoal:s3cret");
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({"auths": {registry.host(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let fresh = Shoal::new();
    let output = fresh
        .command()
        .args(["pull", &reference])
        .env("DOCKER_CONFIG", &docker)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Wrong credentials are refused with the same advice.
    let output = Shoal::new()
        .command()
        .args(["pull", &reference])
        .env("SHOAL_REGISTRY_USERNAME", "shoal")
        .env("SHOAL_REGISTRY_PASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("denied access"));
}

/// Appends a custom section of `size` bytes: still a valid component, just a large one.
fn with_padding(component: &[u8], size: usize) -> Vec<u8> {
    let name = b"shoal-test-padding";
    let payload_len = 1 + name.len() + size;
    let mut bytes = component.to_vec();
    bytes.push(0);
    let mut len = payload_len;
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            bytes.push(byte);
            break;
        }
        bytes.push(byte | 0x80);
    }
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend(std::iter::repeat_n(0x5a, size));
    bytes
}

#[test]
fn large_components_stream_through_and_no_progress_bar_is_drawn_off_a_terminal() {
    let registry = Registry::start();
    let (_, bytes) = hello();
    let large = with_padding(&bytes, 3 * 1024 * 1024 + 17);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("large.wasm");
    std::fs::write(&file, &large).unwrap();
    let reference = registry.reference("examples/large:1.0");

    let shoal = Shoal::new();
    let run = shoal.ok(&["push", file.to_str().unwrap(), &reference]);
    assert!(
        !run.stderr().contains('\r') && !run.stderr().contains('\u{1b}'),
        "{:?}",
        run.stderr()
    );

    let out = dir.path().join("out.wasm");
    let run = Shoal::new().ok(&["pull", &reference, "-o", out.to_str().unwrap()]);
    assert!(
        !run.stderr().contains('\r') && !run.stderr().contains('\u{1b}'),
        "{:?}",
        run.stderr()
    );
    assert_eq!(std::fs::read(&out).unwrap(), large);
}
