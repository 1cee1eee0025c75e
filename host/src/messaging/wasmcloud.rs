//! wasmCloud's `wasmcloud:messaging@0.2.0` (the WIT in `host/wit-wasmcloud-messaging`),
//! which wasmCloud's toolchains build message handlers against: its `consumer` (publish
//! and request on the subjects the app grants, relative to its namespace; a publish to the
//! reply subject of the message being handled is its answer) and its `handler` export.

use super::{HasMessaging, HasMessagingView, Message, MessagingView, guest_error};
use wasmtime::component::Linker;

/// The consumer guests import.
mod bindings {
    wasmtime::component::bindgen!({
        path: "wit-wasmcloud-messaging",
        world: "wasmcloud:messaging/imports",
        imports: { default: async | trappable },
    });
}

/// The handler, as a component exports it.
mod handler {
    wasmtime::component::bindgen!({
        path: "wit-wasmcloud-messaging",
        world: "wasmcloud:messaging/handler-world",
        imports: { default: async | trappable },
        exports: { default: async },
        with: { "wasmcloud:messaging/types": super::bindings::wasmcloud::messaging::types },
    });
}

pub(super) use bindings::wasmcloud::messaging::types::BrokerMessage;
pub(super) use handler::HandlerWorldPre;

/// Adds the consumer (and its types) to `linker`.
///
/// # Errors
/// When the linker already has them.
pub(super) fn add_to_linker<T: HasMessaging + Send + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    bindings::wasmcloud::messaging::types::add_to_linker::<T, HasMessagingView>(
        linker,
        T::messaging,
    )?;
    bindings::wasmcloud::messaging::consumer::add_to_linker::<T, HasMessagingView>(
        linker,
        T::messaging,
    )
}

impl bindings::wasmcloud::messaging::types::Host for MessagingView<'_> {}

impl bindings::wasmcloud::messaging::consumer::Host for MessagingView<'_> {
    async fn request(
        &mut self,
        subject: String,
        body: Vec<u8>,
        timeout_ms: u32,
    ) -> wasmtime::Result<Result<bindings::wasmcloud::messaging::types::BrokerMessage, String>>
    {
        let message = Message::outgoing(body);
        let publisher = match self.sender(&subject, &message) {
            Ok(publisher) => publisher,
            Err(error) => return Ok(Err(format!("{error:?}"))),
        };
        let body = message.data;
        let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
        Ok(
            match publisher
                .0
                .request(&subject, Vec::new(), body, timeout, 1)
                .await
            {
                Ok(answers) => match answers.into_iter().next() {
                    Some((subject, _, body)) => {
                        Ok(bindings::wasmcloud::messaging::types::BrokerMessage {
                            subject,
                            body,
                            reply_to: None,
                        })
                    }
                    None => Err(format!("no answer on {subject}")),
                },
                Err(error) => Err(format!("{:?}", guest_error(error))),
            },
        )
    }

    async fn publish(
        &mut self,
        message: bindings::wasmcloud::messaging::types::BrokerMessage,
    ) -> wasmtime::Result<Result<(), String>> {
        let (subject, outgoing) = (message.subject, Message::outgoing(message.body));
        if let Err(error) = outgoing.check() {
            return Ok(Err(format!("{error:?}")));
        }
        // An answer to the request being handled: wasmCloud's components publish to its
        // reply subject, which goes out on the connection the request came on. No other
        // inbox: a component answers what it was asked, not whoever it heard of.
        if let Some(answering) = self
            .answering
            .as_ref()
            .filter(|reply| reply.subject == subject)
        {
            return Ok(answering
                .via
                .reply(&answering.subject, Vec::new(), outgoing.data)
                .await
                .map_err(|error| format!("{:?}", guest_error(error))));
        }
        let publisher = match self.sender(&subject, &outgoing) {
            Ok(publisher) => publisher,
            Err(error) => return Ok(Err(format!("{error:?}"))),
        };
        Ok(publisher
            .0
            .publish(&subject, Vec::new(), outgoing.data)
            .await
            .map_err(|error| format!("{:?}", guest_error(error))))
    }
}
