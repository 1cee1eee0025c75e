//! The host's routing table: which ready local replica answers a request, by Host header
//! and path. Rebuilt whole from the ready replicas whenever they change; lookups are
//! lock-light (a read lock and a round-robin counter).
//!
//! Precedence: routes naming a host beat wildcard routes; among those, an exact path beats
//! a prefix and the longest prefix wins. A prefix matches at a path-segment boundary:
//! `/api` matches `/api` and `/api/users`, not `/apiary`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use shoal_lattice::records::Route;

use crate::http::HttpComponent;

/// One app's routes and its ready local replicas.
#[derive(Clone)]
pub struct AppRoutes {
    /// Namespace.
    pub namespace: String,
    /// App name.
    pub app: String,
    /// The app's routes.
    pub routes: Vec<Route>,
    /// How long a forwarded request may wait for its answer.
    pub timeout: std::time::Duration,
    /// Ready replicas on this host.
    pub replicas: Vec<Arc<HttpComponent>>,
    /// Hosts with a ready replica, as the scheduler last listed them: where to forward.
    pub endpoints: Arc<[String]>,
    /// Which other namespaces may call it by name.
    pub expose: shoal_lattice::records::Expose,
    /// `<namespace>/<app>`, made once so requests need not format it.
    pub key: String,
    /// The app may be at zero replicas: with no endpoint, hold its requests and wake it.
    pub scale_to_zero: bool,
}

impl AppRoutes {
    /// An app's routes, with no ready replica yet.
    pub fn new(
        namespace: &str,
        app: &str,
        routes: Vec<Route>,
        timeout: std::time::Duration,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            app: app.to_owned(),
            routes,
            timeout,
            replicas: Vec::new(),
            endpoints: Arc::from(Vec::new()),
            expose: shoal_lattice::records::Expose::default(),
            key: format!("{namespace}/{app}"),
            scale_to_zero: false,
        }
    }
}

/// What a lookup found.
pub enum Lookup {
    /// A ready local replica of the app.
    Replica {
        /// The app.
        app: Arc<AppRoutes>,
        /// The replica.
        component: Arc<HttpComponent>,
    },
    /// The route belongs to an app with no ready replica here: forward it.
    Remote(Arc<AppRoutes>),
    /// No app has this route.
    NoRoute,
}

/// How well a route matches: (names the host, exact path, prefix length); higher is better.
type Rank = (bool, bool, usize);

/// The apps, in the order routes are matched, and by namespace and name: a forwarded
/// request or a service call finds its app without a walk over every app.
#[derive(Default)]
struct Table {
    apps: Vec<Arc<AppRoutes>>,
    by_name: HashMap<String, HashMap<String, Arc<AppRoutes>>>,
}

/// The routing table.
pub struct Router {
    apps: RwLock<Table>,
    next: AtomicUsize,
    /// Told on every change, for requests waiting for an app to get a replica.
    changed: tokio::sync::watch::Sender<()>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            apps: RwLock::default(),
            next: AtomicUsize::new(0),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }
}

fn path_matches(prefix: &str, path: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

impl Router {
    /// Replaces the table.
    pub fn set(&self, apps: Vec<AppRoutes>) {
        let apps: Vec<Arc<AppRoutes>> = apps.into_iter().map(Arc::new).collect();
        let mut by_name: HashMap<String, HashMap<String, Arc<AppRoutes>>> = HashMap::new();
        for app in &apps {
            by_name
                .entry(app.namespace.clone())
                .or_default()
                .insert(app.app.clone(), Arc::clone(app));
        }
        if let Ok(mut table) = self.apps.write() {
            *table = Table { apps, by_name };
        }
        self.changed.send_replace(());
    }

    /// Tells of every later change of the table.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Finds the replica for a request to `host` (the Host header, port removed) and `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Lookup {
        let Ok(table) = self.apps.read() else {
            return Lookup::NoRoute;
        };
        // Hosts compare case-insensitively, without the port.
        let host = host.map(|host| host.split(':').next().unwrap_or(host));
        let mut best: Option<(Rank, &Arc<AppRoutes>)> = None;
        for app in &table.apps {
            for route in &app.routes {
                let host_rank = match (&route.host, &host) {
                    (None, _) => false,
                    (Some(wanted), Some(host)) if wanted.eq_ignore_ascii_case(host) => true,
                    _ => continue,
                };
                if !path_matches(&route.path, path) {
                    continue;
                }
                let rank = (host_rank, route.path == path, route.path.len());
                if best.as_ref().is_none_or(|(current, _)| rank > *current) {
                    best = Some((rank, app));
                }
            }
        }
        match best {
            None => Lookup::NoRoute,
            Some((_, app)) if app.replicas.is_empty() => Lookup::Remote(Arc::clone(app)),
            Some((_, app)) => {
                let index = self.next.fetch_add(1, Ordering::Relaxed) % app.replicas.len();
                Lookup::Replica {
                    component: Arc::clone(&app.replicas[index]),
                    app: Arc::clone(app),
                }
            }
        }
    }
}

impl Router {
    /// Whether the lattice has an app `namespace/app` that an app of `caller` may call:
    /// one of its own namespace, or one that exposes itself to `caller`.
    pub fn reachable(&self, caller: &str, namespace: &str, app: &str) -> bool {
        self.find(namespace, app)
            .is_some_and(|entry| entry.expose.allows(namespace, caller))
    }

    /// The entry of `namespace/app`.
    pub fn app(&self, namespace: &str, app: &str) -> Option<Arc<AppRoutes>> {
        self.find(namespace, app)
    }

    /// The entry of `namespace/app`.
    fn find(&self, namespace: &str, app: &str) -> Option<Arc<AppRoutes>> {
        let table = self.apps.read().ok()?;
        table.by_name.get(namespace)?.get(app).cloned()
    }

    /// How long a forwarded request to `namespace/app` may wait.
    pub fn timeout_of(&self, namespace: &str, app: &str) -> std::time::Duration {
        self.find(namespace, app)
            .map_or(std::time::Duration::from_secs(35), |entry| entry.timeout)
    }

    /// The hosts with a ready replica of `namespace/app`.
    pub fn endpoints(&self, namespace: &str, app: &str) -> Arc<[String]> {
        self.find(namespace, app).map_or_else(
            || Arc::from(Vec::new()),
            |entry| Arc::clone(&entry.endpoints),
        )
    }

    /// A ready local replica of `namespace/app`, round robin.
    pub fn pick(&self, namespace: &str, app: &str) -> Option<Arc<HttpComponent>> {
        let entry = self.find(namespace, app)?;
        if entry.replicas.is_empty() {
            return None;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % entry.replicas.len();
        Some(Arc::clone(&entry.replicas[index]))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(host: Option<&str>, path: &str) -> Route {
        Route {
            host: host.map(str::to_owned),
            path: path.to_owned(),
        }
    }

    fn app(name: &str, routes: Vec<Route>) -> AppRoutes {
        AppRoutes::new("default", name, routes, std::time::Duration::from_secs(1))
    }

    fn found(router: &Router, host: Option<&str>, path: &str) -> String {
        match router.lookup(host, path) {
            Lookup::Remote(app) => app.app.clone(),
            Lookup::Replica { .. } => "replica".to_owned(),
            Lookup::NoRoute => "none".to_owned(),
        }
    }

    #[test]
    fn precedence_is_host_then_exact_then_longest_prefix() {
        let router = Router::default();
        router.set(vec![
            app("root", vec![route(None, "/")]),
            app("api", vec![route(None, "/api")]),
            app("users", vec![route(None, "/api/users")]),
            app("exact", vec![route(None, "/api/users/me")]),
            app("hosted", vec![route(Some("hello.local"), "/")]),
        ]);
        assert_eq!(found(&router, None, "/anything"), "root");
        assert_eq!(found(&router, None, "/api"), "api");
        assert_eq!(found(&router, None, "/apiary"), "root");
        assert_eq!(found(&router, None, "/api/users/42"), "users");
        assert_eq!(found(&router, None, "/api/users/me"), "exact");
        assert_eq!(found(&router, Some("hello.local:8080"), "/api"), "hosted");
        assert_eq!(found(&router, Some("other.local"), "/api"), "api");
        router.set(vec![app("hosted", vec![route(Some("hello.local"), "/")])]);
        assert_eq!(found(&router, Some("other.local"), "/"), "none");
    }

    #[test]
    fn apps_are_found_by_namespace_and_name() {
        let router = Router::default();
        let mut team = AppRoutes::new("team", "web", Vec::new(), Duration::from_secs(7));
        team.endpoints = Arc::from(vec!["h2".to_owned()]);
        router.set(vec![
            app("web", vec![route(None, "/")]),
            team,
            app("api", Vec::new()),
        ]);
        assert_eq!(router.timeout_of("team", "web"), Duration::from_secs(7));
        assert_eq!(router.timeout_of("default", "web"), Duration::from_secs(1));
        assert_eq!(&*router.endpoints("team", "web"), ["h2".to_owned()]);
        assert!(router.endpoints("default", "web").is_empty());
        assert!(router.app("other", "web").is_none());
        assert!(router.pick("team", "web").is_none());
        // A new table forgets what the old one held.
        router.set(vec![app("api", Vec::new())]);
        assert!(router.app("team", "web").is_none());
        assert!(router.app("default", "api").is_some());
    }
}
