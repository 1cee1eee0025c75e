//! Registry credentials: explicit ones first, then the Docker config, else anonymous.
//!
//! The CLI turns `--username`/`--password-stdin` and `SHOAL_REGISTRY_USERNAME`/`_PASSWORD`
//! into [`Credentials::Basic`] for one registry (a manifest naming another registry must not
//! receive them); everything else falls back to what `docker login` stored
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
    /// HTTP basic credentials for one registry; other registries get what the Docker config
    /// has for them, never these.
    Basic {
        /// The registry (`host[:port]`) the credentials belong to.
        registry: String,
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
            Self::Basic {
                registry, username, ..
            } => write!(f, "Basic({username}@{registry}, ****)"),
        }
    }
}

impl Credentials {
    /// The `oci-client` auth to use for `registry`.
    pub(crate) fn for_registry(&self, registry: &str) -> RegistryAuth {
        match self {
            Self::Anonymous => RegistryAuth::Anonymous,
            Self::Basic {
                registry: own,
                username,
                password,
            } if own.eq_ignore_ascii_case(registry) => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Self::Basic { .. } | Self::FromDockerConfig => docker_config_auth(registry),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_go_only_to_their_registry() {
        let credentials = Credentials::Basic {
            registry: "registry.example:5000".into(),
            username: "u".into(),
            password: "p".into(),
        };
        assert_eq!(
            credentials.for_registry("Registry.Example:5000"),
            RegistryAuth::Basic("u".into(), "p".into())
        );
        assert!(!matches!(
            credentials.for_registry("evil.example"),
            RegistryAuth::Basic(..)
        ));
        assert_eq!(
            format!("{credentials:?}"),
            "Basic(u@registry.example:5000, ****)"
        );
    }
}
