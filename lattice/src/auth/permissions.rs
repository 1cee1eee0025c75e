//! The subjects each identity may publish and subscribe to, built from the lattice's names
//! so they never drift from the subjects the code uses; and the reply subjects Shoal's
//! processes answer on.

use serde::{Deserialize, Serialize};

use super::*;
use crate::journal::Journal;
use crate::names::{Bucket, PROTOCOL};

/// Who a credential is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Identity {
    /// One host, by id.
    Host {
        /// The host id.
        id: String,
        /// What it may claim to be and offer.
        #[serde(default, skip_serializing_if = "is_default_grant")]
        grant: HostGrant,
    },
    /// A scheduler process (any number may share the control plane).
    Scheduler {
        /// Its name.
        name: String,
    },
    /// A site's leaf connection to the hub: it carries what the site's hosts may do, and
    /// nothing more (the leaf nats-server checks each host against its own credential).
    Site {
        /// The site's name.
        name: String,
        /// The ids of the site's hosts.
        hosts: Vec<String>,
        /// The JetStream domain of the hub's lattice state.
        domain: String,
    },
    /// The leaf connection of a site's copy of the components (`shoal up --leaf`): it
    /// mirrors the components bucket into the site and may do nothing else, so nothing
    /// JetStream answers in the copy's account can reach the hub as a write.
    SiteCopy {
        /// Its name: [`site_copy_name`] of the site's.
        name: String,
    },
    /// A person or a CI job.
    User {
        /// Its name.
        name: String,
        /// Its roles.
        grants: Vec<Grant>,
    },
}

impl Identity {
    /// The name the credential carries.
    pub fn name(&self) -> &str {
        match self {
            Identity::Host { id, .. } => id,
            Identity::Scheduler { name }
            | Identity::Site { name, .. }
            | Identity::User { name, .. } => name,
            Identity::SiteCopy { name } => name,
        }
    }

    /// The kind, as one word.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Host { .. } => "host",
            Identity::Scheduler { .. } => "scheduler",
            Identity::Site { .. } => "site",
            Identity::SiteCopy { .. } => "site-copy",
            Identity::User { .. } => "user",
        }
    }

    /// The prefix of this identity's reply inboxes: replies to one identity cannot be read
    /// by another, because each may subscribe only under its own prefix.
    pub fn inbox_prefix(&self) -> String {
        inbox_prefix(self.kind(), self.name())
    }

    /// Tags in the JWT, so a client can read back what it is (no secret: the server
    /// enforces the permissions, not the tags).
    pub(super) fn tags(&self) -> Vec<String> {
        let mut tags = vec![format!("shoal-kind:{}", self.kind())];
        match self {
            Identity::User { grants, .. } => tags.extend(grants.iter().map(Grant::tag)),
            Identity::Host { grant, .. } => tags.extend(grant.tags()),
            _ => {}
        }
        tags
    }
}

/// The name of the identity of site `site`'s copy of the components (`<site>-copy`: a name
/// is one kind of identity, and the site's own is the site's name).
pub fn site_copy_name(site: &str) -> String {
    format!("{site}-copy")
}

/// The prefix of the reply inboxes of identity `name` of `kind` (`host`, `scheduler`,
/// `user`): `_INBOX.<kind>.<name>`.
pub fn inbox_prefix(kind: &str, name: &str) -> String {
    format!("_INBOX.{kind}.{name}")
}

/// Whether `reply` is a reply inbox of an identity of `kind`, and of the one named `name`
/// when given: `_INBOX.<kind>.<name>.<token>…`, literal (no wildcard, no empty token).
/// Shoal's processes answer a request only there: a reply subject the requester chose
/// freely (a KV key, a JetStream API subject, another identity's inbox) would make the
/// answering process write where the requester may not.
pub fn is_inbox_of(reply: &str, kind: &str, name: Option<&str>) -> bool {
    let mut tokens = reply.split('.');
    is_literal(reply)
        && tokens.next() == Some("_INBOX")
        && tokens.next() == Some(kind)
        && tokens
            .next()
            .is_some_and(|owner| name.is_none_or(|name| owner == name))
        && tokens.next().is_some()
}

/// Whether `reply` is a reply subject nats-server made for a request that crossed a service
/// import (`_R_.<token>…`, literal): the server carries an answer there back to the
/// requester's reply subject in the importing account, and nowhere else.
pub fn is_import_reply(reply: &str) -> bool {
    let mut tokens = reply.split('.');
    is_literal(reply) && tokens.next() == Some("_R_") && tokens.next().is_some()
}

/// Whether `subject` names one subject: no wildcard, no empty token, nothing a protocol line
/// would split on.
pub(super) fn is_literal(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty()
            && token != "*"
            && token != ">"
            && !token.contains(|c: char| c.is_whitespace() || c.is_control())
    })
}

pub(super) fn is_default_grant(grant: &HostGrant) -> bool {
    *grant == HostGrant::default()
}

/// The subjects an identity may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Subjects it may publish on.
    pub publish: Vec<String>,
    /// Subjects it may not publish on although `publish` matches them (nats-server lets a
    /// deny win).
    pub publish_deny: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Subscriptions it may not make although `subscribe` matches them (`<subject> <queue>`
    /// entries refuse queue subscriptions).
    pub subscribe_deny: Vec<String>,
    /// The kinds of connection that may present it (nats-server's names, such as
    /// `LEAFNODE`); empty: any.
    pub connection_types: Vec<String>,
}

impl Permissions {
    /// These permissions as a secure lattice's client holds them: each JetStream API call
    /// and key write under [`STATE_API_PREFIX`] (see [`client_subject`]), where its
    /// account imports them from the state account; nothing else changes.
    pub(super) fn for_client(mut self) -> Self {
        for list in [&mut self.publish, &mut self.publish_deny] {
            *list = list.iter().map(|subject| client_subject(subject)).collect();
            list.sort();
            list.dedup();
        }
        self
    }
}

/// The subject prefix of a lattice: `shoal.<lattice>.v1`.
pub(super) fn root(lattice: &str) -> String {
    format!("shoal.{lattice}.{PROTOCOL}")
}

/// The control API subject of one request.
pub fn api_subject(lattice: &str, grant: &Grant, user: &str, verb: &str) -> String {
    format!(
        "{}.api.{}.{}.{user}.{verb}",
        root(lattice),
        grant.role,
        grant.scope()
    )
}

/// Every control API subject, which API servers listen on.
pub fn api_subjects(lattice: &str) -> String {
    format!("{}.api.>", root(lattice))
}

/// The reply inboxes of the keeper of a site's copy of the components bucket.
pub const SITE_COPY_KEEPER_INBOX: &str = "_INBOX.site-copy-keeper";

/// The reply inboxes of a reader of a site's copy of the components bucket.
pub const SITE_COPY_READER_INBOX: &str = "_INBOX.site-copy-reader";

/// What a site's hosts may do with the reader's credential of the site's copy of
/// `lattice`'s components, in the account that keeps it (`AccountKind::SiteCopy`): read
/// the copy's objects with direct gets, nothing else. Whatever reply subject a reader
/// names, the answer stays in that account, whose leaf connection (`Identity::SiteCopy`)
/// may carry nothing to the hub but the copy's own consumer traffic.
pub fn site_copy_reader(lattice: &str) -> Permissions {
    let stream = crate::components::stream_name(lattice);
    Permissions {
        publish: vec![
            format!("$JS.API.DIRECT.GET.{stream}"),
            format!("$JS.API.DIRECT.GET.{stream}.>"),
        ],
        publish_deny: Vec::new(),
        subscribe: vec![format!("{SITE_COPY_READER_INBOX}.>")],
        subscribe_deny: Vec::new(),
        connection_types: Vec::new(),
    }
}

/// What the keeper of a site's copy of `lattice`'s components bucket (`shoal up --leaf`)
/// may do in the account that keeps it (`AccountKind::SiteCopy`): make the copy and read
/// its state, nothing else. Whatever it makes, the site's hosts check what they read from
/// it against the hub's description or the digests their assignments pin.
pub fn site_copy_keeper(lattice: &str) -> Permissions {
    let stream = crate::components::stream_name(lattice);
    Permissions {
        publish: ["CREATE", "UPDATE", "INFO"]
            .map(|call| format!("$JS.API.STREAM.{call}.{stream}"))
            .to_vec(),
        publish_deny: Vec::new(),
        subscribe: vec![format!("{SITE_COPY_KEEPER_INBOX}.>")],
        subscribe_deny: Vec::new(),
        connection_types: Vec::new(),
    }
}

/// Reading a journal only under `filter` (a subject with wildcards): a consumer must be
/// named, so its filter is in the subject nats-server checks.
pub(super) fn read_journal(stream: &str, filter: &str, publish: &mut Vec<String>) {
    publish.extend([
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.*.{filter}"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
    ]);
}

/// What `identity` may do in `lattice`.
pub fn permissions(lattice: &str, identity: &Identity) -> Permissions {
    let root = root(lattice);
    let kv_stream = |bucket: Bucket| format!("KV_{}", bucket.name(lattice));
    let kv_key = |bucket: Bucket, key: &str| format!("$KV.{}.{key}", bucket.name(lattice));
    let mut publish = Vec::new();
    let publish_deny = Vec::new();
    let mut subscribe = vec![format!("{}.>", identity.inbox_prefix())];
    let mut subscribe_deny = Vec::new();
    match identity {
        Identity::Host { id, .. } => {
            // Every bucket and journal opens (stream info: its configuration and, with a
            // subject filter, which keys exist, never a value).
            for bucket in Bucket::ALL {
                publish.push(format!("$JS.API.STREAM.INFO.{}", kv_stream(bucket)));
            }
            for journal in Journal::ALL {
                publish.push(format!("$JS.API.STREAM.INFO.{}", journal.stream(lattice)));
            }
            // It watches its own assignments and every app's routing record (routes,
            // endpoints; no spec), and reads its own host record: consumers must be named,
            // so the filter is in the subject nats-server checks.
            for (bucket, filter) in [
                (Bucket::Assignments, format!("{id}.>")),
                (Bucket::Status, "routes.>".to_owned()),
            ] {
                let stream = kv_stream(bucket);
                publish.extend([
                    format!(
                        "$JS.API.CONSUMER.CREATE.{stream}.*.{}",
                        kv_key(bucket, &filter)
                    ),
                    format!("$JS.API.CONSUMER.INFO.{stream}.>"),
                    format!("$JS.FC.{stream}.>"),
                ]);
            }
            publish.push(format!(
                "$JS.API.DIRECT.GET.{}.{}",
                kv_stream(Bucket::Hosts),
                kv_key(Bucket::Hosts, id)
            ));
            // Its own upgrade order (the one key of the status bucket it reads besides the
            // routes): what binary the control plane wants it to run.
            publish.push(format!(
                "$JS.API.DIRECT.GET.{}.{}",
                kv_stream(Bucket::Status),
                kv_key(Bucket::Status, &crate::names::upgrade_order_key(id))
            ));
            // And the lattice's identity, to tell a lattice that lost its state.
            publish.push(format!(
                "$JS.API.DIRECT.GET.{}.{}",
                kv_stream(Bucket::Status),
                kv_key(Bucket::Status, crate::names::LATTICE_IDENTITY)
            ));
            // The lattice's copy of the components (for when the registry cannot be
            // reached), read message by message with direct gets: no consumer, nothing
            // delivered. Only the control plane writes it; hosts check every blob's digest,
            // and load the native code compiled for them there because no one else can
            // write it (nothing here may ever let a host publish to `$O.`).
            let components = crate::components::stream_name(lattice);
            publish.extend([
                format!("$JS.API.DIRECT.GET.{components}"),
                format!("$JS.API.DIRECT.GET.{components}.>"),
            ]);

            // No app's key-value store: each replica's assignment carries a credential for
            // its own app's stores (`store_credential`).
            publish.extend([
                kv_key(Bucket::Hosts, id),
                kv_key(Bucket::Status, &format!("replicas.{id}.*")),
                // Its credential's JWT, for the control plane to read its grant from.
                kv_key(Bucket::Status, &crate::names::host_credential_key(id)),
                // Its own logs and events: the last token is the publisher.
                format!("{root}.logs.*.*.{id}"),
                format!("{root}.events.*.*.{id}"),
                // Forwarded requests go to the host chosen among an app's endpoints, and
                // their answers to the forwarding host's inbox (never a reply subject a
                // requester chose: no `responses` permission).
                format!("{root}.http.>"),
                "_INBOX.host.*.>".to_owned(),
                // Waking an app scaled to zero, in its own name only.
                format!("{root}.wake.{id}.>"),
            ]);
            subscribe.push(format!("{root}.http.{id}.>"));
        }
        Identity::Scheduler { .. } => {
            publish.extend([
                "$JS.API.>".to_owned(),
                "$JS.FC.>".to_owned(),
                "$JS.ACK.>".to_owned(),
                format!("{root}.>"),
            ]);
            for bucket in Bucket::ALL {
                publish.push(format!("$KV.{}.>", bucket.name(lattice)));
            }
            // The lattice's copy of components, which only the control plane writes.
            publish.push(format!("$O.{}.>", crate::components::bucket_name(lattice)));
            // Control API answers go to the requesting user's inbox, and nowhere else a
            // requester could name: on a secure lattice, to the reply subject nats-server
            // made for the request as it crossed from the clients' account (`_R_.…`),
            // which it hands back to the requester's inbox there.
            publish.push("_INBOX.user.*.>".to_owned());
            publish.push("_R_.>".to_owned());
            subscribe.push(api_subjects(lattice));
            subscribe.push(crate::names::wake_subjects(lattice));
        }
        Identity::Site { hosts, .. } => {
            // The union of its hosts' permissions and nothing of its own: a stolen site
            // credential is worth what the site's host credentials are worth together.
            for id in hosts {
                let host = permissions(
                    lattice,
                    &Identity::Host {
                        id: id.clone(),
                        grant: HostGrant::default(),
                    },
                );
                publish.extend(host.publish);
                subscribe.extend(host.subscribe);
            }
            // Answers to requests forwarded from other hosts: nats-server carries them
            // across the leaf connection only to inboxes the site may publish to (a reply
            // permission does not carry across). The inboxes' names are random: the site
            // can answer what it was asked and guess nothing else.
            publish.push("_INBOX.host.*.>".to_owned());
            publish.sort();
            publish.dedup();
        }
        Identity::SiteCopy { .. } => {
            // One consumer of the components bucket's stream, made by the site's JetStream,
            // which delivers to this identity's inboxes; its flow control; and the answer
            // to the consumer's creation, which nats-server sends to `$JSC.R.<token>`.
            let components = crate::components::stream_name(lattice);
            publish.extend([
                format!("$JS.API.CONSUMER.CREATE.{components}"),
                format!("$JS.FC.{components}.>"),
            ]);
            subscribe.push("$JSC.R.>".to_owned());
        }
        Identity::User { name, grants } => {
            for grant in grants {
                publish.push(format!(
                    "{root}.api.{}.{}.{name}.>",
                    grant.role,
                    grant.scope()
                ));
                // Logs and events of the namespaces it may view, read straight from the
                // journals.
                let filter = match &grant.namespace {
                    Some(namespace) => format!("{namespace}.>"),
                    None => ">".to_owned(),
                };
                for journal in Journal::ALL {
                    read_journal(
                        &journal.stream(lattice),
                        &journal.subject(lattice, &filter),
                        &mut publish,
                    );
                }
                // A lattice-wide admin hears every app's messages (it may do anything in the
                // lattice anyway). No one else: nats-server lets a subscriber of a subject
                // join any queue group on it, and in an app's group it would take messages
                // from the app (a `<subject> *` deny is meant to refuse that, and does for
                // users of a config file, but not for a JWT's, measured on nats-server 2.15).
                // Editors publish messages in their namespaces (`shoal publish`), as the
                // namespaces' apps may: none of them reaches the lattice's state.
                if grant.role != Role::Viewer {
                    let namespace = grant.namespace.as_deref().unwrap_or("*");
                    publish.push(crate::names::message_subject(lattice, namespace, ">"));
                }
                if grant.role == Role::Admin && grant.namespace.is_none() {
                    let messages = crate::names::message_subject(lattice, "*", ">");
                    subscribe_deny.push(format!("{messages} *"));
                    subscribe.push(messages);
                }
            }
            publish.sort();
            publish.dedup();
        }
    }
    subscribe.sort();
    subscribe.dedup();
    subscribe_deny.sort();
    subscribe_deny.dedup();
    let permissions = Permissions {
        publish,
        publish_deny,
        subscribe,
        subscribe_deny,
        // A site's credential opens its leaf connection and nothing else: taken off a
        // stolen device, it cannot be used as a client of the hub.
        connection_types: match identity {
            Identity::Site { .. } | Identity::SiteCopy { .. } => vec!["LEAFNODE".to_owned()],
            _ => Vec::new(),
        },
    };
    match identity {
        // The scheduler lives in the state account and uses its JetStream as it is.
        Identity::Scheduler { .. } => permissions,
        _ => permissions.for_client(),
    }
}
