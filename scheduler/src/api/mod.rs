//! The control API server: every scheduler process answers `shoal.<lattice>.v1.api.>` in
//! one queue group, leader or not (writes are compare-and-set, so any one may do them).
//! A request is authorized by the grant in its subject (which nats-server checked against
//! the caller's credential), validated with the same checks as a manifest file, then done
//! with the functions of [`crate::apply`]; reads are filtered to what the caller may view.
//!
//! Each verb's type (in `shoal_lattice::api`) says what it needs and answers; how this
//! server does it is its [`Handle`] impl, in the file of its resource here.

mod apps;
mod configs;
mod fleet;
mod hosts;
mod jobs;
mod kv;
mod policies;

use std::sync::Arc;

use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_lattice::Lattice;
use shoal_lattice::api::{Answer, ApiError, Caller, ErrorCode, Request, Rules, Verb};
use shoal_lattice::auth::api_subjects;
use tokio::sync::Semaphore;

/// Requests answered at once; more wait in NATS's buffer.
const CONCURRENT: usize = 32;
/// The queue group all API servers of a lattice share.
const QUEUE: &str = "shoal-api";

/// Answers control API requests until `shutdown`.
///
/// # Errors
/// When the subscription cannot be made.
pub async fn serve(
    lattice: Lattice,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), async_nats::SubscribeError> {
    let subject = api_subjects(lattice.name());
    let mut requests = lattice
        .client()
        .queue_subscribe(subject, QUEUE.to_owned())
        .await?;
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    let mut refused_replies: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            () = &mut shutdown => break,
            message = requests.next() => message,
        };
        let Some(message) = message else { break };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        // The answer goes only to the caller's own inbox (the user the subject names, which
        // nats-server checked against the credential): a reply subject chosen freely, such
        // as the scheduler lease's KV key, would make the scheduler write it.
        if !answers_to_caller(lattice.name(), &message.subject, &reply) {
            refused_replies += 1;
            if refused_replies == 1 {
                tracing::warn!(subject = %message.subject, %reply, "dropped an API request whose reply subject is not its caller's inbox (logged once)");
            }
            continue;
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        let lattice = lattice.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let answer = answer(&lattice, &message.subject, &message.payload).await;
            // Marked as an answer: aimed (through an import's reply) at a message subject,
            // no trigger takes it for a message.
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(shoal_lattice::store::ANSWER_HEADER, "api");
            if let Err(error) = lattice
                .client()
                .publish_with_headers(reply, headers, answer.into())
                .await
            {
                tracing::debug!(%error, "cannot answer an API request");
            }
        });
    }
    let _ = requests.unsubscribe().await;
    Ok(())
}

/// Whether `reply` leads back to the user that API request `subject` names: an inbox of
/// that user, or (on a secure lattice, where requests cross from the clients' account)
/// the reply subject nats-server made for the crossing, which it hands back only to the
/// requester's own reply subject in the clients' account, where nothing is stored.
fn answers_to_caller(lattice: &str, subject: &str, reply: &str) -> bool {
    Caller::from_subject(lattice, subject).is_some_and(|caller| {
        shoal_lattice::auth::is_inbox_of(reply, "user", Some(&caller.user))
            || shoal_lattice::auth::is_import_reply(reply)
    })
}

/// How the control plane does one verb, once its caller is authorized and its names
/// checked.
trait Handle: Verb {
    /// Does it.
    async fn handle(self, cx: &Context<'_>) -> Result<Self::Answer, ApiError>;
}

/// What a handler has besides its request.
struct Context<'a> {
    lattice: &'a Lattice,
    caller: &'a Caller,
    /// The request's fields as sent.
    fields: serde_json::Value,
}

impl Context<'_> {
    /// Whether the caller lists things of a namespace: one it may view, and the one it
    /// asked for if it named one.
    fn visible<'a>(&'a self, wanted: Option<&'a str>) -> impl Fn(&str) -> bool + 'a {
        move |namespace| {
            self.caller.may_view(namespace) && wanted.is_none_or(|wanted| wanted == namespace)
        }
    }
}

/// The JSON answer to one request.
async fn answer(lattice: &Lattice, subject: &str, payload: &[u8]) -> Vec<u8> {
    match handle(lattice, subject, payload).await {
        Ok(encoded) => encoded,
        Err(error) => {
            if error.code == ErrorCode::Forbidden {
                tracing::info!(%subject, message = %error.message, "API request refused");
            }
            encode(Answer::<()>::Error(error))
        }
    }
}

/// An answer as JSON.
fn encode<T: Serialize>(answer: Answer<T>) -> Vec<u8> {
    serde_json::to_vec(&answer).unwrap_or_else(|_| {
        br#"{"error":{"code":"internal","message":"cannot encode the answer"}}"#.to_vec()
    })
}

/// Reads, authorizes and does one request; its answer as JSON.
async fn handle(lattice: &Lattice, subject: &str, payload: &[u8]) -> Result<Vec<u8>, ApiError> {
    let caller = Caller::from_subject(lattice.name(), subject).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Invalid,
            "the request subject is not …api.<role>.<scope>.<user>.<verb>",
        )
    })?;
    let (request, fields) = decode(payload)?;
    caller.authorize(&request)?;
    request.check_names().map_err(|error| {
        ApiError::new(ErrorCode::Invalid, shoal_lattice::Chain(&error).to_string())
    })?;
    let cx = Context {
        lattice,
        caller: &caller,
        fields,
    };
    match request {
        Request::Apply(request) => done(request, &cx).await,
        Request::ApplyJobs(request) => done(request, &cx).await,
        Request::GetJobs(request) => done(request, &cx).await,
        Request::DeleteJob(request) => done(request, &cx).await,
        Request::GetCronJobs(request) => done(request, &cx).await,
        Request::DeleteCronJob(request) => done(request, &cx).await,
        Request::CreateJobFrom(request) => done(request, &cx).await,
        Request::Delete(request) => done(request, &cx).await,
        Request::Scale(request) => done(request, &cx).await,
        Request::Undo(request) => done(request, &cx).await,
        Request::Pause(request) => done(request, &cx).await,
        Request::History(request) => done(request, &cx).await,
        Request::GetApps(request) => done(request, &cx).await,
        Request::GetHosts(request) => done(request, &cx).await,
        Request::GetControlPlane(request) => done(request, &cx).await,
        Request::Egress(request) => done(request, &cx).await,
        Request::GetEgress(request) => done(request, &cx).await,
        Request::GetReplicas(request) => done(request, &cx).await,
        Request::DescribeApp(request) => done(request, &cx).await,
        Request::Cordon(request) => done(request, &cx).await,
        Request::Drain(request) => done(request, &cx).await,
        Request::PutConfig(request) => done(request, &cx).await,
        Request::GetConfigs(request) => done(request, &cx).await,
        Request::DescribeConfig(request) => done(request, &cx).await,
        Request::DeleteConfig(request) => done(request, &cx).await,
        Request::SecretsKey(request) => done(request, &cx).await,
        Request::PutSecret(request) => done(request, &cx).await,
        Request::GetSecrets(request) => done(request, &cx).await,
        Request::DeleteSecret(request) => done(request, &cx).await,
        Request::TrustKey(request) => done(request, &cx).await,
        Request::UntrustKey(request) => done(request, &cx).await,
        Request::GetTrust(request) => done(request, &cx).await,
        Request::KeyValue(request) => done(request, &cx).await,
        Request::StartUpgrade(request) => done(request, &cx).await,
        Request::GetUpgrade(request) => done(request, &cx).await,
        Request::CancelUpgrade(request) => done(request, &cx).await,
    }
}

/// Does `request`, unless it has a field its type does not know; its answer as JSON.
async fn done<V: Handle>(request: V, cx: &Context<'_>) -> Result<Vec<u8>, ApiError> {
    refuse_unknown_fields::<V>(&cx.fields)?;
    Ok(encode(Answer::Ok(request.handle(cx).await?)))
}

/// Reads a request and the fields of its verb (without the `verb` tag).
fn decode(payload: &[u8]) -> Result<(Request, serde_json::Value), ApiError> {
    let not_known = |error: serde_json::Error| {
        ApiError::new(
            ErrorCode::Invalid,
            format!(
                "the request is not one this control plane (shoal {}) knows: {error}; a newer shoal may send what this one does not know: upgrade the schedulers",
                env!("CARGO_PKG_VERSION")
            ),
        )
    };
    let mut fields: serde_json::Value = serde_json::from_slice(payload).map_err(not_known)?;
    let request = Request::deserialize(&fields).map_err(not_known)?;
    if let Some(fields) = fields.as_object_mut() {
        fields.remove("verb");
    }
    Ok((request, fields))
}

/// Refuses a request with a field its verb's type does not know, however deep (a newer
/// CLI's field would be dropped without a word, the user believing it applied), saying
/// what to upgrade. The request's tagged form hides fields inside it from such a check, so
/// the verb's own fields are read again as that type.
fn refuse_unknown_fields<V: DeserializeOwned>(fields: &serde_json::Value) -> Result<(), ApiError> {
    let mut unknown = Vec::new();
    // A failure to read was already refused when the request was read.
    let _ = serde_ignored::deserialize::<_, _, V>(fields, |path| unknown.push(path.to_string()));
    match unknown.first() {
        None => Ok(()),
        Some(field) => Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "this control plane (shoal {}) does not know the field {field}: upgrade the schedulers, or leave the field out",
                env!("CARGO_PKG_VERSION")
            ),
        )),
    }
}

pub(crate) fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, error.to_string())
}

pub(crate) fn no_app(namespace: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("there is no app {namespace}/{name}; shoal get apps lists them"),
    )
}

/// Refuses `what` when it has `problems`, naming each.
pub(crate) fn refuse_invalid(what: &str, problems: Vec<String>) -> Result<(), ApiError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Invalid,
        format!(
            "{what} is not valid; nothing was stored:\n  {}",
            problems.join("\n  ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_lattice::api::{Apply, ScaleApp};

    #[test]
    fn answers_go_to_the_caller_s_inbox_only() {
        let subject = "shoal.dev.v1.api.viewer.team-a.alice.getHosts";
        assert!(answers_to_caller("dev", subject, "_INBOX.user.alice.x1"));
        for reply in [
            "$KV.shoal-dev-v1-leases.scheduler",
            "_INBOX.user.bob.x1",
            "_INBOX.host.alice.x1",
            "_INBOX.x1",
        ] {
            assert!(!answers_to_caller("dev", subject, reply), "{reply}");
        }
        // No caller in the subject: no answer at all.
        assert!(!answers_to_caller(
            "dev",
            "shoal.dev.v1.api.x",
            "_INBOX.user.alice.x1"
        ));
    }

    #[test]
    fn a_field_this_control_plane_does_not_know_is_refused() {
        // At the top of a verb, and deep in an app's spec: either would be dropped without
        // a word, the user believing it applied.
        for wire in [
            r#"{"verb":"scale","namespace":"a","name":"b","replicas":1,"surge":2}"#,
            r#"{"verb":"apply","apps":[{"namespace":"a","name":"b","spec":{"component":"r/c:1","gpu":true},"digest":"sha256:00"}]}"#,
        ] {
            let refused = decode(wire.as_bytes())
                .and_then(|(request, fields)| match request {
                    Request::Scale(_) => refuse_unknown_fields::<ScaleApp>(&fields),
                    Request::Apply(_) => refuse_unknown_fields::<Apply>(&fields),
                    _ => Ok(()),
                })
                .unwrap_err();
            assert_eq!(refused.code, ErrorCode::Invalid, "{wire}");
            assert!(
                refused.message.contains("upgrade the schedulers"),
                "{wire}: {refused}"
            );
        }
        assert!(decode(br#"{"verb":"getHosts"}"#).is_ok());
    }
}
