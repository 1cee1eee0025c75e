//! Secret values sealed with x25519 keys (NATS xkeys: curve25519, XSalsa20-Poly1305, as
//! wasmCloud seals its secrets), and held in memory that is zeroed when dropped.
//!
//! A secret is sealed twice on its way: by the CLI to the lattice's secrets key (what the
//! `secrets` bucket stores, so nats-server's disk holds no value), and by the scheduler to
//! the public key of the one host an assignment sends it to (what the assignment carries,
//! and what that host keeps in its saved state). Only the lattice key's holders (the
//! schedulers) and that host can open them.

use std::collections::BTreeMap;

use data_encoding::BASE64;
/// The x25519 key pair type (NATS xkeys).
pub use nkeys::XKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// A sealed set of values: the box and the public key of who sealed it (an opener needs it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sealed {
    /// The sealer's public xkey (`X…`).
    pub sender: String,
    /// The box, base64.
    pub sealed: String,
}

/// Why values could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A key is not an xkey.
    #[error("{0} is not an xkey (x25519 public key or seed)")]
    Key(String),
    /// The box does not open with this key: sealed to another, or altered.
    #[error("the sealed values do not open with this key (sealed to another key, or altered)")]
    Open,
    /// Sealing failed.
    #[error("cannot seal the values: {0}")]
    Seal(String),
    /// The box opened but does not hold values.
    #[error("the sealed values are not a set of key-value pairs")]
    Malformed,
}

/// Secret values by key: zeroed in memory when dropped, never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Drop for SecretValues {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl SecretValues {
    /// Takes `values` (the caller's copies are its own to zero).
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(values)
    }

    /// The values.
    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }

    /// Adds `other`'s values (a key of both takes `other`'s).
    pub fn extend(&mut self, other: &SecretValues) {
        for (key, value) in &other.0 {
            self.0.insert(key.clone(), value.clone());
        }
    }

    /// Seals these values to `recipient` (a public xkey), as `sender`.
    ///
    /// # Errors
    /// [`SecretError::Key`] for a recipient that is not an xkey.
    pub fn seal(&self, sender: &XKey, recipient: &str) -> Result<Sealed, SecretError> {
        let recipient = XKey::from_public_key(recipient)
            .map_err(|_| SecretError::Key(format!("{recipient:?}")))?;
        let mut plain = serde_json::to_vec(&self.0).map_err(|_| SecretError::Malformed)?;
        let sealed = sender
            .seal(&plain, &recipient)
            .map_err(|error| SecretError::Seal(error.to_string()));
        plain.zeroize();
        Ok(Sealed {
            sender: sender.public_key(),
            sealed: BASE64.encode(&sealed?),
        })
    }
}

impl Sealed {
    /// Opens the box with `recipient` (the private xkey it was sealed to).
    ///
    /// # Errors
    /// [`SecretError::Open`] when it was sealed to another key or altered.
    pub fn open(&self, recipient: &XKey) -> Result<SecretValues, SecretError> {
        let sender = XKey::from_public_key(&self.sender)
            .map_err(|_| SecretError::Key(format!("{:?}", self.sender)))?;
        let sealed = BASE64
            .decode(self.sealed.as_bytes())
            .map_err(|_| SecretError::Open)?;
        let mut plain = recipient
            .open(&sealed, &sender)
            .map_err(|_| SecretError::Open)?;
        let values = serde_json::from_slice(&plain).map_err(|_| SecretError::Malformed);
        plain.zeroize();
        values.map(SecretValues)
    }
}

/// Reads an xkey seed (`SX…`) from text such as a key file's.
///
/// # Errors
/// [`SecretError::Key`] when the text is not an xkey seed.
pub fn key_from_seed(text: &str) -> Result<XKey, SecretError> {
    XKey::from_seed(text.trim()).map_err(|_| SecretError::Key("the key file".to_owned()))
}

/// A new xkey pair.
pub fn new_key() -> XKey {
    XKey::new()
}

/// The xkey whose seed is in `path`, or a new one written there (mode 0600, by a temporary
/// file and a rename) when the file does not exist or holds no key. The bool says whether
/// it is new.
///
/// # Errors
/// When the file cannot be read or written.
pub fn key_file(path: &std::path::Path) -> std::io::Result<(XKey, bool)> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Ok(key) = key_from_seed(&text) {
                return Ok((key, false));
            }
            tracing::warn!(path = %path.display(), "the key file holds no xkey seed; writing a new key");
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let key = new_key();
    let mut seed = key
        .seed()
        .map_err(|error| std::io::Error::other(error.to_string()))?;
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let temp = path.with_extension("xk.tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut file| {
            file.write_all(format!("{seed}\n").as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temp, path));
    seed.zeroize();
    written.map(|()| (key, true))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn values_sealed_to_a_key_open_with_it_only() {
        let lattice = new_key();
        let cli = new_key();
        let values = SecretValues::new(BTreeMap::from([("token".into(), "s3cret".into())]));
        let sealed = values.seal(&cli, &lattice.public_key()).unwrap();
        assert!(!sealed.sealed.contains("s3cret"));
        assert_eq!(sealed.open(&lattice).unwrap(), values);
        assert!(matches!(sealed.open(&new_key()), Err(SecretError::Open)));
        let mut altered = sealed.clone();
        let flipped = if altered.sealed.as_bytes()[10] == b'A' {
            "B"
        } else {
            "A"
        };
        altered.sealed.replace_range(10..11, flipped);
        assert!(altered.open(&lattice).is_err());
        // Debug names keys, never values.
        assert_eq!(format!("{values:?}"), r#"{"token"}"#);
        let seed = lattice.seed().unwrap();
        assert_eq!(
            key_from_seed(&format!("{seed}\n")).unwrap().public_key(),
            lattice.public_key()
        );
        assert!(key_from_seed("not a key").is_err());
    }
}
