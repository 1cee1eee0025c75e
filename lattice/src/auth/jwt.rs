//! The NATS JWT format: claims, signing by an nkey, checking a signature, and the
//! operator's self-signed JWT.

use std::collections::BTreeMap;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::*;

/// The claims every NATS JWT shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Claims<N> {
    pub(super) jti: String,
    pub(super) iat: u64,
    /// When it stops counting (seconds); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) exp: Option<u64>,
    pub(super) iss: String,
    pub(super) name: String,
    pub(super) sub: String,
    pub(super) nats: N,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct SubjectList {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) deny: Vec<String>,
}

impl SubjectList {
    /// The subjects `allow` allows, less `deny`; nothing at all when `allow` is empty
    /// (nats-server reads a list without `allow` as allowing every subject).
    pub(super) fn only(allow: &[String], deny: &[String]) -> Self {
        let deny = if allow.is_empty() {
            vec![">".to_owned()]
        } else {
            deny.to_vec()
        };
        Self {
            allow: allow.to_vec(),
            deny,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ResponsePermission {
    pub(super) max: i64,
    pub(super) ttl: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UserNats {
    #[serde(rename = "pub")]
    pub(super) publish: SubjectList,
    #[serde(rename = "sub")]
    pub(super) subscribe: SubjectList,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) resp: Option<ResponsePermission>,
    pub(super) subs: i64,
    pub(super) data: i64,
    pub(super) payload: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) allowed_connection_types: Vec<String>,
    /// The account a user belongs to when a signing key of that account signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) issuer_account: Option<String>,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) version: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AccountLimits {
    pub(super) subs: i64,
    pub(super) data: i64,
    pub(super) payload: i64,
    pub(super) imports: i64,
    pub(super) exports: i64,
    pub(super) wildcards: bool,
    pub(super) conn: i64,
    pub(super) leaf: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mem_storage: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) disk_storage: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) streams: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) consumer: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AccountNats {
    pub(super) limits: AccountLimits,
    /// Keys that may sign users of this account besides its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) signing_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) exports: Vec<ExportClaim>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) imports: Vec<ImportClaim>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) revocations: BTreeMap<String, u64>,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) version: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct OperatorNats {
    pub(super) system_account: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) version: u8,
}

pub(super) const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// A JWT about `subject`, named `name`, issued by `signer` at `issued_at` (seconds) with the
/// `nats` claims of its kind; its `jti` is the hash of the claims, as NATS tools make it.
pub(super) fn sign<N: Serialize>(
    signer: &KeyPair,
    subject: &str,
    name: &str,
    issued_at: u64,
    nats: N,
) -> Result<String, AuthError> {
    sign_until(signer, subject, name, issued_at, None, nats)
}

/// [`sign`], for a JWT that stops counting at `expires` (seconds) when given.
pub(super) fn sign_until<N: Serialize>(
    signer: &KeyPair,
    subject: &str,
    name: &str,
    issued_at: u64,
    expires: Option<u64>,
    nats: N,
) -> Result<String, AuthError> {
    let mut claims = Claims {
        jti: String::new(),
        iat: issued_at,
        exp: expires,
        iss: signer.public_key(),
        name: name.to_owned(),
        sub: subject.to_owned(),
        nats,
    };
    let unidentified = serde_json::to_vec(&claims)
        .map_err(|error| AuthError::Malformed(format!("cannot encode claims: {error}")))?;
    claims.jti = BASE32_NOPAD.encode(&Sha256::digest(&unidentified));
    let body = serde_json::to_vec(&claims)
        .map_err(|error| AuthError::Malformed(format!("cannot encode claims: {error}")))?;
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(HEADER.as_bytes()),
        BASE64URL_NOPAD.encode(&body)
    );
    let signature = signer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", BASE64URL_NOPAD.encode(&signature)))
}

/// The claims of a JWT, checked against its issuer's signature.
pub(super) fn decode<N: serde::de::DeserializeOwned>(jwt: &str) -> Result<Claims<N>, AuthError> {
    let malformed = |what: &str| AuthError::Malformed(format!("not a NATS JWT: {what}"));
    let mut parts = jwt.trim().split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("it does not have three parts"));
    };
    let bytes = BASE64URL_NOPAD
        .decode(body.as_bytes())
        .map_err(|_| malformed("the claims are not base64url"))?;
    let claims: Claims<N> = serde_json::from_slice(&bytes)
        .map_err(|error| malformed(&format!("unexpected claims: {error}")))?;
    let signature = BASE64URL_NOPAD
        .decode(signature.as_bytes())
        .map_err(|_| malformed("the signature is not base64url"))?;
    KeyPair::from_public_key(&claims.iss)?
        .verify(format!("{header}.{body}").as_bytes(), &signature)
        .map_err(|_| malformed("the signature does not match its issuer"))?;
    Ok(claims)
}

/// The operator JWT, self-signed, naming the system account.
pub fn operator_jwt(
    operator: &KeyPair,
    name: &str,
    system_account: &str,
    issued_at: u64,
) -> Result<String, AuthError> {
    sign(
        operator,
        &operator.public_key(),
        name,
        issued_at,
        OperatorNats {
            system_account: system_account.to_owned(),
            kind: "operator".to_owned(),
            version: 2,
        },
    )
}
