//! The web dashboard: one page (HTML, CSS and a small script, embedded in the binary) and
//! a JSON and server-sent-events API behind it, all read through the control API with the
//! credential the dashboard was started with, so a viewer's dashboard shows what a viewer
//! may see and its actions are refused as the CLI's would be.
//!
//! Live state: the server reads apps, hosts and replicas every [`REFRESH`] and sends a
//! snapshot to the page when it changed; events and an app's logs stream from the
//! lattice's journals as they are written.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use shoal_lattice::api::{self, AppView, CallError, ErrorCode, HostView, ReplicaView, Verb};
use shoal_lattice::api::{
    AppHistory, DeleteApp, DescribeApp, GetApps, GetControlPlane, GetHosts, GetReplicas,
    PauseRollout, ScaleApp, UndoRollout,
};
use shoal_lattice::records::now_millis;
use shoal_lattice::{Lattice, Start};

/// How often the page's state is read again.
const REFRESH: Duration = Duration::from_millis(500);

/// How far back the events feed and logs start.
const BACKLOG: Duration = Duration::from_secs(15 * 60);

/// The header every action must carry: a page of another origin cannot send it without the
/// browser asking first (and this server never says yes), so no other site can act through
/// a user's open dashboard.
const ACTION_HEADER: &str = "x-shoal-dashboard";

const PAGE: &str = include_str!("page.html");

mod origin;

pub use origin::AllowedHosts;

/// What every handler shares.
pub struct Dashboard {
    api: api::Client,
    connection: Lattice,
    allowed: AllowedHosts,
}

impl Dashboard {
    /// A dashboard acting through `api`, answering only requests addressed to `allowed`.
    pub fn new(api: api::Client, connection: Lattice, allowed: AllowedHosts) -> Self {
        Self {
            api,
            connection,
            allowed,
        }
    }
}

/// Refuses (403) a request not addressed to the dashboard by one of its names, or sent by
/// a page of another origin (see [`origin`]).
async fn own_origin_only(
    State(dashboard): State<Arc<Dashboard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match dashboard.allowed.check(request.headers()) {
        None => next.run(request).await,
        Some(reason) => (StatusCode::FORBIDDEN, format!("{reason}\n")).into_response(),
    }
}

/// The dashboard's routes.
pub fn router(dashboard: Arc<Dashboard>) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot_json))
        .route("/api/live", get(live))
        .route("/api/events", get(events))
        .route("/api/apps/{namespace}/{name}", get(app).delete(delete_app))
        .route("/api/apps/{namespace}/{name}/diff", get(diff))
        .route("/api/apps/{namespace}/{name}/logs", get(logs))
        .route("/api/apps/{namespace}/{name}/scale", post(scale))
        .route(
            "/api/apps/{namespace}/{name}/{action}",
            post(pause_or_resume),
        )
        .route("/api/apps/{namespace}/{name}/undo", post(undo))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&dashboard),
            own_origin_only,
        ))
        .with_state(dashboard)
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Dashboard,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(Arc::new(dashboard)))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page needs is in it: nothing from elsewhere may load or run.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

/// Everything the list views show, in one document.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Snapshot {
    user: String,
    apps: Vec<AppRow>,
    hosts: Vec<HostRow>,
    replicas: Vec<ReplicaRow>,
    /// Why part of the state could not be read (a viewer of one namespace sees no hosts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
    /// The control plane's warning: no scheduler acting (see `shoal status`).
    #[serde(skip_serializing_if = "Option::is_none")]
    control_plane_warning: Option<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct AppRow {
    namespace: String,
    name: String,
    revision: u64,
    component: String,
    desired: u32,
    placed: u32,
    ready: u32,
    /// Ready replicas of the current revision: the rollout's progress.
    updated: u32,
    paused: bool,
    may_edit: bool,
    autoscale: Option<serde_json::Value>,
    conditions: Vec<serde_json::Value>,
    routes: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct HostRow {
    id: String,
    state: String,
    labels: std::collections::BTreeMap<String, String>,
    version: String,
    memory: u64,
    memory_used: u64,
    cpu: u32,
    cpu_used: u32,
    max_replicas: u32,
    replicas: usize,
    heartbeat_at: u64,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct ReplicaRow {
    namespace: String,
    app: String,
    replica: String,
    host: String,
    revision: u64,
    phase: String,
    reason: Option<String>,
}

async fn read_snapshot(dashboard: &Dashboard) -> Snapshot {
    let mut problems = Vec::new();
    let api = &dashboard.api;
    let apps: Vec<AppView> = api
        .call(GetApps { namespace: None })
        .await
        .unwrap_or_else(|error| {
            problems.push(format!("apps: {error}"));
            Vec::new()
        });
    let replicas: Vec<ReplicaView> = api
        .call(GetReplicas { namespace: None })
        .await
        .unwrap_or_else(|error| {
            problems.push(format!("replicas: {error}"));
            Vec::new()
        });
    let hosts: Vec<HostView> = api.call(GetHosts {}).await.unwrap_or_else(|error| {
        problems.push(format!("hosts: {error}"));
        Vec::new()
    });
    let control_plane_warning = api
        .call(GetControlPlane {})
        .await
        .ok()
        .and_then(|view| view.warning);
    let replica_rows: Vec<ReplicaRow> = replicas
        .iter()
        .filter(|view| view.assignment.job.is_none())
        .map(|view| ReplicaRow {
            namespace: view.assignment.namespace.clone(),
            app: view.assignment.app.clone(),
            replica: view.assignment.replica.clone(),
            host: view.assignment.host.clone(),
            revision: view.assignment.revision,
            phase: view
                .status
                .as_ref()
                .map_or_else(|| "pending".to_owned(), |status| status.phase.to_string()),
            reason: view
                .status
                .as_ref()
                .and_then(|status| status.reason.clone()),
        })
        .collect();
    // Ready replicas by app and revision, in one walk over the replicas.
    let mut ready_at: std::collections::HashMap<(&str, &str, u64), usize> =
        std::collections::HashMap::new();
    for replica in replica_rows
        .iter()
        .filter(|replica| replica.phase == "ready")
    {
        *ready_at
            .entry((&replica.namespace, &replica.app, replica.revision))
            .or_default() += 1;
    }
    let app_rows = apps
        .into_iter()
        .map(|view| {
            let app = &view.app;
            let updated = ready_at
                .get(&(app.namespace.as_str(), app.name.as_str(), app.revision))
                .copied()
                .unwrap_or(0);
            let status = view.status.as_ref();
            AppRow {
                namespace: app.namespace.clone(),
                name: app.name.clone(),
                revision: app.revision,
                component: app.spec.component.clone(),
                desired: app.spec.replicas,
                placed: status.map_or(0, |status| status.placed),
                ready: status.map_or(0, |status| status.ready),
                updated: u32::try_from(updated).unwrap_or(u32::MAX),
                paused: app.paused,
                may_edit: api.may_edit(&app.namespace),
                autoscale: status
                    .and_then(|status| status.autoscale.as_ref())
                    .and_then(|autoscale| serde_json::to_value(autoscale).ok()),
                conditions: status
                    .map(|status| {
                        status
                            .conditions
                            .iter()
                            .filter_map(|condition| serde_json::to_value(condition).ok())
                            .collect()
                    })
                    .unwrap_or_default(),
                routes: app
                    .spec
                    .routes
                    .iter()
                    .map(|route| {
                        serde_json::to_value(route)
                            .map_or_else(|_| String::new(), |value| describe_route(&value))
                    })
                    .collect(),
            }
        })
        .collect();
    // What each host's replicas reserve, in one walk over the replicas.
    let mut reserved: std::collections::HashMap<&str, (u64, u32)> =
        std::collections::HashMap::new();
    for replica in &replicas {
        let (memory, cpu) = reserved
            .entry(replica.assignment.host.as_str())
            .or_default();
        *memory = memory.saturating_add(replica.assignment.template.memory_request().0);
        *cpu = cpu.saturating_add(replica.assignment.template.cpu_request().0);
    }
    let host_rows = hosts
        .iter()
        .map(|view| {
            let host = &view.host;
            let (memory_used, cpu_used) =
                reserved.get(host.id.as_str()).copied().unwrap_or_default();
            let state = crate::commands::get::host_view_state(view);
            HostRow {
                id: host.id.clone(),
                state,
                labels: host.labels.clone(),
                version: host.version.clone(),
                memory: host.capacity.memory.0,
                memory_used,
                cpu: host.capacity.cpu.0,
                cpu_used,
                max_replicas: host.capacity.max_replicas,
                replicas: view.replicas,
                heartbeat_at: host.heartbeat_at,
            }
        })
        .collect();
    Snapshot {
        user: api.user().to_owned(),
        apps: app_rows,
        hosts: host_rows,
        replicas: replica_rows,
        problems,
        control_plane_warning,
    }
}

/// A route as people write it: `host/path` or `/path`.
fn describe_route(route: &serde_json::Value) -> String {
    let host = route
        .get("host")
        .and_then(|host| host.as_str())
        .unwrap_or("");
    let path = route
        .get("path")
        .and_then(|path| path.as_str())
        .unwrap_or("/");
    format!("{host}{path}")
}

async fn snapshot_json(State(dashboard): State<Arc<Dashboard>>) -> Response {
    Json(read_snapshot(&dashboard).await).into_response()
}

/// Server-sent events of type `snapshot`, one whenever the state changed (and one at once).
async fn live(
    State(dashboard): State<Arc<Dashboard>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold(
        (dashboard, None::<String>, true),
        |(dashboard, last, first)| async move {
            if !first {
                tokio::time::sleep(REFRESH).await;
            }
            let mut last = last;
            loop {
                let snapshot = read_snapshot(&dashboard).await;
                let json = serde_json::to_string(&snapshot).unwrap_or_default();
                if last.as_deref() != Some(json.as_str()) {
                    let event = SseEvent::default().event("snapshot").data(json.clone());
                    return Some((Ok(event), (dashboard, Some(json), false)));
                }
                last = Some(json);
                tokio::time::sleep(REFRESH).await;
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The lattice's events as they are written (the last [`BACKLOG`] first), for the feed.
async fn events(State(dashboard): State<Arc<Dashboard>>) -> Response {
    let api = &dashboard.api;
    let start = Start::Since(now_millis().saturating_sub(BACKLOG.as_millis() as u64));
    let reader = if api.lattice_wide() {
        dashboard.connection.events(None, start, true).await
    } else {
        match api.viewable_namespaces().first() {
            Some(namespace) => {
                dashboard
                    .connection
                    .namespace_events(namespace, start, true)
                    .await
            }
            None => return refused(StatusCode::FORBIDDEN, "this credential views nothing"),
        }
    };
    match reader {
        Ok(reader) => journal_stream(reader, "event").into_response(),
        Err(error) => refused(StatusCode::BAD_GATEWAY, &error.to_string()),
    }
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    replica: Option<String>,
}

/// An app's log lines as they are written (the last [`BACKLOG`] first).
async fn logs(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Response {
    // The control plane's answer first: a caller who may not view the app is told so.
    if let Err(error) = dashboard
        .api
        .call(AppHistory {
            namespace: namespace.clone(),
            name: name.clone(),
        })
        .await
    {
        return call_failed(&error);
    }
    let start = Start::Since(now_millis().saturating_sub(BACKLOG.as_millis() as u64));
    match dashboard
        .connection
        .logs(&namespace, &name, start, true)
        .await
    {
        Ok(reader) => {
            let replica = query.replica;
            let stream = futures_util::stream::unfold(reader, |mut reader| async move {
                let line = reader.next().await?;
                Some((line, reader))
            });
            let stream = futures_util::StreamExt::filter_map(stream, move |line| {
                let replica = replica.clone();
                async move {
                    let line = line.ok()?;
                    if replica
                        .as_ref()
                        .is_some_and(|wanted| *wanted != line.replica)
                    {
                        return None;
                    }
                    let json = serde_json::to_string(&line).ok()?;
                    Some(Ok::<_, Infallible>(
                        SseEvent::default().event("log").data(json),
                    ))
                }
            });
            Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response()
        }
        Err(error) => refused(StatusCode::BAD_GATEWAY, &error.to_string()),
    }
}

/// A journal's records as server-sent events of type `kind`.
fn journal_stream<
    T: Serialize + serde::de::DeserializeOwned + shoal_lattice::journal::Attributed + Send + 'static,
>(
    reader: shoal_lattice::Reader<T>,
    kind: &'static str,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = futures_util::stream::unfold(reader, move |mut reader| async move {
        loop {
            match reader.next().await? {
                Ok(record) => {
                    let json = serde_json::to_string(&record).unwrap_or_default();
                    return Some((Ok(SseEvent::default().event(kind).data(json)), reader));
                }
                // One unreadable record does not end the feed.
                Err(error) => tracing::debug!(%error, "an unreadable journal record"),
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// One app: its detail (replicas, status) and its revisions.
async fn app(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let detail = dashboard
        .api
        .call(DescribeApp {
            namespace: namespace.clone(),
            name: name.clone(),
        })
        .await;
    let history = dashboard
        .api
        .call(AppHistory {
            namespace: namespace.clone(),
            name,
        })
        .await;
    match (detail, history) {
        (Ok(detail), Ok(history)) => Json(serde_json::json!({
            "detail": detail,
            "history": history,
            "mayEdit": dashboard.api.may_edit(&namespace),
        }))
        .into_response(),
        (Err(error), _) | (_, Err(error)) => call_failed(&error),
    }
}

#[derive(Debug, Deserialize)]
struct DiffQuery {
    from: u64,
    to: u64,
}

/// The difference between two revisions' specs, as a unified diff of their YAML.
async fn diff(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<DiffQuery>,
) -> Response {
    let history = match dashboard.api.call(AppHistory { namespace, name }).await {
        Ok(history) => history,
        Err(error) => return call_failed(&error),
    };
    let yaml_of = |revision: u64| {
        history
            .revisions
            .iter()
            .find(|record| record.revision == revision)
            .map(|record| serde_saphyr::to_string(&record.template).unwrap_or_default())
    };
    let (Some(from), Some(to)) = (yaml_of(query.from), yaml_of(query.to)) else {
        return refused(StatusCode::NOT_FOUND, "no such revision");
    };
    let text = similar::TextDiff::from_lines(&from, &to)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("revision {}", query.from),
            &format!("revision {}", query.to),
        )
        .to_string();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

#[derive(Debug, Deserialize)]
struct ScaleBody {
    replicas: u32,
}

#[derive(Debug, Deserialize, Default)]
struct UndoBody {
    revision: Option<u64>,
}

async fn scale(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<ScaleBody>,
) -> Response {
    act(
        &dashboard,
        &headers,
        ScaleApp {
            namespace,
            name,
            replicas: body.replicas,
        },
    )
    .await
}

/// `pause` or `resume` an app's rollout.
async fn pause_or_resume(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => return refused(StatusCode::NOT_FOUND, "no such action"),
    };
    act(
        &dashboard,
        &headers,
        PauseRollout {
            namespace,
            name,
            paused,
        },
    )
    .await
}

async fn undo(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<UndoBody>>,
) -> Response {
    let revision = body.and_then(|Json(body)| body.revision);
    act(
        &dashboard,
        &headers,
        UndoRollout {
            namespace,
            name,
            to_revision: revision,
        },
    )
    .await
}

async fn delete_app(
    State(dashboard): State<Arc<Dashboard>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    act(&dashboard, &headers, DeleteApp { namespace, name }).await
}

/// Sends an action to the control API as the dashboard's caller; the control API decides
/// whether the caller may.
async fn act<V: Verb>(dashboard: &Dashboard, headers: &HeaderMap, request: V) -> Response {
    if headers.get(ACTION_HEADER) != Some(&HeaderValue::from_static("1")) {
        return refused(
            StatusCode::FORBIDDEN,
            "actions need the x-shoal-dashboard: 1 header (sent by the dashboard's own page)",
        );
    }
    match dashboard.api.call(request).await {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => call_failed(&error),
    }
}

fn call_failed(error: &CallError) -> Response {
    let status = match error {
        CallError::Refused(refused) => match refused.code {
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        },
        CallError::NoServer(_) => StatusCode::SERVICE_UNAVAILABLE,
        CallError::Transport(_) => StatusCode::BAD_GATEWAY,
    };
    refused(status, &error.to_string())
}

fn refused(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
