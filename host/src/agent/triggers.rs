//! Messages that trigger a replica (`spec.triggers`), on a connection of its own that
//! presents the replica's app credential (on a secure lattice the host's own may read no
//! app's messages), so whatever a message does to that connection touches nothing else.
//! Each message is handed to the component's `wasi:messaging` handler within the replica's
//! limits; no more are taken than the replica handles at once. When the credential is
//! renewed or the connection ends, the trigger starts again on a new one.
//!
//! - Core NATS: a queue subscription shared by the app's replicas (each message to one of
//!   them, at most once; the credential may subscribe in the app's queue group only).
//! - JetStream: the app's durable consumer, shared by its replicas; each message is
//!   acknowledged when its handler succeeds, told "in progress" every half `ackWait` while
//!   it runs, delivered again after the trigger's backoff when it fails, and after its last
//!   delivery sent to the dead-letter subject with the cause in its headers
//!   (`shoal_lattice::streams`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures_util::StreamExt as _;
use shoal_lattice::Lattice;
use shoal_lattice::records::Trigger;
use shoal_lattice::streams::{Outcome, Verdict};

use super::stores::{Access, AppStores};
use crate::http::HttpComponent;
use crate::metrics::{Metrics, TriggerOutcome};

/// How often a trigger looks whether the replica's credential was renewed.
const CREDENTIAL_CHECK: Duration = Duration::from_secs(5);

/// How long to wait before starting again after the connection or consumer could not be
/// had, or ended.
const RETRY: Duration = Duration::from_secs(1);

/// How long a handled message waits for what its handler published to go out.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Room kept in a dead letter for its headers (the message's own and the cause's).
const DEAD_LETTER_HEADROOM: usize = 16 << 10;

/// How long one fetch of a JetStream trigger's messages waits for them (and so how soon a
/// renewed credential is taken up).
const FETCH_WAIT: Duration = Duration::from_secs(5);

/// Runs the triggers of a replica of `namespace/app` until aborted.
pub(super) fn spawn(
    component: Arc<HttpComponent>,
    grants: Arc<AppStores>,
    triggers: Vec<Trigger>,
    replica: String,
    metrics: Arc<Metrics>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !component.handles_messages() {
            tracing::warn!(%replica, "the app has triggers but its component exports no wasi:messaging handler: no message will reach it");
            return;
        }
        let runs = triggers.into_iter().map(|trigger| {
            run(
                Arc::clone(&component),
                Arc::clone(&grants),
                trigger,
                replica.clone(),
                Arc::clone(&metrics),
            )
        });
        futures_util::future::join_all(runs).await;
    })
}

/// One trigger, started again whenever its connection changes or ends.
async fn run(
    component: Arc<HttpComponent>,
    grants: Arc<AppStores>,
    trigger: Trigger,
    replica: String,
    metrics: Arc<Metrics>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(component.concurrency()));
    let what = trigger
        .stream
        .as_ref()
        .map(|stream| format!("stream {stream}"))
        .or_else(|| {
            trigger
                .core_subject()
                .map(|subject| format!("subject {subject}"))
        })
        .unwrap_or_default();
    let mut told = false;
    loop {
        let access = grants.access();
        let connected = grants
            .own_connection(&format!("triggers of {replica}"))
            .await
            .map_err(|error| format!("{error:?}"));
        let ended = match connected {
            Ok(lattice) => {
                let trigger = Running {
                    component: &component,
                    grants: &grants,
                    trigger: &trigger,
                    replica: &replica,
                    in_flight: &in_flight,
                    access: &access,
                    metrics: &metrics,
                    name: &what,
                };
                match &trigger.trigger.stream {
                    Some(_) => trigger.consume(&lattice, &mut told).await,
                    None => trigger.subscribe(&lattice, &mut told).await,
                }
            }
            Err(why) => Err(why),
        };
        if let Err(why) = ended
            && !told
        {
            tracing::warn!(%replica, trigger = %what, %why, "cannot read the trigger's messages yet; retrying");
            told = true;
        }
        // A new connection after a pause, so one that keeps failing does not spin.
        tokio::time::sleep(RETRY).await;
    }
}

/// One trigger on one connection.
struct Running<'a> {
    component: &'a Arc<HttpComponent>,
    grants: &'a Arc<AppStores>,
    trigger: &'a Trigger,
    replica: &'a str,
    in_flight: &'a Arc<tokio::sync::Semaphore>,
    /// The credential the connection presents: the trigger starts again when it changes.
    access: &'a Access,
    metrics: &'a Arc<Metrics>,
    /// The trigger as metrics name it: `subject …` or `stream …`.
    name: &'a str,
}

impl Running<'_> {
    /// `namespace/app`, as metrics name it.
    fn app(&self) -> String {
        format!("{}/{}", self.grants.namespace, self.grants.app)
    }

    /// Whether the replica's credential changed since the connection was made.
    fn renewed(&self) -> bool {
        self.grants.access() != *self.access
    }

    /// A core NATS trigger: the app's queue subscription, until the connection ends or
    /// the credential changes.
    async fn subscribe(&self, lattice: &Lattice, told: &mut bool) -> Result<(), String> {
        let subject = self.trigger.core_subject().unwrap_or_default();
        let queue = shoal_lattice::names::trigger_queue(&self.grants.namespace, &self.grants.app);
        let mut messages = lattice
            .subscribe_messages(&self.grants.namespace, subject, &queue)
            .await
            .map_err(|error| shoal_lattice::Chain(&error).to_string())?;
        tracing::info!(replica = %self.replica, %subject, "subscribed to the trigger's messages");
        *told = false;
        // Answers to a message that asks for one go out on the connection it came on.
        let replier: Arc<dyn crate::messaging::Replier> = Arc::new(lattice.clone());
        let mut check = tokio::time::interval(CREDENTIAL_CHECK);
        check.tick().await;
        loop {
            // A slot first: the next message is read only when it can be handled.
            let Ok(slot) = Arc::clone(self.in_flight).acquire_owned().await else {
                return Ok(());
            };
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Ok(()) };
                    let component = Arc::clone(self.component);
                    let (replica, topic) = (self.replica.to_owned(), message.subject.clone());
                    let (metrics, app, name) =
                        (Arc::clone(self.metrics), self.app(), self.name.to_owned());
                    let replier = Arc::clone(&replier);
                    tokio::spawn(async move {
                        let _slot = slot;
                        let mut incoming = crate::messaging::Message::incoming(
                            message.subject,
                            message.headers,
                            message.payload.to_vec(),
                        );
                        if let Some(reply) = message.reply {
                            incoming = incoming.replying_to(reply, replier);
                        }
                        let outcome = match component.handle_message(incoming).await {
                            Ok(()) => TriggerOutcome::Handled,
                            Err(why) => {
                                tracing::warn!(%replica, %topic, %why, "a triggering message was not handled");
                                TriggerOutcome::Failed
                            }
                        };
                        metrics.record_message(&app, &name, outcome);
                    });
                }
                _ = check.tick() => {
                    if self.renewed() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// A JetStream trigger: the app's durable consumer, until the connection ends or the
    /// credential changes. Each fetch asks for as many messages as the replica has free
    /// slots, so a delivered message waits for no handler (its ackWait runs while it is
    /// handled, and JetStream hears of its progress then).
    async fn consume(&self, lattice: &Lattice, told: &mut bool) -> Result<(), String> {
        let (namespace, app) = (&self.grants.namespace, &self.grants.app);
        let consumer = lattice
            .trigger_consumer(namespace, app, self.trigger)
            .await
            .map_err(|error| shoal_lattice::Chain(&error).to_string())?;
        let stream = self.trigger.stream.as_deref().unwrap_or_default();
        tracing::info!(replica = %self.replica, %stream, consumer = %self.trigger.consumer(), "reading the trigger's stream");
        *told = false;
        let prefix = shoal_lattice::names::message_subject(lattice.name(), namespace, "");
        loop {
            if self.renewed() {
                return Ok(());
            }
            let Ok(first) = Arc::clone(self.in_flight).acquire_owned().await else {
                return Ok(());
            };
            let mut slots = vec![first];
            while let Ok(slot) = Arc::clone(self.in_flight).try_acquire_owned() {
                slots.push(slot);
            }
            let mut batch = consumer
                .fetch()
                .max_messages(slots.len())
                .expires(FETCH_WAIT)
                .messages()
                .await
                .map_err(|error| error.to_string())?;
            while let Some(message) = batch.next().await {
                // A consumer gone or the connection lost: start again.
                let message = message.map_err(|error| error.to_string())?;
                let Some(slot) = slots.pop() else { break };
                let Some(subject) = message.subject.strip_prefix(prefix.as_str()) else {
                    // Not a message of the namespace: nothing a stream of it keeps.
                    let _ = message.ack_with(AckKind::Term).await;
                    continue;
                };
                let delivery = Delivery {
                    subject: subject.to_owned(),
                    lattice: lattice.clone(),
                    trigger: self.trigger.clone(),
                    namespace: namespace.clone(),
                    app: app.clone(),
                    replica: self.replica.to_owned(),
                    metrics: Arc::clone(self.metrics),
                    name: self.name.to_owned(),
                    grants: Arc::clone(self.grants),
                };
                let component = Arc::clone(self.component);
                tokio::spawn(async move {
                    let _slot = slot;
                    delivery.handle(&component, message).await;
                });
            }
        }
    }
}

/// One delivery of a JetStream trigger's message.
struct Delivery {
    /// Its subject, relative to the namespace.
    subject: String,
    /// The trigger's connection (acks, dead letters).
    lattice: Lattice,
    trigger: Trigger,
    namespace: String,
    app: String,
    replica: String,
    metrics: Arc<Metrics>,
    /// The trigger as metrics name it.
    name: String,
    /// What the replica's guests publish through (flushed before an acknowledgement).
    grants: Arc<AppStores>,
}

impl Delivery {
    fn count(&self, outcome: TriggerOutcome) {
        let app = format!("{}/{}", self.namespace, self.app);
        self.metrics.record_message(&app, &self.name, outcome);
    }

    /// Hands the message to the component (unless it is not to be handled) and tells
    /// JetStream the outcome: acknowledged, delivered again later, or dead-lettered.
    async fn handle(self, component: &HttpComponent, message: async_nats::jetstream::Message) {
        let (delivered, sequence) = match message.info() {
            Ok(info) => (
                u64::try_from(info.delivered).unwrap_or(u64::MAX),
                info.stream_sequence,
            ),
            Err(_) => return,
        };
        let failure = match Verdict::of(&self.trigger, &self.subject, delivered) {
            Verdict::Skip => {
                let _ = message.ack().await;
                return;
            }
            Verdict::Unanswered => Some(format!(
                "no answer within ackWait ({}s) on delivery {}: its host was lost, or the handler ran past it",
                self.trigger.ack_wait().as_secs(),
                delivered - 1
            )),
            Verdict::Handle => {
                let headers = shoal_lattice::store::header_pairs(message.headers.as_ref());
                let incoming = crate::messaging::Message::incoming(
                    self.subject.clone(),
                    headers,
                    message.payload.to_vec(),
                );
                // While the handler runs, JetStream hears it is in progress, so a slow
                // handler within its timeout is not delivered to a second replica.
                let handled = component.handle_message(incoming);
                tokio::pin!(handled);
                let mut progress = tokio::time::interval(self.trigger.ack_wait() / 2);
                progress.tick().await;
                let result = loop {
                    tokio::select! {
                        result = &mut handled => break result,
                        _ = progress.tick() => {
                            let _ = message.ack_with(AckKind::Progress).await;
                        }
                    }
                };
                // What the handler sent is out before the message counts as handled.
                let result = match result {
                    Ok(()) => match tokio::time::timeout(FLUSH_WAIT, self.grants.flush()).await {
                        Ok(flushed) => flushed.map_err(|why| {
                            format!("what the handler published may not have been sent: {why}")
                        }),
                        Err(_) => {
                            Err("what the handler published was not sent within 5s".to_owned())
                        }
                    },
                    failed => failed,
                };
                self.count(if result.is_ok() {
                    TriggerOutcome::Handled
                } else {
                    TriggerOutcome::Failed
                });
                match Outcome::of(&self.trigger, delivered, result.is_ok()) {
                    Outcome::Ack => {
                        if let Err(error) = message.double_ack().await {
                            tracing::debug!(replica = %self.replica, %error, "a handled message's acknowledgement was not confirmed; it may be delivered again");
                        }
                        return;
                    }
                    Outcome::Retry(pause) => {
                        let why = result.err().unwrap_or_default();
                        tracing::warn!(replica = %self.replica, topic = %self.subject, delivered, %why, "a triggering message was not handled; it will be delivered again");
                        let _ = message.ack_with(AckKind::Nak(Some(pause))).await;
                        return;
                    }
                    Outcome::DeadLetter => result.err(),
                }
            }
        };
        let cause = failure.unwrap_or_default();
        // Ended for good only once the dead letter is out: unsent, the message comes back
        // after ackWait (once more at most) and is dead-lettered then.
        if self
            .dead_letter(&message, sequence, delivered, &cause)
            .await
        {
            let _ = message.ack_with(AckKind::Term).await;
        }
    }

    /// Sends a message that failed its last delivery to the trigger's dead-letter subject
    /// (its own headers and payload, and the cause), or drops it when there is none.
    /// Returns whether the message is done with.
    async fn dead_letter(
        &self,
        message: &async_nats::jetstream::Message,
        sequence: u64,
        delivered: u64,
        cause: &str,
    ) -> bool {
        let stream = self.trigger.stream.as_deref().unwrap_or_default();
        let Some(dead_letter) = &self.trigger.dead_letter else {
            tracing::warn!(replica = %self.replica, topic = %self.subject, %stream, sequence, delivered, %cause, "a triggering message failed its last delivery and is dropped (the trigger names no deadLetter)");
            self.count(TriggerOutcome::Dropped);
            return true;
        };
        let mut headers: Vec<(String, String)> =
            shoal_lattice::store::header_pairs(message.headers.as_ref())
                .into_iter()
                .filter(|(name, _)| {
                    !name.to_ascii_lowercase().starts_with("nats-")
                        && !name.to_ascii_lowercase().starts_with("shoal-")
                })
                .collect();
        headers.extend(shoal_lattice::streams::dead_letter_headers(
            &self.namespace,
            &self.app,
            stream,
            &self.subject,
            sequence,
            delivered,
            cause,
        ));
        // A payload that leaves no room for the headers within NATS's default maximum is not
        // carried (the letter says how big it was): a letter nats-server refuses is lost.
        let mut payload = message.payload.clone();
        let size = |headers: &[(String, String)]| {
            headers
                .iter()
                .map(|(name, value)| name.len() + value.len() + 4)
                .sum::<usize>()
        };
        let limit = crate::messaging::MAX_MESSAGE_BYTES - DEAD_LETTER_HEADROOM;
        if payload.len() + size(&headers) > limit {
            headers.push((
                "Shoal-Payload-Dropped".to_owned(),
                payload.len().to_string(),
            ));
            payload = bytes::Bytes::new();
        }
        if size(&headers) > limit {
            // The message's own headers alone are too many: the letter keeps Shoal's.
            headers.retain(|(name, _)| name.starts_with("Shoal-"));
        }
        match self
            .lattice
            .publish_message(&self.namespace, dead_letter, &headers, payload)
            .await
        {
            Ok(()) => {
                tracing::warn!(replica = %self.replica, topic = %self.subject, %dead_letter, delivered, %cause, "a triggering message failed its last delivery: sent to the dead-letter subject");
                self.count(TriggerOutcome::DeadLettered);
                true
            }
            Err(error) => {
                tracing::warn!(replica = %self.replica, topic = %self.subject, %dead_letter, error = %shoal_lattice::Chain(&error), "a dead letter could not be sent");
                false
            }
        }
    }
}
