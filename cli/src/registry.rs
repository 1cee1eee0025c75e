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

    /// Allow plain HTTP to this registry. Loopback registries (localhost, 127.0.0.1, ::1)
    /// always may.
    #[arg(long, env = "SHOAL_INSECURE_REGISTRY", help_heading = "Registry")]
    pub insecure: bool,

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
    fn credentials(&self) -> anyhow::Result<Credentials> {
        let Some(username) = &self.username else {
            return Ok(Credentials::FromDockerConfig);
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
        let reference = parse_reference(target)?;
        let pulled = self
            .client()?
            .pull(&reference)
            .await
            .with_context(|| format!("cannot pull {target}"))?;
        let bytes = std::fs::read(&pulled.component_path)
            .with_context(|| format!("cannot read {}", pulled.component_path.display()))?;
        Ok((pulled, bytes))
    }

    /// A client with these options, drawing progress bars on a terminal.
    pub fn client(&self) -> anyhow::Result<Client> {
        let cache = Cache::open(self.cache_root()?.join("oci"))?;
        let options = ClientOptions {
            credentials: self.credentials()?,
            insecure: self.insecure,
            max_artifact_size: self.max_size,
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
