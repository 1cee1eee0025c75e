//! Ingress TLS with rustls: one or more certificate and key pairs (PEM), the certificate for
//! each connection chosen by the name the client asks for (SNI), HTTP/2 and HTTP/1.1 offered
//! by ALPN.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// What can go wrong loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM of the expected kind.
    #[error("cannot read {what} from {path}: {reason}")]
    Read {
        /// Certificate or key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not suit the certificate or is not supported.
    #[error("the key {key} cannot serve the certificate {cert}: {reason}")]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        reason: String,
    },
    /// No certificate was given.
    #[error("TLS needs at least one --tls-cert and --tls-key pair")]
    Empty,
}

/// Picks, for each connection, the first certificate valid for the requested name, or the
/// first certificate when the client sends no name (or none matches).
#[derive(Debug)]
struct BySni(Vec<Arc<CertifiedKey>>);

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let wanted = hello
            .server_name()
            .and_then(|name| ServerName::try_from(name.to_owned()).ok());
        if let Some(wanted) = wanted {
            for key in &self.0 {
                let Some(leaf) = key.cert.first() else {
                    continue;
                };
                if webpki::EndEntityCert::try_from(leaf)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&wanted).is_ok())
                {
                    return Some(Arc::clone(key));
                }
            }
        }
        self.0.first().cloned()
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|error| TlsError::Read {
            what: "certificates",
            path: cert.to_owned(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Read {
            what: "certificates",
            path: cert.to_owned(),
            reason: "no CERTIFICATE block".to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::Read {
        what: "a private key",
        path: key.to_owned(),
        reason: error.to_string(),
    })?;
    let signing = ring::sign::any_supported_type(&private).map_err(|error| TlsError::Key {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: error.to_string(),
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|error| TlsError::Key {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: error.to_string(),
    })?;
    Ok(Arc::new(certified))
}

/// A server configuration for the ingress from `(certificate, key)` PEM file pairs.
///
/// # Errors
/// [`TlsError`] naming the file and the problem.
pub fn server_config(pairs: &[(PathBuf, PathBuf)]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    if pairs.is_empty() {
        return Err(TlsError::Empty);
    }
    let keys = pairs
        .iter()
        .map(|(cert, key)| load_pair(cert, key))
        .collect::<Result<Vec<_>, _>>()?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Key {
                cert: pairs[0].0.clone(),
                key: pairs[0].1.clone(),
                reason: error.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(BySni(keys)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
