//! Errors of the lattice client, with messages a user can act on.

/// What can go wrong talking to the lattice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The NATS server could not be reached.
    #[error(
        "cannot connect to NATS at {url}: {reason}; is nats-server running there (shoal up starts one)?"
    )]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The NATS server refused this client's credentials (or their absence).
    #[error(
        "NATS at {url} refused this client (authorization violation): give a credential of this lattice with --nats-creds or SHOAL_CREDS (shoal up leaves its admin's in .shoal/admin.creds), or check it was not revoked"
    )]
    Unauthorized {
        /// The server URL.
        url: String,
    },
    /// JetStream is off or its buckets cannot be made.
    #[error(
        "cannot open the lattice's JetStream bucket {bucket}: {reason}; nats-server needs JetStream enabled (-js)"
    )]
    Bucket {
        /// Bucket name.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// A name does not follow the naming rules.
    #[error(
        "{what} {name:?} is not valid: use lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"
    )]
    InvalidName {
        /// What was named.
        what: String,
        /// The name.
        name: String,
    },
    /// A compare-and-set write lost a race: the key changed since it was read.
    #[error("{key} in {bucket} was changed by someone else; read it again and retry")]
    Conflict {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
    },
    /// A stored value could not be decoded.
    #[error("{key} in {bucket} holds something this Shoal cannot read: {reason}")]
    Decode {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Any other failure of a request to NATS.
    #[error("lattice request on {bucket} failed: {reason}")]
    Request {
        /// Bucket name.
        bucket: String,
        /// Why.
        reason: String,
    },
    /// A journal's stream (logs, events) could not be made, written or read.
    #[error("the lattice's JetStream stream {stream}: {reason}")]
    Stream {
        /// Stream name.
        stream: String,
        /// Why.
        reason: String,
    },
    /// Another live host holds this host id.
    #[error(
        "host id {id} is held by a live host ({holder}); give this host another --id (ids must be unique in a lattice)"
    )]
    HostIdTaken {
        /// The id.
        id: String,
        /// Who holds it: its ingress and start time.
        holder: String,
    },
}
