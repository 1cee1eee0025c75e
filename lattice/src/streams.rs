//! JetStream triggers (`spec.triggers[].stream`): a namespace's streams of messages and the
//! apps' durable consumers on them. Stream `orders` of namespace `shop` is the JetStream
//! stream `shoal-<lattice>-v1-msg_shop_orders` (`_` is in no name, so two namespaces never
//! share one) and keeps every message on `orders` and `orders.…` of that namespace; app
//! `billing`'s trigger with consumer `eu` reads it through the durable pull consumer
//! `billing_eu`. The scheduler makes both when the app is applied (streams and consumers
//! live with the lattice's state) and deletes the app's consumers with it; streams stay,
//! with their messages, for the namespace's other apps and later ones.
//!
//! A consumer delivers each message at most `maxDeliver + 1` times: the one delivery past
//! the app's `maxDeliver` comes only when the last one was never answered (its host was
//! lost, or its handler outran `ackWait`), and is not handled but sent to the dead-letter
//! subject with that cause ([`Verdict`]).
//!
//! On a secure lattice the streams are in the state account, which imports every message
//! subject from the clients' account; answers of JetStream's that a client aims at a
//! message subject (a reply subject it chose) are not carried by that import (measured,
//! nats-server 2.15), so nothing but a publish reaches a stream.

use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures_util::TryStreamExt as _;

use crate::records::Trigger;
use crate::{Cause, Error, Lattice, names};

/// The JetStream stream of stream `stream` of `namespace`.
pub fn stream_name(lattice: &str, namespace: &str, stream: &str) -> String {
    format!("shoal-{lattice}-v1-msg_{namespace}_{stream}")
}

/// The durable consumer of app `app`'s trigger with consumer `consumer`.
pub fn durable_name(app: &str, consumer: &str) -> String {
    format!("{app}_{consumer}")
}

/// The JetStream names of a JetStream trigger of app `namespace/app`: its stream and its
/// durable consumer; `None` for a core NATS trigger.
pub fn trigger_consumer(
    lattice: &str,
    namespace: &str,
    app: &str,
    trigger: &Trigger,
) -> Option<(String, String)> {
    let stream = trigger.stream.as_deref()?;
    Some((
        stream_name(lattice, namespace, stream),
        durable_name(app, trigger.consumer()),
    ))
}

/// The configuration of stream `stream` of `namespace`, keeping `max_bytes`.
pub fn stream_config(
    lattice: &str,
    namespace: &str,
    stream: &str,
    max_bytes: u64,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: stream_name(lattice, namespace, stream),
        subjects: vec![
            names::message_subject(lattice, namespace, stream),
            names::message_subject(lattice, namespace, &format!("{stream}.>")),
        ],
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        // Only the scheduler changes it: no client rolls it up, purges or deletes in it.
        allow_rollup: false,
        deny_delete: true,
        deny_purge: true,
        // No acknowledgement of what it stores: the import from the clients' account keeps
        // a publish's reply subject, and the stream would send its ack there, in the state
        // account, where a publisher could name a bucket's key (measured on nats-server
        // 2.15: a publish with reply `$KV.<bucket>.<key>` wrote the ack as that key).
        no_ack: true,
        ..Default::default()
    }
}

/// The configuration of app `namespace/app`'s durable consumer for JetStream trigger
/// `trigger`: explicit acks within `ackWait`, `maxDeliver + 1` deliveries (see the module's
/// docs), narrowed to the trigger's subject when it names one.
pub fn consumer_config(
    lattice: &str,
    namespace: &str,
    app: &str,
    trigger: &Trigger,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable_name(app, trigger.consumer())),
        description: Some(format!("shoal: triggers of app {namespace}/{app}")),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: trigger.ack_wait(),
        max_deliver: i64::from(trigger.max_deliver()) + 1,
        filter_subject: trigger
            .subject
            .as_deref()
            .map(|subject| names::message_subject(lattice, namespace, subject))
            .unwrap_or_default(),
        deliver_policy: consumer::DeliverPolicy::All,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// What a host does with one delivery of a JetStream trigger's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the component.
    Handle,
    /// Acknowledge it unhandled: it is on the trigger's own dead-letter subject, a failed
    /// message that came back (the dead-letter subject is within the stream).
    Skip,
    /// Dead-letter it unhandled: its last delivery was never answered.
    Unanswered,
}

/// What a host does after the component handled (or failed) a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledge it.
    Ack,
    /// Deliver it again after this pause.
    Retry(Duration),
    /// It failed its last delivery: dead-letter it (or drop it when the trigger names no
    /// dead-letter subject), then acknowledge it for good.
    DeadLetter,
}

impl Verdict {
    /// The verdict on delivery number `delivered` (from 1) of a message on `subject`
    /// (relative to the namespace) for `trigger`.
    pub fn of(trigger: &Trigger, subject: &str, delivered: u64) -> Self {
        if trigger.dead_letter.as_deref() == Some(subject) {
            Verdict::Skip
        } else if delivered > u64::from(trigger.max_deliver()) {
            Verdict::Unanswered
        } else {
            Verdict::Handle
        }
    }
}

impl Outcome {
    /// What follows delivery number `delivered` of a message for `trigger` that the
    /// component handled (`succeeded`) or not.
    pub fn of(trigger: &Trigger, delivered: u64, succeeded: bool) -> Self {
        if succeeded {
            Outcome::Ack
        } else if delivered >= u64::from(trigger.max_deliver()) {
            Outcome::DeadLetter
        } else {
            Outcome::Retry(trigger.backoff(delivered))
        }
    }
}

/// The headers of a dead-lettered message besides its own: why, and where it came from.
pub fn dead_letter_headers(
    namespace: &str,
    app: &str,
    stream: &str,
    subject: &str,
    sequence: u64,
    delivered: u64,
    cause: &str,
) -> Vec<(String, String)> {
    // A cause is guest or host text: one line of printable text, bounded, for a header.
    let cause: String = cause
        .chars()
        .map(|char| if char.is_control() { ' ' } else { char })
        .take(1024)
        .collect();
    vec![
        ("Shoal-Failure".to_owned(), cause),
        ("Shoal-App".to_owned(), format!("{namespace}/{app}")),
        ("Shoal-Stream".to_owned(), stream.to_owned()),
        ("Shoal-Subject".to_owned(), subject.to_owned()),
        ("Shoal-Stream-Sequence".to_owned(), sequence.to_string()),
        ("Shoal-Deliveries".to_owned(), delivered.to_string()),
    ]
}

/// How a JetStream trigger's consumer stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerState {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub ack_pending: u64,
    /// Messages delivered more than once and not yet acknowledged.
    pub redelivered: u64,
    /// The stream's messages.
    pub messages: u64,
    /// Messages on the trigger's dead-letter subject that the stream keeps (`None` when the
    /// subject is not within the stream, which then does not count them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
}

impl Lattice {
    /// Makes (or updates) the stream and the durable consumer of each JetStream trigger of
    /// app `namespace/app`.
    ///
    /// # Errors
    /// When JetStream refuses (on a secure lattice only schedulers may), for example a
    /// stream whose subjects another stream of the account takes.
    pub async fn ensure_app_triggers(
        &self,
        namespace: &str,
        app: &str,
        triggers: &[Trigger],
    ) -> Result<(), Error> {
        let context = self.jetstream();
        for trigger in triggers {
            let Some(stream) = trigger.stream.as_deref() else {
                continue;
            };
            let config = stream_config(
                self.name(),
                namespace,
                stream,
                trigger.max_bytes(),
                self.replicas,
            );
            let name = config.name.clone();
            let failed = |source: Cause| Error::Bucket {
                bucket: name.clone(),
                source,
            };
            let handle = match context.get_stream(&name).await {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|error| failed(error.into()))?;
                    let mut wanted = info.config.clone();
                    wanted.max_bytes = config.max_bytes;
                    wanted.subjects = config.subjects.clone();
                    wanted.no_ack = true;
                    if wanted != info.config {
                        context
                            .update_stream(wanted)
                            .await
                            .map_err(|error| failed(error.into()))?;
                    }
                    existing
                }
                Err(_) => context
                    .create_stream(config)
                    .await
                    .map_err(|error| failed(error.into()))?,
            };
            handle
                .create_consumer(consumer_config(self.name(), namespace, app, trigger))
                .await
                .map_err(|error| failed(error.into()))?;
        }
        Ok(())
    }

    /// Deletes app `namespace/app`'s durable consumers except those of the JetStream
    /// triggers in `keep` (its streams stay).
    ///
    /// # Errors
    /// When JetStream cannot list or delete them.
    pub async fn remove_app_triggers(
        &self,
        namespace: &str,
        app: &str,
        keep: &[Trigger],
    ) -> Result<(), Error> {
        let context = self.jetstream();
        let prefix = stream_name(self.name(), namespace, "");
        let kept: Vec<(String, String)> = keep
            .iter()
            .filter_map(|trigger| trigger_consumer(self.name(), namespace, app, trigger))
            .collect();
        let failed = |source: Cause| Error::Bucket {
            bucket: prefix.clone(),
            source,
        };
        let streams: Vec<String> = context
            .stream_names()
            .try_collect()
            .await
            .map_err(|error| failed(error.into()))?;
        let mine = format!("{app}_");
        for stream in streams.iter().filter(|name| name.starts_with(&prefix)) {
            let Ok(handle) = context.get_stream_no_info(stream).await else {
                continue;
            };
            let consumers: Vec<String> = handle
                .consumer_names()
                .try_collect()
                .await
                .map_err(|error| failed(error.into()))?;
            for durable in consumers {
                let pair = (stream.clone(), durable.clone());
                if durable.starts_with(&mine) && !kept.contains(&pair) {
                    handle
                        .delete_consumer(&durable)
                        .await
                        .map_err(|error| failed(error.into()))?;
                }
            }
        }
        Ok(())
    }

    /// The durable consumer of app `namespace/app`'s JetStream trigger `trigger`.
    ///
    /// # Errors
    /// When the consumer does not exist (yet) or the lattice does not answer.
    pub async fn trigger_consumer(
        &self,
        namespace: &str,
        app: &str,
        trigger: &Trigger,
    ) -> Result<consumer::PullConsumer, Error> {
        let (stream, durable) =
            trigger_consumer(self.name(), namespace, app, trigger).ok_or_else(|| {
                Error::Bucket {
                    bucket: "messages".to_owned(),
                    source: "a core NATS trigger has no consumer".into(),
                }
            })?;
        self.jetstream()
            .get_consumer_from_stream(&durable, &stream)
            .await
            .map_err(|error| Error::Bucket {
                bucket: stream.clone(),
                source: error.into(),
            })
    }

    /// The backlog of app `namespace/app`'s JetStream triggers: messages not yet delivered
    /// or not yet acknowledged, summed over its consumers (one request each).
    ///
    /// # Errors
    /// When a consumer does not exist or the lattice does not answer.
    pub async fn app_backlog(
        &self,
        namespace: &str,
        app: &str,
        triggers: &[Trigger],
    ) -> Result<u64, Error> {
        let context = self.jetstream();
        let mut backlog = 0u64;
        for (stream, durable) in triggers
            .iter()
            .filter_map(|trigger| trigger_consumer(self.name(), namespace, app, trigger))
        {
            // Getting the consumer reads its info: one request a trigger.
            let consumer: consumer::PullConsumer = context
                .get_consumer_from_stream(&durable, &stream)
                .await
                .map_err(|error| Error::Bucket {
                    bucket: stream.clone(),
                    source: error.into(),
                })?;
            let info = consumer.cached_info();
            backlog = backlog
                .saturating_add(info.num_pending)
                .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(0));
        }
        Ok(backlog)
    }

    /// How app `namespace/app`'s JetStream trigger `trigger` stands: its consumer's backlog
    /// and its stream's size.
    ///
    /// # Errors
    /// When the consumer does not exist or the lattice does not answer.
    pub async fn trigger_state(
        &self,
        namespace: &str,
        app: &str,
        trigger: &Trigger,
    ) -> Result<ConsumerState, Error> {
        let Some((stream, durable)) = trigger_consumer(self.name(), namespace, app, trigger) else {
            return Ok(ConsumerState::default());
        };
        let failed = |source: Cause| Error::Bucket {
            bucket: stream.clone(),
            source,
        };
        let context = self.jetstream();
        let mut handle = context
            .get_stream(&stream)
            .await
            .map_err(|error| failed(error.into()))?;
        let messages = handle
            .info()
            .await
            .map_err(|error| failed(error.into()))?
            .state
            .messages;
        let dead_letter = trigger
            .dead_letter
            .as_deref()
            .filter(|subject| {
                let name = trigger.stream.as_deref().unwrap_or_default();
                *subject == name || subject.starts_with(&format!("{name}."))
            })
            .map(|subject| names::message_subject(self.name(), namespace, subject));
        let dead_lettered = match dead_letter {
            Some(subject) => {
                let counts: std::collections::HashMap<String, usize> = handle
                    .info_with_subjects(subject.clone())
                    .await
                    .map_err(|error| failed(error.into()))?
                    .try_collect()
                    .await
                    .map_err(|error| failed(error.into()))?;
                Some(counts.get(&subject).copied().unwrap_or(0) as u64)
            }
            None => None,
        };
        let mut consumer: consumer::PullConsumer =
            handle.get_consumer(&durable).await.map_err(failed)?;
        let info = consumer
            .info()
            .await
            .map_err(|error| failed(error.into()))?;
        Ok(ConsumerState {
            pending: info.num_pending,
            ack_pending: u64::try_from(info.num_ack_pending).unwrap_or(0),
            redelivered: u64::try_from(info.num_redelivered).unwrap_or(0),
            messages,
            dead_lettered,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::Span;

    fn trigger() -> Trigger {
        Trigger {
            stream: Some("orders".to_owned()),
            max_deliver: Some(3),
            backoff: vec![
                Span(Duration::from_millis(200)),
                Span(Duration::from_secs(2)),
            ],
            dead_letter: Some("orders.dead".to_owned()),
            ..Trigger::default()
        }
    }

    #[test]
    fn a_delivery_is_handled_until_max_deliver_then_dead_lettered() {
        let trigger = trigger();
        assert_eq!(Verdict::of(&trigger, "orders.new", 1), Verdict::Handle);
        assert_eq!(Verdict::of(&trigger, "orders.new", 3), Verdict::Handle);
        // The delivery past maxDeliver comes only when the last was never answered.
        assert_eq!(Verdict::of(&trigger, "orders.new", 4), Verdict::Unanswered);
        // A dead letter that came back through the stream is not handled again.
        assert_eq!(Verdict::of(&trigger, "orders.dead", 1), Verdict::Skip);
        assert_eq!(Outcome::of(&trigger, 1, true), Outcome::Ack);
        assert_eq!(
            Outcome::of(&trigger, 1, false),
            Outcome::Retry(Duration::from_millis(200))
        );
        assert_eq!(
            Outcome::of(&trigger, 2, false),
            Outcome::Retry(Duration::from_secs(2))
        );
        assert_eq!(Outcome::of(&trigger, 3, false), Outcome::DeadLetter);
        // The default backoff, its last pause repeated.
        let plain = Trigger {
            stream: Some("orders".to_owned()),
            ..Trigger::default()
        };
        assert_eq!(plain.backoff(1), Duration::from_secs(1));
        assert_eq!(plain.backoff(9), Duration::from_secs(30));
        assert_eq!(Outcome::of(&plain, 5, false), Outcome::DeadLetter);
    }

    #[test]
    fn names_of_two_namespaces_or_apps_never_meet() {
        assert_ne!(stream_name("l", "a-b", "c"), stream_name("l", "a", "b-c"));
        assert_ne!(durable_name("a-b", "c"), durable_name("a", "b-c"));
        let config = consumer_config("l", "shop", "billing", &trigger());
        assert_eq!(config.durable_name.as_deref(), Some("billing_default"));
        assert_eq!(config.max_deliver, 4);
        assert_eq!(config.ack_wait, Duration::from_secs(30));
        let stream = stream_config("l", "shop", "orders", 1 << 20, 1);
        assert_eq!(
            stream.subjects,
            ["shoal.l.v1.msg.shop.orders", "shoal.l.v1.msg.shop.orders.>"]
        );
    }

    #[test]
    fn jetstream_s_answers_on_a_message_subject_are_told_from_publishes() {
        use crate::store::is_jetstream_answer;
        let header = |name: &str| vec![(name.to_owned(), "x".to_owned())];
        let answer = |reply, status, headers: &[(String, String)], payload: &[u8]| {
            is_jetstream_answer(reply, status, headers, payload)
        };
        assert!(!answer(None, false, &header("sent-by"), b"21"));
        assert!(!answer(Some("_INBOX.x"), false, &[], b"{}"));
        assert!(!answer(None, false, &[], br#"{"stream":"video"}"#));
        // A direct get's answer, a consumer's delivery, a status, API answers, an ack.
        assert!(answer(None, false, &header("Nats-Stream"), b"x"));
        assert!(answer(None, false, &header("nats-sequence"), b"x"));
        assert!(answer(Some("$JS.ACK.s.c.1.1.1.1.0"), false, &[], b"x"));
        assert!(answer(None, true, &[], b""));
        assert!(answer(None, false, &header("Shoal-Answer"), b"{}"));
        // A header named Status is a publisher's own (a status is not a header).
        assert!(!answer(None, false, &header("Status"), b"ok"));
        let failed =
            br#"{"error":{"code":400,"err_code":10071,"description":"x"},"stream":"KV_a","seq":0}"#;
        assert!(answer(None, false, &[], failed));
        let info = br#"{"type":"io.nats.jetstream.api.v1.stream_info_response"}"#;
        assert!(answer(None, false, &[], info));
        let ack = br#"{"stream":"KV_shoal-dev-v1-hosts","seq":42}"#;
        assert!(answer(None, false, &[], ack));
    }

    #[test]
    fn an_app_answers_on_askers_inboxes_only() {
        use crate::store::is_reply_inbox;
        assert!(is_reply_inbox("_INBOX.user.ed.abc.1"));
        assert!(is_reply_inbox("_INBOX.stores.h1.xyz.2"));
        assert!(is_reply_inbox("_INBOX.Xq3nuid.7"));
        for bad in [
            "_INBOX.host.h1.x",
            "_INBOX.scheduler.s1.x",
            "_INBOX.site.edge.x",
            "_INBOX.site-copy-reader.x",
            "_INBOX.",
            "_INBOX.a.>",
            "_INBOX.a..b",
            "$JS.shoal-state.API.$KV.b.k",
            "shoal.l.v1.msg.ns.x",
        ] {
            assert!(!is_reply_inbox(bad), "{bad}");
        }
    }

    #[test]
    fn a_dead_letter_s_cause_is_one_bounded_line() {
        let headers = dead_letter_headers("ns", "app", "orders", "orders.x", 7, 3, "a\nb\r\n");
        assert_eq!(headers[0], ("Shoal-Failure".to_owned(), "a b  ".to_owned()));
        let long = dead_letter_headers("ns", "app", "o", "o", 1, 1, &"x".repeat(5000));
        assert_eq!(long[0].1.len(), 1024);
    }
}
