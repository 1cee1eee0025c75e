//! Keeps the lattice's copy of the components its workloads pin (see
//! `shoal_lattice::components`): the leader copies each pinned component that is not there
//! yet from the registry, manifest last, and drops the copies nothing pins any more (an
//! app's kept revisions count: a rollback must find its component). Hosts read the copy
//! when they cannot reach the registry.
//!
//! With a compiler, the leader also compiles each copied component for every target its
//! hosts report (triple, CPU features, engine settings: `CompileTarget`), and stores the
//! code beside the copy under the target's compile key: a host that has not compiled a
//! component loads that instead of compiling on the device. Only the control plane writes
//! the bucket, so no host's code ever reaches another.
//!
//! Copying and compiling run beside the passes, in a task of their own, so a slow or
//! unreachable registry (or a slow compile) never holds up placement.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_lattice::Lattice;
use shoal_lattice::components::{compiled_key, compiled_part, component_of, object_name};
use shoal_lattice::jobs::{CronJobRecord, JobRecord};
use shoal_lattice::records::{
    AppRecord, Assignment, CompileTarget, HostRecord, RevisionRecord, pinned_reference,
};

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

/// What compiles a component for a host's target (a compile worker, capped).
pub trait Compiler: Send + Sync + 'static {
    /// The code of component `wasm` for `target`, as the host's runtime adopts it; an error
    /// when it does not compile or cannot be made for that target by this build.
    fn compile<'a>(
        &'a self,
        target: &'a CompileTarget,
        wasm: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + 'a>>;
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
    pub compiler: Option<Arc<dyn Compiler>>,
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

/// Compile key → the target hosts reported it for.
pub type Targets = BTreeMap<String, CompileTarget>;

/// The most targets compiled for: those the most hosts report (a host can report any
/// target, but only its own record: one host cannot crowd the others' out).
pub const MAX_TARGETS: usize = 8;

/// The targets to compile for: what `hosts` report, the [`MAX_TARGETS`] most reported.
pub fn targets<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> Targets {
    let mut counted: BTreeMap<&str, (usize, &CompileTarget)> = BTreeMap::new();
    for target in hosts
        .into_iter()
        .filter_map(|host| host.compile_target.as_ref())
    {
        counted.entry(&target.key).or_insert((0, target)).0 += 1;
    }
    let mut ranked: Vec<_> = counted.into_values().collect();
    ranked.sort_by(|(a, a_target), (b, b_target)| b.cmp(a).then(a_target.key.cmp(&b_target.key)));
    ranked
        .into_iter()
        .take(MAX_TARGETS)
        .map(|(_, target)| (target.key.clone(), target.clone()))
        .collect()
}

/// What compiling should do given what the bucket holds: the (component, key) pairs to
/// compile (complete copies of wanted components without code for a target), and the code
/// to drop (for keys no host reports; kept while no host reports any, as when all are
/// briefly gone).
pub fn compile_plan<'a>(
    wanted: &'a Wanted,
    stored: &BTreeSet<String>,
    complete: &str,
    targets: &'a Targets,
) -> (Vec<(&'a String, &'a CompileTarget)>, Vec<String>) {
    let compile = wanted
        .keys()
        .filter(|digest| stored.contains(&object_name(digest, complete)))
        .flat_map(|digest| targets.values().map(move |target| (digest, target)))
        .filter(|(digest, target)| {
            !stored.contains(&object_name(digest, &compiled_part(&target.key)))
        })
        .collect();
    let drop = stored
        .iter()
        .filter(|name| {
            !targets.is_empty()
                && name
                    .split_once('/')
                    .and_then(|(_, part)| compiled_key(part))
                    .is_some_and(|key| !targets.contains_key(key))
        })
        .cloned()
        .collect();
    (compile, drop)
}

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

/// The leader's copying: at most one sweep at a time.
#[derive(Default)]
pub(crate) struct Copying {
    task: Option<tokio::task::JoinHandle<()>>,
    /// When the last sweep started and what it was for.
    last: Option<(Instant, Pinned)>,
    /// The revisions of the buckets the pinned set was last read from: unchanged, the set
    /// is too, and passes (many a second) do not read it again.
    read_at: Option<Revisions>,
    /// The code that did not compile (its object names), not tried again while this
    /// scheduler leads: a component one target's compiler refuses would otherwise be
    /// compiled in vain every minute.
    refused: Arc<std::sync::Mutex<BTreeSet<String>>>,
}

/// The last revisions of the buckets [`wanted`] reads: apps, jobs, cron jobs, assignments.
pub(crate) type Revisions = [u64; 4];

/// What a sweep keeps: the wanted components, and the targets to compile them for.
pub(crate) type Pinned = (Wanted, Targets);

impl Copying {
    /// Starts a sweep when none runs and the pinned components (or the hosts' targets)
    /// changed since the last one (or it is a minute old). `pinned` is called only when the
    /// buckets [`wanted`] reads moved on since it was last called (`revisions`), or a minute
    /// passed: a host with a new target waits for either.
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
        let (lattice, copier, refused) = (lattice.clone(), copier.clone(), self.refused.clone());
        self.task = Some(tokio::spawn(async move {
            let (wanted, targets) = pinned;
            sweep(&lattice, &copier, &wanted, &targets, &refused).await;
        }));
    }

    /// Stops a sweep in progress (this scheduler no longer leads).
    pub(crate) fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.last = None;
        self.read_at = None;
        if let Ok(mut refused) = self.refused.lock() {
            refused.clear();
        }
    }
}

/// Copies what is missing and drops what nothing pins, then compiles for `targets`;
/// failures are logged and tried again by the next sweep.
async fn sweep(
    lattice: &Lattice,
    copier: &Copier,
    wanted: &Wanted,
    targets: &Targets,
    refused: &std::sync::Mutex<BTreeSet<String>>,
) {
    let store = match lattice.component_store(copier.max_bytes).await {
        Ok(store) => store,
        Err(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot open the lattice's copy of components");
            return;
        }
    };
    let stored = match store.names().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot list the lattice's copy of components");
            return;
        }
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
    if let Some(compiler) = &copier.compiler {
        let compiling = Compiling {
            compiler: compiler.as_ref(),
            refused,
        };
        precompile(lattice, &store, copier, &compiling, wanted, targets).await;
    }
}

/// How long one compile may take: a component that compiles slowly holds up the others no
/// longer than this.
const COMPILE_DEADLINE: Duration = Duration::from_secs(300);

/// A sweep's compiler and the code it was refused.
struct Compiling<'a> {
    compiler: &'a dyn Compiler,
    refused: &'a std::sync::Mutex<BTreeSet<String>>,
}

/// Compiles the copied components for each of `targets` that has no code yet (and was not
/// refused), and drops code for targets no host reports.
async fn precompile(
    lattice: &Lattice,
    store: &shoal_lattice::components::ComponentStore,
    copier: &Copier,
    compiling: &Compiling<'_>,
    wanted: &Wanted,
    targets: &Targets,
) {
    let stored = match store.names().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(error = %shoal_lattice::Chain(&error), "cannot list the lattice's copy of components");
            return;
        }
    };
    let (compile, drop) = compile_plan(wanted, &stored, &copier.complete, targets);
    for name in drop {
        if let Err(error) = store.delete(&name).await {
            tracing::warn!(%name, error = %shoal_lattice::Chain(&error), "cannot drop precompiled code no host can use");
        }
    }
    for (digest, target) in compile {
        let name = object_name(digest, &compiled_part(&target.key));
        if compiling
            .refused
            .lock()
            .is_ok_and(|refused| refused.contains(&name))
        {
            continue;
        }
        let wasm = match lattice
            .component_object(&object_name(digest, &copier.layer), copier.max_bytes)
            .await
        {
            Ok(Some(wasm)) => wasm,
            Ok(None) => continue,
            Err(error) => {
                tracing::warn!(component = %digest, error = %shoal_lattice::Chain(&error), "cannot read the component to precompile it");
                continue;
            }
        };
        let started = Instant::now();
        let compiled =
            tokio::time::timeout(COMPILE_DEADLINE, compiling.compiler.compile(target, wasm))
                .await
                .unwrap_or_else(|_| Err(format!("took longer than {COMPILE_DEADLINE:?}")));
        let compiled = match compiled {
            Ok(compiled) => compiled,
            Err(error) => {
                tracing::warn!(component = %digest, target = %target.triple, key = %target.key, %error, "cannot precompile the component for hosts of this target; they compile it themselves");
                if let Ok(mut refused) = compiling.refused.lock() {
                    refused.insert(name);
                }
                continue;
            }
        };
        match store.put(&name, &compiled).await {
            Ok(()) => tracing::info!(
                component = %digest,
                target = %target.triple,
                key = %target.key,
                bytes = compiled.len(),
                elapsed_ms = started.elapsed().as_millis(),
                "component precompiled for hosts of this target"
            ),
            Err(error) => {
                tracing::warn!(component = %digest, error = %shoal_lattice::Chain(&error), "cannot store precompiled code in the lattice (is the bucket full? shoal scheduler --component-store)")
            }
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

    fn target(key: &str) -> CompileTarget {
        CompileTarget {
            triple: "x86_64-unknown-linux-gnu".to_owned(),
            isa_flags: vec!["has_avx".to_owned()],
            fuel: false,
            wasi_03: true,
            key: key.to_owned(),
        }
    }

    fn host(id: &str, key: Option<&str>) -> HostRecord {
        HostRecord {
            id: id.to_owned(),
            labels: BTreeMap::new(),
            capacity: shoal_lattice::records::Capacity {
                memory: shoal_lattice::quantity::Memory(1 << 30),
                cpu: shoal_lattice::quantity::Millicores(1000),
                max_replicas: 10,
            },
            http: None,
            version: "test".to_owned(),
            started_at: 0,
            heartbeat_at: 0,
            cached: Vec::new(),
            draining: false,
            lost_after: None,
            load: BTreeMap::new(),
            secrets_key: None,
            lattice_mismatch: None,
            verifies_signatures: true,
            wasi: Vec::new(),
            connection: None,
            compile_target: key.map(target),
        }
    }

    #[test]
    fn code_is_compiled_for_the_targets_most_hosts_report() {
        let mut hosts = vec![host("quiet", None)];
        // Many hosts of two targets, and one host each of many others (one host can only
        // report one target: its own record).
        hosts.extend((0..5).map(|n| host(&format!("a{n}"), Some("aa"))));
        hosts.extend((0..3).map(|n| host(&format!("b{n}"), Some("bb"))));
        hosts.extend((0..20).map(|n| host(&format!("odd{n}"), Some(&format!("{n:02}")))));
        let targets = targets(&hosts);
        assert_eq!(targets.len(), MAX_TARGETS);
        assert!(targets.contains_key("aa") && targets.contains_key("bb"));
    }

    #[test]
    fn complete_copies_are_compiled_for_each_target_and_code_no_host_uses_goes() {
        let wanted: Wanted = [
            ("sha256:aa".to_owned(), ["r/a@sha256:aa".to_owned()].into()),
            ("sha256:bb".to_owned(), ["r/b@sha256:bb".to_owned()].into()),
        ]
        .into();
        let targets: Targets = [
            ("k1".to_owned(), target("k1")),
            ("k2".to_owned(), target("k2")),
        ]
        .into();
        let stored: BTreeSet<String> = [
            "sha256:aa/layer",
            "sha256:aa/manifest",
            "sha256:aa/compiled.k1",
            // No host reports it any more.
            "sha256:aa/compiled.k0",
            // Not complete: not compiled yet.
            "sha256:bb/layer",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let (compile, drop) = compile_plan(&wanted, &stored, "manifest", &targets);
        let compile: Vec<(&str, &str)> = compile
            .iter()
            .map(|(digest, target)| (digest.as_str(), target.key.as_str()))
            .collect();
        assert_eq!(compile, [("sha256:aa", "k2")]);
        assert_eq!(drop, ["sha256:aa/compiled.k0"]);
        // With no host reporting a target (all gone for a moment), no code goes.
        let none = Targets::new();
        let (compile, drop) = compile_plan(&wanted, &stored, "manifest", &none);
        assert!(compile.is_empty() && drop.is_empty());
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
