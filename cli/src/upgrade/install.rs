//! Getting a host binary ready to run: its signature checked against the keys both the
//! lattice and this host trust, pulled by digest through the OCI cache, and copied into
//! this host's own directory of binaries (which keeps only what it may run again).

use std::path::{Path, PathBuf};
use std::pin::Pin;

use anyhow::Context as _;
use shoal_host::agent::Upgrader;
use shoal_lattice::fleet::UpgradeOrder;
use shoal_oci::keys::PublicKey;
use shoal_oci::{Client, Digest, parse_reference};

use super::SELF;

/// Pulls host binaries through the OCI cache and checks their signatures.
pub struct OciUpgrader {
    pub client: Client,
    /// This host's own directory of binaries (`<cache>/host-binaries/<id>`).
    pub dir: PathBuf,
    /// The keys this host itself accepts binaries signed by (`--upgrade-key`).
    pub anchors: Vec<PublicKey>,
}

impl Upgrader for OciUpgrader {
    fn prepare(
        &self,
        order: UpgradeOrder,
    ) -> Pin<Box<dyn Future<Output = Result<PathBuf, String>> + Send>> {
        let client = self.client.clone();
        let dir = self.dir.clone();
        // Signed by a key the host was given and the lattice trusts: a control plane (or a
        // stolen scheduler credential) alone cannot make a host run native code.
        let keys: Vec<PublicKey> = self
            .anchors
            .iter()
            .filter(|key| order.trusted.iter().any(|trusted| trusted.id == key.id()))
            .cloned()
            .collect();
        Box::pin(async move {
            if std::process::id() == 1 {
                return Err(
                    "the host runs as process 1 (in a container?): upgrade its image instead"
                        .to_owned(),
                );
            }
            if keys.is_empty() {
                return Err("no key of the lattice's trust policy is one this host accepts upgrades signed by (shoal host --upgrade-key KEY.pub)".to_owned());
            }
            let reference =
                parse_reference(&order.target.reference).map_err(|error| error.to_string())?;
            let expected: Digest = order
                .target
                .binary
                .parse()
                .map_err(|error| format!("{error}"))?;
            let manifest: Digest = reference
                .digest()
                .ok_or("the order's reference is not pinned")?
                .parse()
                .map_err(|error| format!("{error}"))?;
            // The signature first: nothing unsigned is downloaded.
            client
                .verify(&reference, &manifest, &keys)
                .await
                .map_err(|error| format!("{}: {error}", error.reason()))?;
            let cached = client
                .pull_binary(&reference, &expected)
                .await
                .map_err(|error| format!("cannot pull {}: {error}", order.target.reference))?;
            let path = dir.join(expected.hex());
            tokio::task::spawn_blocking(move || install(&cached, &path, &expected))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| format!("{error:#}"))
        })
    }

    fn identify(&self) -> Pin<Box<dyn Future<Output = Option<String>> + Send>> {
        Box::pin(async {
            tokio::task::spawn_blocking(|| file_digest(Path::new(SELF)))
                .await
                .ok()
                .flatten()
        })
    }
}

/// `sha256:…` of a file's content.
fn file_digest(path: &Path) -> Option<String> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(format!("sha256:{}", hex::encode(hasher.finalize())))
}

/// Copies the cached binary to `path`, executable (the cache may prune its copy), checked
/// again after the copy; a copy already there is kept when it is intact.
fn install(cached: &Path, path: &Path, expected: &Digest) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().context("no directory for host binaries")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Only this user may put a binary where this host starts binaries from.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    prune(dir, path);
    if file_digest(path).as_deref() == Some(expected.as_str()) {
        return Ok(path.to_owned());
    }
    let temporary = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::copy(cached, temporary.path())
        .with_context(|| format!("cannot copy the binary to {}", dir.display()))?;
    if file_digest(temporary.path()).as_deref() != Some(expected.as_str()) {
        anyhow::bail!("the copy of the binary does not match its digest");
    }
    std::fs::set_permissions(temporary.path(), std::fs::Permissions::from_mode(0o755))?;
    temporary
        .persist(path)
        .with_context(|| format!("cannot install {}", path.display()))?;
    Ok(path.to_owned())
}

/// Removes the binaries of this host's `dir` other than `keep`, the running one and the one
/// `current` names: each upgrade leaves one, which nothing else would remove.
fn prune(dir: &Path, keep: &Path) {
    let running = std::fs::read_link(SELF).ok();
    let current = std::fs::read_link(dir.join("current")).ok();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let named = |other: &Option<PathBuf>| other.as_deref() == Some(path.as_path());
        let binary = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()));
        if binary && path != keep && !named(&running) && !named(&current) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Points `dir/current` at the running binary, atomically (a new link renamed over it).
pub(super) fn link_current(dir: &Path) -> anyhow::Result<()> {
    let running = std::fs::read_link(SELF)?;
    let temporary = dir.join(format!(".current-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&running, &temporary)?;
    std::fs::rename(&temporary, dir.join("current"))?;
    Ok(())
}
