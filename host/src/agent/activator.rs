//! Holding requests for apps scaled to zero, as Knative's activator does: a request for an
//! app whose routing record says it may be at zero, and that has no endpoint, waits here
//! while this host asks the scheduler to wake the app (a message on its own wake subject,
//! again every second while requests wait). It goes on as soon as the routing table has a
//! ready replica here or an endpoint elsewhere. Holding is bounded per app, by count and by
//! time; past either the client gets 503 with `Retry-After`, never an unbounded queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use tokio::time::Instant;

use crate::http::{ResponseBody, plain};
use crate::router::{AppRoutes, Router};

/// How many requests a host holds per app, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct HoldLimits {
    /// Most requests held at once per app; more get 503 at once.
    pub requests: usize,
    /// Longest a request is held before it gets 503.
    pub timeout: Duration,
}

impl Default for HoldLimits {
    fn default() -> Self {
        Self {
            requests: 100,
            timeout: Duration::from_secs(10),
        }
    }
}

/// How often a host repeats a wake while it holds requests (a scheduler that was changing
/// leader may have missed the first).
const WAKE_AGAIN: Duration = Duration::from_secs(1);

/// Per app: requests held now and when a wake was last published.
#[derive(Default)]
struct Held {
    count: usize,
    woken: Option<Instant>,
}

/// The host's holding area.
pub(crate) struct Activator {
    host: String,
    limits: HoldLimits,
    apps: Mutex<HashMap<String, Held>>,
}

/// One held request's place; gives it back when dropped.
struct Hold {
    activator: Arc<Activator>,
    key: String,
    deadline: Instant,
    /// Made before the lookup that found the app at zero: no change after it is missed.
    changes: tokio::sync::watch::Receiver<()>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if let Ok(mut apps) = self.activator.apps.lock()
            && let Some(held) = apps.get_mut(&self.key)
        {
            held.count = held.count.saturating_sub(1);
            if held.count == 0 {
                apps.remove(&self.key);
            }
        }
    }
}

impl Activator {
    pub(crate) fn new(host: &str, limits: HoldLimits) -> Self {
        Self {
            host: host.to_owned(),
            limits,
            apps: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more request of `app`, or `None` when the app has its most held.
    /// `changes` must be taken from the router before the lookup that found `app`.
    fn hold(
        self: &Arc<Self>,
        app: &AppRoutes,
        changes: tokio::sync::watch::Receiver<()>,
    ) -> Option<Hold> {
        let mut apps = self.apps.lock().ok()?;
        let held = apps.entry(app.key.clone()).or_default();
        if held.count >= self.limits.requests {
            return None;
        }
        held.count += 1;
        Some(Hold {
            activator: Arc::clone(self),
            key: app.key.clone(),
            deadline: Instant::now() + self.limits.timeout,
            changes,
        })
    }

    /// Whether this host should publish a wake for `app` now: none was in the last second.
    fn due(&self, key: &str) -> bool {
        let Ok(mut apps) = self.apps.lock() else {
            return false;
        };
        let Some(held) = apps.get_mut(key) else {
            return false;
        };
        let now = Instant::now();
        if held
            .woken
            .is_some_and(|at| now.duration_since(at) < WAKE_AGAIN)
        {
            return false;
        }
        held.woken = Some(now);
        true
    }
}

impl Activator {
    /// Returns once `namespace/app` has a ready replica here or an endpoint elsewhere (or
    /// is not an app at zero at all), holding the request and waking the app meanwhile;
    /// the 503 to answer when the hold is full or lasts too long.
    pub(crate) async fn until_awake(
        self: &Arc<Self>,
        router: &Router,
        lattice: &shoal_lattice::Lattice,
        namespace: &str,
        app: &str,
    ) -> Result<(), Response<ResponseBody>> {
        let mut held: Option<Hold> = None;
        loop {
            // Taken before the look, so a replica that becomes ready after it is not missed.
            let changes = router.changes();
            let Some(entry) = router.app(namespace, app) else {
                return Ok(());
            };
            if !(entry.scale_to_zero && entry.replicas.is_empty() && entry.endpoints.is_empty()) {
                return Ok(());
            }
            let hold = match &mut held {
                Some(hold) => {
                    hold.changes = changes;
                    hold
                }
                None => held.insert(self.hold(&entry, changes).ok_or_else(|| {
                    not_woken(
                        "this app is waking up and this host holds as many of its requests as it may: try again\n",
                    )
                })?),
            };
            if !hold.wait(lattice, &entry).await {
                return Err(not_woken("this app did not wake up in time: try again\n"));
            }
        }
    }
}

impl Hold {
    /// Wakes the app (at most once a second per app) and waits until the routing table
    /// changes or a second passes; `false` once the hold has lasted its limit.
    async fn wait(&mut self, lattice: &shoal_lattice::Lattice, app: &AppRoutes) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        if self.activator.due(&self.key) {
            let subject = shoal_lattice::names::wake_subject(
                lattice.name(),
                &self.activator.host,
                &app.namespace,
                &app.app,
            );
            if let Err(error) = lattice.client().publish(subject, bytes::Bytes::new()).await {
                tracing::debug!(app = %self.key, %error, "cannot publish a wake");
            }
        }
        let until = self.deadline.min(Instant::now() + WAKE_AGAIN);
        tokio::select! {
            _ = self.changes.changed() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        true
    }
}

/// The answer for a request that was held too long, or found the app with its most held.
fn not_woken(why: &'static str) -> Response<ResponseBody> {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, why);
    response.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    response
}
