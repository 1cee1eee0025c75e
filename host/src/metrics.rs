//! Per-app request counters and latency histograms on a host's ingress, split by path
//! (answered by a local replica, or forwarded to another host), and the host's replica
//! and guest-output gauges, rendered in the Prometheus text format for `shoal host
//! --metrics`. Lock-free on the request path: atomics in fixed Prometheus-style buckets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Serves `GET /metrics` on `listener` (plain HTTP, for a Prometheus scraper) until
/// `shutdown`; anything else is 404.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use http_body_util::BodyExt as _;
    let handler = move |request: http::Request<crate::server::TimedBody>| {
        let metrics = Arc::clone(&metrics);
        async move {
            if request.uri().path() != "/metrics" {
                return crate::http::plain(
                    http::StatusCode::NOT_FOUND,
                    "only /metrics is served here\n",
                );
            }
            let body = http_body_util::Full::new(bytes::Bytes::from(metrics.render()))
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed_unsync();
            let mut response = http::Response::new(body);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
    };
    crate::server::serve_with(
        listener,
        None,
        crate::server::ConnectionLimits {
            max_header: 16 * 1024,
            max_connections: 256,
            ..crate::server::ConnectionLimits::default()
        },
        handler,
        shutdown,
        Duration::from_secs(1),
    )
    .await;
}

/// Upper bounds of the latency buckets, in microseconds (the last bucket is unbounded).
pub const BUCKETS_MICROS: [u64; 13] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 10_000_000,
];

/// How a request was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// By a replica on this host.
    Local,
    /// By a replica on another host, over NATS.
    Forwarded,
}

/// Counts and latencies of one path of one app.
#[derive(Debug, Default)]
pub struct Series {
    /// Requests by status class: 1xx–2xx–3xx as success, 4xx, 5xx.
    pub ok: AtomicU64,
    /// 4xx answers.
    pub client_errors: AtomicU64,
    /// 5xx answers.
    pub server_errors: AtomicU64,
    /// Cumulative-free histogram: `buckets[i]` counts latencies ≤ `BUCKETS_MICROS[i]` and
    /// above the previous bound; the last slot counts the rest.
    pub buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    /// Sum of latencies, microseconds.
    pub sum_micros: AtomicU64,
}

impl Series {
    fn record(&self, status: u16, latency: Duration) {
        let counter = match status {
            500.. => &self.server_errors,
            400..=499 => &self.client_errors,
            _ => &self.ok,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
            + self.client_errors.load(Ordering::Relaxed)
            + self.server_errors.load(Ordering::Relaxed)
    }

    /// The latency bound below which `quantile` (0..=1) of requests fell, from the buckets.
    pub fn quantile_bound(&self, quantile: f64) -> Option<Duration> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = (quantile * total as f64).ceil() as u64;
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Some(Duration::from_micros(
                    BUCKETS_MICROS.get(index).copied().unwrap_or(u64::MAX),
                ));
            }
        }
        None
    }
}

/// The series of one app.
#[derive(Debug, Default)]
pub struct AppMetrics {
    /// Answered locally.
    pub local: Series,
    /// Forwarded.
    pub forwarded: Series,
    /// Time spent answering locally since the load was last taken, in microseconds: over
    /// an interval, requests in flight on average (what autoscaling reads).
    busy_micros: AtomicU64,
}

/// Every app's metrics on this host, and the host's own gauges.
#[derive(Debug, Default)]
pub struct Metrics {
    apps: RwLock<BTreeMap<String, Arc<AppMetrics>>>,
    /// Replicas assigned to this host and running or starting.
    pub replicas: AtomicU64,
    /// Of those, the ready ones (serving traffic).
    pub ready_replicas: AtomicU64,
    /// Guest output lines dropped because publishing could not keep up.
    pub log_lines_dropped: AtomicU64,
    /// Times the routing table was built: when a routing record or a ready replica changed,
    /// not on every heartbeat.
    pub routing_rebuilds: AtomicU64,
    /// Heartbeats written to the lattice.
    pub heartbeats: AtomicU64,
    /// Forwarded requests dropped unanswered because their reply subject was not a
    /// host's inbox (an answer there would write where the requester may not).
    pub refused_replies: AtomicU64,
    /// Messages triggers handed to replicas here, by (app, trigger, outcome).
    triggers: std::sync::Mutex<BTreeMap<(String, String, TriggerOutcome), u64>>,
}

/// What became of one delivery of a triggering message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TriggerOutcome {
    /// The handler succeeded (a JetStream message was acknowledged).
    Handled,
    /// The handler failed, trapped or timed out (a JetStream message is delivered again).
    Failed,
    /// A JetStream message failed its last delivery and went to the dead-letter subject.
    DeadLettered,
    /// A JetStream message failed its last delivery and was dropped (no dead-letter
    /// subject).
    Dropped,
}

impl TriggerOutcome {
    fn as_str(self) -> &'static str {
        match self {
            TriggerOutcome::Handled => "handled",
            TriggerOutcome::Failed => "failed",
            TriggerOutcome::DeadLettered => "dead_lettered",
            TriggerOutcome::Dropped => "dropped",
        }
    }
}

impl Metrics {
    /// Records one request to `app` (`namespace/name`).
    pub fn record(&self, app: &str, path: Path, status: u16, latency: Duration) {
        let existing = self
            .apps
            .read()
            .ok()
            .and_then(|apps| apps.get(app).cloned());
        let metrics = match existing {
            Some(metrics) => metrics,
            None => match self.apps.write() {
                Ok(mut apps) => Arc::clone(apps.entry(app.to_owned()).or_default()),
                Err(_) => return,
            },
        };
        match path {
            Path::Local => {
                metrics.local.record(status, latency);
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                metrics.busy_micros.fetch_add(micros, Ordering::Relaxed);
            }
            Path::Forwarded => metrics.forwarded.record(status, latency),
        }
    }

    /// Requests in flight at this host's replicas over the last `interval`, per app, in
    /// thousandths (requests answered in it, by how long each took; one still running is
    /// counted when it ends), and starts the next interval. Rounded up: an app that
    /// answered any request is never reported idle (scale to zero depends on it).
    pub fn take_load(&self, interval: Duration) -> BTreeMap<String, u64> {
        let interval = u64::try_from(interval.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let Ok(apps) = self.apps.read() else {
            return BTreeMap::new();
        };
        apps.iter()
            .filter_map(|(app, metrics)| {
                let busy = metrics.busy_micros.swap(0, Ordering::Relaxed);
                (busy > 0).then(|| (app.clone(), busy.saturating_mul(1000).div_ceil(interval)))
            })
            .collect()
    }

    /// Counts one delivery of a message of `app`'s (`namespace/name`) trigger `trigger` (its
    /// subject or stream) and what became of it.
    pub fn record_message(&self, app: &str, trigger: &str, outcome: TriggerOutcome) {
        if let Ok(mut counts) = self.triggers.lock() {
            *counts
                .entry((app.to_owned(), trigger.to_owned(), outcome))
                .or_default() += 1;
        }
    }

    /// The metrics of `app`, if it had requests.
    pub fn app(&self, app: &str) -> Option<Arc<AppMetrics>> {
        self.apps.read().ok()?.get(app).cloned()
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let apps: Vec<(String, Arc<AppMetrics>)> = match self.apps.read() {
            Ok(apps) => apps
                .iter()
                .map(|(app, metrics)| (app.clone(), Arc::clone(metrics)))
                .collect(),
            Err(_) => Vec::new(),
        };
        let series = || {
            apps.iter().flat_map(|(app, metrics)| {
                let (namespace, name) = app.split_once('/').unwrap_or(("", app.as_str()));
                [
                    (namespace, name, "local", &metrics.local),
                    (namespace, name, "forwarded", &metrics.forwarded),
                ]
                .into_iter()
                .filter(|(_, _, _, series)| series.count() > 0)
            })
        };
        let mut out = String::new();
        out.push_str("# HELP shoal_http_requests_total Requests answered through this host's ingress, by app, path (local replica or forwarded over NATS) and outcome.\n");
        out.push_str("# TYPE shoal_http_requests_total counter\n");
        for (namespace, app, path, series) in series() {
            for (outcome, counter) in [
                ("success", &series.ok),
                ("client_error", &series.client_errors),
                ("server_error", &series.server_errors),
            ] {
                let _ = writeln!(
                    out,
                    "shoal_http_requests_total{{namespace=\"{namespace}\",app=\"{app}\",path=\"{path}\",outcome=\"{outcome}\"}} {}",
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str("# HELP shoal_http_request_duration_seconds Time from a request's arrival to its response head, by app and path.\n");
        out.push_str("# TYPE shoal_http_request_duration_seconds histogram\n");
        for (namespace, app, path, series) in series() {
            let labels = format!("namespace=\"{namespace}\",app=\"{app}\",path=\"{path}\"");
            let mut cumulative = 0;
            for (index, bucket) in series.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let bound = BUCKETS_MICROS.get(index).map_or_else(
                    || "+Inf".to_owned(),
                    |micros| (*micros as f64 / 1e6).to_string(),
                );
                let _ = writeln!(
                    out,
                    "shoal_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "shoal_http_request_duration_seconds_sum{{{labels}}} {}",
                series.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "shoal_http_request_duration_seconds_count{{{labels}}} {cumulative}"
            );
        }
        for (name, help, value) in [
            (
                "shoal_replicas",
                "Replicas assigned to this host and running or starting.",
                &self.replicas,
            ),
            (
                "shoal_ready_replicas",
                "Replicas on this host that are ready and get traffic.",
                &self.ready_replicas,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP shoal_trigger_messages_total Deliveries of triggering messages to replicas on this host, by app, trigger (subject or stream) and outcome.\n");
        out.push_str("# TYPE shoal_trigger_messages_total counter\n");
        let counts = self
            .triggers
            .lock()
            .map(|counts| counts.clone())
            .unwrap_or_default();
        for ((app, trigger, outcome), count) in counts {
            let (namespace, name) = app.split_once('/').unwrap_or(("", app.as_str()));
            let _ = writeln!(
                out,
                "shoal_trigger_messages_total{{namespace=\"{namespace}\",app=\"{name}\",trigger=\"{trigger}\",outcome=\"{}\"}} {count}",
                outcome.as_str()
            );
        }
        let _ = writeln!(
            out,
            "# HELP shoal_log_lines_dropped_total Guest output lines dropped because publishing could not keep up.\n# TYPE shoal_log_lines_dropped_total counter\nshoal_log_lines_dropped_total {}",
            self.log_lines_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shoal_routing_rebuilds_total Times this host built its routing table (a routing record or a ready replica changed).\n# TYPE shoal_routing_rebuilds_total counter\nshoal_routing_rebuilds_total {}",
            self.routing_rebuilds.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shoal_heartbeats_total Heartbeats this host wrote to the lattice.\n# TYPE shoal_heartbeats_total counter\nshoal_heartbeats_total {}",
            self.heartbeats.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP shoal_refused_replies_total Forwarded requests dropped because their reply subject was not a host's inbox.\n# TYPE shoal_refused_replies_total counter\nshoal_refused_replies_total {}",
            self.refused_replies.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_path_and_status_and_buckets_latency() {
        let metrics = Metrics::default();
        for millis in [1, 1, 3, 40] {
            metrics.record(
                "default/hello",
                Path::Local,
                200,
                Duration::from_millis(millis),
            );
        }
        metrics.record(
            "default/hello",
            Path::Forwarded,
            503,
            Duration::from_millis(2),
        );
        metrics.record(
            "default/hello",
            Path::Forwarded,
            404,
            Duration::from_secs(20),
        );
        let hello = metrics.app("default/hello").unwrap();
        assert_eq!(hello.local.count(), 4);
        assert_eq!(hello.forwarded.server_errors.load(Ordering::Relaxed), 1);
        assert_eq!(hello.forwarded.client_errors.load(Ordering::Relaxed), 1);
        assert_eq!(
            hello.local.quantile_bound(0.5),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            hello.local.quantile_bound(0.99),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            hello.forwarded.quantile_bound(1.0),
            Some(Duration::from_micros(u64::MAX))
        );
        assert!(metrics.app("default/other").is_none());

        let text = metrics.render();
        assert!(text.contains("shoal_http_requests_total{namespace=\"default\",app=\"hello\",path=\"local\",outcome=\"success\"} 4\n"), "{text}");
        assert!(text.contains("shoal_http_requests_total{namespace=\"default\",app=\"hello\",path=\"forwarded\",outcome=\"server_error\"} 1\n"), "{text}");
        assert!(text.contains("shoal_http_request_duration_seconds_bucket{namespace=\"default\",app=\"hello\",path=\"local\",le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("shoal_http_request_duration_seconds_bucket{namespace=\"default\",app=\"hello\",path=\"local\",le=\"0.005\"} 3\n"), "{text}");
        assert!(text.contains("shoal_http_request_duration_seconds_bucket{namespace=\"default\",app=\"hello\",path=\"local\",le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("shoal_http_request_duration_seconds_count{namespace=\"default\",app=\"hello\",path=\"forwarded\"} 2\n"), "{text}");
        assert!(text.contains("shoal_http_request_duration_seconds_sum{namespace=\"default\",app=\"hello\",path=\"local\"} 0.045\n"), "{text}");
        assert!(
            text.contains("# TYPE shoal_ready_replicas gauge\nshoal_ready_replicas 0\n"),
            "{text}"
        );
        // Every sample line is NAME{LABELS} VALUE or NAME VALUE with a numeric value.
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
