//! `shoal keygen`, `shoal sign` and `shoal verify`: cosign-compatible signatures of pushed
//! components, checked with a public key and the registry only (no transparency log, no
//! other network: what an edge fleet can rely on).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use shoal_oci::keys::{PrivateKey, PublicKey};
use shoal_oci::{Digest, Reference, parse_reference};

use crate::output::{self, Format};
use crate::registry::RegistryArgs;

/// The environment variables a private key's password is read from, in order.
const PASSWORD_VARIABLES: [&str; 2] = ["SHOAL_KEY_PASSWORD", "COSIGN_PASSWORD"];

/// Make a signing key pair: cosign.key (ECDSA P-256, encrypted in cosign's format) and
/// cosign.pub.
///
/// The private key is sealed with the password in SHOAL_KEY_PASSWORD (or COSIGN_PASSWORD),
/// else with one asked for twice on the terminal; with neither, with an empty password, as
/// cosign allows. cosign reads both
/// files, and Shoal reads cosign's. Give the .pub to `shoal trust add`, keep the .key for
/// `shoal push --sign` and `shoal sign`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The files' name without extension: PREFIX.key and PREFIX.pub.
    #[arg(long, default_value = "cosign", value_name = "PREFIX")]
    pub output_key_prefix: PathBuf,
    /// Replace files that exist.
    #[arg(long)]
    pub force: bool,
}

/// Sign a pushed component with a private key, in cosign's layout.
///
/// The signature goes to the same repository under the tag sha256-<digest>.sig, beside any
/// signatures already there; `cosign verify --key` accepts it. A tag is resolved to its
/// digest first, and the digest is what is signed.
///
/// Example: shoal sign localhost:5000/team/hello:1.0 --key cosign.key
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The component: registry/repository:tag or …@sha256:….
    pub reference: String,
    /// The private key: cosign's encrypted key (password in SHOAL_KEY_PASSWORD or
    /// COSIGN_PASSWORD, else asked for on a terminal), or a PKCS#8 or SEC1 PEM key (openssl).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Check that a pushed component carries a signature by one of the given public keys.
///
/// Exits 0 and names the key when a signature of the component's digest by one of them is
/// stored beside it; exits 1 saying what is wrong otherwise (no signature, signed by
/// another key, a signature of another digest).
///
/// Example: shoal verify localhost:5000/team/hello:1.0 --key cosign.pub
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The component: registry/repository:tag or …@sha256:….
    pub reference: String,
    /// A public key (PEM, as cosign.pub); repeat for several, any one of which may have
    /// signed.
    #[arg(long = "key", value_name = "FILE", required = true)]
    pub keys: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The password for private keys from the environment, if it names one.
fn password_from_env() -> Option<zeroize::Zeroizing<String>> {
    PASSWORD_VARIABLES
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .map(zeroize::Zeroizing::new)
}

/// Whether a person can be asked (standard input is a terminal).
fn interactive() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// Asks for a password on the terminal, without echo.
fn prompt(text: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    rpassword::prompt_password(text)
        .map(zeroize::Zeroizing::new)
        .context("cannot read the password from the terminal")
}

/// The password to seal a new key with: the environment's, else asked twice on a terminal,
/// else empty (as cosign allows).
fn new_password() -> anyhow::Result<zeroize::Zeroizing<String>> {
    if let Some(password) = password_from_env() {
        return Ok(password);
    }
    if !interactive() {
        return Ok(zeroize::Zeroizing::new(String::new()));
    }
    let first = prompt("Enter password for private key: ")?;
    let again = prompt("Enter password for private key again: ")?;
    if *first != *again {
        bail!("the passwords do not match; nothing was written");
    }
    Ok(first)
}

fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let metadata =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if metadata.len() > shoal_oci::keys::MAX_KEY_FILE as u64 {
        bail!("{} is larger than any key file", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads a private key file: with the environment's password, else an empty one, else
/// (on a terminal) the password asked for.
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKey> {
    let text = read_key_file(path)?;
    let context = || format!("cannot use {} as a signing key", path.display());
    if let Some(password) = password_from_env() {
        return PrivateKey::from_pem(&text, password.as_bytes()).with_context(context);
    }
    match PrivateKey::from_pem(&text, b"") {
        Err(shoal_oci::keys::KeyError::WrongPassword) if interactive() => {
            let password = prompt(&format!("Enter password for {}: ", path.display()))?;
            PrivateKey::from_pem(&text, password.as_bytes()).with_context(context)
        }
        other => other.with_context(context),
    }
}

/// Reads a public key file.
pub fn public_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text = read_key_file(path)?;
    PublicKey::from_pem(&text)
        .with_context(|| format!("cannot use {} as a public key", path.display()))
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let private_path = args.output_key_prefix.with_extension("key");
    let public_path = args.output_key_prefix.with_extension("pub");
    if !args.force {
        for path in [&private_path, &public_path] {
            if path.exists() {
                bail!(
                    "{} exists: keep it, or replace both files with --force",
                    path.display()
                );
            }
        }
    }
    let key = PrivateKey::generate();
    let password = new_password()?;
    let sealed = key.to_encrypted_pem(password.as_bytes())?;
    write_private(&private_path, &sealed)?;
    std::fs::write(&public_path, key.public().to_pem())
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    eprintln!(
        "private key written to {} ({}), public key to {}",
        private_path.display(),
        if password.is_empty() {
            "no password: set SHOAL_KEY_PASSWORD, or run on a terminal, to seal it with one"
        } else {
            "sealed with the password"
        },
        public_path.display()
    );
    println!("{}", key.public().id());
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The manifest digest `reference` names: its own, or what its tag resolves to now.
async fn digest_of(registry: &RegistryArgs, target: &str) -> anyhow::Result<(Reference, Digest)> {
    let reference = parse_reference(target)?;
    let (pulled, _) = registry.pull_component(target).await?;
    Ok((reference, pulled.digest))
}

/// What a sign or verify did, for scripts.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    reference: String,
    digest: String,
    key_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
}

/// Signs the already pushed `digest` of `reference`'s repository; prints what it did.
pub async fn sign_pushed(
    client: &shoal_oci::Client,
    reference: &Reference,
    digest: &Digest,
    key: &PrivateKey,
) -> anyhow::Result<shoal_oci::signature::Signed> {
    let signed = client
        .sign(reference, digest, key)
        .await
        .with_context(|| format!("cannot sign {}", reference.whole()))?;
    eprintln!(
        "{} {digest} with key {} at {}",
        if signed.already {
            "already signed"
        } else {
            "signed"
        },
        signed.key_id,
        signed.signature_reference
    );
    Ok(signed)
}

pub async fn sign(args: SignArgs) -> anyhow::Result<()> {
    let key = private_key(&args.key)?;
    let (reference, digest) = digest_of(&args.registry, &args.reference).await?;
    let client = args.registry.client_for(&args.reference)?;
    let signed = sign_pushed(&client, &reference, &digest, &key).await?;
    let outcome = Outcome {
        reference: reference.whole(),
        digest: digest.to_string(),
        key_id: signed.key_id,
        signature: Some(signed.signature_reference),
    };
    output::print(args.output, &outcome, |outcome| {
        format!("{}\n", outcome.digest)
    })
}

pub async fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let keys = args
        .keys
        .iter()
        .map(|path| public_key(path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (reference, digest) = digest_of(&args.registry, &args.reference).await?;
    let client = args.registry.client_for(&args.reference)?;
    // Always what the registry holds now: a verify is a question about the registry.
    let signatures = client
        .signatures(&reference, &digest)
        .await
        .with_context(|| format!("cannot read the signatures of {}", reference.whole()))?;
    match shoal_oci::signature::verify(&digest, &signatures, &keys) {
        Ok(verified) => {
            eprintln!(
                "{}: {digest} is signed by {}",
                reference.whole(),
                verified.key_id
            );
            let outcome = Outcome {
                reference: reference.whole(),
                digest: digest.to_string(),
                key_id: verified.key_id,
                signature: None,
            };
            output::print(args.output, &outcome, |outcome| {
                format!("{}\n", outcome.digest)
            })?;
            Ok(0)
        }
        Err(error) => {
            eprintln!("error: {}: {} ({error})", reference.whole(), error.reason());
            Ok(1)
        }
    }
}
