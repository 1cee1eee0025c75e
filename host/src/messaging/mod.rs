//! `wasi:messaging@0.2.0-draft` for guests: `types` and `producer`, so a component built
//! with that WIT's bindings publishes messages, to the subjects its app grants
//! (`spec.publish`, relative to the app's namespace) and no others: any other topic is
//! `permission-denied`; `request-reply`, requests on those subjects (their answers come to
//! the replica's inbox) and answers to the messages that asked for one (on the asker's
//! inbox, `_INBOX.…`, only); and the `incoming-handler` export, which the messages of its
//! app's triggers are handed to (`spec.triggers`, see `agent::triggers`). The WIT is
//! upstream's, in `host/wit-messaging`. wasmCloud's own messaging interface is in
//! [`wasmcloud`].
//!
//! A message's metadata and content type travel as NATS headers. Clients are handles on
//! the replica's one connection: `connect` takes any name and opens nothing.

mod wasmcloud;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

/// The most bytes one message carries (NATS's default maximum payload).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The most metadata entries one message carries.
pub const MAX_METADATA: usize = 64;

/// The longest metadata value one message carries.
pub const MAX_METADATA_VALUE: usize = 4096;

/// Whether `metadata` may travel as NATS headers: names of letters, digits, `-`, `_` and
/// `.`, none NATS's own (`Nats-…`, which tell nats-server and JetStream what to do with a
/// message), values of printable text up to [`MAX_METADATA_VALUE`] bytes.
fn check_metadata(metadata: &[(String, String)]) -> Result<(), String> {
    if metadata.len() > MAX_METADATA {
        return Err(format!(
            "a message carries at most {MAX_METADATA} metadata entries"
        ));
    }
    for (name, value) in metadata {
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte))
            && !name.to_ascii_lowercase().starts_with("nats-");
        if !valid_name {
            return Err(format!(
                "{name:?} is not a metadata name (letters, digits, -, _ and ., not Nats-…)"
            ));
        }
        if value.len() > MAX_METADATA_VALUE || value.chars().any(char::is_control) {
            return Err(format!(
                "the value of {name} is not printable text of at most {MAX_METADATA_VALUE} bytes"
            ));
        }
    }
    Ok(())
}

/// Why a message was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The app does not grant the topic.
    PermissionDenied(String),
    /// The lattice cannot be reached, or refused it.
    Connection(String),
    /// No answer came in time.
    Timeout(String),
}

/// An answer a request gathered: its subject, headers and payload.
pub type Answer = (String, Vec<(String, String)>, Vec<u8>);

/// How long a request waits when its options name no timeout.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The most answers one request gathers.
pub const MAX_REPLIES: u32 = 64;

/// Where one replica's guests publish.
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `payload` with `headers` on `topic` (relative to the app's namespace), if
    /// the app grants it.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>>;

    /// Sends `payload` with `headers` on `topic` (relative to the app's namespace) as a
    /// request, if the app grants the topic, and gathers up to `replies` answers within
    /// `timeout`.
    fn request<'a>(
        &'a self,
        topic: &'a str,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
        timeout: std::time::Duration,
        replies: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Answer>, PublishError>> + Send + 'a>>;
}

/// Where the answers to one incoming message go: the connection it arrived on.
pub trait Replier: Send + Sync + 'static {
    /// Publishes an answer on `subject`, the message's reply subject.
    fn reply<'a>(
        &'a self,
        subject: &'a str,
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>>;
}

/// The reply subject of an incoming message and the connection to answer on.
#[derive(Clone)]
pub struct ReplyTo {
    subject: String,
    via: Arc<dyn Replier>,
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo({})", self.subject)
    }
}

/// A request's options, as a guest sets them.
#[derive(Debug, Default)]
pub struct RequestOptions {
    timeout: Option<std::time::Duration>,
    replies: Option<u32>,
}

/// A shared [`Publisher`] in a replica's options.
#[derive(Clone)]
pub struct PublisherLink(pub Arc<dyn Publisher>);

impl std::fmt::Debug for PublisherLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PublisherLink")
    }
}

/// A guest's client: a handle, nothing open.
pub struct MessagingClient;

/// A message a guest builds, or one it is handed.
#[derive(Debug, Default)]
pub struct Message {
    /// The subject it came on (relative to the app's namespace); none for one a guest built.
    topic: Option<String>,
    data: Vec<u8>,
    content_type: Option<String>,
    metadata: Vec<(String, String)>,
    /// Where its answers go, when its sender asked for them.
    reply: Option<ReplyTo>,
}

impl Message {
    /// A message that arrived on `topic` (relative to the app's namespace) with `headers`
    /// (a `content-type` header is its content type, the rest its metadata).
    pub fn incoming(topic: String, headers: Vec<(String, String)>, data: Vec<u8>) -> Self {
        let mut content_type = None;
        let mut metadata = Vec::new();
        for (name, value) in headers {
            if name.eq_ignore_ascii_case("content-type") && content_type.is_none() {
                content_type = Some(value);
            } else {
                metadata.push((name, value));
            }
        }
        Self {
            topic: Some(topic),
            data,
            content_type,
            metadata,
            reply: None,
        }
    }

    /// A message a guest sends with `data` and nothing else (wasmCloud's carry no metadata).
    fn outgoing(data: Vec<u8>) -> Self {
        Self {
            data,
            ..Self::default()
        }
    }

    /// The same message, answered on `subject` through `via` (the connection it came on).
    pub fn replying_to(self, subject: String, via: Arc<dyn Replier>) -> Self {
        Self {
            reply: Some(ReplyTo { subject, via }),
            ..self
        }
    }

    /// Checks what a guest built before it is sent: its size and metadata.
    fn check(&self) -> Result<(), Error> {
        if self.data.len() > MAX_MESSAGE_BYTES {
            return Err(Error::Other(format!(
                "a message carries at most {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        check_metadata(&self.headers()).map_err(Error::Other)
    }

    /// The NATS headers that carry its metadata and content type.
    fn headers(&self) -> Vec<(String, String)> {
        let mut headers = self.metadata.clone();
        if let Some(content_type) = &self.content_type {
            headers.push(("content-type".to_owned(), content_type.clone()));
        }
        headers
    }
}

/// What the bindings reach in a store's data.
pub struct MessagingView<'a> {
    table: &'a mut ResourceTable,
    publisher: Option<&'a PublisherLink>,
    /// The reply subject of the wasmCloud message being handled, the one inbox its
    /// component may publish to (wasmCloud's way of answering).
    answering: &'a mut Option<ReplyTo>,
}

impl<'a> MessagingView<'a> {
    /// A view of `table`, the replica's `publisher` and the message being `answering`.
    pub fn new(
        table: &'a mut ResourceTable,
        publisher: Option<&'a PublisherLink>,
        answering: &'a mut Option<ReplyTo>,
    ) -> Self {
        Self {
            table,
            publisher,
            answering,
        }
    }
}

impl<'a> MessagingView<'a> {
    /// The publisher a guest's `message` on `topic` goes out through, once the topic is a
    /// message subject, the message fits, and the app may publish at all (the publisher
    /// checks the topic against the app's grants).
    fn sender(&self, topic: &str, message: &Message) -> Result<&'a PublisherLink, Error> {
        if !shoal_lattice::names::is_message_subject(topic, false) {
            return Err(Error::Other(format!(
                "{topic:?} is not a message subject (dot-separated tokens of letters, digits, - and _)"
            )));
        }
        message.check()?;
        self.publisher.ok_or_else(|| {
            Error::PermissionDenied(format!(
                "the app may publish to no subject (spec.publish): not {topic}"
            ))
        })
    }
}

impl MessagingView<'_> {
    /// Hands `message` to the guest: the resource its handler is called with.
    ///
    /// # Errors
    /// When the guest's resource table is full.
    pub fn push(&mut self, message: Message) -> wasmtime::Result<Resource<Message>> {
        Ok(self.table.push(message)?)
    }
}

struct HasMessagingView;

impl HasData for HasMessagingView {
    type Data<'a> = MessagingView<'a>;
}

/// Something that holds a replica's publisher and a resource table.
pub trait HasMessaging {
    /// The view the bindings use.
    fn messaging(&mut self) -> MessagingView<'_>;
}

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit-messaging",
        world: "wasi:messaging/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:messaging/types.client": super::MessagingClient,
            "wasi:messaging/types.message": super::Message,
            "wasi:messaging/request-reply.request-options": super::RequestOptions,
        },
    });
}

/// The `wasi:messaging/incoming-handler` export, as a component linked ahead of its
/// instances exports it.
pub mod handler {
    wasmtime::component::bindgen!({
        path: "wit-messaging",
        world: "wasi:messaging/handler",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "wasi:messaging/types": super::bindings::wasi::messaging::types },
    });
}

/// A component's message handler, linked ahead of its instances: `wasi:messaging`'s
/// `incoming-handler` or wasmCloud's `handler`.
pub enum MessageHandlerPre<T: 'static> {
    /// `wasi:messaging/incoming-handler@0.2.0-draft`.
    Wasi(handler::HandlerPre<T>),
    /// `wasmcloud:messaging/handler@0.2.0`.
    WasmCloud(wasmcloud::HandlerWorldPre<T>),
}

impl<T: HasMessaging + Send + 'static> MessageHandlerPre<T> {
    /// The handler `pre` exports, if any (`wasi:messaging`'s first).
    pub fn new(pre: &wasmtime::component::InstancePre<T>) -> Option<Self> {
        if let Ok(wasi) = handler::HandlerPre::new(pre.clone()) {
            return Some(Self::Wasi(wasi));
        }
        wasmcloud::HandlerWorldPre::new(pre.clone())
            .ok()
            .map(Self::WasmCloud)
    }

    /// Instantiates the component in `store` and hands it `message`: `Ok(Err(why))` when
    /// the handler answered an error.
    ///
    /// # Errors
    /// A trap, or an instance that could not be made.
    pub async fn handle(
        &self,
        store: &mut wasmtime::Store<T>,
        message: Message,
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::Wasi(pre) => {
                let handler = pre.instantiate_async(&mut *store).await?;
                let message = store.data_mut().messaging().push(message)?;
                Ok(handler
                    .wasi_messaging_incoming_handler()
                    .call_handle(&mut *store, message)
                    .await?
                    .map_err(|error| format!("{error:?}")))
            }
            Self::WasmCloud(pre) => {
                let handler = pre.instantiate_async(&mut *store).await?;
                let reply_to = message.reply.as_ref().map(|reply| reply.subject.clone());
                *store.data_mut().messaging().answering = message.reply;
                let message = wasmcloud::BrokerMessage {
                    subject: message.topic.unwrap_or_default(),
                    body: message.data,
                    reply_to,
                };
                handler
                    .wasmcloud_messaging_handler()
                    .call_handle_message(&mut *store, &message)
                    .await
            }
        }
    }
}

/// Whether the component `pre` links exports a message handler Shoal can hand messages to.
pub fn handles_messages<T: HasMessaging + Send + 'static>(
    pre: &wasmtime::component::InstancePre<T>,
) -> bool {
    MessageHandlerPre::new(pre).is_some()
}

use bindings::wasi::messaging::{producer, request_reply, types};
use types::Error;

fn resource_error(error: wasmtime::component::ResourceTableError) -> Error {
    Error::Other(error.to_string())
}

impl types::Host for MessagingView<'_> {}

impl types::HostClient for MessagingView<'_> {
    async fn connect(
        &mut self,
        _name: String,
    ) -> wasmtime::Result<Result<Resource<MessagingClient>, Error>> {
        Ok(self.table.push(MessagingClient).map_err(resource_error))
    }

    async fn disconnect(
        &mut self,
        _client: Resource<MessagingClient>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok(Ok(()))
    }

    async fn drop(&mut self, client: Resource<MessagingClient>) -> wasmtime::Result<()> {
        self.table.delete(client)?;
        Ok(())
    }
}

impl types::HostMessage for MessagingView<'_> {
    async fn new(&mut self, data: Vec<u8>) -> wasmtime::Result<Resource<Message>> {
        Ok(self.table.push(Message::outgoing(data))?)
    }

    async fn topic(&mut self, message: Resource<Message>) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&message)?.topic.clone())
    }

    async fn content_type(
        &mut self,
        message: Resource<Message>,
    ) -> wasmtime::Result<Option<String>> {
        Ok(self.table.get(&message)?.content_type.clone())
    }

    async fn set_content_type(
        &mut self,
        message: Resource<Message>,
        content_type: String,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&message)?.content_type = Some(content_type);
        Ok(())
    }

    async fn data(&mut self, message: Resource<Message>) -> wasmtime::Result<Vec<u8>> {
        Ok(self.table.get(&message)?.data.clone())
    }

    async fn set_data(
        &mut self,
        message: Resource<Message>,
        data: Vec<u8>,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&message)?.data = data;
        Ok(())
    }

    async fn metadata(
        &mut self,
        message: Resource<Message>,
    ) -> wasmtime::Result<Option<types::Metadata>> {
        let metadata = &self.table.get(&message)?.metadata;
        Ok((!metadata.is_empty()).then(|| metadata.clone()))
    }

    async fn add_metadata(
        &mut self,
        message: Resource<Message>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        let metadata = &mut self.table.get_mut(&message)?.metadata;
        // Past the bound, entries are not kept: `send` would refuse the message anyway.
        if metadata.len() <= MAX_METADATA {
            metadata.push((key, value));
        }
        Ok(())
    }

    async fn set_metadata(
        &mut self,
        message: Resource<Message>,
        metadata: types::Metadata,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&message)?.metadata = metadata;
        Ok(())
    }

    async fn remove_metadata(
        &mut self,
        message: Resource<Message>,
        key: String,
    ) -> wasmtime::Result<()> {
        self.table
            .get_mut(&message)?
            .metadata
            .retain(|(name, _)| *name != key);
        Ok(())
    }

    async fn drop(&mut self, message: Resource<Message>) -> wasmtime::Result<()> {
        self.table.delete(message)?;
        Ok(())
    }
}

impl producer::Host for MessagingView<'_> {
    async fn send(
        &mut self,
        _client: Resource<MessagingClient>,
        topic: String,
        message: Resource<Message>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let message = self.table.delete(message)?;
        let publisher = match self.sender(&topic, &message) {
            Ok(publisher) => publisher,
            Err(error) => return Ok(Err(error)),
        };
        let headers = message.headers();
        Ok(publisher
            .0
            .publish(&topic, headers, message.data)
            .await
            .map_err(guest_error))
    }
}

/// A publish's error as a guest hears it.
fn guest_error(error: PublishError) -> Error {
    match error {
        PublishError::PermissionDenied(why) => Error::PermissionDenied(why),
        PublishError::Connection(why) => Error::Connection(why),
        PublishError::Timeout(_) => Error::Timeout,
    }
}

impl request_reply::HostRequestOptions for MessagingView<'_> {
    async fn new(&mut self) -> wasmtime::Result<Resource<RequestOptions>> {
        Ok(self.table.push(RequestOptions::default())?)
    }

    async fn set_timeout_ms(
        &mut self,
        options: Resource<RequestOptions>,
        timeout_ms: u32,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&options)?.timeout =
            Some(std::time::Duration::from_millis(u64::from(timeout_ms)));
        Ok(())
    }

    async fn set_expected_replies(
        &mut self,
        options: Resource<RequestOptions>,
        replies: u32,
    ) -> wasmtime::Result<()> {
        self.table.get_mut(&options)?.replies = Some(replies);
        Ok(())
    }

    async fn drop(&mut self, options: Resource<RequestOptions>) -> wasmtime::Result<()> {
        self.table.delete(options)?;
        Ok(())
    }
}

impl request_reply::Host for MessagingView<'_> {
    async fn request(
        &mut self,
        _client: Resource<MessagingClient>,
        topic: String,
        message: Resource<Message>,
        options: Option<Resource<RequestOptions>>,
    ) -> wasmtime::Result<Result<Vec<Resource<Message>>, Error>> {
        let options = match options {
            Some(options) => self.table.delete(options)?,
            None => RequestOptions::default(),
        };
        let message = self.table.get(&message)?;
        let publisher = match self.sender(&topic, message) {
            Ok(publisher) => publisher,
            Err(error) => return Ok(Err(error)),
        };
        let (headers, data) = (message.headers(), message.data.clone());
        let replies = options.replies.unwrap_or(1).clamp(1, MAX_REPLIES);
        let timeout = options.timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        let answers = match publisher
            .0
            .request(&topic, headers, data, timeout, replies as usize)
            .await
        {
            Ok(answers) => answers,
            Err(error) => return Ok(Err(guest_error(error))),
        };
        let mut resources = Vec::with_capacity(answers.len());
        for (subject, headers, data) in answers {
            resources.push(self.table.push(Message::incoming(subject, headers, data))?);
        }
        Ok(Ok(resources))
    }

    async fn reply(
        &mut self,
        reply_to: Resource<Message>,
        message: Resource<Message>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let message = self.table.delete(message)?;
        let Some(reply) = self.table.get(&reply_to)?.reply.clone() else {
            return Ok(Err(Error::Other(
                "the message asked for no answer (it has no reply subject)".to_owned(),
            )));
        };
        if let Err(error) = message.check() {
            return Ok(Err(error));
        }
        let headers = message.headers();
        Ok(reply
            .via
            .reply(&reply.subject, headers, message.data)
            .await
            .map_err(guest_error))
    }
}

/// Adds `wasi:messaging`'s `types`, `producer` and `request-reply`, and wasmCloud's
/// `consumer`, to `linker`.
///
/// # Errors
/// When the linker already has them.
pub fn add_to_linker<T: HasMessaging + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    types::add_to_linker::<T, HasMessagingView>(linker, T::messaging)?;
    producer::add_to_linker::<T, HasMessagingView>(linker, T::messaging)?;
    request_reply::add_to_linker::<T, HasMessagingView>(linker, T::messaging)?;
    wasmcloud::add_to_linker(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_travels_only_as_headers_nats_takes_as_data() {
        let entry = |name: &str, value: &str| vec![(name.to_owned(), value.to_owned())];
        assert!(check_metadata(&entry("sent-by", "guest")).is_ok());
        assert!(check_metadata(&entry("content-type", "text/plain; charset=utf-8")).is_ok());
        for (name, value) in [
            ("", "x"),
            ("Nats-Rollup", "all"),
            ("nats-msg-id", "1"),
            ("a b", "x"),
            ("a:b", "x"),
            ("ok", "line\r\nInjected: yes"),
        ] {
            assert!(
                check_metadata(&entry(name, value)).is_err(),
                "{name}: {value}"
            );
        }
        assert!(check_metadata(&entry("big", &"x".repeat(MAX_METADATA_VALUE + 1))).is_err());
        let many: Vec<(String, String)> = (0..=MAX_METADATA)
            .map(|index| (format!("k{index}"), "v".to_owned()))
            .collect();
        assert!(check_metadata(&many).is_err());
    }

    #[test]
    fn a_message_s_metadata_and_content_type_travel_as_headers() {
        let message = Message {
            topic: None,
            data: b"42".to_vec(),
            content_type: Some("text/plain".to_owned()),
            metadata: vec![("sent-by".to_owned(), "guest".to_owned())],
            reply: None,
        };
        assert_eq!(
            message.headers(),
            [
                ("sent-by".to_owned(), "guest".to_owned()),
                ("content-type".to_owned(), "text/plain".to_owned())
            ]
        );
        assert!(Message::default().headers().is_empty());
        // One that arrives: its content type from its headers, the rest its metadata.
        let incoming = Message::incoming(
            "orders.new".to_owned(),
            vec![
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("sent-by".to_owned(), "device".to_owned()),
            ],
            b"{}".to_vec(),
        );
        assert_eq!(incoming.topic.as_deref(), Some("orders.new"));
        assert_eq!(incoming.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            incoming.metadata,
            [("sent-by".to_owned(), "device".to_owned())]
        );
    }
}
