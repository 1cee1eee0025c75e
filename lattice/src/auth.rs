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

use std::collections::BTreeMap;
use std::fmt;

use data_encoding::{BASE32_NOPAD, BASE64URL_NOPAD};
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::journal::Journal;
use crate::names::{Bucket, PROTOCOL};

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

/// What a person may do; each role includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// get, describe, logs, events.
    #[default]
    Viewer,
    /// Also apply, delete, scale, rollout.
    Editor,
    /// Also identities and hosts.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Editor, Role::Admin];

    /// The role's name, as in subjects.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a role: viewer, editor or admin"))
    }
}

/// A role in one namespace, or in all of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// The namespace; `None` for the whole lattice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

impl Grant {
    /// The scope token in API subjects: the namespace or [`LATTICE_SCOPE`].
    pub fn scope(&self) -> &str {
        self.namespace.as_deref().unwrap_or(LATTICE_SCOPE)
    }

    /// Whether this grant lets its holder act with `role` in `namespace` (`None`: on
    /// something of the whole lattice, such as hosts).
    pub fn allows(&self, role: Role, namespace: Option<&str>) -> bool {
        self.role >= role
            && match (&self.namespace, namespace) {
                (None, _) => true,
                (Some(mine), Some(wanted)) => mine == wanted,
                (Some(_), None) => false,
            }
    }

    /// Reads a grant back from its scope token.
    pub fn from_scope(role: Role, scope: &str) -> Self {
        Grant {
            role,
            namespace: (scope != LATTICE_SCOPE).then(|| scope.to_owned()),
        }
    }

    /// The JWT tag that records it: `role:scope`.
    fn tag(&self) -> String {
        format!("{}:{}", self.role, self.scope())
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} in {namespace}", self.role),
            None => write!(f, "{} of the lattice", self.role),
        }
    }
}

/// What an admin grants a host when minting its credential: the labels placement may
/// match it by and the most capacity it may be given. Carried in the JWT's tags
/// (`shoal-label:<key>=<value>`, `shoal-memory:<bytes>`, `shoal-cpu:<millicores>`,
/// `shoal-max-replicas:<n>`), signed with it: a host cannot claim more than this, whatever
/// its own record says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostGrant {
    /// Labels the host may be matched by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The most memory (bytes) its replicas may reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// The most CPU (millicores) its replicas may reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// The most replicas it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas: Option<u32>,
}

impl HostGrant {
    fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .labels
            .iter()
            .map(|(key, value)| format!("shoal-label:{key}={value}"))
            .collect();
        tags.extend(self.memory.map(|bytes| format!("shoal-memory:{bytes}")));
        tags.extend(self.cpu.map(|millis| format!("shoal-cpu:{millis}")));
        tags.extend(
            self.max_replicas
                .map(|count| format!("shoal-max-replicas:{count}")),
        );
        tags
    }

    /// Reads a grant back from JWT tags (others are ignored; NATS may lowercase tags, so
    /// label values are as the admin wrote them only when they were lowercase).
    fn from_tags(tags: &[String]) -> Self {
        let mut grant = HostGrant::default();
        for tag in tags {
            if let Some(label) = tag.strip_prefix("shoal-label:")
                && let Some((key, value)) = label.split_once('=')
            {
                grant.labels.insert(key.to_owned(), value.to_owned());
            } else if let Some(bytes) = tag.strip_prefix("shoal-memory:") {
                grant.memory = bytes.parse().ok();
            } else if let Some(millis) = tag.strip_prefix("shoal-cpu:") {
                grant.cpu = millis.parse().ok();
            } else if let Some(count) = tag.strip_prefix("shoal-max-replicas:") {
                grant.max_replicas = count.parse().ok();
            }
        }
        grant
    }
}

/// Reads a host's credential (its JWT) as the control plane must: signed by `account` (the
/// lattice's account, which signed the reader's own credential), for a host, named `id`.
/// Returns what it grants.
///
/// # Errors
/// [`AuthError::Malformed`] for anything else: a JWT that does not verify, another
/// account's, another kind's or another host's.
pub fn host_grant(jwt: &str, account: &str, id: &str) -> Result<HostGrant, AuthError> {
    let claims: Claims<UserNats> = decode(jwt)?;
    if claims.iss != account {
        return Err(AuthError::Malformed(
            "the credential was not signed by this lattice's account".to_owned(),
        ));
    }
    if !claims.nats.tags.iter().any(|tag| tag == "shoal-kind:host") {
        return Err(AuthError::Malformed(
            "the credential is not a host's".to_owned(),
        ));
    }
    if claims.name != id {
        return Err(AuthError::Malformed(format!(
            "the credential is host {:?}'s, not {id:?}'s",
            claims.name
        )));
    }
    Ok(HostGrant::from_tags(&claims.nats.tags))
}

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
        }
    }

    /// The kind, as one word.
    pub fn kind(&self) -> &'static str {
        match self {
            Identity::Host { .. } => "host",
            Identity::Scheduler { .. } => "scheduler",
            Identity::Site { .. } => "site",
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
    fn tags(&self) -> Vec<String> {
        let mut tags = vec![format!("shoal-kind:{}", self.kind())];
        match self {
            Identity::User { grants, .. } => tags.extend(grants.iter().map(Grant::tag)),
            Identity::Host { grant, .. } => tags.extend(grant.tags()),
            _ => {}
        }
        tags
    }
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
fn is_literal(subject: &str) -> bool {
    subject.split('.').all(|token| {
        !token.is_empty()
            && token != "*"
            && token != ">"
            && !token.contains(|c: char| c.is_whitespace() || c.is_control())
    })
}

fn is_default_grant(grant: &HostGrant) -> bool {
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
    /// The kinds of connection that may present it (nats-server's names, such as
    /// `LEAFNODE`); empty: any.
    pub connection_types: Vec<String>,
}

impl Permissions {
    /// These permissions as a secure lattice's client holds them: each JetStream API call
    /// and key write under [`STATE_API_PREFIX`] (see [`client_subject`]), where its
    /// account imports them from the state account; nothing else changes.
    fn for_client(mut self) -> Self {
        for list in [&mut self.publish, &mut self.publish_deny] {
            *list = list.iter().map(|subject| client_subject(subject)).collect();
            list.sort();
            list.dedup();
        }
        self
    }
}

/// The subject prefix of a lattice: `shoal.<lattice>.v1`.
fn root(lattice: &str) -> String {
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

/// Reading a journal only under `filter` (a subject with wildcards): a consumer must be
/// named, so its filter is in the subject nats-server checks.
fn read_journal(stream: &str, filter: &str, publish: &mut Vec<String>) {
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
            // And the lattice's identity, to tell a lattice that lost its state.
            publish.push(format!(
                "$JS.API.DIRECT.GET.{}.{}",
                kv_stream(Bucket::Status),
                kv_key(Bucket::Status, crate::names::LATTICE_IDENTITY)
            ));
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
            }
            publish.sort();
            publish.dedup();
        }
    }
    subscribe.sort();
    subscribe.dedup();
    let permissions = Permissions {
        publish,
        publish_deny,
        subscribe,
        // A site's credential opens its leaf connection and nothing else: taken off a
        // stolen device, it cannot be used as a client of the hub.
        connection_types: match identity {
            Identity::Site { .. } => vec!["LEAFNODE".to_owned()],
            _ => Vec::new(),
        },
    };
    match identity {
        // The scheduler lives in the state account and uses its JetStream as it is.
        Identity::Scheduler { .. } => permissions,
        _ => permissions.for_client(),
    }
}

/// The claims every NATS JWT shares.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims<N> {
    jti: String,
    iat: u64,
    /// When it stops counting (seconds); absent: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    iss: String,
    name: String,
    sub: String,
    nats: N,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SubjectList {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deny: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResponsePermission {
    max: i64,
    ttl: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserNats {
    #[serde(rename = "pub")]
    publish: SubjectList,
    #[serde(rename = "sub")]
    subscribe: SubjectList,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resp: Option<ResponsePermission>,
    subs: i64,
    data: i64,
    payload: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    allowed_connection_types: Vec<String>,
    /// The account a user belongs to when a signing key of that account signed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer_account: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    version: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountLimits {
    subs: i64,
    data: i64,
    payload: i64,
    imports: i64,
    exports: i64,
    wildcards: bool,
    conn: i64,
    leaf: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mem_storage: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disk_storage: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    streams: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consumer: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountNats {
    limits: AccountLimits,
    /// Keys that may sign users of this account besides its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signing_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    exports: Vec<ExportClaim>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    imports: Vec<ImportClaim>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    revocations: BTreeMap<String, u64>,
    #[serde(rename = "type")]
    kind: String,
    version: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OperatorNats {
    system_account: String,
    #[serde(rename = "type")]
    kind: String,
    version: u8,
}

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// A JWT about `subject`, named `name`, issued by `signer` at `issued_at` (seconds) with the
/// `nats` claims of its kind; its `jti` is the hash of the claims, as NATS tools make it.
fn sign<N: Serialize>(
    signer: &KeyPair,
    subject: &str,
    name: &str,
    issued_at: u64,
    nats: N,
) -> Result<String, AuthError> {
    sign_until(signer, subject, name, issued_at, None, nats)
}

/// [`sign`], for a JWT that stops counting at `expires` (seconds) when given.
fn sign_until<N: Serialize>(
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
fn decode<N: serde::de::DeserializeOwned>(jwt: &str) -> Result<Claims<N>, AuthError> {
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
    /// The lattice's state and its schedulers: JetStream on, exporting [`shared_subjects`].
    State,
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

/// One export of an account JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExportClaim {
    name: String,
    subject: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_type: Option<String>,
}

/// One import of an account JWT.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ImportClaim {
    name: String,
    subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local_subject: Option<String>,
    account: String,
    #[serde(rename = "type")]
    kind: String,
}

impl Shared {
    fn subject(&self) -> &str {
        match self {
            Shared::Service { subject, .. } | Shared::Stream { subject } => subject,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Shared::Service { .. } => "service",
            Shared::Stream { .. } => "stream",
        }
    }

    fn export(&self) -> ExportClaim {
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

    fn import(&self, account: &str) -> ImportClaim {
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
    let unlimited = (kind == AccountKind::State).then_some(-1);
    let (exports, imports) = match kind {
        AccountKind::State => (
            shared_subjects(lattice)
                .iter()
                .map(Shared::export)
                .collect(),
            Vec::new(),
        ),
        AccountKind::Clients {
            state: Some(state), ..
        } => (
            Vec::new(),
            shared_subjects(lattice)
                .iter()
                .map(|shared| shared.import(state))
                .collect(),
        ),
        AccountKind::Clients { state: None, .. } | AccountKind::System => (Vec::new(), Vec::new()),
    };
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
                mem_storage: unlimited,
                disk_storage: unlimited,
                streams: unlimited,
                consumer: unlimited,
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

/// A user JWT for `identity` in `lattice`, signed by `account`; `None` permissions means
/// everything (the system account's user).
pub fn user_jwt(
    account: &KeyPair,
    user: &str,
    name: &str,
    permissions: Option<&Permissions>,
    tags: Vec<String>,
    issued_at: u64,
) -> Result<String, AuthError> {
    // No identity gets a `resp` (allow-responses) permission: nats-server lets a responder
    // answer on any reply subject it was sent, past every allow and deny list (a host
    // answering its own request with reply subject `$KV.…` wrote any record). Answers are
    // plain publishes to the requester's inbox, which the allow lists name.
    let (publish, deny, subscribe, allowed_connection_types) = match permissions {
        Some(permissions) => (
            permissions.publish.clone(),
            permissions.publish_deny.clone(),
            permissions.subscribe.clone(),
            permissions.connection_types.clone(),
        ),
        None => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
    };
    sign(
        account,
        user,
        name,
        issued_at,
        UserNats {
            publish: SubjectList {
                allow: publish,
                deny,
            },
            subscribe: SubjectList {
                allow: subscribe,
                deny: Vec::new(),
            },
            resp: None,
            subs: -1,
            data: -1,
            payload: -1,
            tags,
            allowed_connection_types,
            issuer_account: None,
            kind: "user".to_owned(),
            version: 2,
        },
    )
}

/// The subjects a host's store credential for app `namespace/app` may publish: for each of
/// `stores`, its bucket's info (opening it, listing keys) and the guests' keys in it
/// (direct gets and writes under `=kv`), as a client sends them.
fn store_permissions(
    lattice: &str,
    host: &str,
    namespace: &str,
    app: &str,
    stores: &[String],
) -> Permissions {
    let mut publish = Vec::new();
    for store in stores {
        let bucket = crate::appkv::bucket_name(lattice, namespace, app, store);
        let keys = format!("$KV.{bucket}.{}.>", crate::appkv::KEY_PREFIX);
        publish.extend([
            format!("$JS.API.STREAM.INFO.KV_{bucket}"),
            format!("$JS.API.DIRECT.GET.KV_{bucket}.{keys}"),
            keys,
        ]);
    }
    // Replies on an inbox of its own, not the host's: whoever holds the credential (a
    // host that no longer runs the app, one that lied about its id) hears nothing of the
    // host's other traffic.
    let inbox = inbox_prefix("stores", &format!("{host}.{}", crate::names::unguessable()));
    Permissions {
        publish,
        publish_deny: Vec::new(),
        subscribe: vec![format!("{inbox}.>")],
        connection_types: Vec::new(),
    }
    .for_client()
}

/// A signing key of a lattice's clients' account, with which schedulers mint store
/// credentials ([`store_credential`]); `shoal auth init` writes it as `stores.nk`.
pub struct StoreSigner(KeyPair);

impl StoreSigner {
    /// Reads the key from a seed file's text.
    ///
    /// # Errors
    /// [`AuthError::Key`] when the text is not an account seed.
    pub fn from_seed(text: &str) -> Result<Self, AuthError> {
        let key = KeyPair::from_seed(text.trim())?;
        if key.key_pair_type() != nkeys::KeyPairType::Account {
            return Err(AuthError::Key(
                "the store key is not an account signing key (an SA… seed)".to_owned(),
            ));
        }
        Ok(Self(key))
    }

    /// A new key (tests; `shoal auth init` writes the lattice's).
    pub fn generate() -> Self {
        Self(KeyPair::new_account())
    }

    /// Its public key, as the clients' account lists it.
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }
}

impl fmt::Debug for StoreSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreSigner({})", self.0.public_key())
    }
}

/// A credential that lets `host` reach app `namespace/app`'s key-value `stores` and nothing
/// else, until `expires_at` (seconds): a user of the clients' account (`clients_account`),
/// signed by `signer`, one of that account's signing keys, which schedulers hold. A host's
/// own credential reaches no app's store: the scheduler gives it one of these, sealed in
/// each assignment of an app with stores, and renews it before it expires.
///
/// # Errors
/// When the JWT cannot be signed.
#[allow(clippy::too_many_arguments)]
pub fn store_credential(
    signer: &StoreSigner,
    clients_account: &str,
    lattice: &str,
    host: &str,
    namespace: &str,
    app: &str,
    stores: &[String],
    issued_at: u64,
    expires_at: u64,
) -> Result<String, AuthError> {
    let user = KeyPair::new_user();
    let permissions = store_permissions(lattice, host, namespace, app, stores);
    let jwt = sign_until(
        &signer.0,
        &user.public_key(),
        &format!("{host}/{namespace}/{app}"),
        issued_at,
        Some(expires_at),
        UserNats {
            publish: SubjectList {
                allow: permissions.publish,
                deny: Vec::new(),
            },
            subscribe: SubjectList {
                allow: permissions.subscribe,
                deny: Vec::new(),
            },
            resp: None,
            subs: -1,
            data: -1,
            payload: -1,
            tags: vec![format!("shoal-kind:{STORES_KIND}")],
            allowed_connection_types: Vec::new(),
            issuer_account: Some(clients_account.to_owned()),
            kind: "user".to_owned(),
            version: 2,
        },
    )?;
    Ok(creds(&jwt, &user.seed()?))
}

/// The kind of a store credential ([`store_credential`]), as [`Holder::kind`] reads it.
pub const STORES_KIND: &str = "stores";

/// The JWT tag naming, in a scheduler's credential, the clients' account whose host
/// credentials it checks grants against (its own is signed by the state account).
const CLIENTS_TAG: &str = "shoal-clients:";

/// The tags of `identity`'s JWT: what it is, and for a scheduler the clients' account
/// (NATS tools lowercase tags; a public key reads back uppercased).
fn jwt_tags(identity: &Identity, clients_account: Option<&str>) -> Vec<String> {
    let mut tags = identity.tags();
    if let (Identity::Scheduler { .. }, Some(clients)) = (identity, clients_account) {
        tags.push(format!("{CLIENTS_TAG}{}", clients.to_lowercase()));
    }
    tags
}

/// A user JWT for `identity` in `lattice`. `clients_account` is, for a scheduler, the
/// public key of the account that signs hosts' credentials.
pub fn identity_jwt(
    account: &KeyPair,
    user: &str,
    lattice: &str,
    identity: &Identity,
    clients_account: Option<&str>,
    issued_at: u64,
) -> Result<String, AuthError> {
    user_jwt(
        account,
        user,
        identity.name(),
        Some(&permissions(lattice, identity)),
        jwt_tags(identity, clients_account),
        issued_at,
    )
}

/// Whether a `.creds` file's text grants `identity` in `lattice` exactly what this version
/// of Shoal would mint for it, signed by `issuer` (permissions, tags, no `responses`
/// permission): a credential minted by an older version, with permissions since taken
/// away or by an account that no longer holds its kind, is not.
pub fn is_current(
    creds_text: &str,
    lattice: &str,
    identity: &Identity,
    issuer: &str,
    clients_account: Option<&str>,
) -> bool {
    let Some(claims) = creds_jwt(creds_text).and_then(|jwt| decode::<UserNats>(jwt).ok()) else {
        return false;
    };
    let wanted = permissions(lattice, identity);
    let nats = &claims.nats;
    claims.name == identity.name()
        && claims.iss == issuer
        && nats.resp.is_none()
        && nats.publish.allow == wanted.publish
        && nats.publish.deny == wanted.publish_deny
        && nats.subscribe.allow == wanted.subscribe
        && nats.tags == jwt_tags(identity, clients_account)
        && nats.allowed_connection_types == wanted.connection_types
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

/// Pushes an account JWT to nats-server through the system account (`system_creds` is
/// the text of its user's credentials), as `nsc push` does: the server stores it and applies
/// it at once, closing connections whose keys it now revokes.
///
/// # Errors
/// [`AuthError::Push`] when the server cannot be reached or refuses the JWT.
pub async fn push_account(url: &str, system_creds: &str, jwt: &str) -> Result<(), AuthError> {
    let failed = |reason: String| AuthError::Push(reason);
    let options = connect_options(system_creds)
        .map_err(|error| failed(format!("unreadable system credentials: {error}")))?
        .name("shoal auth")
        .connection_timeout(std::time::Duration::from_secs(5))
        .retry_on_initial_connect();
    let servers = crate::store::server_addrs(url).map_err(failed)?;
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        options.connect(servers.as_slice()),
    )
    .await
    .map_err(|_| failed(format!("no connection to {url} within 10 s")))?
    .map_err(|error| failed(error.to_string()))?;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.request("$SYS.REQ.CLAIMS.UPDATE", jwt.to_owned().into()),
    )
    .await
    .map_err(|_| failed("no answer within 10 s".to_owned()))?
    .map_err(|error| failed(error.to_string()))?;
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(&reply.payload)
        .map_err(|error| failed(format!("unexpected answer: {error}")))?;
    match answer.error {
        Some(error) => Err(failed(format!("nats-server refused the account: {error}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JWT's issuer and issue time, once its signature checks.
    fn issued(jwt: &str) -> Result<(String, u64), AuthError> {
        let claims: Claims<serde_json::Value> = decode(jwt)?;
        Ok((claims.iss, claims.iat))
    }

    #[test]
    fn a_creds_file_gives_its_jwt_and_seed_and_nothing_else_connects() {
        let user = KeyPair::new_user();
        let seed = user.seed().unwrap();
        let text = creds("header.claims.signature", &seed);
        assert_eq!(creds_jwt(&text), Some("header.claims.signature"));
        assert_eq!(creds_seed(&text), Some(seed.as_str()));
        assert!(connect_options(&text).is_ok());
        // No seed, a seed that is not one, no JWT: each refused with what is wrong.
        let no_seed = text.replace(&seed, "");
        assert!(connect_options(&no_seed).is_err());
        let bad_seed = text.replace(&seed, "SUNOTASEED");
        let error = connect_options(&bad_seed).unwrap_err().to_string();
        assert!(error.contains("seed"), "{error}");
        let error = connect_options("nothing here").unwrap_err().to_string();
        assert!(error.contains("no NATS user JWT"), "{error}");
    }

    #[test]
    fn a_host_grant_is_read_only_from_a_credential_of_this_account_for_that_host() {
        let account = KeyPair::new_account();
        let grant = HostGrant {
            labels: [("zone".to_owned(), "a".to_owned())].into(),
            memory: Some(2 << 30),
            cpu: Some(1500),
            max_replicas: Some(7),
        };
        let mint = |account: &KeyPair, id: &str, grant: HostGrant| {
            identity_jwt(
                account,
                &KeyPair::new_user().public_key(),
                "dev",
                &Identity::Host {
                    id: id.to_owned(),
                    grant,
                },
                None,
                1,
            )
            .unwrap()
        };
        let jwt = mint(&account, "edge-1", grant.clone());
        assert_eq!(
            host_grant(&jwt, &account.public_key(), "edge-1").unwrap(),
            grant
        );
        // Another host's credential, another account's, a tampered one: refused.
        assert!(host_grant(&jwt, &account.public_key(), "edge-2").is_err());
        let other = KeyPair::new_account();
        let foreign = mint(&other, "edge-1", grant.clone());
        assert!(host_grant(&foreign, &account.public_key(), "edge-1").is_err());
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let claims = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap())
            .unwrap()
            .replace("shoal-memory:2147483648", "shoal-memory:9999999999999");
        parts[1] = BASE64URL_NOPAD.encode(claims.as_bytes());
        assert!(host_grant(&parts.join("."), &account.public_key(), "edge-1").is_err());
        // A user's credential is not a host's.
        let user = identity_jwt(
            &account,
            &KeyPair::new_user().public_key(),
            "dev",
            &Identity::User {
                name: "edge-1".to_owned(),
                grants: Vec::new(),
            },
            None,
            1,
        )
        .unwrap();
        assert!(host_grant(&user, &account.public_key(), "edge-1").is_err());
    }

    #[test]
    fn a_credential_minted_with_other_permissions_is_not_current() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let identity = Identity::Host {
            id: "edge-1".to_owned(),
            grant: HostGrant::default(),
        };
        let jwt = identity_jwt(&account, &user.public_key(), "dev", &identity, None, 1).unwrap();
        let text = creds(&jwt, &user.seed().unwrap());
        let signer = account.public_key();
        assert!(is_current(&text, "dev", &identity, &signer, None));
        assert!(!is_current(&text, "dev", &identity, "AOTHER", None));
        // The same host with a grant, or in another lattice, needs a new one.
        let granted = Identity::Host {
            id: "edge-1".to_owned(),
            grant: HostGrant {
                max_replicas: Some(3),
                ..HostGrant::default()
            },
        };
        assert!(!is_current(&text, "dev", &granted, &signer, None));
        assert!(!is_current(&text, "prod", &identity, &signer, None));
        assert!(!is_current(
            "not a credential",
            "dev",
            &identity,
            &signer,
            None
        ));
    }

    /// Whether every subject `pattern` matches is matched by `cover` (NATS wildcards).
    fn covers(cover: &str, pattern: &str) -> bool {
        let mut wanted = pattern.split('.');
        for token in cover.split('.') {
            match (token, wanted.next()) {
                (">", Some(_)) => return true,
                ("*", Some(next)) if next != ">" => {}
                (token, Some(next)) if token == next => {}
                _ => return false,
            }
        }
        wanted.next().is_none()
    }

    #[test]
    fn every_jetstream_subject_a_client_may_use_crosses_into_the_state_account_once() {
        let shared = shared_subjects("dev");
        let services: Vec<&str> = shared
            .iter()
            .filter_map(|shared| match shared {
                Shared::Service { local, .. } => Some(local.as_str()),
                Shared::Stream { .. } => None,
            })
            .collect();
        let identities = [
            Identity::Host {
                id: "edge-1".to_owned(),
                grant: HostGrant::default(),
            },
            Identity::Site {
                name: "s".to_owned(),
                hosts: vec!["s-1".to_owned()],
                domain: "hub".to_owned(),
            },
            Identity::User {
                name: "alice".to_owned(),
                grants: vec![Grant {
                    role: Role::Viewer,
                    namespace: Some("team-a".to_owned()),
                }],
            },
        ];
        for identity in &identities {
            for subject in &permissions("dev", identity).publish {
                if subject.starts_with("$JS.") || subject.starts_with("$KV.") {
                    let carriers = services
                        .iter()
                        .filter(|local| covers(local, subject))
                        .count();
                    assert_eq!(carriers, 1, "{subject} of {identity:?}");
                }
            }
        }
        // The imports are disjoint: no subject is carried twice.
        for (index, one) in services.iter().enumerate() {
            for other in &services[index + 1..] {
                assert!(!covers(one, other) && !covers(other, one), "{one} {other}");
            }
        }
        // The scheduler uses the state account's JetStream as it is.
        let scheduler = permissions(
            "dev",
            &Identity::Scheduler {
                name: "s1".to_owned(),
            },
        );
        assert!(scheduler.publish.contains(&"$JS.API.>".to_owned()));
    }

    #[test]
    fn account_jwts_share_what_clients_use_and_nothing_else() {
        let operator = KeyPair::new_operator();
        let state = KeyPair::new_account().public_key();
        let clients = KeyPair::new_account().public_key();
        let none = BTreeMap::new();
        let claims = |jwt: String| decode::<AccountNats>(&jwt).unwrap().nats;
        let exported = claims(
            account_jwt(
                &operator,
                &state,
                "dev",
                AccountKind::State,
                "dev",
                &none,
                1,
            )
            .unwrap(),
        );
        assert_eq!(exported.exports.len(), shared_subjects("dev").len());
        assert!(exported.imports.is_empty());
        assert_eq!(exported.limits.streams, Some(-1));
        let imported = claims(
            account_jwt(
                &operator,
                &clients,
                "dev-clients",
                AccountKind::Clients {
                    state: Some(&state),
                    store_signer: Some("ASIGNER"),
                },
                "dev",
                &none,
                1,
            )
            .unwrap(),
        );
        assert!(imported.exports.is_empty());
        assert_eq!(imported.signing_keys, ["ASIGNER"]);
        assert_eq!(imported.limits.streams, None, "no JetStream of its own");
        assert!(
            imported
                .imports
                .iter()
                .all(|import| import.account == state)
        );
        assert!(imported.imports.iter().any(|import| {
            import.subject == "$KV.>"
                && import.local_subject.as_deref() == Some("$JS.shoal-state.API.$KV.>")
        }));
        let leaf = claims(
            account_jwt(
                &operator,
                &clients,
                "dev-clients",
                AccountKind::Clients {
                    state: None,
                    store_signer: Some("ASIGNER"),
                },
                "dev",
                &none,
                1,
            )
            .unwrap(),
        );
        assert!(leaf.imports.is_empty());
    }

    #[test]
    fn a_store_credential_reaches_its_app_s_stores_only_until_it_expires() {
        let signer = StoreSigner::from_seed(&KeyPair::new_account().seed().unwrap()).unwrap();
        assert!(StoreSigner::from_seed(&KeyPair::new_user().seed().unwrap()).is_err());
        let clients = KeyPair::new_account().public_key();
        let stores = ["cache".to_owned(), "sessions".to_owned()];
        let text = store_credential(
            &signer, &clients, "dev", "edge-1", "team-a", "shop", &stores, 100, 3700,
        )
        .unwrap();
        let jwt = creds_jwt(&text).unwrap();
        let claims: Claims<UserNats> = decode(jwt).unwrap();
        assert_eq!(claims.iss, signer.public_key());
        assert_eq!(
            claims.nats.issuer_account.as_deref(),
            Some(clients.as_str())
        );
        assert_eq!(claims.exp, Some(3700));
        assert_eq!(holder(&text).unwrap().kind, STORES_KIND);
        let publish = &claims.nats.publish.allow;
        for store in &stores {
            let bucket = format!("shoal-dev-v1-kv_team-a_shop_{store}");
            assert!(publish.contains(&format!("$JS.shoal-state.API.$KV.{bucket}.=kv.>")));
            assert!(publish.contains(&format!(
                "$JS.shoal-state.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.=kv.>"
            )));
        }
        // Nothing else: no other app's store, no bucket of the lattice's own.
        assert_eq!(publish.len(), 6, "{publish:?}");
        assert!(
            publish
                .iter()
                .all(|subject| subject.contains("_team-a_shop_"))
        );
        let [inbox] = claims.nats.subscribe.allow.as_slice() else {
            panic!("one inbox: {:?}", claims.nats.subscribe.allow);
        };
        assert!(inbox.starts_with("_INBOX.stores.edge-1.") && inbox.ends_with(".>"));
        assert!(
            holder(&text)
                .unwrap()
                .inbox_prefix
                .is_some_and(|prefix| inbox.starts_with(&prefix))
        );
        // A host's own credential reaches no store.
        let host = permissions(
            "dev",
            &Identity::Host {
                id: "edge-1".to_owned(),
                grant: HostGrant::default(),
            },
        );
        assert!(!host.publish.iter().any(|subject| subject.contains("=kv")));
        assert!(
            !host
                .publish
                .iter()
                .any(|subject| subject.ends_with("STREAM.INFO.*"))
        );
        // Each subject it uses crosses into the state account.
        let services: Vec<String> = shared_subjects("dev")
            .into_iter()
            .filter_map(|shared| match shared {
                Shared::Service { local, .. } => Some(local),
                Shared::Stream { .. } => None,
            })
            .collect();
        for subject in publish {
            assert!(
                services.iter().any(|local| covers(local, subject)),
                "{subject}"
            );
        }
    }

    #[test]
    fn a_scheduler_s_credential_names_the_clients_account() {
        let state = KeyPair::new_account();
        let clients = KeyPair::new_account().public_key();
        let user = KeyPair::new_user();
        let identity = Identity::Scheduler {
            name: "s1".to_owned(),
        };
        let jwt = identity_jwt(
            &state,
            &user.public_key(),
            "dev",
            &identity,
            Some(&clients),
            1,
        )
        .unwrap();
        let text = creds(&jwt, &user.seed().unwrap());
        let holder = holder(&text).unwrap();
        assert_eq!(holder.issuer, state.public_key());
        assert_eq!(holder.clients_account, Some(clients.clone()));
        assert!(is_current(
            &text,
            "dev",
            &identity,
            &state.public_key(),
            Some(&clients)
        ));
        assert!(!is_current(
            &text,
            "dev",
            &identity,
            &clients,
            Some(&clients)
        ));
    }

    #[test]
    fn only_a_reply_subject_nats_server_made_for_an_import_counts_as_one() {
        assert!(is_import_reply("_R_.abc.def"));
        for reply in [
            "_R_",
            "_R_.",
            "_R_.>",
            "_R_.a.*",
            "_INBOX.user.a.b",
            "$KV.x._R_.a",
        ] {
            assert!(!is_import_reply(reply), "{reply}");
        }
    }

    #[test]
    fn answers_go_only_to_the_requester_s_own_inboxes() {
        assert!(is_inbox_of(
            "_INBOX.user.alice.abc123",
            "user",
            Some("alice")
        ));
        assert!(is_inbox_of(
            "_INBOX.user.alice.abc.1",
            "user",
            Some("alice")
        ));
        assert!(is_inbox_of("_INBOX.host.edge-1.x", "host", None));
        for (reply, kind, name) in [
            (
                "$KV.shoal-default-v1-leases.scheduler",
                "user",
                Some("alice"),
            ),
            (
                "$JS.API.STREAM.PURGE.KV_shoal-default-v1-apps",
                "host",
                None,
            ),
            ("_INBOX.user.bob.abc", "user", Some("alice")),
            ("_INBOX.host.alice.abc", "user", Some("alice")),
            ("_INBOX.user.alice", "user", Some("alice")),
            ("_INBOX.user.alice.", "user", Some("alice")),
            ("_INBOX.user.alice.*", "user", Some("alice")),
            ("_INBOX.user.alice.>", "user", Some("alice")),
            ("_INBOX.user.alice..x", "user", Some("alice")),
            ("_INBOX.user.alice.a b", "user", Some("alice")),
            ("_INBOX.abcdef", "host", None),
            ("", "user", None),
        ] {
            assert!(!is_inbox_of(reply, kind, name), "{reply}");
        }
    }

    #[test]
    fn a_minted_credential_reads_back_its_holder() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let identity = Identity::User {
            name: "alice".to_owned(),
            grants: vec![
                Grant {
                    role: Role::Editor,
                    namespace: Some("team-a".to_owned()),
                },
                Grant {
                    role: Role::Viewer,
                    namespace: None,
                },
            ],
        };
        let jwt = identity_jwt(&account, &user.public_key(), "dev", &identity, None, 1).unwrap();
        let text = creds(&jwt, &user.seed().unwrap());
        let holder = holder(&text).unwrap();
        assert_eq!(holder.name, "alice");
        assert_eq!(holder.kind, "user");
        assert_eq!(holder.inbox_prefix.as_deref(), Some("_INBOX.user.alice"));
        let Identity::User { grants, .. } = identity else {
            unreachable!()
        };
        assert_eq!(holder.grants, grants);
        assert_eq!(issued(&jwt).unwrap(), (account.public_key(), 1));
    }

    #[test]
    fn a_tampered_jwt_is_refused() {
        let account = KeyPair::new_account();
        let identity = Identity::Host {
            id: "edge-1".to_owned(),
            grant: HostGrant::default(),
        };
        let jwt = identity_jwt(
            &account,
            &KeyPair::new_user().public_key(),
            "dev",
            &identity,
            None,
            1,
        )
        .unwrap();
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let claims = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap())
            .unwrap()
            .replace("edge-1", "edge-2");
        parts[1] = BASE64URL_NOPAD.encode(claims.as_bytes());
        assert!(issued(&parts.join(".")).is_err());
    }

    #[test]
    fn a_host_may_write_only_its_own_records_and_hear_only_its_own_requests() {
        let permissions = permissions(
            "dev",
            &Identity::Host {
                id: "edge-1".to_owned(),
                grant: HostGrant::default(),
            },
        );
        assert!(
            permissions
                .publish
                .contains(&"$JS.shoal-state.API.$KV.shoal-dev-v1-hosts.edge-1".to_owned())
        );
        assert!(
            permissions.publish.contains(
                &"$JS.shoal-state.API.$KV.shoal-dev-v1-status.replicas.edge-1.*".to_owned()
            )
        );
        // Writes are publishes on `$KV.…` (under the state's prefix); reads name their
        // filter inside a consumer subject. Nothing under the state account's own names.
        assert!(!permissions.publish.iter().any(|subject| {
            subject.starts_with("$KV.")
                || subject.starts_with("$JS.API.")
                || subject.starts_with("$JS.shoal-state.API.$KV.shoal-dev-v1-apps")
                || subject.starts_with("$JS.shoal-state.API.$KV.shoal-dev-v1-assignments")
                || subject.contains("STREAM.CREATE")
                || subject.contains("v1-apps.")
        }));
        assert!(
            permissions
                .subscribe
                .contains(&"shoal.dev.v1.http.edge-1.>".to_owned())
        );
        assert!(
            !permissions
                .subscribe
                .iter()
                .any(|s| s == "shoal.dev.v1.http.>")
        );
    }

    #[test]
    fn a_site_may_do_what_its_hosts_may_and_nothing_more() {
        let site = permissions(
            "dev",
            &Identity::Site {
                name: "store-12".to_owned(),
                hosts: vec!["store-12-1".to_owned(), "store-12-2".to_owned()],
                domain: "hub".to_owned(),
            },
        );
        for id in ["store-12-1", "store-12-2"] {
            let host = permissions(
                "dev",
                &Identity::Host {
                    id: id.to_owned(),
                    grant: HostGrant::default(),
                },
            );
            // Every host subject.
            for subject in &host.publish {
                assert!(site.publish.contains(subject), "{subject}");
            }
            for subject in &host.subscribe {
                assert!(site.subscribe.contains(subject), "{subject}");
            }
            assert!(
                site.publish
                    .contains(&format!("$JS.shoal-state.API.$KV.shoal-dev-v1-hosts.{id}"))
            );
            assert!(site.publish.contains(&format!(
                "$JS.shoal-state.API.DIRECT.GET.KV_shoal-dev-v1-hosts.$KV.shoal-dev-v1-hosts.{id}"
            )));
        }
        // Not another host's record, nor its requests.
        assert!(
            !site
                .publish
                .iter()
                .any(|subject| subject.contains("hosts.edge-1"))
        );
        assert!(
            !site
                .subscribe
                .iter()
                .any(|subject| subject.contains("edge-1"))
        );
        // Answers to forwarded requests only to hosts' inboxes.
        assert!(site.publish.contains(&"_INBOX.host.*.>".to_owned()));
    }

    #[test]
    fn grants_allow_their_scope_and_lower_roles() {
        let editor = Grant {
            role: Role::Editor,
            namespace: Some("team-a".to_owned()),
        };
        assert!(editor.allows(Role::Viewer, Some("team-a")));
        assert!(editor.allows(Role::Editor, Some("team-a")));
        assert!(!editor.allows(Role::Admin, Some("team-a")));
        assert!(!editor.allows(Role::Viewer, Some("team-b")));
        assert!(!editor.allows(Role::Viewer, None));
        let admin = Grant {
            role: Role::Admin,
            namespace: None,
        };
        assert!(admin.allows(Role::Editor, Some("team-b")));
        assert_eq!(editor.to_string(), "editor in team-a");
        assert_eq!(
            api_subject("dev", &editor, "alice", "apply"),
            "shoal.dev.v1.api.editor.team-a.alice.apply"
        );
    }
}
