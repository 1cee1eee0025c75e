//! Signing keys in the formats cosign reads and writes: ECDSA P-256 private keys as cosign's
//! password-encrypted PEM (`ENCRYPTED SIGSTORE PRIVATE KEY`: scrypt, then NaCl secretbox over
//! PKCS#8), plain PKCS#8 (`PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) as openssl writes them,
//! and public keys as SPKI (`PUBLIC KEY`). The cryptography is RustCrypto's; this module only
//! reads and writes the envelopes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The PEM label cosign writes encrypted private keys under.
pub const ENCRYPTED_LABEL: &str = "ENCRYPTED SIGSTORE PRIVATE KEY";
/// The label older cosign releases wrote, still read.
const OLD_ENCRYPTED_LABEL: &str = "ENCRYPTED COSIGN PRIVATE KEY";

/// cosign's scrypt parameters (N = 2^15, r = 8, p = 1). Others are refused: a key file could
/// otherwise ask for gigabytes of memory.
const SCRYPT_LOG_N: u8 = 15;
const SCRYPT_N: u64 = 1 << SCRYPT_LOG_N;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;

/// The largest key file read: keys are a few hundred bytes.
pub const MAX_KEY_FILE: usize = 16 * 1024;

/// Why a key could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Not PEM at all.
    #[error("not a PEM key file: {0}")]
    NotPem(String),
    /// A PEM block of a kind this is not.
    #[error("a {found} PEM block, not {wanted}")]
    WrongKind {
        /// The label found.
        found: String,
        /// What was wanted.
        wanted: &'static str,
    },
    /// Right kind, but not an ECDSA P-256 key.
    #[error(
        "not an ECDSA P-256 key ({0}): Shoal signs and verifies with P-256, cosign's default key type"
    )]
    NotP256(String),
    /// An encrypted key whose password is wrong (or whose file was altered).
    #[error(
        "the password does not open this key (or the file was altered): set SHOAL_KEY_PASSWORD (or COSIGN_PASSWORD) to the password it was made with"
    )]
    WrongPassword,
    /// An encrypted key this reader does not understand.
    #[error("unsupported encrypted key: {0}")]
    Unsupported(String),
    /// The file is larger than any key.
    #[error("the key file is larger than {MAX_KEY_FILE} bytes: not a key")]
    TooLarge,
}

/// A public key that signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl PublicKey {
    /// Reads a `PUBLIC KEY` PEM block (cosign.pub, `openssl ec -pubout`).
    ///
    /// # Errors
    /// When it is not PEM, not a public key, or not a P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.len() > MAX_KEY_FILE {
            return Err(KeyError::TooLarge);
        }
        let (label, _) = decode_pem(pem)?;
        if label != "PUBLIC KEY" {
            return Err(KeyError::WrongKind {
                found: label,
                wanted: "PUBLIC KEY",
            });
        }
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(PublicKey)
            .map_err(|error| KeyError::NotP256(error.to_string()))
    }

    /// The key as a `PUBLIC KEY` PEM block.
    pub fn to_pem(&self) -> String {
        self.0
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap_or_default()
    }

    /// The key's id: `sha256:` and the hex SHA-256 of its SPKI encoding (what
    /// `openssl pkey -pubin -outform der | sha256sum` prints).
    pub fn id(&self) -> String {
        let der = self
            .0
            .to_public_key_der()
            .map(|der| der.as_bytes().to_vec())
            .unwrap_or_default();
        format!("sha256:{}", hex::encode(Sha256::digest(der)))
    }

    /// Whether `signature` (base64 of an ASN.1 DER ECDSA signature, as cosign stores it) is
    /// this key's signature of `payload`.
    pub fn verifies(&self, payload: &[u8], signature: &str) -> bool {
        let Ok(der) = BASE64.decode(signature.trim()) else {
            return false;
        };
        let Ok(signature) = Signature::from_der(&der) else {
            return false;
        };
        self.0.verify(payload, &signature).is_ok()
    }
}

/// A private key that signs.
pub struct PrivateKey(SigningKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(public {})", self.public().id())
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Self {
        PrivateKey(SigningKey::random(&mut OsRng))
    }

    /// Reads a private key: cosign's encrypted PEM (opened with `password`), PKCS#8 or SEC1.
    ///
    /// # Errors
    /// When it is not one of those, not P-256, or the password does not open it.
    pub fn from_pem(pem: &str, password: &[u8]) -> Result<Self, KeyError> {
        if pem.len() > MAX_KEY_FILE {
            return Err(KeyError::TooLarge);
        }
        let (label, body) = decode_pem(pem)?;
        match label.as_str() {
            ENCRYPTED_LABEL | OLD_ENCRYPTED_LABEL => {
                let der = decrypt(&body, password)?;
                SigningKey::from_pkcs8_der(&der)
                    .map(PrivateKey)
                    .map_err(|error| KeyError::NotP256(error.to_string()))
            }
            "PRIVATE KEY" => SigningKey::from_pkcs8_der(&body)
                .map(PrivateKey)
                .map_err(|error| KeyError::NotP256(error.to_string())),
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&body)
                .map(|secret| PrivateKey(SigningKey::from(secret)))
                .map_err(|error| KeyError::NotP256(error.to_string())),
            _ => Err(KeyError::WrongKind {
                found: label,
                wanted: "ENCRYPTED SIGSTORE PRIVATE KEY, PRIVATE KEY or EC PRIVATE KEY",
            }),
        }
    }

    /// The key in cosign's encrypted format, sealed with `password` (which may be empty, as
    /// cosign allows).
    ///
    /// # Errors
    /// Never in practice: only if encoding the key fails.
    pub fn to_encrypted_pem(&self, password: &[u8]) -> Result<String, KeyError> {
        let der = self
            .0
            .to_pkcs8_der()
            .map_err(|error| KeyError::Unsupported(error.to_string()))?;
        let sealed = encrypt(der.as_bytes(), password)?;
        Ok(encode_pem(ENCRYPTED_LABEL, &sealed))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// Signs `payload`: ECDSA P-256 over its SHA-256, ASN.1 DER, base64 (cosign's encoding).
    pub fn sign(&self, payload: &[u8]) -> String {
        let signature: Signature = self.0.sign(payload);
        BASE64.encode(signature.to_der().as_bytes())
    }
}

/// cosign's envelope of an encrypted key (go-securesystemslib's `encrypted` package).
#[derive(Serialize, Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

fn derive(password: &[u8], salt: &[u8]) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let params = scrypt::Params::new(SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P, 32)
        .map_err(|error| KeyError::Unsupported(error.to_string()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(password, salt, &params, key.as_mut())
        .map_err(|error| KeyError::Unsupported(error.to_string()))?;
    Ok(key)
}

fn decrypt(envelope: &[u8], password: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let envelope: Envelope = serde_json::from_slice(envelope)
        .map_err(|error| KeyError::Unsupported(format!("not cosign's key envelope: {error}")))?;
    if envelope.kdf.name != "scrypt" || envelope.cipher.name != "nacl/secretbox" {
        return Err(KeyError::Unsupported(format!(
            "key derivation {:?} with cipher {:?} (cosign uses scrypt with nacl/secretbox)",
            envelope.kdf.name, envelope.cipher.name
        )));
    }
    let params = &envelope.kdf.params;
    if (params.n, params.r, params.p) != (SCRYPT_N, SCRYPT_R, SCRYPT_P) {
        return Err(KeyError::Unsupported(format!(
            "scrypt parameters N={} r={} p={} (cosign's are N={SCRYPT_N} r={SCRYPT_R} p={SCRYPT_P})",
            params.n, params.r, params.p
        )));
    }
    let bytes = |what: &str, text: &str| {
        BASE64
            .decode(text)
            .map_err(|error| KeyError::Unsupported(format!("{what}: {error}")))
    };
    let salt = bytes("salt", &envelope.kdf.salt)?;
    let nonce = bytes("nonce", &envelope.cipher.nonce)?;
    let ciphertext = bytes("ciphertext", &envelope.ciphertext)?;
    if nonce.len() != 24 {
        return Err(KeyError::Unsupported(format!(
            "a {}-byte nonce (secretbox takes 24)",
            nonce.len()
        )));
    }
    let key = derive(password, &salt)?;
    let cipher = XSalsa20Poly1305::new(key.as_ref().into());
    cipher
        .decrypt(Nonce::from_slice(&nonce), ciphertext.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| KeyError::WrongPassword)
}

fn encrypt(plaintext: &[u8], password: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let key = derive(password, &salt)?;
    let cipher = XSalsa20Poly1305::new(key.as_ref().into());
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), plaintext)
        .map_err(|error| KeyError::Unsupported(error.to_string()))?;
    let envelope = Envelope {
        kdf: Kdf {
            name: "scrypt".to_owned(),
            params: ScryptParams {
                n: SCRYPT_N,
                r: SCRYPT_R,
                p: SCRYPT_P,
            },
            salt: BASE64.encode(salt),
        },
        cipher: Cipher {
            name: "nacl/secretbox".to_owned(),
            nonce: BASE64.encode(nonce),
        },
        ciphertext: BASE64.encode(ciphertext),
    };
    serde_json::to_vec(&envelope).map_err(|error| KeyError::Unsupported(error.to_string()))
}

/// The label and body of the one PEM block in `text`.
fn decode_pem(text: &str) -> Result<(String, Vec<u8>), KeyError> {
    let text = text.trim();
    let first = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("-----BEGIN "))
        .and_then(|line| line.strip_suffix("-----"))
        .ok_or_else(|| KeyError::NotPem("no -----BEGIN …----- line".to_owned()))?;
    let end = format!("-----END {first}-----");
    let mut lines = text.lines().skip(1);
    let mut body = String::new();
    for line in lines.by_ref() {
        let line = line.trim();
        if line == end {
            return BASE64
                .decode(&body)
                .map(|bytes| (first.to_owned(), bytes))
                .map_err(|error| KeyError::NotPem(format!("the body is not base64: {error}")));
        }
        body.push_str(line);
    }
    Err(KeyError::NotPem(format!("no {end} line")))
}

fn encode_pem(label: &str, body: &[u8]) -> String {
    let encoded = BASE64.encode(body);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_key_opens_with_its_password_only() {
        let key = PrivateKey::generate();
        let pem = key.to_encrypted_pem(b"hunter2").unwrap_or_default();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
        let opened = PrivateKey::from_pem(&pem, b"hunter2").map(|key| key.public());
        assert_eq!(opened.ok(), Some(key.public()));
        assert!(matches!(
            PrivateKey::from_pem(&pem, b"wrong"),
            Err(KeyError::WrongPassword)
        ));
        // The older label reads the same.
        let old = pem.replace(ENCRYPTED_LABEL, OLD_ENCRYPTED_LABEL);
        assert!(PrivateKey::from_pem(&old, b"hunter2").is_ok());
    }

    #[test]
    fn signatures_verify_with_the_public_key_only() {
        let key = PrivateKey::generate();
        let other = PrivateKey::generate();
        let signature = key.sign(b"payload");
        let public = PublicKey::from_pem(&key.public().to_pem());
        assert_eq!(public.as_ref().ok(), Some(&key.public()));
        assert!(key.public().verifies(b"payload", &signature));
        assert!(!key.public().verifies(b"payloaD", &signature));
        assert!(!other.public().verifies(b"payload", &signature));
        assert!(!key.public().verifies(b"payload", "not base64!"));
        assert!(key.public().id().starts_with("sha256:"));
        assert_ne!(key.public().id(), other.public().id());
    }

    #[test]
    fn hostile_key_files_are_refused_not_panicked_on() {
        for text in [
            "",
            "garbage",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n",
            "-----BEGIN PUBLIC KEY-----\n!!!\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        ] {
            assert!(PublicKey::from_pem(text).is_err(), "{text:?}");
            assert!(PrivateKey::from_pem(text, b"").is_err(), "{text:?}");
        }
        // An envelope asking scrypt for more memory than cosign ever does.
        let greedy = br#"{"kdf":{"name":"scrypt","params":{"N":1073741824,"r":8,"p":1},"salt":"AA=="},"cipher":{"name":"nacl/secretbox","nonce":"AA=="},"ciphertext":"AA=="}"#;
        let pem = encode_pem(ENCRYPTED_LABEL, greedy);
        assert!(matches!(
            PrivateKey::from_pem(&pem, b""),
            Err(KeyError::Unsupported(_))
        ));
        assert!(matches!(
            PrivateKey::from_pem(&"A".repeat(MAX_KEY_FILE + 1), b""),
            Err(KeyError::TooLarge)
        ));
    }
}
