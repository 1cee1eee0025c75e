//! Per-app request counters and latency histograms on a host's ingress, split by path
//! (answered by a local replica, or forwarded to another host), kept for the metrics
//! endpoint. Lock-free on the request path: atomics in fixed Prometheus-style buckets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
}

/// Every app's metrics on this host.
#[derive(Debug, Default)]
pub struct Metrics {
    apps: RwLock<BTreeMap<String, Arc<AppMetrics>>>,
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
            Path::Local => metrics.local.record(status, latency),
            Path::Forwarded => metrics.forwarded.record(status, latency),
        }
    }

    /// The metrics of `app`, if it had requests.
    pub fn app(&self, app: &str) -> Option<Arc<AppMetrics>> {
        self.apps.read().ok()?.get(app).cloned()
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
    }
}
