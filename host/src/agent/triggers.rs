//! Messages that trigger a replica (`spec.triggers`): for each trigger, a queue
//! subscription shared by the app's replicas (each message goes to one of them, at most
//! once: core NATS), on a connection of its own that presents the replica's app
//! credential (on a secure lattice the host's own may subscribe to no app's subjects, and
//! the app's only in its queue group), so whatever a message does to that connection
//! touches nothing else. Each message is handed to the component's `wasi:messaging`
//! handler within the replica's limits; no more are taken from NATS than the replica
//! handles at once (core NATS drops what a slow subscriber cannot take). When the
//! credential is renewed or the connection ends, the subscription is made again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use shoal_lattice::records::Trigger;

use super::stores::AppStores;
use crate::http::HttpComponent;

/// How often a subscription looks whether the replica's credential was renewed.
const CREDENTIAL_CHECK: Duration = Duration::from_secs(5);

/// How long to wait before subscribing again after the connection could not be had.
const RETRY: Duration = Duration::from_secs(1);

/// Runs the triggers of a replica of `namespace/app` until aborted.
pub(super) fn spawn(
    component: Arc<HttpComponent>,
    grants: Arc<AppStores>,
    triggers: Vec<Trigger>,
    replica: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !component.handles_messages() {
            tracing::warn!(%replica, "the app has triggers but its component exports no wasi:messaging handler: no message will reach it");
            return;
        }
        let subscriptions = triggers.into_iter().map(|trigger| {
            subscribe(
                Arc::clone(&component),
                Arc::clone(&grants),
                trigger.subject,
                replica.clone(),
            )
        });
        futures_util::future::join_all(subscriptions).await;
    })
}

/// One trigger's subscription, made again whenever its connection changes or ends.
async fn subscribe(
    component: Arc<HttpComponent>,
    grants: Arc<AppStores>,
    subject: String,
    replica: String,
) {
    // One queue group per app: each message to one of its replicas, wherever they run.
    let queue = shoal_lattice::names::trigger_queue(&grants.namespace, &grants.app);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(component.concurrency()));
    let mut told = false;
    loop {
        let access = grants.access();
        let name = format!("triggers of {replica}");
        let subscribed = match grants.own_connection(&name).await {
            Ok(lattice) => lattice
                .subscribe_messages(&grants.namespace, &subject, &queue)
                .await
                .map(|messages| (lattice, messages))
                .map_err(|error| shoal_lattice::Chain(&error).to_string()),
            Err(error) => Err(format!("{error:?}")),
        };
        let (_connection, mut messages) = match subscribed {
            Ok(subscribed) => {
                tracing::info!(%replica, %subject, "subscribed to the trigger's messages");
                told = false;
                subscribed
            }
            Err(why) => {
                if !told {
                    tracing::warn!(%replica, %subject, %why, "cannot subscribe to the trigger's messages yet; retrying");
                    told = true;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        let mut check = tokio::time::interval(CREDENTIAL_CHECK);
        check.tick().await;
        loop {
            // A slot first: the next message is read only when it can be handled.
            let Ok(slot) = Arc::clone(&in_flight).acquire_owned().await else {
                return;
            };
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let component = Arc::clone(&component);
                    let (replica, topic) = (replica.clone(), message.subject.clone());
                    tokio::spawn(async move {
                        let _slot = slot;
                        let message = crate::messaging::Message::incoming(
                            message.subject,
                            message.headers,
                            message.payload.to_vec(),
                        );
                        if let Err(why) = component.handle_message(message).await {
                            tracing::warn!(%replica, %topic, %why, "a triggering message was not handled");
                        }
                    });
                }
                _ = check.tick() => {
                    if grants.access() != access {
                        break;
                    }
                }
            }
        }
        // The connection ended (or the credential changed): a new one, after a pause so a
        // connection that keeps failing does not spin.
        tokio::time::sleep(RETRY).await;
    }
}
