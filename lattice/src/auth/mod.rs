//! Identities of a secure lattice and what each may do, enforced by nats-server.
//!
//! A lattice's trust chain is NATS decentralized auth: an operator key signs an account
//! (one per `shoal auth init`, with JetStream on) and a system account; the account key
//! signs one user JWT per host, scheduler or person. Each JWT carries the subject
//! permissions of its kind, built here from the lattice's names so they can never drift
//! from the subjects the code uses: nats-server refuses anything else, so a stolen host
//! credential can do what that one host could, and no more.
//!
//! People get roles (viewer, editor, admin) per namespace or lattice-wide. A role is
//! granted by letting the user publish on the control API subject
//! `shoal.<lattice>.v1.api.<role>.<scope>.<user>.<verb>` (scope: a namespace, or
//! `_lattice`); the API server reads role, scope and name from the subject the request came
//! on, which nats-server has already checked against the signed JWT.
//!
//! JWTs are encoded here (header, claims, ed25519 signature by the `nkeys` crate): the
//! format is three base64url parts and a JSON object, no cryptography of our own.
//!
//! `grants` (roles, host grants), `permissions` (subjects per identity), `jwt` (the format),
//! `accounts` (state and clients), `users` (minting), `creds` (files) and `push` (to
//! nats-server) each hold one part.

mod accounts;
mod creds;
mod grants;
mod jwt;
mod permissions;
mod push;
#[cfg(test)]
mod tests;
mod users;

pub use accounts::*;
pub use creds::*;
pub use grants::*;
pub use jwt::*;
pub use permissions::*;
pub use push::*;
pub use users::*;

/// The scope token of a lattice-wide grant (`_` cannot start a namespace).
pub const LATTICE_SCOPE: &str = "_lattice";
/// The user name of requests on an open (`--insecure`) lattice.
pub const ANONYMOUS: &str = "anonymous";

/// What an auth operation could not do.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A key could not be made, read or used.
    #[error("key error: {0}")]
    Key(String),
    /// A JWT or credentials file is not what it should be.
    #[error("{0}")]
    Malformed(String),
    /// nats-server did not take an account update.
    #[error("cannot update the account in nats-server: {0}")]
    Push(String),
}

impl From<nkeys::error::Error> for AuthError {
    fn from(error: nkeys::error::Error) -> Self {
        AuthError::Key(error.to_string())
    }
}
