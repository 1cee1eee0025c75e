//! Messages that trigger a replica (`spec.triggers`): for each trigger, a queue
//! subscription shared by the app's replicas (each message goes to one of them, at most
//! once: core NATS), on the connection that presents the replica's app credential (on a
//! secure lattice the host's own may subscribe to no app's subjects), each message handed
//! to the component's `wasi:messaging` handler within the replica's limits. When the
//! credential is renewed the subscription moves to the new connection; when the lattice is
//! unreachable it is made again once it is back.

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
    let queue = format!("{}.{}", grants.namespace, grants.app);
    let mut told = false;
    loop {
        let access = grants.access();
        let subscribed = match grants.lattice().await {
            Ok(lattice) => lattice
                .subscribe_messages(&grants.namespace, &subject, &queue)
                .await
                .map_err(|error| shoal_lattice::Chain(&error).to_string()),
            Err(error) => Err(format!("{error:?}")),
        };
        let mut messages = match subscribed {
            Ok(messages) => {
                tracing::info!(%replica, %subject, "subscribed to the trigger's messages");
                told = false;
                messages
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
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { break };
                    let component = Arc::clone(&component);
                    let (replica, topic) = (replica.clone(), message.subject.clone());
                    // Handled beside the next ones, within the replica's concurrency.
                    tokio::spawn(async move {
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
    }
}
