//! Probes: readiness (the host GETs an app's health path through a replica, first until it
//! answers 2xx, the replica getting no traffic before, then on a slower period, reporting
//! each change of health to the supervisor) and liveness (a replica that keeps failing its
//! liveness path is reported dead, for the supervisor to restart).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use shoal_lattice::records::{Assignment, Phase};
use tokio::sync::mpsc;

use super::report::Reporter;
use crate::http::HttpComponent;

/// How often a replica's health path is asked while it is not ready.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How often a ready replica's health path is asked.
const READY_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// A readiness change found by a prober.
#[derive(Debug)]
pub(crate) struct Probed {
    pub(crate) replica: String,
    /// The assignment generation probed: a change for an older one is stale.
    pub(crate) generation: u64,
    pub(crate) healthy: bool,
    /// What the health path answered when it failed; empty when healthy.
    pub(crate) message: String,
}

/// A replica that failed its liveness probe too often.
#[derive(Debug)]
pub(crate) struct Dead {
    pub(crate) replica: String,
    pub(crate) generation: u64,
    /// The last failure, with how many came in a row.
    pub(crate) message: String,
}

/// GETs `path` through `component`: `Ok` on 2xx, else what it answered.
async fn probe(component: &Arc<HttpComponent>, path: &str) -> Result<(), String> {
    let request = Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new().map_err(
            |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
        ));
    let answer = match request {
        Ok(request) => Arc::clone(component).handle(request).await.status(),
        Err(_) => StatusCode::BAD_REQUEST,
    };
    if answer.is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {answer}"))
    }
}

/// Probes `path` through `component` until it answers 2xx, reporting the replica as pending
/// with reason `ProbeFailed` (and what it answered) while it does not. A replica that never
/// passes never becomes ready and never gets traffic; the scheduler's progress deadline
/// decides what happens to its rollout.
pub(crate) async fn wait_healthy(
    reporter: &Reporter,
    assignment: &Assignment,
    component: &Arc<HttpComponent>,
    path: &str,
) {
    let mut reported = None;
    while let Err(message) = probe(component, path).await {
        if reported.as_ref() != Some(&message) {
            tracing::info!(replica = %assignment.replica, %message, "replica not ready yet");
            reporter
                .status(
                    assignment,
                    Phase::Pending,
                    Some("ProbeFailed".to_owned()),
                    Some(message.clone()),
                )
                .await;
            reported = Some(message);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Keeps probing a serving replica and reports each change of health.
pub(crate) async fn keep_probing(
    component: Arc<HttpComponent>,
    path: String,
    replica: String,
    generation: u64,
    probed: mpsc::Sender<Probed>,
) {
    let mut healthy = true;
    loop {
        tokio::time::sleep(if healthy {
            READY_PROBE_INTERVAL
        } else {
            PROBE_INTERVAL
        })
        .await;
        let result = probe(&component, &path).await;
        if result.is_ok() != healthy {
            healthy = result.is_ok();
            let message = result.err().unwrap_or_default();
            if probed
                .send(Probed {
                    replica: replica.clone(),
                    generation,
                    healthy,
                    message,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Asks `liveness.path` through a serving replica every period; after `failureThreshold`
/// failures in a row (not 2xx, or no answer within the probe's timeout: a stuck replica),
/// reports the replica dead once and stops.
pub(crate) async fn keep_alive(
    component: Arc<HttpComponent>,
    liveness: shoal_lattice::records::Liveness,
    replica: String,
    generation: u64,
    dead: mpsc::Sender<Dead>,
) {
    let (period, timeout) = (liveness.period(), liveness.timeout());
    let mut failures = 0;
    loop {
        tokio::time::sleep(period).await;
        let result = match tokio::time::timeout(timeout, probe(&component, &liveness.path)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "GET {} did not answer within {}",
                liveness.path,
                shoal_lattice::quantity::Span(timeout)
            )),
        };
        match result {
            Ok(()) => failures = 0,
            Err(message) => {
                failures += 1;
                if failures >= liveness.failure_threshold() {
                    let message = format!("{message} ({failures} times in a row)");
                    let _ = dead
                        .send(Dead {
                            replica,
                            generation,
                            message,
                        })
                        .await;
                    return;
                }
            }
        }
    }
}
