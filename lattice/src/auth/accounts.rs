//! A secure lattice's two accounts (state and clients) and what the state account shares
//! with the clients' one.

use std::collections::BTreeMap;

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use super::*;
use crate::journal::Journal;

/// Which of a secure lattice's accounts an account JWT describes.
///
/// A lattice keeps its state (every bucket and journal, JetStream on) in an account of its
/// own, where only schedulers connect, and its hosts, sites and people in a second one,
/// without JetStream, which imports from the first exactly the subjects they use (see
/// [`shared_subjects`]). The split is what keeps JetStream itself from writing for a
/// client: nats-server sends a JetStream answer (a stream's info, a publish ack, a record
/// fetched by direct get, whose bytes the requester may have written itself) to whatever
/// reply subject the request named, and a stream stores what arrives on its subjects. In
/// one account a host could so write its own record's bytes into the apps bucket, the
/// trust policy or the lease. Across an import, nats-server answers on a reply subject of
/// its own making in the state account and hands the answer back in the clients' account,
/// which has no stream to store it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind<'a> {
    /// The lattice's state and its schedulers: JetStream on, exporting [`shared_subjects`]
    /// and importing the clients' messages ([`messages`]) for the streams of JetStream
    /// triggers.
    State {
        /// The clients' account's public key, when the import is wanted.
        clients: Option<&'a str>,
    },
    /// Hosts, sites and people: no JetStream; imports [`shared_subjects`] from the state
    /// account with this public key, or nothing (`None`: as a site's leaf nats-server
    /// preloads it, sending all of it across the leaf connection to the hub's).
    Clients {
        /// The state account's public key, when imports are wanted.
        state: Option<&'a str>,
        /// The key schedulers sign hosts' store credentials with ([`store_credential`]),
        /// a signing key of this account.
        store_signer: Option<&'a str>,
    },
    /// A site's copy of the lattice's components bucket, on the site's leaf nats-server
    /// only: JetStream on (at most `max_bytes` stored), sharing nothing. Its own account,
    /// whose leaf connection to the hub may carry only the copy's consumer traffic
    /// (`Identity::SiteCopy`): whatever reply subject a reader of the copy names, the
    /// answer cannot become a write at the hub.
    SiteCopy {
        /// The most the copy may store.
        max_bytes: u64,
    },
    /// nats-server's system account.
    System,
}

/// How answers to one of the state account's services flow back to the importer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// No answer, or one (nats-server forgets the way back after it).
    One,
    /// Several (a pull consumer's batch).
    Several,
}

/// The prefix under which a secure lattice's clients reach its JetStream: the state
/// account's API (`$JS.API.…`) and key writes (`$KV.…`) are imported into the clients'
/// account under it, as if the state were a JetStream domain of its own. Not `$JS.API`
/// itself: nats-server answers that in an account without JetStream ("not enabled"),
/// before any import could.
pub const STATE_API_PREFIX: &str = "$JS.shoal-state.API";

/// One subject the state account shares with the clients' account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// Requests and publishes from clients into the state account.
    Service {
        /// The subject in the state account (wildcards allowed).
        subject: String,
        /// The subject clients send on, in their account (the same wildcards).
        local: String,
        /// How its answers flow back.
        answers: Answers,
    },
    /// Messages from the state account to clients: consumers' deliveries to inboxes.
    Stream {
        /// The subject (wildcards allowed), the same in both accounts.
        subject: String,
    },
}

/// `subject` as a secure lattice's client sends it: a JetStream API call or key write
/// under [`STATE_API_PREFIX`], anything else as it is.
pub fn client_subject(subject: &str) -> String {
    if let Some(call) = subject.strip_prefix("$JS.API.") {
        format!("{STATE_API_PREFIX}.{call}")
    } else if subject.starts_with("$KV.") {
        format!("{STATE_API_PREFIX}.{subject}")
    } else {
        subject.to_owned()
    }
}

/// What the state account of `lattice` exports and its clients' account imports: the
/// JetStream API calls clients make (each client's permissions still decide which streams
/// and keys), key writes, the control API, wakes, logs and events, and consumers'
/// deliveries to inboxes. The lists are disjoint, so no message is carried by two imports.
pub fn shared_subjects(lattice: &str) -> Vec<Shared> {
    let service = |subject: String, answers: Answers| Shared::Service {
        local: client_subject(&subject),
        subject,
        answers,
    };
    let mut shared = Vec::new();
    for (call, answers) in [
        ("STREAM.INFO.>", Answers::One),
        ("CONSUMER.CREATE.>", Answers::One),
        ("CONSUMER.INFO.>", Answers::One),
        ("DIRECT.GET.>", Answers::One),
        ("CONSUMER.MSG.NEXT.>", Answers::Several),
    ] {
        shared.push(service(format!("$JS.API.{call}"), answers));
    }
    shared.push(service("$KV.>".to_owned(), Answers::One));
    // Flow control and acks of consumers clients created.
    shared.push(service("$JS.FC.>".to_owned(), Answers::One));
    shared.push(service("$JS.ACK.>".to_owned(), Answers::One));
    shared.push(service(api_subjects(lattice), Answers::One));
    shared.push(service(crate::names::wake_subjects(lattice), Answers::One));
    for journal in Journal::ALL {
        shared.push(service(journal.subject(lattice, ">"), Answers::One));
    }
    shared.push(Shared::Stream {
        subject: "_INBOX.>".to_owned(),
    });
    shared
}

/// Apps' messages (`shoal.<lattice>.v1.msg.>`), which the clients' account exports and the
/// state account imports, so the streams of JetStream triggers keep what clients publish.
/// Answers of JetStream's aimed at a message subject (a reply subject a client chose) are
/// delivered in the clients' account and not carried by this import (measured on
/// nats-server 2.15): only publishes reach a stream.
pub fn messages(lattice: &str) -> Shared {
    Shared::Stream {
        subject: crate::names::all_message_subjects(lattice),
    }
}

/// One export of an account JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ExportClaim {
    pub(super) name: String,
    pub(super) subject: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) response_type: Option<String>,
}

/// One import of an account JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ImportClaim {
    pub(super) name: String,
    pub(super) subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) local_subject: Option<String>,
    pub(super) account: String,
    #[serde(rename = "type")]
    pub(super) kind: String,
}

impl Shared {
    pub(super) fn subject(&self) -> &str {
        match self {
            Shared::Service { subject, .. } | Shared::Stream { subject } => subject,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Shared::Service { .. } => "service",
            Shared::Stream { .. } => "stream",
        }
    }

    pub(super) fn export(&self) -> ExportClaim {
        ExportClaim {
            name: self.subject().to_owned(),
            subject: self.subject().to_owned(),
            kind: self.kind().to_owned(),
            response_type: match self {
                Shared::Service {
                    answers: Answers::Several,
                    ..
                } => Some("Stream".to_owned()),
                Shared::Service { .. } => Some("Singleton".to_owned()),
                Shared::Stream { .. } => None,
            },
        }
    }

    pub(super) fn import(&self, account: &str) -> ImportClaim {
        ImportClaim {
            name: self.subject().to_owned(),
            subject: self.subject().to_owned(),
            local_subject: match self {
                Shared::Service { subject, local, .. } if local != subject => Some(local.clone()),
                _ => None,
            },
            account: account.to_owned(),
            kind: self.kind().to_owned(),
        }
    }
}

/// An account JWT signed by `operator` for `account` of `kind` in `lattice` (see
/// [`AccountKind`]). `revocations` maps user public keys to the time (seconds) before which
/// their JWTs no longer count.
#[allow(clippy::too_many_arguments)]
pub fn account_jwt(
    operator: &KeyPair,
    account: &str,
    name: &str,
    kind: AccountKind<'_>,
    lattice: &str,
    revocations: &BTreeMap<String, u64>,
    issued_at: u64,
) -> Result<String, AuthError> {
    let (exports, imports) = match kind {
        AccountKind::State { clients } => (
            shared_subjects(lattice)
                .iter()
                .map(Shared::export)
                .collect(),
            clients
                .map(|clients| messages(lattice).import(clients))
                .into_iter()
                .collect(),
        ),
        AccountKind::Clients {
            state: Some(state), ..
        } => (
            vec![messages(lattice).export()],
            shared_subjects(lattice)
                .iter()
                .map(|shared| shared.import(state))
                .collect(),
        ),
        AccountKind::Clients { state: None, .. } | AccountKind::SiteCopy { .. } => {
            (Vec::new(), Vec::new())
        }
        AccountKind::System => (Vec::new(), Vec::new()),
    };
    // JetStream: unlimited for the state, the copy's size for a site's copy, none else.
    let (disk_storage, streams) = match kind {
        AccountKind::State { .. } => (Some(-1), Some(-1)),
        AccountKind::SiteCopy { max_bytes } => {
            (Some(i64::try_from(max_bytes).unwrap_or(i64::MAX)), Some(1))
        }
        _ => (None, None),
    };
    let mem_storage = match kind {
        AccountKind::State { .. } => Some(-1),
        AccountKind::SiteCopy { .. } => Some(0),
        _ => None,
    };
    let consumer = disk_storage.map(|_| -1);
    let signing_keys = match kind {
        AccountKind::Clients {
            store_signer: Some(key),
            ..
        } => vec![key.to_owned()],
        _ => Vec::new(),
    };
    sign(
        operator,
        account,
        name,
        issued_at,
        AccountNats {
            limits: AccountLimits {
                subs: -1,
                data: -1,
                payload: -1,
                imports: -1,
                exports: -1,
                wildcards: true,
                conn: -1,
                leaf: -1,
                mem_storage,
                disk_storage,
                streams,
                consumer,
            },
            signing_keys,
            exports,
            imports,
            revocations: revocations.clone(),
            kind: "account".to_owned(),
            version: 2,
        },
    )
}
