//! Registry credentials: explicit ones first, then the Docker config, else anonymous.
//!
//! The CLI turns `--username`/`--password-stdin` and `SHOAL_REGISTRY_USERNAME`/`_PASSWORD`
//! into [`Credentials::Basic`]; everything else falls back to what `docker login` stored
//! (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, credential helpers included).

use std::fmt;

use oci_client::secrets::RegistryAuth;

/// How to authenticate to a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// Use what the Docker config has for the registry, else go anonymous.
    #[default]
    FromDockerConfig,
    /// No credentials.
    Anonymous,
    /// HTTP basic credentials.
    Basic {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
}

// Never print a password, not even in debug logs.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::FromDockerConfig => f.write_str("FromDockerConfig"),
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, ****)"),
        }
    }
}

impl Credentials {
    /// The `oci-client` auth to use for `registry`.
    pub(crate) fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::FromDockerConfig => docker_config_auth(registry),
        }
    }
}

fn docker_config_auth(registry: &str) -> RegistryAuth {
    // `docker login` files Docker Hub under its legacy v1 URL.
    let server = match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    match docker_credential::get_credential(server) {
        Ok(docker_credential::DockerCredential::UsernamePassword(username, password)) => {
            RegistryAuth::Basic(username, password)
        }
        Ok(docker_credential::DockerCredential::IdentityToken(token)) => {
            RegistryAuth::Bearer(token)
        }
        Err(error) => {
            tracing::debug!(registry, %error, "no Docker credentials; going anonymous");
            RegistryAuth::Anonymous
        }
    }
}
