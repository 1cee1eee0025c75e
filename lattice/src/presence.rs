//! Hosts' connections as nats-server sees them open and close: the connect and disconnect
//! advisories it publishes in its system account for a secure lattice's clients' account.
//!
//! A host process that dies (killed, crashed) has its socket closed by the kernel at once,
//! and nats-server says so; waiting for its heartbeats to stop would take the host timeout
//! (seconds, long enough to ride out a slow link). A host frozen or cut off keeps its
//! connection open as far as the server knows, so it is still found by its heartbeats.
//!
//! Only what nats-server verified is believed: the user JWT the connection presented (which
//! the advisory carries; its signature is checked again here, by the clients' account),
//! never the connection name a client chose for itself. And a JWT is public: anyone may
//! present a host's on a connection of their own (which then fails, or is a second process
//! with the host's credential), so a close counts only for the connection the host itself
//! wrote into its record ([`crate::records::HostConnection`]).
//! Hosts behind a leaf nats-server connect to that server, whose advisories stay at the
//! site: a site's link going down is not a host's connection closing.

use serde::Deserialize;

use crate::auth::Permissions;
use crate::records::HostConnection;

/// The subjects nats-server publishes `account`'s connect and disconnect advisories on.
pub fn advisory_subjects(account: &str) -> [String; 2] {
    [
        format!("$SYS.ACCOUNT.{account}.CONNECT"),
        format!("$SYS.ACCOUNT.{account}.DISCONNECT"),
    ]
}

/// What a presence credential (a user of the system account, held by schedulers) may do:
/// hear the clients' account's connect and disconnect advisories, nothing more. The system
/// account's own user may push account updates: a scheduler must not hold that.
pub fn presence_permissions(clients_account: &str) -> Permissions {
    Permissions {
        publish: Vec::new(),
        // An empty allow list lets everything through: nothing may be published.
        publish_deny: vec![">".to_owned()],
        subscribe: advisory_subjects(clients_account).to_vec(),
        // A plain client connection only (not a leaf node, websocket or MQTT one).
        subscribe_deny: Vec::new(),
        connection_types: vec!["STANDARD".to_owned()],
    }
}

/// One connection of a host opened or closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    /// The host, as its credential names it.
    pub host: String,
    /// Which connection (ids are per server).
    pub connection: HostConnection,
    /// Opened, or closed.
    pub opened: bool,
}

#[derive(Deserialize)]
struct Advisory {
    #[serde(rename = "type")]
    kind: String,
    server: ServerInfo,
    client: ClientInfo,
}

#[derive(Deserialize)]
struct ServerInfo {
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
struct ClientInfo {
    #[serde(default)]
    id: u64,
    #[serde(default)]
    acc: String,
    /// The user JWT the connection presented.
    #[serde(default)]
    jwt: String,
}

impl ConnectionEvent {
    /// Reads an advisory of `account` (a JSON body nats-server published); `None` for
    /// anything else: another kind of advisory, another account, a connection that did not
    /// present a host's credential.
    pub fn from_advisory(account: &str, payload: &[u8]) -> Option<Self> {
        let advisory: Advisory = serde_json::from_slice(payload).ok()?;
        let opened = match advisory.kind.as_str() {
            "io.nats.server.advisory.v1.client_connect" => true,
            "io.nats.server.advisory.v1.client_disconnect" => false,
            _ => return None,
        };
        let client = advisory.client;
        if client.acc != account {
            return None;
        }
        let holder = crate::auth::jwt_holder(&client.jwt).ok()?;
        if holder.kind != "host" || holder.issuer != account {
            return None;
        }
        crate::names::check_host_id(&holder.name).ok()?;
        Some(Self {
            host: holder.name,
            connection: HostConnection {
                server: advisory.server.id,
                id: client.id,
            },
            opened,
        })
    }
}

#[cfg(test)]
mod tests {
    use nkeys::KeyPair;

    use super::*;

    /// An advisory of `kind` in `account` for a connection presenting a JWT named `name`
    /// with `tags`, signed by `signer`.
    fn advisory(kind: &str, account: &str, signer: &KeyPair, name: &str, tags: &[&str]) -> Vec<u8> {
        let user = KeyPair::new_user();
        let tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        let jwt =
            crate::auth::user_jwt(signer, &user.public_key(), name, None, tags, 1, None).unwrap();
        serde_json::to_vec(&serde_json::json!({
            "type": format!("io.nats.server.advisory.v1.client_{kind}"),
            "id": "x",
            "timestamp": "2026-12-07T06:40:00Z",
            "server": {"name": "n1", "id": "NABC"},
            "client": {
                "id": 7, "acc": account, "user": user.public_key(),
                "name": "host h2 (chosen by the client)", "name_tag": "dev-clients",
                "tags": ["shoal-kind:host"], "jwt": jwt, "kind": "Client"
            },
            "reason": "Client Closed"
        }))
        .unwrap()
    }

    #[test]
    fn a_host_s_connection_is_read_from_the_credential_it_presented() {
        let clients = KeyPair::new_account();
        let account = clients.public_key();
        let closed = ConnectionEvent::from_advisory(
            &account,
            &advisory("disconnect", &account, &clients, "h1", &["shoal-kind:host"]),
        );
        assert_eq!(
            closed,
            Some(ConnectionEvent {
                host: "h1".to_owned(),
                connection: HostConnection {
                    server: "NABC".to_owned(),
                    id: 7,
                },
                opened: false,
            })
        );
        let opened = ConnectionEvent::from_advisory(
            &account,
            &advisory("connect", &account, &clients, "h1", &["shoal-kind:host"]),
        );
        assert!(opened.is_some_and(|event| event.opened));
    }

    #[test]
    fn anything_but_a_host_credential_of_the_account_is_ignored() {
        let clients = KeyPair::new_account();
        let account = clients.public_key();
        let stranger = KeyPair::new_account();
        for (payload, why) in [
            (
                advisory(
                    "disconnect",
                    &account,
                    &clients,
                    "alice",
                    &["shoal-kind:user"],
                ),
                "a user",
            ),
            (
                advisory(
                    "disconnect",
                    &account,
                    &stranger,
                    "h1",
                    &["shoal-kind:host"],
                ),
                "signed by another account",
            ),
            (
                advisory("disconnect", "AOTHER", &clients, "h1", &["shoal-kind:host"]),
                "another account's advisory",
            ),
            (
                advisory("auth_error", &account, &clients, "h1", &["shoal-kind:host"]),
                "another advisory",
            ),
            (
                advisory(
                    "disconnect",
                    &account,
                    &clients,
                    "H 1",
                    &["shoal-kind:host"],
                ),
                "not a host id",
            ),
            (b"not json".to_vec(), "not an advisory"),
        ] {
            assert_eq!(
                ConnectionEvent::from_advisory(&account, &payload),
                None,
                "{why}"
            );
        }
    }
}
