//! What one pass sees placed: every assignment, grouped by what owns it (an app, or one
//! job), with each host's reserved resources kept up to date as the pass writes. An app's
//! step then costs what its own replicas cost, and a placement what the hosts cost, not
//! what the whole lattice runs: with 10,000 apps, walking every assignment for each app
//! (three times) made a pass 10^8 steps.

use super::*;

/// What owns an assignment: an app (`job` is `None`) or one job (by its uid, so a job
/// deleted and applied again under the same name is another owner).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Owner {
    namespace: String,
    name: String,
    job: Option<String>,
}

impl Owner {
    pub(super) fn of(assignment: &Assignment) -> Self {
        Owner {
            namespace: assignment.namespace.clone(),
            name: assignment.app.clone(),
            job: assignment.job.as_ref().map(|run| run.uid.clone()),
        }
    }

    pub(super) fn app(app: &AppRecord) -> Self {
        Owner {
            namespace: app.namespace.clone(),
            name: app.name.clone(),
            job: None,
        }
    }

    pub(super) fn job(namespace: &str, name: &str, uid: &str) -> Self {
        Owner {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            job: Some(uid.to_owned()),
        }
    }
}

/// The pass's assignments.
#[derive(Debug, Default)]
pub(super) struct Placed {
    by_owner: HashMap<Owner, Vec<Versioned<Assignment>>>,
    /// What each host's assignments reserve.
    usage: HashMap<String, Usage>,
}

impl Placed {
    pub(super) fn new(assignments: Vec<Versioned<Assignment>>) -> Self {
        let mut placed = Placed::default();
        for assignment in assignments {
            placed.push(assignment);
        }
        placed
    }

    /// The assignments of `owner`.
    pub(super) fn of(&self, owner: &Owner) -> &[Versioned<Assignment>] {
        self.by_owner.get(owner).map_or(&[], Vec::as_slice)
    }

    /// Every assignment.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Versioned<Assignment>> {
        self.by_owner.values().flatten()
    }

    pub(super) fn push(&mut self, assignment: Versioned<Assignment>) {
        let used = self.usage.entry(assignment.value.host.clone()).or_default();
        *used = add(*used, &assignment.value, true);
        self.by_owner
            .entry(Owner::of(&assignment.value))
            .or_default()
            .push(assignment);
    }

    /// Keeps only the assignments `keep` says yes to.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Versioned<Assignment>) -> bool) {
        let usage = &mut self.usage;
        self.by_owner.retain(|_, assignments| {
            assignments.retain(|assignment| {
                let kept = keep(assignment);
                if !kept && let Some(used) = usage.get_mut(&assignment.value.host) {
                    *used = add(*used, &assignment.value, false);
                }
                kept
            });
            !assignments.is_empty()
        });
    }

    /// Removes `owner`'s assignments whose keys are in `keys`.
    pub(super) fn remove_of(&mut self, owner: &Owner, keys: &HashSet<String>) {
        let Some(assignments) = self.by_owner.get_mut(owner) else {
            return;
        };
        assignments.retain(|assignment| {
            let kept = !keys.contains(&assignment.key);
            if !kept && let Some(used) = self.usage.get_mut(&assignment.value.host) {
                *used = add(*used, &assignment.value, false);
            }
            kept
        });
        if assignments.is_empty() {
            self.by_owner.remove(owner);
        }
    }

    /// Makes `owner`'s assignments what applying its plan left: the created ones with their
    /// revisions, the provisional ones that were not created gone, the ones that were not
    /// removed back.
    pub(super) fn settle(&mut self, owner: &Owner, applied: &super::plan::Applied) {
        let not_created: HashSet<String> = applied.not_created.iter().cloned().collect();
        if !not_created.is_empty() {
            self.remove_of(owner, &not_created);
        }
        if let Some(assignments) = self.by_owner.get_mut(owner) {
            for created in &applied.created {
                if let Some(assignment) = assignments
                    .iter_mut()
                    .find(|assignment| assignment.key == created.key)
                {
                    assignment.revision = created.revision;
                }
            }
        }
        for assignment in &applied.not_removed {
            self.push(assignment.clone());
        }
    }

    /// Each host that passes `feasible` as placement sees it, for placing replicas (or runs)
    /// of `owner`, whose component is `digest` and needs WASI `wasi` (`None`: 0.2). (A filter, not a filtered copy of `hosts`:
    /// with thousands of hosts, copying their records for every placement cost more than
    /// placing.)
    pub(super) fn host_views<'a>(
        &self,
        hosts: &'a BTreeMap<String, HostRecord>,
        owner: &Owner,
        (digest, wasi): (&str, Option<&str>),
        feasible: impl Fn(&HostRecord) -> bool,
    ) -> Vec<HostView<'a>> {
        let mut same: HashMap<&str, u32> = HashMap::new();
        for assignment in self.of(owner) {
            *same.entry(assignment.value.host.as_str()).or_default() += 1;
        }
        hosts
            .values()
            .filter(|host| feasible(host))
            .map(|host| HostView {
                id: std::borrow::Cow::Borrowed(host.id.as_str()),
                labels: std::borrow::Cow::Borrowed(&host.labels),
                capacity: host.capacity,
                used: self.usage.get(&host.id).copied().unwrap_or_default(),
                same_app: same.get(host.id.as_str()).copied().unwrap_or(0),
                cached: host.cached.iter().any(|cached| cached == digest),
                draining: host.draining,
                runs_wasi: host.runs_wasi(wasi),
            })
            .collect()
    }
}

/// `used` with `assignment`'s reservation added (or taken away). Saturating: what hosts
/// run is whatever the assignments say.
fn add(used: Usage, assignment: &Assignment, adding: bool) -> Usage {
    let memory = assignment.template.memory_request().0;
    let cpu = assignment.template.cpu_request().0;
    if adding {
        Usage {
            memory: used.memory.saturating_add(memory),
            cpu: used.cpu.saturating_add(cpu),
            replicas: used.replicas.saturating_add(1),
        }
    } else {
        Usage {
            memory: used.memory.saturating_sub(memory),
            cpu: used.cpu.saturating_sub(cpu),
            replicas: used.replicas.saturating_sub(1),
        }
    }
}
