//! Pushing an account JWT to nats-server, as `nsc push` does.

use serde::Deserialize;

use super::*;

/// Pushes an account JWT to nats-server through the system account (`system_creds` is
/// the text of its user's credentials), as `nsc push` does: the server stores it and applies
/// it at once, closing connections whose keys it now revokes.
///
/// # Errors
/// [`AuthError::Push`] when the server cannot be reached or refuses the JWT.
pub async fn push_account(url: &str, system_creds: &str, jwt: &str) -> Result<(), AuthError> {
    let failed = |reason: String| AuthError::Push(reason);
    let options = connect_options(system_creds)
        .map_err(|error| failed(format!("unreadable system credentials: {error}")))?
        .name("shoal auth")
        .connection_timeout(std::time::Duration::from_secs(5))
        .retry_on_initial_connect();
    let servers = crate::store::server_addrs(url).map_err(failed)?;
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        options.connect(servers.as_slice()),
    )
    .await
    .map_err(|_| failed(format!("no connection to {url} within 10 s")))?
    .map_err(|error| failed(error.to_string()))?;
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.request("$SYS.REQ.CLAIMS.UPDATE", jwt.to_owned().into()),
    )
    .await
    .map_err(|_| failed("no answer within 10 s".to_owned()))?
    .map_err(|error| failed(error.to_string()))?;
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        error: Option<serde_json::Value>,
    }
    let answer: Answer = serde_json::from_slice(&reply.payload)
        .map_err(|error| failed(format!("unexpected answer: {error}")))?;
    match answer.error {
        Some(error) => Err(failed(format!("nats-server refused the account: {error}"))),
        None => Ok(()),
    }
}
