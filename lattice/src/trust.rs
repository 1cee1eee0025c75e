//! Trust policies: the public keys whose signatures (cosign's layout) a component needs
//! before a host runs it. One policy for the whole lattice and one per namespace, in the
//! `trust` bucket (keys [`LATTICE_KEY`] and `namespaces.<namespace>`); an app's replicas
//! need a signature by a key of either. Only a lattice-wide admin changes them: a policy
//! that a namespace's own editors could widen would not hold them to anything.
//!
//! The scheduler copies the keys into each assignment, so a host checks the component it
//! pulled against the policy that held when it was placed, also when it restarts offline.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Key of the lattice-wide policy in the trust bucket.
pub const LATTICE_KEY: &str = "lattice";

/// Most keys one policy holds.
pub const MAX_KEYS: usize = 32;

/// The DER prefix of every ECDSA P-256 public key in SPKI form with an uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes) }.
const P256_SPKI_PREFIX: [u8; 27] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
];
/// The whole SPKI: the prefix and the point's two 32-byte coordinates.
const P256_SPKI_LEN: usize = 91;

/// Key of a namespace's policy in the trust bucket.
pub fn namespace_key(namespace: &str) -> String {
    format!("namespaces.{namespace}")
}

/// A public key a policy trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustedKey {
    /// The operator's name for it, unique in its policy.
    pub name: String,
    /// `sha256:` and the hex SHA-256 of its SPKI encoding.
    pub id: String,
    /// The key as a `PUBLIC KEY` PEM block.
    pub pem: String,
    /// When it was added (ms since the epoch).
    #[serde(default)]
    pub added_at: u64,
}

impl TrustedKey {
    /// A trusted key from an operator's PEM, checked to be one ECDSA P-256 public key (the
    /// curve point itself is checked where signatures are verified).
    ///
    /// # Errors
    /// What is wrong with the name or the key.
    pub fn new(name: &str, pem: &str, added_at: u64) -> Result<Self, String> {
        crate::names::check_name("key name", name).map_err(|error| error.to_string())?;
        let der = spki_der(pem)?;
        Ok(TrustedKey {
            name: name.to_owned(),
            id: format!("sha256:{}", hex_lower(&Sha256::digest(&der))),
            pem: pem.trim().to_owned() + "\n",
            added_at,
        })
    }

    /// Whether the stored record is what [`TrustedKey::new`] makes of its PEM (a record
    /// written around the API could pair one key's id with another key).
    pub fn is_consistent(&self) -> bool {
        TrustedKey::new(&self.name, &self.pem, self.added_at).is_ok_and(|key| key.id == self.id)
    }

    /// The id shortened for tables: `sha256:` and 12 hex digits.
    pub fn short_id(&self) -> &str {
        self.id.get(..19).unwrap_or(&self.id)
    }
}

/// The keys of one policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustPolicy {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<TrustedKey>,
}

/// One policy as the control API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustView {
    /// The namespace, or `None` for the lattice-wide policy.
    pub namespace: Option<String>,
    /// Its keys.
    pub keys: Vec<TrustedKey>,
}

/// The keys an app needs a signature from: those of its policies (the lattice's and its
/// namespace's), without repeats (by id). Empty: no signature needed.
pub fn effective<'a>(policies: impl IntoIterator<Item = &'a [TrustedKey]>) -> Vec<TrustedKey> {
    let mut keys: Vec<TrustedKey> = Vec::new();
    for key in policies
        .into_iter()
        .flatten()
        .filter(|key| key.is_consistent())
    {
        if !keys.iter().any(|kept| kept.id == key.id) {
            keys.push(key.clone());
        }
    }
    keys
}

fn spki_der(pem: &str) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    if pem.len() > 4096 {
        return Err("the key is longer than any P-256 public key".to_owned());
    }
    let body = pem
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
        .ok_or_else(|| {
            format!("not a public key: the PEM must start with {BEGIN} and end with {END} (cosign.pub, or openssl pkey -pubout)")
        })?;
    let body: String = body.split_whitespace().collect();
    let der = data_encoding::BASE64
        .decode(body.as_bytes())
        .map_err(|error| format!("the key's PEM body is not base64: {error}"))?;
    if der.len() != P256_SPKI_LEN || !der.starts_with(&P256_SPKI_PREFIX) {
        return Err(
            "not an ECDSA P-256 public key: Shoal verifies cosign's default key type (cosign generate-key-pair, shoal keygen)"
                .to_owned(),
        );
    }
    Ok(der)
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 public key (`openssl ecparam -name prime256v1 -genkey | openssl ec -pubout`).
    const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE4RG2QRaVJ6stKNg0ZZN1JgHRthZU
JeY71DpvMvJ+TXUMeskxsbN8alVw4fvqOmoTeSy7QrKWjyN5Eol3iTqQjQ==
-----END PUBLIC KEY-----";

    #[test]
    fn a_p256_public_key_is_taken_with_its_fingerprint() {
        let key = TrustedKey::new("ci", KEY, 1).unwrap();
        assert!(
            key.id.starts_with("sha256:") && key.id.len() == 71,
            "{}",
            key.id
        );
        assert!(key.is_consistent());
        let mut forged = key.clone();
        forged.id = format!("sha256:{}", "0".repeat(64));
        assert!(!forged.is_consistent());
    }

    #[test]
    fn other_keys_and_garbage_are_refused() {
        for pem in [
            "",
            "hello",
            "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
            // An RSA key's SPKI starts otherwise.
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
        ] {
            assert!(TrustedKey::new("k", pem, 0).is_err(), "{pem:?}");
        }
        assert!(TrustedKey::new("Bad Name", KEY, 0).is_err());
    }

    #[test]
    fn the_effective_keys_are_both_policies_once() {
        let a = TrustedKey::new("a", KEY, 0).unwrap();
        let lattice = TrustPolicy {
            keys: vec![a.clone()],
        };
        let mut again = a.clone();
        again.name = "same-key".to_owned();
        let namespace = TrustPolicy { keys: vec![again] };
        assert_eq!(
            effective([lattice.keys.as_slice(), namespace.keys.as_slice()]),
            vec![a]
        );
        assert!(effective([]).is_empty());
    }
}
