//! The CLI's side of the control API: sends each request under the caller's best grant
//! and asks again, within [`TIMEOUT`], when no scheduler answered or one failed.

use std::time::Duration;

use super::{Answer, ApiError, ErrorCode, Request, Rules, Verb};
use crate::auth::{ANONYMOUS, Grant, Holder, LATTICE_SCOPE, Role, api_subject};

/// How long one attempt waits for an answer: a scheduler that froze (a stopped VM) still
/// holds its place in the queue group, so a request it got is sent again.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// How long a call keeps trying.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a call waits for a scheduler to answer at all (one may be starting).
pub const NO_SERVER_WAIT: Duration = Duration::from_secs(5);

/// The CLI's side: sends requests under the caller's best grant for each.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    lattice: String,
    user: String,
    grants: Vec<Grant>,
}

/// What a call can end in.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server refused or failed the request.
    #[error(transparent)]
    Refused(#[from] ApiError),
    /// No server answered.
    #[error(
        "no scheduler answers the control API of lattice {0:?}: start one (shoal scheduler, or shoal up)"
    )]
    NoServer(String),
    /// The request could not be sent or its answer read.
    #[error("control API request failed: {0}")]
    Transport(String),
}

impl Client {
    /// A client of `lattice` over `nats`, as the holder of the connection's credential
    /// (`None`: an open lattice, where anyone is an admin).
    pub fn new(nats: async_nats::Client, lattice: &str, holder: Option<&Holder>) -> Self {
        let (user, grants) = match holder {
            Some(holder) if holder.kind == "user" => (holder.name.clone(), holder.grants.clone()),
            _ => (
                ANONYMOUS.to_owned(),
                vec![Grant {
                    role: Role::Admin,
                    namespace: None,
                }],
            ),
        };
        Self {
            nats,
            lattice: lattice.to_owned(),
            user,
            grants,
        }
    }

    /// The caller's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The namespaces the caller holds a role in (none when it holds one lattice-wide).
    pub fn viewable_namespaces(&self) -> Vec<String> {
        self.grants
            .iter()
            .filter_map(|grant| grant.namespace.clone())
            .collect()
    }

    /// Whether the caller may change apps in `namespace` (apply, scale, rollout, delete).
    pub fn may_edit(&self, namespace: &str) -> bool {
        self.grants
            .iter()
            .any(|grant| grant.allows(Role::Editor, Some(namespace)))
    }

    /// Whether the caller may view the whole lattice.
    pub fn lattice_wide(&self) -> bool {
        self.grants.iter().any(|grant| grant.namespace.is_none())
    }

    /// Sends `request` and decodes the answer its verb gives.
    ///
    /// # Errors
    /// [`CallError::Refused`] with the server's reason, else why no answer came.
    pub async fn call<V: Verb>(&self, request: V) -> Result<V::Answer, CallError> {
        let grant = choose_grant(&self.grants, &request);
        let subject = api_subject(&self.lattice, &grant, &self.user, request.verb());
        // A request that must not be done twice is sent again only when nobody got it.
        let resend_after_timeout = request.resend_safe();
        let request: Request = request.into();
        let body = serde_json::to_vec(&request)
            .map_err(|error| CallError::Transport(error.to_string()))?;
        let subject = async_nats::Subject::from(subject);
        let started = tokio::time::Instant::now();
        let body = bytes::Bytes::from(body);
        loop {
            let attempt = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                self.nats.request(subject.clone(), body.clone()),
            )
            .await;
            let reply = match attempt {
                Ok(Ok(reply)) => reply,
                Ok(Err(error)) if error.kind() == async_nats::RequestErrorKind::NoResponders => {
                    if started.elapsed() >= NO_SERVER_WAIT {
                        return Err(CallError::NoServer(self.lattice.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                Ok(Err(error)) if error.kind() != async_nats::RequestErrorKind::TimedOut => {
                    return Err(CallError::Transport(error.to_string()));
                }
                _ if resend_after_timeout && started.elapsed() + ATTEMPT_TIMEOUT <= TIMEOUT => {
                    tracing::debug!("no answer in time; asking again");
                    continue;
                }
                _ => {
                    return Err(CallError::Transport(format!(
                        "no answer within {:?}",
                        started.elapsed()
                    )));
                }
            };
            match serde_json::from_slice::<Answer<V::Answer>>(&reply.payload) {
                Ok(Answer::Ok(value)) => return Ok(value),
                // The server failed, not refused: a NATS server of a cluster lost a moment
                // ago leaves JetStream without a leader for a second or two. Asked again
                // while time is left (every request is declarative or idempotent but undo).
                Ok(Answer::Error(error))
                    if error.code == ErrorCode::Internal
                        && resend_after_timeout
                        && started.elapsed() + ATTEMPT_TIMEOUT <= TIMEOUT =>
                {
                    tracing::debug!(%error, "the control plane failed; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(Answer::Error(error)) => return Err(CallError::Refused(error)),
                Err(error) => {
                    return Err(CallError::Transport(format!(
                        "unexpected answer from the control plane: {error}"
                    )));
                }
            }
        }
    }
}

/// The grant a request goes under: the narrowest one that allows it, else the strongest
/// in one of its namespaces, else the strongest (the server then says what is missing).
pub(super) fn choose_grant(grants: &[Grant], request: &dyn Rules) -> Grant {
    let (role, namespaces) = request.needs();
    let allows = |grant: &&Grant| {
        namespaces
            .iter()
            .all(|namespace| grant.allows(role, Some(namespace)))
            && grant.role >= role
            && (!request.lattice_wide() || grant.namespace.is_none())
    };
    let covering =
        |grant: &&Grant| namespaces.is_empty() || namespaces.iter().any(|ns| grant.scope() == *ns);
    grants
        .iter()
        .filter(allows)
        .min_by_key(|grant| (grant.role, grant.scope() == LATTICE_SCOPE))
        .or_else(|| {
            grants
                .iter()
                .filter(covering)
                .max_by_key(|grant| grant.role)
        })
        .or_else(|| grants.iter().max_by_key(|grant| grant.role))
        .cloned()
        .unwrap_or(Grant {
            role: Role::Viewer,
            namespace: None,
        })
}
