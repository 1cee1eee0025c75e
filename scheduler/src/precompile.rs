//! Code compiled ahead of time for the hosts' machines: after each sweep of the lattice's
//! copy of components (`crate::components`), the leader compiles each copied component for
//! the targets its hosts report (`CompileTarget`: triple, CPU features, engine settings and
//! the compile key they hash to) and stores the code beside the copy, as
//! `<digest>/compiled.<key>`. A host that has not compiled a component loads that instead of
//! compiling on the device.
//!
//! Only the control plane writes the bucket, so no host's code ever reaches another. A host
//! reports its own target, so it may report anything: the compiler checks that its engine
//! for the reported settings has the reported key (or compiles nothing), and the code is
//! stored under that key, which only an engine making the same code has.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_lattice::Lattice;
use shoal_lattice::components::{
    ComponentStore, MAX_COMPILED_BYTES, compiled_key, compiled_part, object_name,
};
use shoal_lattice::records::{CompileTarget, HostRecord};

use crate::components::{Copier, Wanted};

/// Why a component was not compiled for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileFailure {
    /// It will not compile for that target however often it is tried (the compiler refused
    /// it, ran past its memory cap or deadline, or makes another key): not tried again
    /// while this scheduler leads.
    Refused(String),
    /// Something of the moment (a process that could not start): tried again next sweep.
    Failed(String),
}

impl std::fmt::Display for CompileFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refused(message) | Self::Failed(message) => f.write_str(message),
        }
    }
}

/// What compiles a component for a host's target (a compile worker, capped).
pub trait Compiler: Send + Sync + 'static {
    /// The code of component `wasm` for `target`, as the host's runtime adopts it.
    fn compile<'a>(
        &'a self,
        target: &'a CompileTarget,
        wasm: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, CompileFailure>> + Send + 'a>>;
}

/// The targets hosts report: those to compile for, and every key any host reports (code
/// for those is kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// Compile key → target, for the [`MAX_TARGETS`] most reported.
    pub compile: BTreeMap<String, CompileTarget>,
    /// Every key a host reports.
    pub reported: BTreeSet<String>,
}

/// The most targets compiled for: those the most hosts report (a host can report any
/// target, but only in its own record: one host cannot crowd the others out).
pub const MAX_TARGETS: usize = 8;

/// How long one compile may take before it counts as refused.
pub const COMPILE_DEADLINE: Duration = Duration::from_secs(300);

/// The targets `hosts` report.
pub fn targets<'a>(hosts: impl IntoIterator<Item = &'a HostRecord>) -> Targets {
    let mut counted: BTreeMap<&str, (usize, &CompileTarget)> = BTreeMap::new();
    for target in hosts
        .into_iter()
        .filter_map(|host| host.compile_target.as_ref())
    {
        counted.entry(&target.key).or_insert((0, target)).0 += 1;
    }
    let reported = counted.keys().map(|key| (*key).to_owned()).collect();
    let mut ranked: Vec<_> = counted.into_values().collect();
    ranked.sort_by(|(a, a_target), (b, b_target)| {
        b.cmp(a).then_with(|| a_target.key.cmp(&b_target.key))
    });
    let compile = ranked
        .into_iter()
        .take(MAX_TARGETS)
        .map(|(_, target)| (target.key.clone(), target.clone()))
        .collect();
    Targets { compile, reported }
}

/// What compiling should do given what the bucket holds: the (component, target) pairs to
/// compile (complete copies of wanted components without code for a target), and the code
/// to drop (for keys no host reports; all kept while no host reports any, as when all are
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
        .flat_map(|digest| targets.compile.values().map(move |target| (digest, target)))
        .filter(|(digest, target)| {
            !stored.contains(&object_name(digest, &compiled_part(&target.key)))
        })
        .collect();
    let drop = stored
        .iter()
        .filter(|name| {
            !targets.reported.is_empty()
                && name
                    .split_once('/')
                    .and_then(|(_, part)| compiled_key(part))
                    .is_some_and(|key| !targets.reported.contains(key))
        })
        .cloned()
        .collect();
    (compile, drop)
}

/// The leader's compiling: one compile task at a time, and what was refused.
#[derive(Default)]
pub(crate) struct Compiling {
    task: Option<tokio::task::JoinHandle<()>>,
    /// The code that will not be made (its object names), not tried again while this
    /// scheduler leads: a component one target's compiler refuses, or a bucket too full for
    /// it, would otherwise be compiled in vain every minute.
    refused: Arc<Mutex<BTreeSet<String>>>,
}

impl Compiling {
    /// Starts compiling `wanted` for `targets`, or hands them back while a compile runs.
    pub(crate) fn start(
        &mut self,
        lattice: &Lattice,
        copier: &Copier,
        compiler: &Arc<dyn Compiler>,
        wanted: Wanted,
        targets: Targets,
    ) -> Option<(Wanted, Targets)> {
        if self.task.as_ref().is_some_and(|task| !task.is_finished()) {
            return Some((wanted, targets));
        }
        let run = Run {
            lattice: lattice.clone(),
            compiler: Arc::clone(compiler),
            refused: Arc::clone(&self.refused),
            complete: copier.complete.clone(),
            layer: copier.layer.clone(),
            max_bytes: copier.max_bytes,
        };
        self.task = Some(tokio::spawn(async move {
            run.sweep(&wanted, &targets).await;
        }));
        None
    }

    /// Stops a compile in progress and forgets what was refused (this scheduler no longer
    /// leads).
    pub(crate) fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Ok(mut refused) = self.refused.lock() {
            refused.clear();
        }
    }
}

/// One compile sweep's means.
struct Run {
    lattice: Lattice,
    compiler: Arc<dyn Compiler>,
    refused: Arc<Mutex<BTreeSet<String>>>,
    complete: String,
    layer: String,
    max_bytes: u64,
}

impl Run {
    fn refused(&self, name: &str) -> bool {
        self.refused
            .lock()
            .is_ok_and(|refused| refused.contains(name))
    }

    fn refuse(&self, name: String) {
        if let Ok(mut refused) = self.refused.lock() {
            refused.insert(name);
        }
    }

    /// Compiles the copied components for each target that has no code yet (and was not
    /// refused), and drops code for keys no host reports.
    async fn sweep(&self, wanted: &Wanted, targets: &Targets) {
        let Some((store, stored)) =
            crate::components::open_listed(&self.lattice, self.max_bytes).await
        else {
            return;
        };
        let (compile, drop) = compile_plan(wanted, &stored, &self.complete, targets);
        for name in drop {
            if let Err(error) = store.delete(&name).await {
                tracing::warn!(%name, error = %shoal_lattice::Chain(&error), "cannot drop precompiled code no host can use");
            }
        }
        // Each component is read once, however many targets it is compiled for.
        let mut by_component: BTreeMap<&String, Vec<&CompileTarget>> = BTreeMap::new();
        for (digest, target) in compile {
            by_component.entry(digest).or_default().push(target);
        }
        for (digest, targets) in by_component {
            let targets: Vec<&CompileTarget> = targets
                .into_iter()
                .filter(|target| !self.refused(&object_name(digest, &compiled_part(&target.key))))
                .collect();
            if targets.is_empty() {
                continue;
            }
            let wasm = match self
                .lattice
                .component_object(&object_name(digest, &self.layer), self.max_bytes)
                .await
            {
                Ok(Some(wasm)) => wasm,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(component = %digest, error = %shoal_lattice::Chain(&error), "cannot read the component to precompile it");
                    continue;
                }
            };
            for target in targets {
                self.compile(&store, digest, target, wasm.clone()).await;
            }
        }
    }

    /// Compiles `wasm` (component `digest`) for `target` and stores the code.
    async fn compile(
        &self,
        store: &ComponentStore,
        digest: &str,
        target: &CompileTarget,
        wasm: Vec<u8>,
    ) {
        let name = object_name(digest, &compiled_part(&target.key));
        let started = Instant::now();
        let compiled = tokio::time::timeout(COMPILE_DEADLINE, self.compiler.compile(target, wasm))
            .await
            .unwrap_or_else(|_| {
                Err(CompileFailure::Refused(format!(
                    "took longer than {COMPILE_DEADLINE:?}"
                )))
            });
        let compiled = compiled.and_then(|compiled| {
            if compiled.len() as u64 > MAX_COMPILED_BYTES {
                Err(CompileFailure::Refused(format!(
                    "its code is {} bytes, more than the {MAX_COMPILED_BYTES} hosts read",
                    compiled.len()
                )))
            } else {
                Ok(compiled)
            }
        });
        let compiled = match compiled {
            Ok(compiled) => compiled,
            Err(failure) => {
                tracing::warn!(component = %digest, target = %target.triple, key = %target.key, error = %failure, "cannot precompile the component for hosts of this target; they compile it themselves");
                if matches!(failure, CompileFailure::Refused(_)) {
                    self.refuse(name);
                }
                return;
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
                tracing::warn!(component = %digest, error = %shoal_lattice::Chain(&error), "cannot store precompiled code in the lattice (is the bucket full? shoal scheduler --component-store); not tried again while this scheduler leads");
                self.refuse(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            binary: None,
            upgrade: None,
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
        assert_eq!(targets.compile.len(), MAX_TARGETS);
        assert!(targets.compile.contains_key("aa") && targets.compile.contains_key("bb"));
        // Code is kept for every key a host reports, compiled or not.
        assert_eq!(targets.reported.len(), 22);
    }

    #[test]
    fn complete_copies_are_compiled_for_each_target_and_code_no_host_uses_goes() {
        let wanted: Wanted = [
            ("sha256:aa".to_owned(), ["r/a@sha256:aa".to_owned()].into()),
            ("sha256:bb".to_owned(), ["r/b@sha256:bb".to_owned()].into()),
        ]
        .into();
        let targets = Targets {
            compile: [
                ("k1".to_owned(), target("k1")),
                ("k2".to_owned(), target("k2")),
            ]
            .into(),
            // k3: reported, but by too few hosts to be compiled for; its code stays.
            reported: ["k1", "k2", "k3"].map(str::to_owned).into(),
        };
        let stored: BTreeSet<String> = [
            "sha256:aa/layer",
            "sha256:aa/manifest",
            "sha256:aa/compiled.k1",
            // No host reports it any more.
            "sha256:aa/compiled.k0",
            "sha256:aa/compiled.k3",
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
        let none = Targets::default();
        let (compile, drop) = compile_plan(&wanted, &stored, "manifest", &none);
        assert!(compile.is_empty() && drop.is_empty());
    }
}
