//! The typed lattice client: one NATS connection, the lattice's KV buckets, JSON records.
//!
//! Writes that can race are compare-and-set: [`Lattice::create`] succeeds only for a new
//! key, [`Lattice::update`] and [`Lattice::delete_at`] only at the revision read. A lost
//! race is [`Error::Conflict`], told apart by the NATS client's error kind, never by text.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Cause;
use crate::names::{self, Bucket};
use crate::{Error, Mirror};

/// How to reach a lattice.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// NATS server URL(s), comma-separated.
    pub url: String,
    /// Lattice name (bucket and subject prefix).
    pub lattice: String,
    /// Name of this client, shown by NATS monitoring.
    pub client_name: String,
    /// How to authenticate.
    pub auth: NatsAuth,
    /// TLS settings; `None` uses TLS only when the URL says `tls://`.
    pub tls: Option<NatsTls>,
    /// How many servers keep each bucket and stream, when this connection creates them
    /// (3 on a NATS cluster, so losing a server loses nothing; 0 means 1).
    pub replicas: usize,
    /// Who publishes this connection's events and logs: the last token of their subjects,
    /// so a secure lattice can let each host publish only its own (a host id, or
    /// [`SCHEDULER_ORIGIN`]); empty for clients that publish none.
    pub origin: String,
    /// Whether to open the KV buckets (clients that only use the control API and the
    /// journals do not, and may not).
    pub skip_buckets: bool,
    /// The JetStream domain of the lattice's state, for clients of a leaf nats-server (a
    /// site) whose JetStream lives at the hub; `None` for the server's own.
    pub js_domain: Option<String>,
    /// Whether to leave the journals (logs, events) unopened: a connection that reaches
    /// only apps' stores may not.
    pub skip_journals: bool,
    /// Where this connection's server (a site's leaf nats-server) keeps a copy of the
    /// lattice's components bucket: a site's hosts then fetch one copy of each component
    /// over the site's uplink between them.
    pub site_copy: SiteCopy,
}

/// How a connection reaches its site's copy of the components bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SiteCopy {
    /// It has none (a hub's connection, or a site that keeps no copy).
    #[default]
    None,
    /// In the leaf's JetStream domain, on the same connection (an open site).
    Domain,
    /// In the account that keeps it, on a second connection presenting this reader's
    /// credential (a secure site; `shoal auth site` writes it).
    Reader(std::path::PathBuf),
}

/// The publisher token of the control plane's events.
pub const SCHEDULER_ORIGIN: &str = "_scheduler";

/// Credentials for the NATS server.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// User and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
    /// A `.creds` file (JWT and NKey seed).
    CredsFile(std::path::PathBuf),
    /// A credential's text (JWT and NKey seed) held in memory: a store credential a host
    /// was given in an assignment.
    Creds(String),
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::UserPassword(user, _) => write!(f, "UserPassword({user}, ***)"),
            NatsAuth::Token(_) => f.write_str("Token(***)"),
            NatsAuth::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
            NatsAuth::Creds(_) => f.write_str("Creds(***)"),
        }
    }
}

/// TLS to the NATS server.
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// CA certificate(s) to trust (PEM), beyond the system's.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate and key (PEM), for servers that verify clients.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// The reply inboxes of a connection without a Shoal credential, bound to what it
/// publishes as, as a credential binds them: `_INBOX.host.<id>` for a host, the
/// scheduler's for the control plane, `_INBOX.user.anonymous` for a person. Hosts and the
/// control API answer only such inboxes (see [`crate::auth::is_inbox_of`]).
fn default_inbox_prefix(origin: &str) -> String {
    match origin {
        "" => crate::auth::inbox_prefix("user", crate::auth::ANONYMOUS),
        SCHEDULER_ORIGIN => crate::auth::inbox_prefix("scheduler", SCHEDULER_ORIGIN),
        host => crate::auth::inbox_prefix("host", host),
    }
}

/// NATS options that present the credential `text` (a `.creds` file's), with the reply
/// inboxes it may subscribe to (a Shoal credential names them; others get `origin`'s), and
/// who holds it, when the JWT reads.
fn with_credential(
    text: &str,
    origin: &str,
) -> Result<(async_nats::ConnectOptions, Option<crate::auth::Holder>), String> {
    let nats = crate::auth::connect_options(text).map_err(|error| error.to_string())?;
    let holder = crate::auth::holder(text).ok();
    let prefix = holder
        .as_ref()
        .and_then(|holder| holder.inbox_prefix.clone())
        .unwrap_or_else(|| default_inbox_prefix(origin));
    Ok((nats.custom_inbox_prefix(prefix), holder))
}

/// Where a connection finds the lattice's JetStream state.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StateApi {
    /// In its own account, on its own server (an open lattice, or a scheduler).
    Own,
    /// In a JetStream domain across a leaf connection (an open lattice's site).
    Domain(String),
    /// In the secure lattice's state account, imported into the clients' one under
    /// [`crate::auth::STATE_API_PREFIX`] (a host, site or person with a Shoal credential).
    Imported,
}

impl StateApi {
    /// Where a connection in JetStream domain `js_domain` whose credential is `holder`'s
    /// finds the state: a Shoal credential other than a scheduler's belongs to the clients'
    /// account.
    fn of(js_domain: Option<&String>, holder: Option<&crate::auth::Holder>) -> Self {
        let client_credential =
            holder.is_some_and(|holder| !holder.kind.is_empty() && holder.kind != "scheduler");
        match (js_domain, client_credential) {
            (_, true) => StateApi::Imported,
            (Some(domain), false) => StateApi::Domain(domain.clone()),
            (None, false) => StateApi::Own,
        }
    }

    /// A JetStream context of the lattice's state.
    fn context(&self, client: async_nats::Client) -> jetstream::Context {
        match self {
            StateApi::Own => jetstream::new(client),
            StateApi::Domain(domain) => jetstream::with_domain(client, domain),
            StateApi::Imported => jetstream::with_prefix(client, crate::auth::STATE_API_PREFIX),
        }
    }
}

/// A connection to the account keeping a site's copy of the components at `servers`, with
/// the reader's credential in the file `creds`.
async fn site_copy_reader(
    servers: &[async_nats::ServerAddr],
    creds: &std::path::Path,
) -> Result<async_nats::Client, String> {
    let text = std::fs::read_to_string(creds)
        .map_err(|error| format!("cannot read {}: {error}", creds.display()))?;
    crate::auth::connect_options(&text)
        .map_err(|error| format!("{}: {error}", creds.display()))?
        .custom_inbox_prefix(crate::auth::SITE_COPY_READER_INBOX)
        .name("shoal site copy reader")
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(|error| error.to_string())
}

/// A message that triggers an app: its subject relative to the app's namespace, headers
/// and payload.
#[derive(Debug, Clone)]
pub struct AppMessage {
    /// The subject, relative to the namespace.
    pub subject: String,
    /// Its headers, each value once.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: bytes::Bytes,
    /// Where an answer goes, when its sender asked for one.
    pub reply: Option<String>,
}

/// An error of sending or receiving apps' messages.
fn message_error(source: crate::Cause) -> Error {
    Error::Request {
        bucket: "messages".to_owned(),
        source,
    }
}

/// `headers` as NATS headers.
fn header_map(headers: &[(String, String)]) -> Result<async_nats::HeaderMap, crate::Cause> {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        let header: async_nats::HeaderName = name
            .parse()
            .map_err(|_| format!("{name:?} is not a header name"))?;
        let value: async_nats::HeaderValue = value
            .parse()
            .map_err(|_| format!("the value of {name} is not a header value"))?;
        map.append(header, value);
    }
    Ok(map)
}

/// A message's headers as pairs, each value once.
pub fn header_pairs(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    headers
        .iter()
        .flat_map(|headers| {
            headers.iter().flat_map(|(name, values)| {
                values
                    .iter()
                    .map(|value| (name.to_string(), value.as_str().to_owned()))
            })
        })
        .collect()
}

/// The most bytes (headers and payloads) one request keeps of its answers.
pub const REQUEST_ANSWER_BYTES: usize = 4 << 20;

/// The inboxes an app's answers may go to on a secure lattice: people's and other apps'
/// replicas' (the askers there); never a host's, a scheduler's or a site's.
pub const ASKER_INBOXES: [&str; 2] = ["_INBOX.user.*.>", "_INBOX.stores.*.>"];

/// The inboxes of the lattice's own processes, which no app answers.
const PROCESS_INBOXES: [&str; 4] = [
    "_INBOX.host.",
    "_INBOX.scheduler.",
    "_INBOX.site-copy",
    "_INBOX.site.",
];

/// Whether `reply` is a subject an app's answer may go to: an inbox, `_INBOX.` and tokens
/// without wildcards, none of the lattice's own processes.
pub fn is_reply_inbox(reply: &str) -> bool {
    !PROCESS_INBOXES
        .iter()
        .any(|process| reply.starts_with(process))
        && reply.strip_prefix("_INBOX.").is_some_and(|rest| {
            !rest.is_empty()
                && reply.len() <= 256
                && rest.split('.').all(|token| {
                    !token.is_empty()
                        && token
                            .bytes()
                            .all(|byte| byte.is_ascii_graphic() && byte != b'*' && byte != b'>')
                })
        })
}

/// Whether a message on a message subject is an answer of JetStream's, sent there because
/// a client named that subject as the reply subject of its request (nats-server checks no
/// reply subject against any permission): a message fetched by direct get (JetStream's
/// `Nats-Stream` and `Nats-Sequence` headers), one a consumer delivered (a `$JS.ACK` reply
/// subject), a consumer's status, a publish's acknowledgement (`{"stream":…,"seq":…}`), an
/// API answer of JetStream's or the control plane's. No client published
/// it, so no trigger takes it: through one, a client could send another namespace's app
/// the bytes of anything it may read.
pub(crate) fn is_jetstream_answer(
    reply: Option<&str>,
    status: bool,
    headers: &[(String, String)],
    payload: &[u8],
) -> bool {
    let publish_ack = payload.len() < 512
        && payload.starts_with(br#"{"stream":""#)
        && payload.windows(6).any(|window| window == br#""seq":"#);
    status
        || reply.is_some_and(|reply| reply.starts_with("$JS."))
        || headers.iter().any(|(name, _)| {
            ["Nats-Stream", "Nats-Sequence", ANSWER_HEADER]
                .iter()
                .any(|mark| name.eq_ignore_ascii_case(mark))
        })
        || payload.starts_with(br#"{"type":"io.nats.jetstream.api.v1."#)
        // A failed publish's acknowledgement leads with its error.
        || payload.starts_with(br#"{"error":{"code":"#)
        || publish_ack
}

/// The header the control plane marks its answers with (they too may be aimed at a
/// message subject through a chosen reply subject): no trigger takes a message that
/// carries it.
pub const ANSWER_HEADER: &str = "Shoal-Answer";

/// A record with the KV revision it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The key.
    pub key: String,
    /// The KV revision (stream sequence) of this value.
    pub revision: u64,
    /// The record.
    pub value: T,
}

/// A connection to one lattice.
#[derive(Clone)]
pub struct Lattice {
    client: async_nats::Client,
    name: String,
    /// Replicas of the buckets and streams this connection creates.
    pub(crate) replicas: usize,
    buckets: HashMap<&'static str, kv::Store>,
    /// The publisher token of this connection's events and logs.
    pub(crate) origin: String,
    /// Where the lattice's JetStream state is.
    state_api: StateApi,
    /// The JetStream API of the site's copy of the components bucket, when it keeps one.
    pub(crate) site_copy: Option<jetstream::Context>,
    /// How this connection was made, for [`Lattice::connect_with`].
    options: std::sync::Arc<ConnectOptions>,
}

impl std::fmt::Debug for Lattice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lattice").field("name", &self.name).finish()
    }
}

impl Lattice {
    /// Connects and opens (creating when missing) the lattice's buckets.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad lattice name, [`Error::Connect`] when NATS cannot be
    /// reached, [`Error::Bucket`] when JetStream is unavailable.
    pub async fn connect(options: &ConnectOptions) -> Result<Self, Error> {
        names::check_name("lattice name", &options.lattice)?;
        let (mut nats, holder) = match &options.auth {
            NatsAuth::None => (
                async_nats::ConnectOptions::new()
                    .custom_inbox_prefix(default_inbox_prefix(&options.origin)),
                None,
            ),
            NatsAuth::UserPassword(user, password) => (
                async_nats::ConnectOptions::new()
                    .user_and_password(user.clone(), password.clone())
                    .custom_inbox_prefix(default_inbox_prefix(&options.origin)),
                None,
            ),
            NatsAuth::Token(token) => (
                async_nats::ConnectOptions::new()
                    .token(token.clone())
                    .custom_inbox_prefix(default_inbox_prefix(&options.origin)),
                None,
            ),
            NatsAuth::CredsFile(path) => {
                let unreadable = |error: String| Error::Connect {
                    url: options.url.clone(),
                    source: format!(
                        "cannot read the credentials file {}: {error}",
                        path.display()
                    )
                    .into(),
                };
                let text =
                    std::fs::read_to_string(path).map_err(|error| unreadable(error.to_string()))?;
                with_credential(&text, &options.origin).map_err(unreadable)?
            }
            NatsAuth::Creds(text) => {
                with_credential(text, &options.origin).map_err(|error| Error::Connect {
                    url: options.url.clone(),
                    source: format!("an unreadable credential: {error}").into(),
                })?
            }
        };
        if let Some(tls) = &options.tls {
            nats = nats.require_tls(true);
            if let Some(ca) = &tls.ca {
                nats = nats.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                nats = nats.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let servers = server_addrs(&options.url).map_err(|reason| Error::Connect {
            url: options.url.clone(),
            source: reason.into(),
        })?;
        let client = nats
            .name(&options.client_name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None)
            .connect(servers.as_slice())
            .await
            .map_err(|error| match error.kind() {
                async_nats::ConnectErrorKind::AuthorizationViolation => Error::Unauthorized {
                    url: options.url.clone(),
                },
                _ => Error::Connect {
                    url: options.url.clone(),
                    source: error.into(),
                },
            })?;
        // A flush proves the server answers before buckets are opened.
        tokio::time::timeout(Duration::from_secs(5), client.flush())
            .await
            .map_err(|_| Error::Connect {
                url: options.url.clone(),
                source: "no answer within 5 s".into(),
            })?
            .map_err(|error| Error::Connect {
                url: options.url.clone(),
                source: error.into(),
            })?;
        let state_api = StateApi::of(options.js_domain.as_ref(), holder.as_ref());
        let context = state_api.context(client.clone());
        let mut buckets = HashMap::new();
        for bucket in Bucket::ALL
            .iter()
            .filter(|_| !options.skip_buckets)
            .copied()
        {
            buckets.insert(
                bucket.suffix(),
                open_bucket(
                    &context,
                    &bucket.name(&options.lattice),
                    bucket.history(),
                    options.replicas,
                )
                .await?,
            );
            // The buckets hosts write: a key write with `Nats-Rollup: all` would purge
            // every other host's record (nats-server cannot refuse a header per user). The
            // connection that owns the state (a scheduler) makes the streams refuse it.
            if state_api == StateApi::Own && bucket.written_by_hosts() {
                refuse_rollups(&context, &format!("KV_{}", bucket.name(&options.lattice))).await;
            }
        }
        // Logs and events are published with plain NATS: their streams must exist to keep
        // them. A server short of JetStream storage still runs apps; only these are lost.
        for journal in crate::journal::Journal::ALL
            .iter()
            .filter(|_| !options.skip_journals)
            .copied()
        {
            if let Err(error) =
                crate::journal::open(&context, &options.lattice, journal, options.replicas).await
            {
                tracing::warn!(error = %crate::Chain(&error), "the lattice will not keep these records");
            }
        }
        let site_copy = match &options.site_copy {
            SiteCopy::None => None,
            SiteCopy::Domain => Some(jetstream::with_prefix(
                client.clone(),
                crate::components::SITE_API_PREFIX,
            )),
            // A copy that cannot be reached is no reason to stay off the lattice: its
            // objects are read at the hub then.
            SiteCopy::Reader(creds) => match site_copy_reader(&servers, creds).await {
                Ok(client) => Some(jetstream::new(client)),
                Err(error) => {
                    tracing::warn!(%error, "cannot reach the site's copy of the lattice's components; reading them at the hub");
                    None
                }
            },
        };
        Ok(Self {
            options: std::sync::Arc::new(options.clone()),
            client,
            name: options.lattice.clone(),
            replicas: options.replicas,
            buckets,
            state_api,
            site_copy,
            origin: if options.origin.is_empty() {
                "_client".to_owned()
            } else {
                options.origin.clone()
            },
        })
    }

    /// Another connection to the same lattice (same servers, TLS, name) presenting the
    /// credential `creds` (a `.creds` file's text) and opening no bucket or journal: a
    /// host's connection for one app's key-value stores.
    ///
    /// # Errors
    /// As [`Lattice::connect`].
    pub async fn connect_with(&self, creds: String, client_name: &str) -> Result<Self, Error> {
        self.sibling(Some(NatsAuth::Creds(creds)), client_name)
            .await
    }

    /// Another connection to the same lattice with the same credential, opening no bucket
    /// or journal: one whose failure touches no other work (a replica's triggers).
    ///
    /// # Errors
    /// As [`Lattice::connect`].
    pub async fn connect_again(&self, client_name: &str) -> Result<Self, Error> {
        self.sibling(None, client_name).await
    }

    /// A connection made as this one was (with `auth` instead, when given) that opens no
    /// bucket, journal or site copy.
    async fn sibling(&self, auth: Option<NatsAuth>, client_name: &str) -> Result<Self, Error> {
        let mut options = ConnectOptions {
            client_name: client_name.to_owned(),
            skip_buckets: true,
            skip_journals: true,
            site_copy: SiteCopy::None,
            ..(*self.options).clone()
        };
        if let Some(auth) = auth {
            options.auth = auth;
        }
        Self::connect(&options).await
    }

    /// Waits until nats-server has every message this connection published so far.
    ///
    /// # Errors
    /// [`Error::Request`] when the connection is gone.
    pub async fn flush(&self) -> Result<(), Error> {
        self.client
            .flush()
            .await
            .map_err(|error| message_error(error.into()))
    }

    /// The JetStream context of the lattice's state (in its domain, when it has one).
    pub(crate) fn jetstream(&self) -> jetstream::Context {
        self.state_api.context(self.client.clone())
    }

    /// Publishes `payload` with `headers` on message subject `subject` of `namespace` (as an
    /// app names it: relative to its namespace; see [`names::message_subject`]). nats-server
    /// drops, and reports to the connection, a publish its credential does not allow: the
    /// caller checks grants first.
    ///
    /// # Errors
    /// [`Error::Request`] for a header NATS cannot carry, or a connection that is gone.
    pub async fn publish_message(
        &self,
        namespace: &str,
        subject: &str,
        headers: &[(String, String)],
        payload: bytes::Bytes,
    ) -> Result<(), Error> {
        let failed = message_error;
        let map = header_map(headers).map_err(failed)?;
        self.client
            .publish_with_headers(
                names::message_subject(&self.name, namespace, subject),
                map,
                payload,
            )
            .await
            .map_err(|error| failed(error.into()))
    }

    /// Sends `payload` with `headers` on message subject `subject` of `namespace` as a
    /// request and gathers up to `replies` answers within `timeout`, at most
    /// [`REQUEST_ANSWER_BYTES`] of them, each with the request's subject.
    ///
    /// # Errors
    /// [`Error::Request`] when no one answers in time, or the connection is gone.
    pub async fn request_message(
        &self,
        namespace: &str,
        subject: &str,
        headers: &[(String, String)],
        payload: bytes::Bytes,
        timeout: std::time::Duration,
        replies: usize,
    ) -> Result<Vec<AppMessage>, Error> {
        use futures_util::StreamExt as _;
        let failed = message_error;
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|error| failed(error.into()))?;
        let map = header_map(headers).map_err(failed)?;
        self.client
            .publish_with_reply_and_headers(
                names::message_subject(&self.name, namespace, subject),
                inbox,
                map,
                payload,
            )
            .await
            .map_err(|error| failed(error.into()))?;
        let mut gathered = Vec::new();
        let mut bytes = 0usize;
        let deadline = tokio::time::Instant::now() + timeout;
        while gathered.len() < replies.max(1) {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(answer)) if answer.status.is_none() => {
                    // Answers past the budget are not kept: a guest's request cannot make
                    // its host hold more than this, however many answer.
                    bytes = bytes.saturating_add(answer.length);
                    if bytes > REQUEST_ANSWER_BYTES {
                        break;
                    }
                    // Its topic is the request's: the inbox it came on is the
                    // credential's own, not the guest's to know.
                    gathered.push(AppMessage {
                        subject: subject.to_owned(),
                        headers: header_pairs(answer.headers.as_ref()),
                        payload: answer.payload,
                        reply: answer.reply.map(|reply| reply.to_string()),
                    });
                }
                // "No responders": nobody subscribes to the subject.
                Ok(Some(_)) => break,
                Ok(None) | Err(_) => break,
            }
        }
        if gathered.is_empty() {
            return Err(failed(
                format!("no answer on {subject} within {}ms", timeout.as_millis()).into(),
            ));
        }
        Ok(gathered)
    }

    /// Publishes an answer on `reply`, the reply subject a message asked for: an inbox
    /// (`_INBOX.…`) only, as NATS clients make them, for a credential may publish there and
    /// nowhere else a sender could name.
    ///
    /// # Errors
    /// [`Error::Request`] for another subject, a header NATS cannot carry, or a connection
    /// that is gone.
    pub async fn publish_reply(
        &self,
        reply: &str,
        headers: &[(String, String)],
        payload: bytes::Bytes,
    ) -> Result<(), Error> {
        let failed = message_error;
        if !is_reply_inbox(reply) {
            return Err(failed(
                format!("{reply:?} is not an inbox: Shoal answers only on _INBOX.… subjects")
                    .into(),
            ));
        }
        let map = header_map(headers).map_err(failed)?;
        self.client
            .publish_with_headers(reply.to_owned(), map, payload)
            .await
            .map_err(|error| failed(error.into()))
    }

    /// The messages on message subject `subject` (wildcards allowed) of `namespace`, each
    /// to one subscriber of queue group `queue`, with subjects relative to the namespace.
    /// The stream ends when the connection does.
    ///
    /// # Errors
    /// [`Error::Request`] when the subscription cannot be made.
    pub async fn subscribe_messages(
        &self,
        namespace: &str,
        subject: &str,
        queue: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, AppMessage>, Error> {
        use futures_util::StreamExt as _;
        let prefix = names::message_subject(&self.name, namespace, "");
        let subscriber = self
            .client
            .queue_subscribe(
                names::message_subject(&self.name, namespace, subject),
                queue.to_owned(),
            )
            .await
            .map_err(|error| message_error(error.into()))?;
        Ok(subscriber
            .filter_map(move |message| {
                let subject = message.subject.strip_prefix(prefix.as_str()).map(str::to_owned);
                let headers = header_pairs(message.headers.as_ref());
                let published = subject.is_some()
                    && !is_jetstream_answer(
                        message.reply.as_deref(),
                        message.status.is_some(),
                        &headers,
                        &message.payload,
                    );
                futures_util::future::ready(match subject {
                    Some(subject) if published => Some(AppMessage {
                        subject,
                        headers,
                        payload: message.payload,
                        reply: message.reply.map(|reply| reply.to_string()),
                    }),
                    _ => {
                        tracing::debug!(subject = %message.subject, "dropped a message that JetStream answered to a chosen reply subject");
                        None
                    }
                })
            })
            .boxed())
    }

    /// Who this connection publishes events and logs as.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The lattice name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This client's connection as the server named it: its id and the client id it gave
    /// (none before the server's first greeting). A host writes it into its record, so a
    /// scheduler can tell its connection closing from any other that presents its JWT.
    pub fn connection(&self) -> Option<crate::records::HostConnection> {
        let info = self.client().server_info();
        let known = info.client_id != 0 && !info.server_id.is_empty();
        known.then_some(crate::records::HostConnection {
            server: info.server_id,
            id: info.client_id,
        })
    }

    /// The underlying NATS client, for subjects (events, forwarding).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub(crate) fn store(&self, bucket: Bucket) -> Result<&kv::Store, Error> {
        self.buckets
            .get(bucket.suffix())
            .ok_or_else(|| Error::Bucket {
                bucket: bucket.name(&self.name),
                source: "not opened".into(),
            })
    }

    fn request_error(&self, bucket: Bucket, error: impl Into<Cause>) -> Error {
        Error::Request {
            bucket: bucket.name(&self.name),
            source: error.into(),
        }
    }

    /// A compare-and-set failure: a conflict when the revision moved, else a request error.
    fn cas_error(&self, bucket: Bucket, key: &str, error: kv::UpdateError) -> Error {
        match error.kind() {
            kv::UpdateErrorKind::WrongLastRevision => self.conflict(bucket, key),
            _ => self.request_error(bucket, error),
        }
    }

    fn conflict(&self, bucket: Bucket, key: &str) -> Error {
        Error::Conflict {
            bucket: bucket.name(&self.name),
            key: key.to_owned(),
        }
    }

    /// Reads `key`; `None` when it does not exist or was deleted.
    pub async fn get<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> Result<Option<Versioned<T>>, Error> {
        let entry = self
            .store(bucket)?
            .entry(key)
            .await
            .map_err(|error| self.request_error(bucket, error))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                Ok(Some(decode(&self.name, bucket, entry)?))
            }
            _ => Ok(None),
        }
    }

    /// Reads `key` as a record people write through the API: `Some(Err(revision))` for one
    /// that does not decode or is not valid (written around the API), so a writer can
    /// replace it at that revision instead of failing on it.
    ///
    /// # Errors
    /// When the lattice does not answer.
    pub async fn get_checked<T: DeserializeOwned + crate::Validate>(
        &self,
        bucket: Bucket,
        key: &str,
    ) -> Result<Option<Result<Versioned<T>, u64>>, Error> {
        let entry = self
            .store(bucket)?
            .entry(key)
            .await
            .map_err(|error| self.request_error(bucket, error))?;
        Ok(match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let revision = entry.revision;
                Some(
                    decode::<T>(&self.name, bucket, entry)
                        .ok()
                        .filter(|record| record.value.validate().is_ok())
                        .ok_or(revision),
                )
            }
            _ => None,
        })
    }

    /// The lattice's identity; `None` for a lattice that has none yet (new, or its state
    /// gone) or one that cannot be read.
    ///
    /// # Errors
    /// When the status bucket cannot be read.
    pub async fn identity(&self) -> Result<Option<crate::records::LatticeIdentity>, Error> {
        use crate::Validate as _;
        Ok(self
            .get::<crate::records::LatticeIdentity>(Bucket::Status, names::LATTICE_IDENTITY)
            .await?
            .map(|record| record.value)
            .filter(|identity| identity.validate().is_ok()))
    }

    /// The lattice's identity, made now if it has none (by the first scheduler).
    ///
    /// # Errors
    /// When the status bucket cannot be read or written.
    pub async fn ensure_identity(&self) -> Result<crate::records::LatticeIdentity, Error> {
        loop {
            if let Some(identity) = self.identity().await? {
                return Ok(identity);
            }
            let made = crate::records::LatticeIdentity {
                id: crate::names::unguessable(),
                created_at: crate::records::now_millis(),
            };
            match self
                .create(Bucket::Status, names::LATTICE_IDENTITY, &made)
                .await
            {
                Ok(_) => {
                    tracing::info!(id = %made.id, "made the lattice's identity");
                    return Ok(made);
                }
                Err(Error::Conflict { .. }) => continue,
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes `value` at `key` whatever is there; returns the new revision.
    pub async fn put<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<u64, Error> {
        self.store(bucket)?
            .put(key, encode(value)?)
            .await
            .map_err(|error| self.request_error(bucket, error))
    }

    /// Writes `value` at `key` only if the key does not exist (or was deleted).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key exists.
    pub async fn create<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
    ) -> Result<u64, Error> {
        self.store(bucket)?
            .create(key, encode(value)?)
            .await
            .map_err(|error| match error.kind() {
                kv::CreateErrorKind::AlreadyExists => self.conflict(bucket, key),
                _ => self.request_error(bucket, error),
            })
    }

    /// Writes `value` at `key` only if the key is still at `revision`.
    ///
    /// # Errors
    /// [`Error::Conflict`] when it changed since.
    pub async fn update<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
        revision: u64,
    ) -> Result<u64, Error> {
        self.store(bucket)?
            .update(key, encode(value)?, revision)
            .await
            .map_err(|error| self.cas_error(bucket, key, error))
    }

    /// Deletes `key` (a no-op when it does not exist).
    pub async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), Error> {
        self.store(bucket)?
            .delete(key)
            .await
            .map_err(|error| self.request_error(bucket, error))
    }

    /// Deletes `key` only if it is still at `revision`.
    ///
    /// # Errors
    /// [`Error::Conflict`] when it changed since.
    pub async fn delete_at(&self, bucket: Bucket, key: &str, revision: u64) -> Result<(), Error> {
        self.store(bucket)?
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|error| self.cas_error(bucket, key, error))
    }

    /// Every live record whose key starts with `prefix` (`""` for all), by key.
    ///
    /// Keys come from the stream's subject index and values from direct gets, so listing
    /// creates no consumer: scripts may poll it as often as they like.
    pub async fn list<T: DeserializeOwned>(
        &self,
        bucket: Bucket,
        prefix: &str,
    ) -> Result<Vec<Versioned<T>>, Error> {
        let matching = self.keys(bucket, prefix).await?;
        let mut records = Vec::with_capacity(matching.len());
        for key in matching {
            match self.get(bucket, &key).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                // One unreadable record must not hide the others.
                Err(error @ Error::Decode { .. }) => {
                    tracing::warn!(error = %crate::Chain(&error), "skipping a record");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(records)
    }

    /// The keys with a value whose name starts with `prefix`, sorted (deleted keys may
    /// still be listed until the server compacts them; [`Lattice::get`] tells).
    pub async fn keys(&self, bucket: Bucket, prefix: &str) -> Result<Vec<String>, Error> {
        let store = self.store(bucket)?;
        // A prefix of whole tokens is filtered by the server: one app's keys cost what they
        // are, not what the bucket holds.
        let filter = if prefix.is_empty() || prefix.ends_with('.') {
            format!("{}{prefix}>", store.prefix)
        } else {
            format!("{}>", store.prefix)
        };
        let mut subjects = store
            .stream
            .info_with_subjects(filter)
            .await
            .map_err(|error| self.request_error(bucket, error))?;
        let mut matching = Vec::new();
        while let Some((subject, _count)) = subjects
            .try_next()
            .await
            .map_err(|error| self.request_error(bucket, error))?
        {
            if let Some(key) = subject.strip_prefix(store.prefix.as_str())
                && key.starts_with(prefix)
            {
                matching.push(key.to_owned());
            }
        }
        matching.sort();
        Ok(matching)
    }

    /// Writes `value` at `key` only if the key does not exist and nothing at all was written
    /// to the bucket after revision `fence`: a writer that planned against a view at `fence`
    /// cannot land a write after someone else changed the bucket (optimistic concurrency
    /// over the whole bucket, as Nomad applies a plan). Returns the new revision, the fence
    /// for the writer's next write.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key exists or the bucket moved past `fence`.
    pub async fn create_fenced<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
        fence: u64,
    ) -> Result<u64, Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
        self.publish_fenced(bucket, key, headers, encode(value)?, fence)
            .await
    }

    /// Writes `value` at `key` only if the key is still at `revision` and nothing was
    /// written to the bucket after `fence`; see [`Lattice::create_fenced`]. Returns the new
    /// revision.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key or the bucket moved on.
    pub async fn update_fenced<T: Serialize>(
        &self,
        bucket: Bucket,
        key: &str,
        value: &T,
        revision: u64,
        fence: u64,
    ) -> Result<u64, Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        self.publish_fenced(bucket, key, headers, encode(value)?, fence)
            .await
    }

    /// Deletes `key` only if it is still at `revision` and nothing was written to the bucket
    /// after `fence`; see [`Lattice::create_fenced`]. Returns the new revision.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key or the bucket moved on.
    pub async fn delete_fenced(
        &self,
        bucket: Bucket,
        key: &str,
        revision: u64,
        fence: u64,
    ) -> Result<u64, Error> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            revision.to_string().as_str(),
        );
        self.publish_fenced(bucket, key, headers, bytes::Bytes::new(), fence)
            .await
    }

    async fn publish_fenced(
        &self,
        bucket: Bucket,
        key: &str,
        mut headers: async_nats::HeaderMap,
        payload: bytes::Bytes,
        fence: u64,
    ) -> Result<u64, Error> {
        let store = self.store(bucket)?;
        let subject = format!(
            "{}{key}",
            store.put_prefix.as_deref().unwrap_or(&store.prefix)
        );
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SEQUENCE,
            fence.to_string().as_str(),
        );
        let published = self
            .jetstream()
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(|error| self.request_error(bucket, error))?
            .await;
        match published {
            Ok(ack) => Ok(ack.sequence),
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                Err(self.conflict(bucket, key))
            }
            Err(error) => Err(self.request_error(bucket, error)),
        }
    }

    /// Removes `key` and every earlier value of it, so nothing of it stays in the bucket.
    pub async fn purge(&self, bucket: Bucket, key: &str) -> Result<(), Error> {
        self.store(bucket)?
            .purge(key)
            .await
            .map_err(|error| self.request_error(bucket, error))
    }

    /// A live, in-memory copy of the records under `filter` (a KV key filter such as
    /// `host-1.>`, or `>` for all), kept current by a watch.
    pub async fn mirror<T>(&self, bucket: Bucket, filter: &str) -> Result<Mirror<T>, Error>
    where
        T: DeserializeOwned + crate::Validate + Clone + Send + Sync + 'static,
    {
        Mirror::start(self.clone(), bucket, filter.to_owned()).await
    }
}

/// The servers of a `--nats` value: one URL or a comma-separated list.
pub(crate) fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(|url| url.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("not a NATS URL or comma-separated list of them: {error}"))
}

/// Makes stream `stream` refuse `Nats-Rollup` headers (a key write that purges the rest of
/// the stream), if it takes them; a connection that may not change it leaves it as it is.
pub(crate) async fn refuse_rollups(context: &jetstream::Context, stream: &str) {
    let Ok(mut found) = context.get_stream(stream).await else {
        return;
    };
    let Ok(info) = found.info().await else {
        return;
    };
    if !info.config.allow_rollup {
        return;
    }
    let mut config = info.config.clone();
    config.allow_rollup = false;
    if let Err(error) = context.update_stream(config).await {
        tracing::debug!(%stream, %error, "cannot make the stream refuse rollups");
    }
}

async fn open_bucket(
    context: &jetstream::Context,
    name: &str,
    history: i64,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let failed = |reason: String| Error::Bucket {
        bucket: name.to_owned(),
        source: reason.into(),
    };
    if let Ok(store) = context.get_key_value(name).await {
        return Ok(store);
    }
    match context
        .create_key_value(kv::Config {
            bucket: name.to_owned(),
            history,
            num_replicas: replicas.max(1),
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        // Another process may have made it in the meantime.
        Err(error) => context.get_key_value(name).await.map_err(|_| {
            failed(format!(
                "{error} (on a secure lattice only schedulers may create buckets: start one first)"
            ))
        }),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<bytes::Bytes, Error> {
    serde_json::to_vec(value)
        .map(bytes::Bytes::from)
        .map_err(|error| Error::Request {
            bucket: String::new(),
            source: format!("cannot encode a record: {error}").into(),
        })
}

pub(crate) fn decode<T: DeserializeOwned>(
    lattice: &str,
    bucket: Bucket,
    entry: kv::Entry,
) -> Result<Versioned<T>, Error> {
    let value = serde_json::from_slice(&entry.value).map_err(|error| Error::Decode {
        bucket: bucket.name(lattice),
        key: entry.key.clone(),
        source: error.into(),
    })?;
    Ok(Versioned {
        key: entry.key,
        revision: entry.revision,
        value,
    })
}
