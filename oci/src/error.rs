//! The errors of registry and cache operations, each with a message a user can act on.

use oci_client::errors::{OciDistributionError, OciErrorCode};

use crate::artifact::ArtifactError;
use crate::cache::CacheError;
use crate::component::ComponentError;
use crate::digest::Digest;

/// Everything push, pull and inspect can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reference string does not parse.
    #[error(
        "invalid reference {reference:?}: {reason}; expected [registry/]repository[:tag][@sha256:<digest>], for example localhost:5000/team/hello:1.0"
    )]
    InvalidReference {
        /// What was given.
        reference: String,
        /// The parser's reason.
        reason: String,
    },
    /// The bytes to push are not a valid component.
    #[error(transparent)]
    Component(#[from] ComponentError),
    /// The component to push is larger than the limit.
    #[error("the component is {} but the artifact size limit is {}; raise it with --max-size or SHOAL_MAX_ARTIFACT_SIZE", bytesize::ByteSize(*size), bytesize::ByteSize(*limit))]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Push needs a tag to point at the new manifest.
    #[error("cannot push to {reference}: a push needs a tag (…:1.0), not a digest")]
    PushByDigest {
        /// The reference given.
        reference: String,
    },
    /// The manifest or config is not a Wasm artifact Shoal accepts.
    #[error("{problem}; nothing was cached")]
    Artifact {
        /// The reference being pulled.
        reference: String,
        /// Which rule it breaks (in the message, so not also a `source`).
        problem: ArtifactError,
    },
    /// What a reference names is not a Shoal host binary artifact.
    #[error("{reference} is not a Shoal host binary: {problem}")]
    NotHostBinary {
        /// What was asked for.
        reference: String,
        /// Which rule it breaks.
        problem: String,
    },
    /// A blob's content does not match the digest its descriptor names.
    #[error(
        "the {what} does not match its digest (expected {expected}, got {actual}); the registry or the network corrupted it, nothing was cached"
    )]
    DigestMismatch {
        /// The reference being pulled.
        reference: String,
        /// manifest, config or layer.
        what: &'static str,
        /// The digest the descriptor names.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A blob is longer than its descriptor (or the size limit) allows.
    #[error("the {what} is longer than the {limit} bytes it may have; nothing was cached")]
    Oversize {
        /// The reference being pulled.
        reference: String,
        /// config or layer.
        what: &'static str,
        /// Bytes allowed.
        limit: u64,
    },
    /// The registry cannot be reached (refused, DNS, timeout).
    #[error("cannot reach registry {registry}: {detail}")]
    Unreachable {
        /// Registry host.
        registry: String,
        /// The network error.
        detail: String,
    },
    /// The registry says the repository, tag or digest does not exist.
    #[error("{reference} was not found in registry {registry}")]
    NotFound {
        /// Registry host.
        registry: String,
        /// What was asked for.
        reference: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error(
        "registry {registry} denied access to {reference}; pass --username with --password-stdin, set SHOAL_REGISTRY_USERNAME and SHOAL_REGISTRY_PASSWORD, or log in with `docker login {registry}`"
    )]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// What was asked for.
        reference: String,
    },
    /// Any other registry failure.
    #[error("registry {registry} failed on {reference}: {message}")]
    Registry {
        /// Registry host.
        registry: String,
        /// What was asked for.
        reference: String,
        /// What the registry or client said.
        message: String,
    },
    /// A mirror (the lattice's copy of components) could not serve the artifact.
    #[error("cannot fetch {reference} from the lattice's copy: {message}")]
    Mirror {
        /// The reference being pulled.
        reference: String,
        /// What went wrong.
        message: String,
    },
    /// The local cache failed (disk full, permissions).
    #[error(transparent)]
    Cache(#[from] CacheError),
}

impl Error {
    /// Whether this error means the registry could not be reached at all, so a cached copy
    /// is the best answer available.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// Turns an `oci-client` error into one that says what to do, by its kind, never its text.
    pub(crate) fn from_registry(
        registry: &str,
        reference: &str,
        error: OciDistributionError,
    ) -> Self {
        let registry = registry.to_owned();
        let reference = reference.to_owned();
        match error {
            OciDistributionError::RequestError(ref request)
                if request.is_connect() || request.is_timeout() =>
            {
                Self::Unreachable {
                    registry,
                    detail: innermost_cause(request),
                }
            }
            OciDistributionError::RequestError(ref request)
                if request
                    .status()
                    .is_some_and(|status| matches!(status.as_u16(), 401 | 403)) =>
            {
                Self::Unauthorized {
                    registry,
                    reference,
                }
            }
            OciDistributionError::RequestError(ref request)
                if request
                    .status()
                    .is_some_and(|status| status.as_u16() == 404) =>
            {
                Self::NotFound {
                    registry,
                    reference,
                }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => Self::Unauthorized {
                registry,
                reference,
            },
            OciDistributionError::ImageManifestNotFoundError(_) => Self::NotFound {
                registry,
                reference,
            },
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => Self::Unauthorized {
                registry,
                reference,
            },
            OciDistributionError::ServerError { code: 404, .. } => Self::NotFound {
                registry,
                reference,
            },
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let codes = envelope.errors.iter().map(|error| &error.code);
                let mut not_found = false;
                let mut denied = false;
                for code in codes {
                    match code {
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound => not_found = true,
                        OciErrorCode::Unauthorized | OciErrorCode::Denied => denied = true,
                        _ => {}
                    }
                }
                if denied {
                    Self::Unauthorized {
                        registry,
                        reference,
                    }
                } else if not_found {
                    Self::NotFound {
                        registry,
                        reference,
                    }
                } else {
                    Self::Registry {
                        registry,
                        reference,
                        message: envelope.to_string(),
                    }
                }
            }
            other => Self::Registry {
                registry,
                reference,
                message: other.to_string(),
            },
        }
    }
}

/// reqwest wraps the useful part ("Connection refused") a few levels down.
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
