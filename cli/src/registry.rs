//! Registry options shared by push, pull and inspect, and the client built from them.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use shoal_oci::{Cache, Client, ClientOptions, Credentials, Pulled, parse_reference};

use crate::progress::Bars;

/// Environment variable holding the registry password (never a flag: flags end up in shell
/// history and `ps`).
const PASSWORD_ENV: &str = "SHOAL_REGISTRY_PASSWORD";

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Registry user name. Without it, credentials come from `docker login`
    /// (~/.docker/config.json), else the registry is used anonymously.
    #[arg(long, env = "SHOAL_REGISTRY_USERNAME", help_heading = "Registry")]
    pub username: Option<String>,

    /// Read the registry password or token from standard input (otherwise from
    /// SHOAL_REGISTRY_PASSWORD).
    #[arg(long, requires = "username", help_heading = "Registry")]
    pub password_stdin: bool,

    /// The registry (`host[:port]`) --username belongs to; credentials are never sent to
    /// any other [default: the registry of the reference, for commands that name one].
    #[arg(
        long,
        env = "SHOAL_REGISTRY_SERVER",
        value_name = "REGISTRY",
        help_heading = "Registry"
    )]
    pub registry_server: Option<String>,

    /// Allow plain HTTP to this registry (`host[:port]`; repeat or separate with commas).
    /// Loopback registries (localhost, 127.0.0.1, ::1) always may.
    #[arg(
        long = "insecure-registry",
        env = "SHOAL_INSECURE_REGISTRIES",
        value_name = "REGISTRY",
        value_delimiter = ',',
        help_heading = "Registry"
    )]
    pub insecure: Vec<String>,

    /// Trust this CA certificate (PEM) for registries, beyond the system's: for a registry
    /// whose certificate a private CA signed.
    #[arg(
        long,
        env = "SHOAL_REGISTRY_CA",
        value_name = "FILE",
        help_heading = "Registry"
    )]
    pub registry_ca: Option<PathBuf>,

    /// Refuse components larger than this (for example 100MiB, 512Ki, 2G).
    #[arg(
        long,
        env = "SHOAL_MAX_ARTIFACT_SIZE",
        default_value = "100MiB",
        value_parser = parse_size,
        help_heading = "Registry"
    )]
    pub max_size: u64,

    /// Where pulled artifacts are cached [default: ~/.cache/shoal].
    #[arg(long, env = "SHOAL_CACHE_DIR", help_heading = "Registry")]
    pub cache_dir: Option<PathBuf>,
}

/// A path that exists, or anything ending in `.wasm`, is a file; everything else a reference.
pub fn looks_like_a_file(target: &str) -> bool {
    std::path::Path::new(target).exists() || target.ends_with(".wasm")
}

/// Parses a size like `100MiB`, `64Mi`, `2G` or a plain byte count.
pub fn parse_size(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|error| format!("{error}; use a size like 100MiB, 64Mi or 2G"))
}

impl RegistryArgs {
    /// The credentials given, bound to `--registry-server` or else to `registry`.
    fn credentials(&self, registry: Option<&str>) -> anyhow::Result<Credentials> {
        let Some(username) = &self.username else {
            return Ok(Credentials::FromDockerConfig);
        };
        let Some(registry) = self.registry_server.as_deref().or(registry) else {
            bail!(
                "--username {username} needs --registry-server REGISTRY (or SHOAL_REGISTRY_SERVER): credentials go only to the registry they belong to"
            );
        };
        let password = if self.password_stdin {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("reading the password from standard input")?;
            password.trim_end_matches(['\r', '\n']).to_owned()
        } else {
            match std::env::var(PASSWORD_ENV) {
                Ok(password) => password,
                Err(_) => bail!(
                    "--username {username} needs a password: pipe it to --password-stdin or set {PASSWORD_ENV}"
                ),
            }
        };
        Ok(Credentials::Basic {
            registry: registry.to_owned(),
            username: username.clone(),
            password,
        })
    }

    /// The cache root: `--cache-dir`, else the user's cache directory.
    pub fn cache_root(&self) -> anyhow::Result<PathBuf> {
        match &self.cache_dir {
            Some(dir) => Ok(dir.clone()),
            None => dirs::cache_dir().map(|dir| dir.join("shoal")).context(
                "no cache directory for this user: pass --cache-dir or set SHOAL_CACHE_DIR",
            ),
        }
    }

    /// Pulls `target` through the cache and reads the component's bytes.
    pub async fn pull_component(&self, target: &str) -> anyhow::Result<(Pulled, Vec<u8>)> {
        self.pull_component_with(&self.client_for(target)?, target)
            .await
    }

    /// Pulls `target` with `client`; see [`Self::pull_component`].
    pub async fn pull_component_with(
        &self,
        client: &Client,
        target: &str,
    ) -> anyhow::Result<(Pulled, Vec<u8>)> {
        let reference = parse_reference(target)?;
        let pulled = client
            .pull(&reference)
            .await
            .with_context(|| format!("cannot pull {target}"))?;
        let bytes = std::fs::read(&pulled.component_path)
            .with_context(|| format!("cannot read {}", pulled.component_path.display()))?;
        Ok((pulled, bytes))
    }

    /// A client for any registry, drawing progress bars on a terminal; --username needs
    /// --registry-server.
    pub fn client(&self) -> anyhow::Result<Client> {
        self.build_client(None)
    }

    /// A client for the command that names `target`: --username belongs to its registry
    /// unless --registry-server says otherwise.
    pub fn client_for(&self, target: &str) -> anyhow::Result<Client> {
        let registry = parse_reference(target)?.resolve_registry().to_owned();
        self.build_client(Some(&registry))
    }

    fn build_client(&self, registry: Option<&str>) -> anyhow::Result<Client> {
        let cache = Cache::open(self.cache_root()?.join("oci"))?;
        let options =
            ClientOptions {
                credentials: self.credentials(registry)?,
                insecure: self.insecure.clone(),
                max_artifact_size: self.max_size,
                extra_ca: match &self.registry_ca {
                    Some(path) => vec![std::fs::read(path).with_context(|| {
                        format!("cannot read the registry CA {}", path.display())
                    })?],
                    None => Vec::new(),
                },
            };
        Ok(Client::new(cache, options).with_progress(Arc::new(Bars::default())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_kubernetes_and_iec_units() {
        assert_eq!(parse_size("100MiB"), Ok(100 * 1024 * 1024));
        assert_eq!(parse_size("64Mi"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("lots").is_err());
    }
}
