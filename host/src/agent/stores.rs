//! What one replica reaches beyond its host: the key-value stores its app grants
//! (`spec.keyValue`), opened once and kept for the replica's life (opening reads the
//! bucket's configuration: one round trip, not one per request), and the message subjects
//! it may publish to (`spec.publish`).
//!
//! On a secure lattice the host's own connection reaches no app's store or subject: the
//! assignment carries a credential for this app's grants only (sealed to the host's key),
//! presented by a connection of their own. The control plane renews it before it expires;
//! the newest one is used for the next connection.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use shoal_lattice::Lattice;
use shoal_lattice::appkv::AppStore;

use super::ingress::Uplink;
use crate::keyvalue::{OpenError, Stores};
use crate::messaging::PublishError;

/// What one replica's guests reach beyond their host: the stores they may open and the
/// subjects they may publish to (and its triggers subscribe to).
pub(crate) struct AppStores {
    pub(crate) namespace: String,
    pub(crate) app: String,
    pub(crate) granted: Vec<String>,
    /// The message subjects (patterns, relative to the namespace) it may publish to.
    pub(crate) publish: Vec<String>,
    pub(crate) uplink: Uplink,
    /// The store credential the assignment carries, opened (`None`: the host's own
    /// connection reaches the stores, as on an open lattice), or why it did not open.
    pub(crate) access: std::sync::Mutex<Access>,
    pub(crate) opened: tokio::sync::Mutex<Opened>,
}

/// How a replica reaches its app's stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Access {
    /// With the host's own connection (an open lattice).
    Host,
    /// With this credential (a `.creds` text).
    Credential(String),
    /// Not at all: the assignment's credential did not open (why).
    Refused(String),
}

/// The connection the stores were opened on and the stores opened so far.
#[derive(Default)]
pub(crate) struct Opened {
    /// The credential and its connection, when one is used.
    connection: Option<(String, Lattice)>,
    stores: HashMap<String, AppStore>,
}

impl AppStores {
    /// Uses `access` from the next store opened on (a renewed credential).
    pub(crate) fn set_access(&self, access: Access) {
        if let Ok(mut current) = self.access.lock() {
            *current = access;
        }
    }

    /// How the replica reaches its grants now (a renewed credential changes it).
    pub(crate) fn access(&self) -> Access {
        self.access
            .lock()
            .map(|access| access.clone())
            .unwrap_or(Access::Refused("the store access is unreadable".to_owned()))
    }

    /// A connection of its own, presenting what the replica's grants are reached with now
    /// (for its triggers: a connection that fails takes nothing else with it).
    pub(crate) async fn own_connection(&self, name: &str) -> Result<Lattice, OpenError> {
        let host = self
            .uplink
            .lattice()
            .cloned()
            .ok_or_else(|| OpenError::Other("the lattice is unreachable".to_owned()))?;
        let connected = match self.access() {
            Access::Host => host.connect_again(name).await,
            Access::Credential(creds) => host.connect_with(creds, name).await,
            Access::Refused(why) => return Err(OpenError::Other(why)),
        };
        connected.map_err(|error| OpenError::Other(shoal_lattice::Chain(&error).to_string()))
    }

    /// The connection to open stores on, made (and the stores opened on an older one
    /// forgotten) when the credential changed.
    async fn connection(&self, opened: &mut Opened) -> Result<Lattice, OpenError> {
        let access = self.access();
        let offline = || {
            OpenError::Other(
                "the lattice is unreachable: key-value stores are not available while the host is offline"
                    .to_owned(),
            )
        };
        match access {
            Access::Host => self.uplink.lattice().cloned().ok_or_else(offline),
            Access::Refused(why) => Err(OpenError::Other(why)),
            Access::Credential(creds) => {
                if let Some((current, lattice)) = &opened.connection
                    && *current == creds
                {
                    return Ok(lattice.clone());
                }
                let host = self.uplink.lattice().ok_or_else(offline)?;
                let lattice = host
                    .connect_with(
                        creds.clone(),
                        &format!("stores of {}/{}", self.namespace, self.app),
                    )
                    .await
                    .map_err(|error| {
                        OpenError::Other(format!(
                            "cannot reach the app's key-value stores: {}",
                            shoal_lattice::Chain(&error)
                        ))
                    })?;
                opened.stores.clear();
                opened.connection = Some((creds, lattice.clone()));
                Ok(lattice)
            }
        }
    }
}

impl AppStores {
    /// Waits until nats-server has every message the replica's guests published so far:
    /// a triggering message is acknowledged only after what its handler sent is out (a
    /// host killed between the two would otherwise lose what the handler sent, though the
    /// message counted as handled).
    ///
    /// # Errors
    /// When the connection is gone.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        let lattice = match self.access() {
            Access::Host => self.uplink.lattice().cloned(),
            Access::Credential(_) => self
                .opened
                .lock()
                .await
                .connection
                .as_ref()
                .map(|(_, lattice)| lattice.clone()),
            Access::Refused(_) => None,
        };
        match lattice {
            Some(lattice) => lattice
                .flush()
                .await
                .map_err(|error| shoal_lattice::Chain(&error).to_string()),
            None => Ok(()),
        }
    }
}

impl Stores for AppStores {
    fn open<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<AppStore, OpenError>> + Send + 'a>> {
        Box::pin(async move {
            if !self.granted.iter().any(|granted| granted == name) {
                return Err(OpenError::AccessDenied);
            }
            let mut opened = self.opened.lock().await;
            let lattice = self.connection(&mut opened).await?;
            if let Some(store) = opened.stores.get(name) {
                return Ok(store.clone());
            }
            let store = lattice
                .open_app_store(&self.namespace, &self.app, name)
                .await
                .map_err(|error| OpenError::Other(error.to_string()))?;
            opened.stores.insert(name.to_owned(), store.clone());
            Ok(store)
        })
    }
}

impl AppStores {
    /// The connection a guest's message on `topic` goes out on, if the app grants the topic.
    async fn publishing_on(&self, topic: &str) -> Result<Lattice, PublishError> {
        if !self
            .publish
            .iter()
            .any(|pattern| shoal_lattice::names::subject_matches(pattern, topic))
        {
            return Err(PublishError::PermissionDenied(format!(
                "{topic} is not among the subjects the app may publish to (spec.publish)"
            )));
        }
        self.messaging_connection(topic).await
    }

    /// The connection the replica's messages go out on; `subject` names what is sent, for
    /// the error.
    async fn messaging_connection(&self, subject: &str) -> Result<Lattice, PublishError> {
        let mut opened = self.opened.lock().await;
        self.connection(&mut opened)
            .await
            .map_err(|error| match error {
                OpenError::AccessDenied => PublishError::PermissionDenied(subject.to_owned()),
                OpenError::Other(why) => PublishError::Connection(why),
            })
    }
}

impl crate::messaging::Publisher for AppStores {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>> {
        Box::pin(async move {
            self.publishing_on(topic)
                .await?
                .publish_message(&self.namespace, topic, &headers, payload.into())
                .await
                .map_err(|error| PublishError::Connection(shoal_lattice::Chain(&error).to_string()))
        })
    }

    fn request<'a>(
        &'a self,
        topic: &'a str,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
        timeout: std::time::Duration,
        replies: usize,
    ) -> Pin<
        Box<dyn Future<Output = Result<Vec<crate::messaging::Answer>, PublishError>> + Send + 'a>,
    > {
        Box::pin(async move {
            let answers = self
                .publishing_on(topic)
                .await?
                .request_message(
                    &self.namespace,
                    topic,
                    &headers,
                    payload.into(),
                    timeout,
                    replies,
                )
                .await
                .map_err(|error| PublishError::Timeout(shoal_lattice::Chain(&error).to_string()))?;
            Ok(answers
                .into_iter()
                .map(|answer| (answer.subject, answer.headers, answer.payload.to_vec()))
                .collect())
        })
    }
}

/// A trigger's connection answers the messages that arrived on it.
impl crate::messaging::Replier for Lattice {
    fn reply<'a>(
        &'a self,
        subject: &'a str,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>> {
        Box::pin(async move {
            if !shoal_lattice::store::is_reply_inbox(subject) {
                return Err(PublishError::PermissionDenied(format!(
                    "the message's reply subject {subject:?} is not an inbox (_INBOX.…): Shoal answers there only"
                )));
            }
            self.publish_reply(subject, &headers, payload.into())
                .await
                .map_err(|error| PublishError::Connection(shoal_lattice::Chain(&error).to_string()))
        })
    }
}

/// How a replica of `assignment` reaches its stores, with this host's secrets key.
pub(crate) fn access_of(
    assignment: &shoal_lattice::records::Assignment,
    key: &shoal_lattice::secrets::XKey,
) -> Access {
    let Some(sealed) = &assignment.store_access else {
        return Access::Host;
    };
    let opened = sealed.open(key).map_err(|error| error.to_string());
    match opened.as_ref().map(|values| {
        values
            .values()
            .get(shoal_lattice::records::STORE_CREDENTIAL)
            .cloned()
    }) {
        Ok(Some(creds)) => Access::Credential(creds),
        Ok(None) => Access::Refused("the assignment's store credential is empty".to_owned()),
        Err(why) => Access::Refused(format!(
            "the assignment's store credential does not open with this host's key: {why}"
        )),
    }
}
