//! Events: what happened in the lattice, for `shoal events`. The scheduler says when it
//! places or removes a replica, loses or finds a host, or a rollout fails; hosts say when a
//! replica becomes ready, fails or stops passing its health check. Each is published on
//! `shoal.<lattice>.v1.events.<namespace>.<app>.<publisher>` (or
//! `…events._hosts.<host>.<publisher>` for hosts; the publisher is a host id or
//! `_scheduler`, so a host may publish only its own) and kept an hour by the lattice's
//! events [`Journal`].

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, Reader, Start};
use crate::records::{Assignment, now_millis};
use crate::{Error, Lattice};

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// When, milliseconds since the Unix epoch.
    pub time: u64,
    /// What, in a word: `Placed`, `Removed`, `Ready`, `Failed`, `Unhealthy`, `HostLost`, …
    pub reason: String,
    /// Who says so: `scheduler <id>` or `host <id>`.
    pub source: String,
    /// The app's namespace, for app events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The app, for app events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The host concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The replica concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// What happened, for people.
    pub message: String,
}

impl Event {
    /// An event about `namespace/app`, now.
    pub fn app(source: &str, namespace: &str, app: &str, reason: &str, message: String) -> Self {
        Self {
            time: now_millis(),
            reason: reason.to_owned(),
            source: source.to_owned(),
            namespace: Some(namespace.to_owned()),
            app: Some(app.to_owned()),
            host: None,
            replica: None,
            message,
        }
    }

    /// An event about `host`, now.
    pub fn host(source: &str, host: &str, reason: &str, message: String) -> Self {
        Self {
            host: Some(host.to_owned()),
            ..Self::lattice(source, reason, message)
        }
    }

    /// An event about the lattice as a whole (a fleet upgrade), now.
    pub fn lattice(source: &str, reason: &str, message: String) -> Self {
        Self {
            time: now_millis(),
            reason: reason.to_owned(),
            source: source.to_owned(),
            namespace: None,
            app: None,
            host: None,
            replica: None,
            message,
        }
    }

    /// An event about the replica of `assignment`, now.
    pub fn replica(source: &str, assignment: &Assignment, reason: &str, message: String) -> Self {
        Self::app(
            source,
            &assignment.namespace,
            &assignment.app,
            reason,
            message,
        )
        .on(&assignment.host, &assignment.replica)
    }

    /// The same event about one replica on one host.
    pub fn on(mut self, host: &str, replica: &str) -> Self {
        self.host = Some(host.to_owned());
        self.replica = Some(replica.to_owned());
        self
    }

    /// What it is about: `app <namespace>/<app>`, `job <namespace>/<name>`,
    /// `cronjob <namespace>/<name>` or `host <id>`.
    pub fn object(&self) -> String {
        match (&self.namespace, &self.app, &self.host) {
            (Some(namespace), Some(app), _) => match app.split_once('=') {
                Some((kind, name)) => format!("{kind} {namespace}/{name}"),
                None => format!("app {namespace}/{app}"),
            },
            (_, _, Some(host)) => format!("host {host}"),
            _ => "lattice".to_owned(),
        }
    }

    fn subject_tail(&self) -> String {
        match (&self.namespace, &self.app, &self.host) {
            (Some(namespace), Some(app), _) => format!("{namespace}.{app}"),
            // `_` cannot start a namespace, so no app's subject can collide with a host's.
            (_, _, Some(host)) => format!("_hosts.{host}"),
            _ => "_lattice._lattice".to_owned(),
        }
    }
}

impl crate::journal::Attributed for Event {
    /// The scheduler's events are taken as they are; a host's speak for that host only:
    /// its source and host are the publisher, and what it is about is the subject's.
    fn attribute(&mut self, first: &str, second: &str, publisher: &str) {
        if publisher == crate::store::SCHEDULER_ORIGIN {
            return;
        }
        self.source = format!("host {publisher}");
        self.host = Some(publisher.to_owned());
        if first == "_hosts" {
            self.namespace = None;
            self.app = None;
        } else {
            self.namespace = Some(first.to_owned());
            self.app = Some(second.to_owned());
        }
    }
}

impl Lattice {
    /// Publishes `event`, fire and forget; a failure is logged, not returned, because no
    /// caller should stop over an event it could not tell.
    pub async fn emit(&self, event: Event) {
        if let Err(error) = self
            .publish_to(
                Journal::Events,
                &format!("{}.{}", event.subject_tail(), self.origin),
                &[&event],
            )
            .await
        {
            tracing::debug!(error = %crate::Chain(&error), reason = %event.reason, "an event was not published");
        }
    }

    /// Reads the events of one namespace's apps from `start`; with `follow`, goes on.
    ///
    /// # Errors
    /// [`Error::Stream`] when the stream cannot be read.
    pub async fn namespace_events(
        &self,
        namespace: &str,
        start: Start,
        follow: bool,
    ) -> Result<Reader<Event>, Error> {
        self.read(Journal::Events, &format!("{namespace}.>"), start, follow)
            .await
    }

    /// Reads events from `start`, of one app (`Some((namespace, app))`) or of everything;
    /// with `follow`, goes on with new ones.
    ///
    /// # Errors
    /// [`Error::Stream`] when the stream cannot be read.
    pub async fn events(
        &self,
        app: Option<(&str, &str)>,
        start: Start,
        follow: bool,
    ) -> Result<Reader<Event>, Error> {
        let tail = match app {
            Some((namespace, app)) => format!("{namespace}.{app}.>"),
            None => ">".to_owned(),
        };
        self.read(Journal::Events, &tail, start, follow).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_object_and_subject() {
        let placed = Event::app("scheduler s1", "default", "hello", "Placed", "x".into())
            .on("h1", "hello-1");
        assert_eq!(placed.object(), "app default/hello");
        assert_eq!(placed.subject_tail(), "default.hello");
        let lost = Event::host("scheduler s1", "h1", "HostLost", "y".into());
        assert_eq!(lost.object(), "host h1");
        assert_eq!(lost.subject_tail(), "_hosts.h1");
        assert_eq!(
            Journal::Events.subject("dev", &lost.subject_tail()),
            "shoal.dev.v1.events._hosts.h1"
        );
        let json = serde_json::to_value(&lost).unwrap_or_default();
        assert!(json.get("app").is_none(), "{json}");
    }
}
