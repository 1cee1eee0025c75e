//! Signed components over the real parts: keys from `shoal keygen` and from openssl,
//! signatures in cosign's layout in a real registry, trust policies through the control
//! API, verification on a real host (after the pull, against the digest it runs), and
//! offline with cached signatures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::eventually;
use support::lattice::{Lattice, hello_manifest};

const PATIENCE: Duration = Duration::from_secs(30);
const PASSWORD: &str = support::KEY_PASSWORD;

/// `shoal push` of hello-http with an annotation that makes its digest its own, signed
/// with `key` when given; returns the reference and digest.
fn push(lattice: &Lattice, tag: &str, key: Option<&Path>) -> (String, String) {
    let reference = lattice
        .registry
        .reference(&format!("examples/signed:{tag}"));
    let guest = support::guest("hello-http");
    let mut command = lattice.command();
    command
        .env("SHOAL_KEY_PASSWORD", PASSWORD)
        .args(["push", guest.to_str().unwrap(), &reference])
        .args(["--annotation", &format!("build={tag}")]);
    if let Some(key) = key {
        command.arg("--sign").arg(key);
    }
    let output = support::succeeded(command.output().unwrap());
    let digest = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (reference, digest)
}

/// The reason and message of `app`'s first replica once its host reported one.
fn failure(lattice: &Lattice, app: &str) -> (String, String) {
    eventually(PATIENCE, &format!("{app} to fail"), || {
        let stdout = lattice.ok(&["get", "replicas", "-o", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        rows.as_array()?
            .iter()
            .filter(|row| row["app"] == app)
            .find_map(|row| {
                let status = &row["status"];
                (status["phase"] == "failed").then(|| {
                    (
                        status["reason"].as_str().unwrap_or("").to_owned(),
                        status["message"].as_str().unwrap_or("").to_owned(),
                    )
                })
            })
    })
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

#[test]
fn only_components_signed_by_a_trusted_key_run_and_the_signatures_are_cosigns() {
    let mut lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let mut host = lattice.host("h1", &[]);
    let keys = tempfile::tempdir().unwrap();
    lattice.keygen(keys.path(), "ci");
    lattice.keygen(keys.path(), "other");
    let ci_key = keys.path().join("ci.key");
    let ci_pub = keys.path().join("ci.pub");
    assert!(
        std::fs::read_to_string(&ci_key)
            .unwrap()
            .starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----")
    );

    // A namespace's policy binds that namespace only.
    lattice.ok(&[
        "trust",
        "add",
        keys.path().join("other.pub").to_str().unwrap(),
        "-n",
        "team",
    ]);
    let (unsigned, unsigned_digest) = push(&lattice, "unsigned", None);
    lattice.apply(&hello_manifest("free", &unsigned, 1, ""));
    lattice.wait_ready("free", 1, PATIENCE);
    let (ok, _, stderr) = lattice.try_apply(&hello_manifest("bound", &unsigned, 1, "").replace(
        "metadata: {name: bound}",
        "metadata: {name: bound, namespace: team}",
    ));
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("warning: app team/bound: hosts will refuse to run")
            && stderr.contains("SignatureMissing"),
        "{stderr}"
    );
    let (reason, message) = failure(&lattice, "bound");
    assert_eq!(reason, "SignatureMissing", "{message}");
    assert!(message.contains(&unsigned_digest), "{message}");

    // The lattice's policy: the ci key.
    let added = lattice.ok(&["trust", "add", ci_pub.to_str().unwrap()]);
    assert!(added.contains("trusts key ci (sha256:"), "{added}");
    let listed = lattice.ok(&["trust", "list"]);
    assert!(
        listed.contains("lattice") && listed.contains("namespace team") && listed.contains("ci"),
        "{listed}"
    );
    let (wrong_password, _, stderr) = {
        let output = lattice
            .command()
            .env("SHOAL_KEY_PASSWORD", "wrong")
            .args(["sign", &unsigned, "--key", ci_key.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert!(!wrong_password && stderr.contains("password"), "{stderr}");

    // Signed at push: runs.
    let (signed, signed_digest) = push(&lattice, "signed", Some(&ci_key));
    let (ok, _, stderr) = lattice.try_apply(&hello_manifest("signed", &signed, 1, ""));
    assert!(ok && !stderr.contains("warning"), "{stderr}");
    lattice.wait_ready("signed", 1, PATIENCE);
    let verified = lattice.ok(&["verify", &signed, "--key", ci_pub.to_str().unwrap()]);
    assert_eq!(verified.trim(), signed_digest);

    // Unsigned: refused, and said at apply.
    let (ok, _, stderr) = lattice.try_apply(&hello_manifest("unsigned", &unsigned, 1, ""));
    assert!(ok && stderr.contains("SignatureMissing"), "{stderr}");
    let (reason, _) = failure(&lattice, "unsigned");
    assert_eq!(reason, "SignatureMissing");
    let (ok, _, stderr) = lattice.shoal(&["verify", &unsigned, "--key", ci_pub.to_str().unwrap()]);
    assert!(!ok && stderr.contains("SignatureMissing"), "{stderr}");

    // Signed by a key the lattice does not trust: refused.
    let (wrong, _) = push(&lattice, "wrong-key", Some(&keys.path().join("other.key")));
    lattice.apply(&hello_manifest("wrong-key", &wrong, 1, ""));
    let (reason, message) = failure(&lattice, "wrong-key");
    assert_eq!(reason, "SignatureInvalid");
    assert!(message.contains("does not trust"), "{message}");

    // A trusted signature of another digest, copied under this digest's signature tag.
    let (copied, copied_digest) = push(&lattice, "copied", None);
    let repository = "examples/signed";
    let signature_tag = |digest: &str| format!("sha256-{}.sig", &digest["sha256:".len()..]);
    let signature_manifest = lattice
        .registry
        .get_manifest(repository, &signature_tag(&signed_digest));
    lattice.registry.put_manifest(
        repository,
        &signature_tag(&copied_digest),
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&signature_manifest).unwrap(),
    );
    lattice.apply(&hello_manifest("copied", &copied, 1, ""));
    let (reason, message) = failure(&lattice, "copied");
    assert_eq!(reason, "SignatureInvalid");
    assert!(
        message.contains("another digest") && message.contains(&signed_digest),
        "{message}"
    );
    let events = lattice.ok(&["events", "--app", "copied"]);
    assert!(events.contains("SignatureInvalid"), "{events}");

    // What `shoal sign` wrote is cosign's layout, and openssl verifies its signature.
    let layer = &signature_manifest["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.dev.cosign.simplesigning.v1+json"
    );
    let payload = lattice
        .registry
        .get_blob(repository, layer["digest"].as_str().unwrap());
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims["critical"]["image"]["docker-manifest-digest"],
        signed_digest.as_str()
    );
    assert_eq!(
        claims["critical"]["type"],
        "cosign container image signature"
    );
    use base64::Engine as _;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(
            layer["annotations"]["dev.cosignproject.cosign/signature"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    std::fs::write(keys.path().join("payload"), &payload).unwrap();
    std::fs::write(keys.path().join("payload.sig"), &signature).unwrap();
    let checked = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "ci.pub",
            "-signature",
            "payload.sig",
            "payload",
        ],
        keys.path(),
    );
    assert_eq!(String::from_utf8_lossy(&checked).trim(), "Verified OK");

    // A signature made by another implementation (openssl), laid out by hand as cosign's
    // specification says, from a key openssl made: trusted, it runs.
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
        keys.path(),
    );
    openssl(
        &["ec", "-in", "ec.pem", "-pubout", "-out", "ec.pub"],
        keys.path(),
    );
    let (by_openssl, by_openssl_digest) = push(&lattice, "by-openssl", None);
    let payload = format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{}"}},"image":{{"docker-manifest-digest":"{by_openssl_digest}"}},"type":"cosign container image signature"}},"optional":{{"creator":"openssl"}}}}"#,
        lattice.registry.reference(repository)
    );
    std::fs::write(keys.path().join("payload2"), &payload).unwrap();
    let signature = openssl(
        &["dgst", "-sha256", "-sign", "ec.pem", "payload2"],
        keys.path(),
    );
    let payload_digest = lattice.registry.upload_blob(repository, payload.as_bytes());
    let config =
        br#"{"architecture":"","os":"","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = lattice.registry.upload_blob(repository, config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
            "digest": payload_digest,
            "size": payload.len(),
            "annotations": {
                "dev.cosignproject.cosign/signature":
                    base64::engine::general_purpose::STANDARD.encode(&signature),
            },
        }],
    });
    lattice.registry.put_manifest(
        repository,
        &signature_tag(&by_openssl_digest),
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    lattice.ok(&[
        "trust",
        "add",
        keys.path().join("ec.pub").to_str().unwrap(),
        "--name",
        "openssl",
    ]);
    lattice.apply(&hello_manifest("by-openssl", &by_openssl, 1, ""));
    lattice.wait_ready("by-openssl", 1, PATIENCE);

    // Offline: the registry gone, the host restarted; the signed replicas start again from
    // the cached component and signatures.
    lattice.ok(&["delete", "app", "free"]);
    for app in ["unsigned", "wrong-key", "copied", "bound"] {
        lattice.ok(&[
            "delete",
            "app",
            app,
            "-n",
            if app == "bound" { "team" } else { "default" },
        ]);
    }
    lattice.registry.stop();
    host.kill();
    let _host = lattice.host("h1", &[]);
    eventually(PATIENCE, "the signed apps to serve again offline", || {
        let replicas = lattice.replicas();
        let ready = |app: &str| {
            replicas
                .iter()
                .any(|(name, _, phase)| name == app && phase == "ready")
        };
        (ready("signed") && ready("by-openssl")).then_some(())
    });

    // Removing a key is refused for a key that is not there, and works by name.
    let (ok, _, stderr) = lattice.shoal(&["trust", "remove", "nope"]);
    assert!(!ok && stderr.contains("has no key nope"), "{stderr}");
    lattice.ok(&["trust", "remove", "openssl"]);
}

/// Runs `shoal ARGS` on a terminal (`script` gives it one) with `typed` as what a person
/// types; returns whether it succeeded and what the terminal showed.
fn on_a_terminal(args: &str, typed: &str) -> (bool, String) {
    use std::io::{Read as _, Write as _};
    let command = format!("{} {args}", env!("CARGO_BIN_EXE_shoal"));
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("SHOAL_KEY_PASSWORD")
        .env_remove("COSIGN_PASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(typed.as_bytes()).unwrap();
    // Kept open until the command ends: `script` ends the session when its input does.
    let status = child.wait().unwrap();
    drop(stdin);
    let mut shown = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut shown)
        .unwrap();
    (status.success(), shown)
}

#[test]
fn keygen_asks_for_a_password_on_a_terminal_and_signing_asks_for_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("typed");
    let (ok, shown) = on_a_terminal(
        &format!("keygen --output-key-prefix {}", prefix.display()),
        "s3cret\ns3cret\n",
    );
    assert!(ok, "{shown}");
    assert!(shown.contains("Enter password for private key"), "{shown}");
    let sealed = std::fs::read_to_string(prefix.with_extension("key")).unwrap();
    assert!(shoal_oci::keys::PrivateKey::from_pem(&sealed, b"s3cret").is_ok());
    assert!(matches!(
        shoal_oci::keys::PrivateKey::from_pem(&sealed, b""),
        Err(shoal_oci::keys::KeyError::WrongPassword)
    ));

    // Two different answers: nothing is written.
    let other = dir.path().join("other");
    let (ok, shown) = on_a_terminal(
        &format!("keygen --output-key-prefix {}", other.display()),
        "one\ntwo\n",
    );
    assert!(!ok && shown.contains("do not match"), "{shown}");
    assert!(!other.with_extension("key").exists());

    // Signing with the sealed key asks for its password (the registry is not reached: a
    // wrong password stops the command before it).
    let (ok, shown) = on_a_terminal(
        &format!(
            "sign 127.0.0.1:1/none:1 --key {}",
            prefix.with_extension("key").display()
        ),
        "wrong\n",
    );
    assert!(!ok, "{shown}");
    assert!(
        shown.contains(&format!(
            "Enter password for {}",
            prefix.with_extension("key").display()
        )) && shown.contains("password does not open this key"),
        "{shown}"
    );
}

#[test]
fn a_signed_component_starts_from_the_lattice_s_copy_with_its_signatures() {
    let mut lattice = Lattice::start();
    let scheduler = lattice.scheduler("s1");
    let h1 = lattice.host("h1", &[]);
    let keys = tempfile::tempdir().unwrap();
    lattice.keygen(keys.path(), "ci");
    lattice.ok(&["trust", "add", keys.path().join("ci.pub").to_str().unwrap()]);
    let (signed, _) = push(&lattice, "signed", Some(&keys.path().join("ci.key")));
    lattice.apply(&hello_manifest("signed", &signed, 1, ""));
    lattice.wait_ready("signed", 1, PATIENCE);
    scheduler.wait_log(PATIENCE, "component copied into the lattice");

    // No registry, and a host that has never seen the component or its signatures: both
    // come from the lattice's copy, and the signature is checked as before.
    lattice.registry.stop();
    lattice.ok(&["cordon", "h1"]);
    let cache = tempfile::tempdir().unwrap();
    let h2 = lattice.host_with("h2", &["--cache-dir", cache.path().to_str().unwrap()]);
    lattice.ok(&["scale", "app", "signed", "--replicas", "2"]);
    eventually(PATIENCE, "a ready replica on h2", || {
        lattice
            .ready_by_host("signed")
            .contains_key("h2")
            .then_some(())
    });
    let log = h2.log();
    assert!(log.contains("fetched from the lattice's copy"), "{log}");
    assert!(log.contains("signature verified"), "{log}");
    drop(h1);
}
