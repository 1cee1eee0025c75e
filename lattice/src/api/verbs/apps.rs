//! The verbs on apps: apply, delete, scale, roll back, pause, and the reads of apps,
//! revisions and replicas.

use serde::{Deserialize, Serialize};

use super::{Rules, Verb, check_named, listing, named_verb};
use crate::Error;
use crate::api::{AppDetail, AppView, AppliedApp, History, ReplicaView, Scaled, UndoneTo};
use crate::auth::Role;
use crate::records::AppSpec;

/// One app of an `apply`, its component already pinned by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppManifest {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec as written.
    pub spec: AppSpec,
    /// The component's manifest digest.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
}

/// Create or update apps (all or nothing for validation and route collisions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Apply {
    /// The apps.
    pub apps: Vec<AppManifest>,
}

impl Rules for Apply {
    fn verb(&self) -> &'static str {
        "apply"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        let namespaces = self.apps.iter().map(|app| app.namespace.as_str());
        (Role::Editor, namespaces.collect())
    }

    fn check_names(&self) -> Result<(), Error> {
        self.apps
            .iter()
            .try_for_each(|app| check_named(&app.namespace, "app", &app.name))
    }
}

impl Verb for Apply {
    type Answer = Vec<AppliedApp>;
}

named_verb!(
    /// Delete an app (its key-value data goes with it).
    DeleteApp, "app", |_| "delete", Role::Editor, (), resend: true
);
named_verb!(
    /// Change an app's replica count.
    ScaleApp, "app", |_| "scale", Role::Editor, Scaled, resend: true,
    /// Replicas wanted.
    replicas: u32,
);
named_verb!(
    /// Roll back to an earlier revision.
    /// (Not sent again when no answer came: it would roll back twice.)
    UndoRollout, "app", |_| "undo", Role::Editor, UndoneTo, resend: false,
    /// The revision; `None` for the one before.
    to_revision: Option<u64>,
);
named_verb!(
    /// Pause or resume a rollout.
    PauseRollout, "app",
    |request| if request.paused { "pause" } else { "resume" },
    Role::Editor,
    (),
    resend: true,
    /// Paused or resumed.
    paused: bool,
);
named_verb!(
    /// An app's revisions.
    AppHistory, "app", |_| "history", Role::Viewer, History, resend: true
);
named_verb!(
    /// One app in detail.
    DescribeApp, "app", |_| "describe", Role::Viewer, AppDetail, resend: true
);

listing!(
    /// Apps with their status.
    GetApps,
    Vec<AppView>
);
listing!(
    /// Replicas with their status.
    GetReplicas,
    Vec<ReplicaView>
);
