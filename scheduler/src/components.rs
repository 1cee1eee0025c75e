//! Keeps the lattice's copy of the components its workloads pin (see
//! `shoal_lattice::components`): the leader copies each pinned component that is not there
//! yet from the registry, manifest last, and drops the copies nothing pins any more (an
//! app's kept revisions count: a rollback must find its component). Hosts read the copy
//! when they cannot reach the registry. After each sweep, what was copied is compiled for
//! the hosts' targets (`crate::precompile`).
//!
//! Copying runs beside the passes, in a task of its own, so a slow or unreachable registry
//! never holds up placement.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_lattice::Lattice;
use shoal_lattice::components::{ComponentStore, component_of, object_name};
use shoal_lattice::jobs::{CronJobRecord, JobRecord};
use shoal_lattice::records::{AppRecord, Assignment, RevisionRecord, pinned_reference};

use crate::precompile::Targets;

/// One part of a component to store, as the OCI client names it (`layer`, say); its object
/// in the bucket is `shoal_lattice::components::object_name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Which part.
    pub part: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Where the parts of a pinned component come from (the registry, through an OCI client
/// that verifies what it pulls).
pub trait Source: Send + Sync + 'static {
    /// Every part of pinned reference `pinned`, the one that marks the copy complete last.
    fn parts<'a>(
        &'a self,
        pinned: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Part>, String>> + Send + 'a>>;
}

/// How the control plane keeps the copy.
#[derive(Clone)]
pub struct Copier {
    /// Where components come from.
    pub source: Arc<dyn Source>,
    /// The bucket's size limit (it is made with it).
    pub max_bytes: u64,
    /// The name of the part that marks a copy complete (`manifest`).
    pub complete: String,
    /// The name of the part holding the component's bytes (`layer`).
    pub layer: String,
    /// What compiles copied components for the hosts' targets; `None`: hosts compile.
    pub compiler: Option<Arc<dyn crate::precompile::Compiler>>,
}

impl std::fmt::Debug for Copier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copier")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// The components the lattice's copy should hold: manifest digest → the pinned references
/// that name it (one digest may be named in several repositories, and one of them may be a
/// registry that never answers: each is tried). Apps (also those waiting to be placed or
/// scaled to zero), jobs, cron jobs, and whatever a host runs now (a replica of an earlier
/// revision during a rollout).
pub fn wanted(
    apps: &[AppRecord],
    jobs: &[JobRecord],
    cron_jobs: &[CronJobRecord],
    assignments: &[Assignment],
) -> Wanted {
    let pinned = apps
        .iter()
        .map(|app| (&app.spec.component, &app.digest))
        .chain(jobs.iter().map(|job| (&job.spec.component, &job.digest)))
        .chain(
            cron_jobs
                .iter()
                .map(|cron| (&cron.spec.job_template.component, &cron.digest)),
        )
        .chain(
            assignments
                .iter()
                .map(|assignment| (&assignment.template.component, &assignment.digest)),
        );
    let mut wanted = Wanted::new();
    for (component, digest) in pinned.filter(|(_, digest)| !digest.is_empty()) {
        wanted
            .entry(digest.clone())
            .or_default()
            .insert(pinned_reference(component, digest));
    }
    wanted
}

/// Manifest digest → the pinned references that name it.
pub type Wanted = BTreeMap<String, BTreeSet<String>>;

/// What a sweep should do given what the bucket holds: the components to copy (those
/// whose completing part is missing) and the objects to delete (parts of components
/// nothing pins).
pub fn plan<'a>(
    wanted: &'a Wanted,
    stored: &BTreeSet<String>,
    complete: &str,
) -> (Vec<(&'a String, &'a BTreeSet<String>)>, Vec<String>) {
    let copy = wanted
        .iter()
        .filter(|(digest, _)| !stored.contains(&object_name(digest, complete)))
        .collect();
    let drop = stored
        .iter()
        .filter(|name| !wanted.contains_key(component_of(name)))
        .cloned()
        .collect();
    (copy, drop)
}

/// How often the copy is checked when nothing pinned changed.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How long one component's pull may take: a registry that answers slowly holds up the
/// copies after it no longer than this.
const COPY_DEADLINE: Duration = Duration::from_secs(300);

/// The leader's copying: at most one sweep at a time, and after each, a compile of what it
/// copied (in a task of its own, so a slow compile never holds up the next copy).
#[derive(Default)]
pub(crate) struct Copying {
    task: Option<tokio::task::JoinHandle<()>>,
    /// When the last sweep started and what it was for.
    last: Option<(Instant, Pinned)>,
    /// The revisions of the buckets the pinned set was last read from: unchanged, the set
    /// is too, and passes (many a second) do not read it again.
    read_at: Option<Revisions>,
    /// Compiling for the hosts' targets.
    compiling: crate::precompile::Compiling,
    /// What the last sweep was for, until its compile starts.
    compile_due: Option<Pinned>,
}

/// The last revisions of the buckets [`wanted`] reads: apps, jobs, cron jobs, assignments.
pub(crate) type Revisions = [u64; 4];

/// What a sweep keeps: the wanted components, and the targets to compile them for.
pub(crate) type Pinned = (Wanted, Targets);

impl Copying {
    /// Starts a sweep when none runs and the pinned components (or the hosts' targets)
    /// changed since the last one (or it is a minute old), and a compile when a sweep has
    /// ended since the last. `pinned` is called only when the buckets [`wanted`] reads moved
    /// on since it was last called (`revisions`), or a minute passed: a host with a new
    /// target waits for either.
    pub(crate) fn tick(
        &mut self,
        lattice: &Lattice,
        copier: &Copier,
        revisions: Revisions,
        pinned: impl FnOnce() -> Pinned,
        now: Instant,
    ) {
        if self.task.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        if let Some(compiler) = &copier.compiler
            && let Some((wanted, targets)) = self.compile_due.take()
        {
            let compiling = self
                .compiling
                .start(lattice, copier, compiler, wanted, targets);
            if let Some((wanted, targets)) = compiling {
                // A compile still runs: this one waits for it.
                self.compile_due = Some((wanted, targets));
            }
        }
        let recent = self
            .last
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < SWEEP_EVERY);
        if recent && self.read_at == Some(revisions) {
            return;
        }
        self.read_at = Some(revisions);
        let pinned = pinned();
        if recent && self.last.as_ref().is_some_and(|(_, last)| *last == pinned) {
            return;
        }
        self.last = Some((now, pinned.clone()));
        self.compile_due = Some(pinned.clone());
        let (lattice, copier) = (lattice.clone(), copier.clone());
        self.task = Some(tokio::spawn(async move {
            sweep(&lattice, &copier, &pinned.0).await;
        }));
    }

    /// Stops a sweep in progress (this scheduler no longer leads).
    pub(crate) fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.compiling.stop();
        self.last = None;
        self.read_at = None;
        self.compile_due = None;
    }
}

/// Copies what is missing and drops what nothing pins; failures are logged and tried again
/// by the next sweep.
async fn sweep(lattice: &Lattice, copier: &Copier, wanted: &Wanted) {
    let Some((store, stored)) = open_listed(lattice, copier.max_bytes).await else {
        return;
    };
    let (copy, mut drop) = plan(wanted, &stored, &copier.complete);
    if !drop.is_empty() {
        // What an app's kept revisions pin stays: a rollback at a site that cannot reach
        // the registry needs it. Unknown (the revisions cannot be read): nothing is dropped.
        match lattice
            .list::<RevisionRecord>(shoal_lattice::Bucket::Revisions, "")
            .await
        {
            Ok(revisions) => {
                let kept: BTreeSet<String> = revisions
                    .into_iter()
                    .map(|revision| revision.value.digest)
                    .collect();
                let before = drop.len();
                drop.retain(|name| !kept.contains(component_of(name)));
                if drop.len() < before {
                    tracing::info!(
                        objects = before - drop.len(),
                        "the lattice's copy keeps components that only apps' earlier revisions pin (for a rollback)"
                    );
                }
            }
            Err(error) => {
                tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot read the apps' revisions: the lattice's copy keeps every component for now");
                drop.clear();
            }
        }
    }
    // Dropped first: the room they free may be what a new copy needs.
    for name in drop {
        if let Err(error) = store.delete(&name).await {
            tracing::warn!(%name, error = %shoal_lattice::Chain(&error), "cannot drop a component nothing pins from the lattice's copy");
        }
    }
    for (digest, references) in copy {
        let Some((pinned, parts)) = pull_any(copier, references).await else {
            continue;
        };
        let size: usize = parts.iter().map(|part| part.bytes.len()).sum();
        let mut stored = true;
        for part in &parts {
            if let Err(error) = store
                .put(&object_name(digest, &part.part), &part.bytes)
                .await
            {
                tracing::warn!(component = %pinned, part = %part.part, error = %shoal_lattice::Chain(&error), "cannot store the component in the lattice (is the bucket full? shoal scheduler --component-store)");
                stored = false;
                break;
            }
        }
        if stored {
            tracing::info!(component = %pinned, bytes = size, "component copied into the lattice");
        }
    }
}

/// The components bucket (made at most `max_bytes` large when missing) and the names of
/// the objects in it; `None`, logged, when JetStream cannot say.
pub(crate) async fn open_listed(
    lattice: &Lattice,
    max_bytes: u64,
) -> Option<(ComponentStore, BTreeSet<String>)> {
    let store = match lattice.component_store(max_bytes).await {
        Ok(store) => store,
        Err(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot open the lattice's copy of components");
            return None;
        }
    };
    match store.names().await {
        Ok(stored) => Some((store, stored)),
        Err(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot list the lattice's copy of components");
            None
        }
    }
}

/// The parts of the first of `references` that a pull within [`COPY_DEADLINE`] gets.
async fn pull_any<'a>(
    copier: &Copier,
    references: &'a BTreeSet<String>,
) -> Option<(&'a str, Vec<Part>)> {
    for pinned in references {
        match tokio::time::timeout(COPY_DEADLINE, copier.source.parts(pinned)).await {
            Ok(Ok(parts)) => return Some((pinned, parts)),
            Ok(Err(error)) => {
                tracing::warn!(component = %pinned, %error, "cannot copy the component into the lattice; trying again later");
            }
            Err(_) => {
                tracing::warn!(component = %pinned, deadline = ?COPY_DEADLINE, "the registry took too long to copy the component into the lattice; trying again later");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_copies_what_is_incomplete_and_drops_what_nothing_pins() {
        let wanted: Wanted = [
            ("sha256:aa".to_owned(), ["r/a@sha256:aa".to_owned()].into()),
            (
                "sha256:bb".to_owned(),
                ["r/b@sha256:bb".to_owned(), "s/b@sha256:bb".to_owned()].into(),
            ),
        ]
        .into();
        let stored: BTreeSet<String> = [
            // Complete.
            "sha256:aa/layer",
            "sha256:aa/manifest",
            // A copy cut short: no manifest yet.
            "sha256:bb/layer",
            // Nothing pins it any more.
            "sha256:cc/layer",
            "sha256:cc/manifest",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let (copy, drop) = plan(&wanted, &stored, "manifest");
        let both: BTreeSet<String> =
            ["r/b@sha256:bb".to_owned(), "s/b@sha256:bb".to_owned()].into();
        assert_eq!(copy, [(&"sha256:bb".to_owned(), &both)]);
        assert_eq!(drop, ["sha256:cc/layer", "sha256:cc/manifest"]);
    }

    #[test]
    fn components_are_pinned_by_repository_and_digest() {
        assert_eq!(
            pinned_reference("localhost:5000/x/hello:1.0", "sha256:aa"),
            "localhost:5000/x/hello@sha256:aa"
        );
        assert_eq!(
            pinned_reference("localhost:5000/x/hello@sha256:bb", "sha256:aa"),
            "localhost:5000/x/hello@sha256:aa"
        );
    }
}
