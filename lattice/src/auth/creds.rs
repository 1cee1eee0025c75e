//! Credentials files (`.creds`): writing them, reading their JWT and seed, connecting with
//! one, and what one says about its holder.

use nkeys::KeyPair;

use super::*;

/// The JWT of a `.creds` file's text.
pub fn creds_jwt(creds_text: &str) -> Option<&str> {
    creds_text
        .lines()
        .skip_while(|line| !line.contains("BEGIN NATS USER JWT"))
        .nth(1)
        .map(str::trim)
}

/// The user's nkey seed of a `.creds` file's text.
pub fn creds_seed(creds_text: &str) -> Option<&str> {
    creds_text
        .lines()
        .skip_while(|line| !line.contains("BEGIN USER NKEY SEED"))
        .nth(1)
        .map(str::trim)
}

/// NATS connect options that authenticate with a `.creds` file's text: its JWT, and its
/// seed signing the server's nonce. Parsed here, not by `ConnectOptions::credentials`,
/// whose parser compiles a Unicode regex on first use: about 1.5 ms of every CLI command.
///
/// # Errors
/// [`AuthError::Malformed`] when the text has no JWT or no valid user seed.
pub fn connect_options(creds_text: &str) -> Result<async_nats::ConnectOptions, AuthError> {
    let jwt = creds_jwt(creds_text)
        .ok_or_else(|| AuthError::Malformed("no NATS user JWT in the credentials".to_owned()))?;
    let seed = creds_seed(creds_text)
        .ok_or_else(|| AuthError::Malformed("no user nkey seed in the credentials".to_owned()))?;
    let key = std::sync::Arc::new(
        KeyPair::from_seed(seed)
            .map_err(|error| AuthError::Malformed(format!("the user nkey seed: {error}")))?,
    );
    Ok(async_nats::ConnectOptions::with_jwt(
        jwt.to_owned(),
        move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        },
    ))
}

/// A credentials file (`.creds`), as `nsc` writes and NATS clients read.
pub fn creds(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// What a credentials file says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The name in the JWT.
    pub name: String,
    /// `host`, `scheduler`, `user`, or empty for a credential Shoal did not mint.
    pub kind: String,
    /// A user's grants.
    pub grants: Vec<Grant>,
    /// The reply inbox prefix it may subscribe to, if its permissions name one.
    pub inbox_prefix: Option<String>,
    /// The user's public key.
    pub public_key: String,
    /// The account that signed it: the lattice's state account for a scheduler, its
    /// clients' account for anyone else.
    pub issuer: String,
    /// For a scheduler, the clients' account (which signs hosts' credentials).
    pub clients_account: Option<String>,
}

/// Reads the holder of a `.creds` file's text (the JWT's signature is checked against its
/// issuer; whether the server trusts that issuer is the server's business).
pub fn holder(creds_text: &str) -> Result<Holder, AuthError> {
    let jwt = creds_jwt(creds_text)
        .ok_or_else(|| AuthError::Malformed("no NATS user JWT in the credentials".to_owned()))?;
    jwt_holder(jwt)
}

/// Reads the holder of a user JWT (its signature checked against its issuer).
pub fn jwt_holder(jwt: &str) -> Result<Holder, AuthError> {
    let claims: Claims<UserNats> = decode(jwt)?;
    let mut kind = String::new();
    let mut grants = Vec::new();
    let mut clients_account = None;
    for tag in &claims.nats.tags {
        if let Some(found) = tag.strip_prefix("shoal-kind:") {
            kind = found.to_owned();
        } else if let Some(key) = tag.strip_prefix(CLIENTS_TAG) {
            clients_account = Some(key.to_uppercase());
        } else if let Some((role, scope)) = tag.split_once(':')
            && let Ok(role) = role.parse::<Role>()
        {
            grants.push(Grant::from_scope(role, scope));
        }
    }
    let inbox_prefix = claims
        .nats
        .subscribe
        .allow
        .iter()
        .find_map(|subject| subject.strip_prefix("_INBOX.")?.strip_suffix(".>"))
        .map(|middle| format!("_INBOX.{middle}"));
    Ok(Holder {
        name: claims.name,
        kind,
        grants,
        inbox_prefix,
        public_key: claims.sub,
        issuer: claims.iss,
        clients_account,
    })
}
