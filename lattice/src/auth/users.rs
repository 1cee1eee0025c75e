//! Minting user JWTs: people, hosts, schedulers and the short-lived store credentials the
//! scheduler signs for a replica's key-value stores.

use std::fmt;

use nkeys::KeyPair;

use super::*;
use crate::records::Trigger;

/// A user JWT for `identity` in `lattice`, signed by `account`; `None` permissions means
/// everything (the system account's user). nats-server stops admitting it at `expires`
/// (seconds since the epoch) when given.
pub fn user_jwt(
    account: &KeyPair,
    user: &str,
    name: &str,
    permissions: Option<&Permissions>,
    tags: Vec<String>,
    issued_at: u64,
    expires: Option<u64>,
) -> Result<String, AuthError> {
    // No identity gets a `resp` (allow-responses) permission: nats-server lets a responder
    // answer on any reply subject it was sent, past every allow and deny list (a host
    // answering its own request with reply subject `$KV.…` wrote any record). Answers are
    // plain publishes to the requester's inbox, which the allow lists name.
    let (publish, subscribe, allowed_connection_types) = match permissions {
        Some(permissions) => (
            SubjectList::only(&permissions.publish, &permissions.publish_deny),
            SubjectList::only(&permissions.subscribe, &permissions.subscribe_deny),
            permissions.connection_types.clone(),
        ),
        None => (SubjectList::default(), SubjectList::default(), Vec::new()),
    };
    sign_until(
        account,
        user,
        name,
        issued_at,
        expires,
        UserNats {
            publish,
            subscribe,
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

/// What one replica of app `namespace/app` reaches beyond its host: the key-value `stores`
/// and the message subjects it may `publish` to (its spec's, relative to its namespace).
#[derive(Debug, Clone, Copy)]
pub struct AppGrants<'a> {
    /// The app's namespace.
    pub namespace: &'a str,
    /// The app.
    pub app: &'a str,
    /// Its key-value stores' names.
    pub stores: &'a [String],
    /// The message subjects it may publish to.
    pub publish: &'a [String],
    /// Its triggers: core NATS ones it subscribes to, JetStream ones whose consumers it
    /// reads and acknowledges (and whose dead-letter subjects it publishes to).
    pub triggers: &'a [crate::records::Trigger],
}

/// The subjects a host's store credential for app `namespace/app` may publish: for each of
/// `stores`, its bucket's info (opening it, listing keys) and the guests' keys in it
/// (direct gets and writes under `=kv`), as a client sends them; the message subjects the
/// app may publish to; for each JetStream trigger, its consumer's info, next messages and
/// acknowledgements and its dead-letter subject; and, to subscribe to, the subjects of its
/// core NATS triggers.
pub(super) fn store_permissions(lattice: &str, host: &str, grants: AppGrants<'_>) -> Permissions {
    let AppGrants {
        namespace,
        app,
        stores,
        publish: subjects,
        triggers,
    } = grants;
    let mut publish: Vec<String> = subjects
        .iter()
        .map(|subject| crate::names::message_subject(lattice, namespace, subject))
        .collect();
    for store in stores {
        let bucket = crate::appkv::bucket_name(lattice, namespace, app, store);
        let keys = format!("$KV.{bucket}.{}.>", crate::appkv::KEY_PREFIX);
        publish.extend([
            format!("$JS.API.STREAM.INFO.KV_{bucket}"),
            format!("$JS.API.DIRECT.GET.KV_{bucket}.{keys}"),
            keys,
        ]);
    }
    for trigger in triggers {
        if let Some((stream, durable)) =
            crate::streams::trigger_consumer(lattice, namespace, app, trigger)
        {
            publish.extend([
                format!("$JS.API.CONSUMER.INFO.{stream}.{durable}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
                format!("$JS.ACK.{stream}.{durable}.>"),
            ]);
        }
        if let Some(dead_letter) = &trigger.dead_letter {
            publish.push(crate::names::message_subject(
                lattice,
                namespace,
                dead_letter,
            ));
        }
    }
    // Answers to the requests among its core NATS triggers' messages go to the askers'
    // inboxes: people's and apps' (the host answers on those only). Not a `responses`
    // permission, which would let it publish to whatever reply subject a sender named (a
    // bucket's key too), nor hosts' or schedulers' inboxes.
    if triggers
        .iter()
        .any(|trigger| trigger.core_subject().is_some())
    {
        publish.extend(crate::store::ASKER_INBOXES.map(str::to_owned));
    }
    // Replies on an inbox of its own, not the host's: whoever holds the credential (a
    // host that no longer runs the app, one that lied about its id) hears nothing of the
    // host's other traffic.
    let inbox = inbox_prefix("stores", &format!("{host}.{}", crate::names::unguessable()));
    // Its triggers' subjects in its app's queue group only: a plain subscription would
    // hear every message, one in another group would take some from the app.
    let queue = crate::names::trigger_queue(namespace, app);
    let mut subscribe = vec![format!("{inbox}.>")];
    subscribe.extend(
        triggers
            .iter()
            .filter_map(Trigger::core_subject)
            .map(|subject| {
                format!(
                    "{} {queue}",
                    crate::names::message_subject(lattice, namespace, subject)
                )
            }),
    );
    Permissions {
        publish,
        publish_deny: Vec::new(),
        subscribe,
        subscribe_deny: Vec::new(),
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

/// A credential that lets `host` reach what app `namespace/app`'s replicas are granted
/// (`grants`: key-value stores, message subjects to publish to) and nothing else, until
/// `expires_at` (seconds): a user of the clients' account (`clients_account`),
/// signed by `signer`, one of that account's signing keys, which schedulers hold. A host's
/// own credential reaches no app's store: the scheduler gives it one of these, sealed in
/// each assignment of an app with stores, and renews it before it expires.
///
/// # Errors
/// When the JWT cannot be signed.
pub fn store_credential(
    signer: &StoreSigner,
    clients_account: &str,
    lattice: &str,
    host: &str,
    grants: AppGrants<'_>,
    issued_at: u64,
    expires_at: u64,
) -> Result<String, AuthError> {
    let user = KeyPair::new_user();
    let (namespace, app) = (grants.namespace, grants.app);
    let permissions = store_permissions(lattice, host, grants);
    let jwt = sign_until(
        &signer.0,
        &user.public_key(),
        &format!("{host}/{namespace}/{app}"),
        issued_at,
        Some(expires_at),
        UserNats {
            publish: SubjectList::only(&permissions.publish, &permissions.publish_deny),
            subscribe: SubjectList::only(&permissions.subscribe, &permissions.subscribe_deny),
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
pub(super) const CLIENTS_TAG: &str = "shoal-clients:";

/// The tags of `identity`'s JWT: what it is, and for a scheduler the clients' account
/// (NATS tools lowercase tags; a public key reads back uppercased).
pub(super) fn jwt_tags(identity: &Identity, clients_account: Option<&str>) -> Vec<String> {
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
        None,
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
    let (publish, subscribe) = (
        SubjectList::only(&wanted.publish, &wanted.publish_deny),
        SubjectList::only(&wanted.subscribe, &wanted.subscribe_deny),
    );
    let nats = &claims.nats;
    claims.name == identity.name()
        && claims.iss == issuer
        && nats.resp.is_none()
        && (&nats.publish.allow, &nats.publish.deny) == (&publish.allow, &publish.deny)
        && (&nats.subscribe.allow, &nats.subscribe.deny) == (&subscribe.allow, &subscribe.deny)
        && nats.tags == jwt_tags(identity, clients_account)
        && nats.allowed_connection_types == wanted.connection_types
}
