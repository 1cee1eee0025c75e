//! Errors of the lattice client, with messages a user can act on. Each says what failed
//! at this layer and keeps the failure under it as its `source()`: print one with
//! [`Chain`] (or anyhow's `{:#}`) to see both.

/// The failure under an [`Error`]: a NATS, JetStream or decoding error, or a sentence when
/// there is no error value to keep.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error and its causes on one line, `what: why: why under that`, for logs and answers.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'a));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = self.0.to_string();
        formatter.write_str(&said)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            // Some libraries put their cause in their own message too: said once.
            let text = cause.to_string();
            if !said.ends_with(&text) {
                write!(formatter, ": {text}")?;
            }
            said = text;
            source = cause.source();
        }
        Ok(())
    }
}

/// What can go wrong talking to the lattice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The NATS server could not be reached.
    #[error("cannot connect to NATS at {url} (is nats-server running there? shoal up starts one)")]
    Connect {
        /// The server URL.
        url: String,
        /// Why.
        #[source]
        source: Cause,
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
        "cannot open the lattice's JetStream bucket {bucket} (nats-server needs JetStream enabled: -js)"
    )]
    Bucket {
        /// Bucket name.
        bucket: String,
        /// Why.
        #[source]
        source: Cause,
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
    #[error("{key} in {bucket} holds something this Shoal cannot read")]
    Decode {
        /// Bucket name.
        bucket: String,
        /// Key.
        key: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// Any other failure of a request to NATS.
    #[error("lattice request on {bucket} failed")]
    Request {
        /// Bucket name.
        bucket: String,
        /// Why.
        #[source]
        source: Cause,
    },
    /// A journal's stream (logs, events) could not be made, written or read.
    #[error("the lattice's JetStream stream {stream} failed")]
    Stream {
        /// Stream name.
        stream: String,
        /// Why.
        #[source]
        source: Cause,
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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn an_error_keeps_its_cause_and_a_chain_shows_both() {
        let cause = serde_json::from_str::<u32>("x").unwrap_err();
        let error = Error::Decode {
            bucket: "shoal-dev-v1-apps".to_owned(),
            key: "default.web".to_owned(),
            source: cause.into(),
        };
        assert_eq!(
            error.to_string(),
            "default.web in shoal-dev-v1-apps holds something this Shoal cannot read"
        );
        let under = error.source().expect("its cause");
        assert!(under.downcast_ref::<serde_json::Error>().is_some());
        assert_eq!(
            Chain(&error).to_string(),
            format!("{error}: {under}"),
            "one line, the cause after what failed"
        );
        // A cause its parent already quoted is not said twice.
        let io = std::io::Error::other("Connection refused");
        let quoting = Error::Connect {
            url: "nats://127.0.0.1:1".to_owned(),
            source: format!("IO error: {io}").into(),
        };
        assert!(
            Chain(&quoting)
                .to_string()
                .ends_with("one): IO error: Connection refused")
        );
        // What the control API answers keeps the cause too.
        let cause = under.to_string();
        let answered = crate::api::ApiError::from(error);
        assert!(answered.message.ends_with(&cause), "{answered}");
    }
}
