//! A harness for controller tests, after Nomad's `scheduler/testing.go`: a lattice's records
//! in memory (no nats-server), a pass's view of them, and plans applied to them as the one
//! writer would, or refused at their first write as a fenced write is when another leader
//! moved the assignments bucket since the plan's snapshot. A test runs a controller, reads
//! its plan, applies it, changes the world (a replica ready, a host lost, time passing) and
//! runs it again, in milliseconds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use shoal_lattice::names::{app_key, assignment_key};
use shoal_lattice::records::{AppRecord, Assignment, HostRecord, Phase, ReplicaStatus};
use shoal_lattice::{Event, Mirror, Versioned};

use super::apps::plan_app;
use super::autoscaler::{plan_autoscale, plan_wake};
use super::cron::plan_cron;
use super::jobs::{plan_job, plan_orphans};
use super::placed::{Owner, Placed};
use super::plan::{Applied, Op, Plan};
use super::{PassView, State};

/// A lattice in memory and a leader's memory of it.
pub(super) struct Harness {
    pub(super) hosts: BTreeMap<String, HostRecord>,
    pub(super) apps: BTreeMap<String, AppRecord>,
    pub(super) assignments: BTreeMap<String, Versioned<Assignment>>,
    pub(super) status: HashMap<String, ReplicaStatus>,
    /// Hosts that are not lost.
    pub(super) live: HashSet<String>,
    /// Admins' decisions about hosts (cordoned, draining), by host.
    pub(super) controls: BTreeMap<String, shoal_lattice::records::HostControl>,
    /// The assignments bucket's revision: every write moves it.
    pub(super) revision: u64,
    pub(super) state: State,
    pub(super) now: Instant,
    /// Every event the applied plans told.
    pub(super) events: Vec<Event>,
    pub(super) jobs: BTreeMap<String, shoal_lattice::jobs::JobRecord>,
    pub(super) cron_jobs: BTreeMap<String, shoal_lattice::jobs::CronJobRecord>,
    pub(super) cron_status: BTreeMap<String, shoal_lattice::jobs::CronJobStatus>,
    /// Statuses written now (the pass's end-of-pass writes are not kept).
    pub(super) app_status: BTreeMap<String, shoal_lattice::records::AppStatus>,
    /// Assignment records the scheduler's mirror refuses.
    pub(super) refused: Vec<shoal_lattice::Refused>,
    /// The fleet's upgrade (with its status bucket revision) and the hosts' orders.
    pub(super) fleet: Option<Versioned<shoal_lattice::fleet::FleetUpgrade>>,
    pub(super) orders: BTreeMap<String, shoal_lattice::fleet::UpgradeOrder>,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self {
            hosts: BTreeMap::new(),
            apps: BTreeMap::new(),
            assignments: BTreeMap::new(),
            status: HashMap::new(),
            live: HashSet::new(),
            controls: BTreeMap::new(),
            revision: 0,
            state: empty_state(),
            now: Instant::now(),
            events: Vec::new(),
            jobs: BTreeMap::new(),
            cron_jobs: BTreeMap::new(),
            cron_status: BTreeMap::new(),
            app_status: BTreeMap::new(),
            refused: Vec::new(),
            fleet: None,
            orders: BTreeMap::new(),
        }
    }

    /// The fleet controller's step over the live hosts at `now` (ms since the epoch).
    pub(super) fn plan_fleet(&mut self, now: u64) -> Plan {
        self.state.fleet = Mirror::fixed(self.fleet.clone());
        self.state.upgrade_orders =
            Mirror::fixed(self.orders.iter().map(|(host, order)| Versioned {
                key: shoal_lattice::names::upgrade_order_key(host),
                revision: 1,
                value: order.clone(),
            }));
        let live: BTreeMap<String, HostRecord> = self
            .hosts
            .iter()
            .filter(|(id, _)| self.live.contains(*id))
            .map(|(id, host)| (id.clone(), host.clone()))
            .collect();
        super::fleet::plan_fleet("scheduler test", &self.state, &live, now)
    }

    /// A cron job `name` of `default` with `spec` (JSON merged over a plain one that makes
    /// a plain job).
    pub(super) fn cron(&mut self, name: &str, spec: serde_json::Value) -> &mut Self {
        let mut plain = serde_json::json!({"jobTemplate": {"component": format!("r/{name}:1")}});
        if let (Some(plain), Some(extra)) = (plain.as_object_mut(), spec.as_object()) {
            plain.extend(extra.clone());
        }
        let cron: shoal_lattice::jobs::CronJobRecord = serde_json::from_value(serde_json::json!({
            "namespace": "default",
            "name": name,
            "digest": format!("sha256:{:064}", 1),
            "spec": plain,
            "createdAt": 0,
        }))
        .expect("a cron job record");
        self.cron_jobs.insert(app_key("default", name), cron);
        self.mirror_cron();
        self
    }

    fn mirror_cron(&mut self) {
        self.state.cron_jobs = Mirror::fixed(versioned(&self.cron_jobs));
        self.state.cron_status = Mirror::fixed(versioned(&self.cron_status));
    }

    /// The apps, hosts and assignments as the scheduler's mirrors show them.
    fn mirror_records(&mut self) {
        self.state.apps = Mirror::fixed(versioned(&self.apps));
        self.state.hosts = Mirror::fixed(versioned(&self.hosts));
        self.state.controls =
            Mirror::fixed(self.controls.iter().map(|(host, control)| Versioned {
                key: format!("hosts.{host}"),
                revision: 1,
                value: control.clone(),
            }));
        self.state.assignments =
            Mirror::fixed(self.assignments.values().cloned()).refusing(self.refused.clone());
        self.state.app_status = Mirror::fixed(versioned(&self.app_status));
    }

    /// Runs the clean-up a pass makes before the apps' steps, with `invalid_apps` the app
    /// records the mirror refused; returns its plan and the reports of invalid apps.
    pub(super) fn plan_cleanup(
        &mut self,
        invalid_apps: &[shoal_lattice::Refused],
    ) -> (Plan, Vec<Plan>) {
        self.mirror_records();
        let reports =
            super::apps::plan_invalid_apps("scheduler test", &mut self.state, invalid_apps);
        let app_keys: HashSet<String> = self
            .apps
            .keys()
            .cloned()
            .chain(invalid_apps.iter().map(|refused| refused.key.clone()))
            .collect();
        let mut placed = self.placed();
        let plan =
            super::apps::plan_cleanup("scheduler test", &mut self.state, &app_keys, &mut placed);
        (plan, reports)
    }

    /// Runs the autoscaler over the live hosts' reported load.
    pub(super) fn plan_autoscale(&mut self) -> Vec<Plan> {
        self.mirror_records();
        let apps = versioned(&self.apps);
        let (hosts, _) = self.schedulable();
        plan_autoscale("scheduler test", &mut self.state, &hosts, &apps, self.now)
    }

    /// The backlog of app `name`'s JetStream triggers, as if just read.
    pub(super) fn backlog(&mut self, name: &str, messages: u64) -> &mut Self {
        let autoscaling = self
            .state
            .autoscaling
            .entry(app_key("default", name))
            .or_default();
        autoscaling.backlog = Some((self.now, messages));
        self
    }

    /// What a wake for `name` published by `host` plans.
    pub(super) fn plan_wake(&mut self, host: &str, name: &str) -> Option<Plan> {
        self.mirror_records();
        let subject = shoal_lattice::names::wake_subject("test", host, "default", name);
        plan_wake(
            "test",
            "scheduler test",
            &mut self.state,
            &subject,
            false,
            self.now,
        )
    }

    /// `host` reports `milli` thousandths of requests in flight for `name`.
    pub(super) fn load(&mut self, host: &str, name: &str, milli: u64) {
        if let Some(record) = self.hosts.get_mut(host) {
            record.load.insert(format!("default/{name}"), milli);
        }
    }

    /// Runs the cron jobs controller at `at` (RFC 3339) by the scheduler's clock.
    pub(super) fn plan_cron(&mut self, at: &str) -> Plan {
        let at = humantime::parse_rfc3339(at).expect("an RFC 3339 time");
        let millis = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        });
        plan_cron(&self.state, "scheduler test", millis)
    }

    /// A job `name` of `default` with `spec` (JSON merged over a plain one).
    pub(super) fn job(&mut self, name: &str, spec: serde_json::Value) -> &mut Self {
        let mut plain = serde_json::json!({"component": format!("r/{name}:1")});
        if let (Some(plain), Some(extra)) = (plain.as_object_mut(), spec.as_object()) {
            plain.extend(extra.clone());
        }
        let job: shoal_lattice::jobs::JobRecord = serde_json::from_value(serde_json::json!({
            "namespace": "default",
            "name": name,
            "uid": format!("{name}-uid"),
            "digest": format!("sha256:{:064}", 1),
            "spec": plain,
            "createdAt": 0,
        }))
        .expect("a job record");
        self.jobs.insert(app_key("default", name), job);
        self.mirror_jobs();
        self
    }

    /// The job `name` is deleted.
    pub(super) fn delete_job(&mut self, name: &str) {
        self.jobs.remove(&app_key("default", name));
        self.mirror_jobs();
    }

    fn mirror_jobs(&mut self) {
        self.state.jobs = Mirror::fixed(versioned(&self.jobs));
    }

    /// Runs the jobs controller's step for job `name`, as one pass would.
    pub(super) fn plan_job(&mut self, name: &str) -> Plan {
        let job = self.jobs[&app_key("default", name)].clone();
        self.pass(|state, observed, placed| plan_job(state, observed, &job, placed))
    }

    /// Runs `controller` as a pass would: over what the pass sees of the harness's records
    /// and what it starts from placed.
    fn pass<R>(
        &mut self,
        controller: impl FnOnce(&mut State, &PassView<'_>, &mut Placed) -> R,
    ) -> R {
        let silent_for = HashMap::new();
        let mut placed = self.placed();
        let (schedulable, draining) = self.schedulable();
        let observed = PassView {
            lattice: "test",
            source: "scheduler test",
            live: &self.live,
            draining: &draining,
            hosts: &schedulable,
            status: &self.status,
            silent_for: &silent_for,
            stores: None,
            secure: false,
            now: self.now,
        };
        controller(&mut self.state, &observed, &mut placed)
    }

    /// Runs the jobs controller's clean-up of jobs that are gone.
    pub(super) fn plan_orphans(&mut self) -> Plan {
        let mut placed = self.placed();
        let jobs = self.state.jobs.snapshot();
        plan_orphans(&mut self.state, &jobs, &mut placed)
    }

    /// The hosts a pass may place on and the ones being drained, by `hosts::schedulable`
    /// over the live hosts and the admins' controls.
    fn schedulable(&mut self) -> (BTreeMap<String, HostRecord>, HashSet<String>) {
        self.mirror_records();
        super::hosts::schedulable(&self.state, &self.live, false)
    }

    /// An admin cordons `host` (it takes no new replicas) or, with `drain`, drains it too
    /// (its replicas move).
    pub(super) fn control(&mut self, host: &str, drain: bool) {
        self.controls.insert(
            host.to_owned(),
            shoal_lattice::records::HostControl {
                cordoned: true,
                draining: drain,
                by: "admin".to_owned(),
                since: 0,
            },
        );
    }

    /// A live host with room for 100 replicas of 64Mi.
    pub(super) fn host(&mut self, id: &str) -> &mut Self {
        let host: HostRecord = serde_json::from_value(serde_json::json!({
            "id": id,
            "labels": {"zone": format!("zone-{id}")},
            "capacity": {"memory": "8Gi", "cpu": "4000m", "maxReplicas": 100},
            "version": "0.1.0",
            "startedAt": 0,
            "heartbeatAt": 0,
        }))
        .expect("a host record");
        self.hosts.insert(id.to_owned(), host);
        self.live.insert(id.to_owned());
        self
    }

    /// An app `name` of `default` at `revision` with `replicas`, its spec changed by
    /// `spec` (JSON merged over a plain one).
    pub(super) fn app(
        &mut self,
        name: &str,
        revision: u64,
        replicas: u32,
        spec: serde_json::Value,
    ) -> &mut Self {
        let mut plain = serde_json::json!({
            "component": format!("r/{name}:{revision}"),
            "replicas": replicas,
        });
        if let (Some(plain), Some(extra)) = (plain.as_object_mut(), spec.as_object()) {
            plain.extend(extra.clone());
        }
        let app: AppRecord = serde_json::from_value(serde_json::json!({
            "name": name,
            "namespace": "default",
            "generation": revision,
            "revision": revision,
            "digest": format!("sha256:{revision:064}"),
            "spec": plain,
            "createdAt": 0,
            "updatedAt": 0,
        }))
        .expect("an app record");
        self.apps.insert(app_key("default", name), app);
        self
    }

    /// Runs the apps controller's step for `name` over the harness's records, as one pass
    /// would, and returns its plan (the leader's memory changes as in a pass).
    pub(super) fn plan(&mut self, name: &str) -> Plan {
        let app = self.apps[&app_key("default", name)].clone();
        self.pass(|state, observed, placed| plan_app(state, observed, &app, placed).0)
    }

    /// `name` with `replicas` ready replicas of revision 1 and `spec`, then revision 2 of the
    /// same spec applied and its first step taken: a rollout under way.
    pub(super) fn start_rollout(&mut self, name: &str, replicas: u32, spec: serde_json::Value) {
        self.app(name, 1, replicas, spec.clone());
        self.converge(name, 5);
        self.app(name, 2, replicas, spec);
        let plan = self.plan(name);
        self.apply(plan);
    }

    /// What a pass starts from: the assignments, with this leader's unseen writes.
    fn placed(&mut self) -> Placed {
        let mirrored = self.assignments.values().cloned().collect();
        Placed::new(self.state.pending.view(mirrored, self.now))
    }

    /// Applies `plan` as the one writer does: every write lands and moves the bucket.
    pub(super) fn apply(&mut self, plan: Plan) -> Applied {
        self.apply_at(plan, self.revision)
    }

    /// Applies `plan`, planned when the bucket was at `fence`, as the one writer does: in
    /// order, each assignment write conditional on the bucket being where this writer left
    /// it (and the key at the revision the plan saw), stopping at the first refused. What
    /// came before it (events, statuses) was done, as with the real writer.
    pub(super) fn apply_at(&mut self, plan: Plan, fence: u64) -> Applied {
        let mut applied = Applied::default();
        let mut expected = fence;
        let mut ops = plan.ops.into_iter();
        for op in ops.by_ref() {
            let fenced = matches!(
                op,
                Op::Remove(_) | Op::RemoveUnreadable { .. } | Op::Place(_) | Op::Rewrite { .. }
            );
            let refused = fenced
                && (self.revision != expected
                    || match &op {
                        Op::Remove(record) => {
                            self.assignments
                                .get(&record.key)
                                .map(|found| found.revision)
                                != Some(record.revision)
                        }
                        Op::Place(assignment) => self
                            .assignments
                            .contains_key(&assignment_key(&assignment.host, &assignment.replica)),
                        Op::RemoveUnreadable { key, revision }
                        | Op::Rewrite { key, revision, .. } => {
                            self.revision_of(key) != Some(*revision)
                        }
                        _ => false,
                    });
            if refused {
                applied.not_done(op);
                applied.stopped = Some(shoal_lattice::Error::Conflict {
                    bucket: "assignments".to_owned(),
                    key: "fence".to_owned(),
                });
                break;
            }
            match op {
                Op::Remove(record) => {
                    self.assignments.remove(&record.key);
                    self.revision += 1;
                    self.state.pending.created.remove(&record.key);
                    self.state.pending.deleted.insert(record.key, self.now);
                }
                Op::Place(assignment) => {
                    self.revision += 1;
                    let record = Versioned {
                        key: assignment_key(&assignment.host, &assignment.replica),
                        revision: self.revision,
                        value: assignment,
                    };
                    self.assignments.insert(record.key.clone(), record.clone());
                    self.state
                        .pending
                        .created
                        .insert(record.key.clone(), (record.clone(), self.now));
                    applied.created.push(record);
                }
                Op::DeleteStatus(key) => {
                    if let Some(host) = shoal_lattice::names::upgrade_order_host(&key) {
                        self.orders.remove(host);
                    }
                    let replica = key.rsplit('.').next().unwrap_or_default().to_owned();
                    self.status.remove(&replica);
                }
                Op::UpdateFleet { upgrade, revision } => {
                    let Some(current) = self
                        .fleet
                        .as_mut()
                        .filter(|current| current.revision == revision)
                    else {
                        applied.stopped = Some(shoal_lattice::Error::Conflict {
                            bucket: "status".to_owned(),
                            key: shoal_lattice::names::FLEET_UPGRADE.to_owned(),
                        });
                        break;
                    };
                    current.value = *upgrade;
                    current.revision += 1;
                }
                Op::PutUpgradeOrder(host, order) => {
                    self.orders.insert(host, *order);
                }
                Op::Emit(event) => self.events.push(event),
                Op::RolloutFailed { key, failed, event } => {
                    self.state.failed.insert(key, failed);
                    self.events.push(event);
                }
                Op::RemoveUnreadable { key, .. } => {
                    self.revision += 1;
                    self.refused.retain(|refused| refused.key != key);
                    self.state.pending.deleted.insert(key, self.now);
                }
                Op::Rewrite {
                    key, value, why, ..
                } => {
                    self.revision += 1;
                    self.refused.retain(|refused| refused.key != key);
                    let record = Versioned {
                        key: key.clone(),
                        revision: self.revision,
                        value: *value,
                    };
                    if why == super::plan::Rewrite::RenewStoreCredential {
                        self.state.store_renewals.insert(
                            key.clone(),
                            super::Renewal {
                                written: self.revision,
                                at: self.now,
                            },
                        );
                    }
                    self.assignments.insert(key, record);
                }
                Op::PutAppStatus(key, status) => {
                    self.app_status.insert(key, *status);
                }
                Op::PutJobStatus(key, status) => {
                    self.state.job_status_written.insert(key, *status);
                }
                Op::PutCronJobStatus(key, status) => {
                    self.cron_status.insert(key, *status);
                    self.mirror_cron();
                }
                Op::Scale {
                    namespace,
                    name,
                    to,
                    why,
                    source,
                    from_zero,
                } => {
                    let key = app_key(&namespace, &name);
                    if let Some(app) = self.apps.get_mut(&key) {
                        let from = app.spec.replicas;
                        if from != to && (!from_zero || from == 0) {
                            app.spec.replicas = to;
                            app.generation += 1;
                            applied.scaled += 1;
                            self.events.push(super::plan::scaled(
                                &source, &namespace, &name, from, to, &why,
                            ));
                        }
                    }
                }
                Op::DeleteJob(key) => {
                    self.jobs.remove(&key);
                    self.mirror_jobs();
                }
                Op::CreateJob { key, job, made } => {
                    if let std::collections::btree_map::Entry::Vacant(vacant) = self.jobs.entry(key)
                    {
                        vacant.insert(*job);
                        self.mirror_jobs();
                        self.events.push(made);
                    }
                }
                Op::Rollback {
                    app, to, source, ..
                } => {
                    // As roll_back does: the template of `to` comes back as a new revision,
                    // if the app is still at the revision the plan saw.
                    let key = app_key(&app.namespace, &app.name);
                    if self.apps.get(&key).map(|app| app.revision) == Some(app.revision) {
                        let mut back = (*app).clone();
                        back.revision += 1;
                        back.generation += 1;
                        back.digest = format!("sha256:{to:064}");
                        back.spec.component = format!("r/{}:{to}", app.name);
                        self.apps.insert(key.clone(), back);
                        if let Some(failed) = self.state.failed.get_mut(&key) {
                            failed.rolled_back_to = Some(to);
                        }
                        self.events.push(Event::app(
                            &source,
                            &app.namespace,
                            &app.name,
                            "RolledBack",
                            format!("back to the template of revision {to}"),
                        ));
                    }
                }
            }
            expected = self.revision;
        }
        for op in ops {
            applied.not_done(op);
        }
        applied
    }

    /// The revision of the assignment at `key` as the bucket holds it (a refused record's
    /// own, when someone overwrote it).
    fn revision_of(&self, key: &str) -> Option<u64> {
        self.refused
            .iter()
            .find(|refused| refused.key == key)
            .map(|refused| refused.revision)
            .or_else(|| self.assignments.get(key).map(|record| record.revision))
    }

    /// Another writer (a leader this one does not know has replaced it) writes.
    pub(super) fn someone_else_writes(&mut self) {
        self.revision += 1;
    }

    /// Every replica of `name` at `revision` reports `phase`.
    pub(super) fn report(&mut self, name: &str, revision: u64, phase: Phase) {
        let replicas: Vec<Assignment> = self
            .assignments
            .values()
            .map(|record| record.value.clone())
            .filter(|assignment| assignment.app == name && assignment.revision == revision)
            .collect();
        for assignment in replicas {
            self.status.insert(
                assignment.replica.clone(),
                ReplicaStatus {
                    replica: assignment.replica.clone(),
                    app: assignment.app.clone(),
                    namespace: assignment.namespace.clone(),
                    revision: assignment.revision,
                    host: assignment.host.clone(),
                    phase,
                    reason: None,
                    message: None,
                    observed_generation: assignment.generation,
                    since: 0,
                    restarts: 0,
                    last_restart: None,
                    exit_code: None,
                },
            );
        }
    }

    /// Time passes (for deadlines and the leader's memory of its writes).
    pub(super) fn later(&mut self, by: Duration) {
        self.now += by;
    }

    /// The replicas of `name`: (host, revision), sorted.
    pub(super) fn replicas(&self, name: &str) -> Vec<(String, u64)> {
        let mut replicas: Vec<(String, u64)> = self
            .assignments
            .values()
            .filter(|record| record.value.app == name)
            .map(|record| (record.value.host.clone(), record.value.revision))
            .collect();
        replicas.sort();
        replicas
    }

    /// Plans and applies steps of `name` until one changes nothing (at most `passes`), each
    /// new replica reporting ready at once.
    pub(super) fn converge(&mut self, name: &str, passes: usize) -> usize {
        for pass in 0..passes {
            let plan = self.plan(name);
            if plan.placed().next().is_none() && plan.removed().next().is_none() {
                return pass;
            }
            self.apply(plan);
            let revision = self.apps[&app_key("default", name)].revision;
            self.report(name, revision, Phase::Ready);
        }
        passes
    }

    /// The owner of `name`'s replicas, for `Placed`.
    pub(super) fn owner(&self, name: &str) -> Owner {
        Owner::app(&self.apps[&app_key("default", name)])
    }
}

/// Records by key as a mirror holds them.
fn versioned<T: Clone>(records: &BTreeMap<String, T>) -> Vec<Versioned<T>> {
    records
        .iter()
        .map(|(key, value)| Versioned {
            key: key.clone(),
            revision: 1,
            value: value.clone(),
        })
        .collect()
}

/// A scheduler's state over empty mirrors, leading, with nothing remembered.
fn empty_state() -> State {
    State::default()
}

/// The jobs controller, over the harness (what a run's end does to its job is
/// `crate::jobs::step`'s, tested there).
mod jobs {
    use shoal_lattice::jobs::JobPhase;
    use shoal_lattice::names::job_status_key;

    use super::*;

    #[test]
    fn runs_are_placed_and_when_they_end_the_status_is_written_before_they_go() {
        let mut lattice = Harness::new();
        lattice.host("h1").host("h2").job(
            "backup",
            serde_json::json!({"completions": 2, "parallelism": 2}),
        );
        let plan = lattice.plan_job("backup");
        assert_eq!(plan.placed().count(), 2, "{plan:?}");
        assert_eq!(plan.reasons(), ["Placed", "Placed"]);
        let Some(Op::PutJobStatus(_, status)) = plan
            .ops
            .iter()
            .find(|op| matches!(op, Op::PutJobStatus(..)))
        else {
            panic!("no status: {plan:?}");
        };
        assert_eq!(status.active, 2);
        lattice.apply(plan);
        lattice.report("backup", 1, Phase::Succeeded);
        let plan = lattice.plan_job("backup");
        assert_eq!(
            plan.reasons(),
            ["RunSucceeded", "RunSucceeded", "Completed"],
            "{plan:?}"
        );
        let status_at = plan
            .ops
            .iter()
            .position(|op| matches!(op, Op::PutJobStatus(..)))
            .expect("a status write");
        let first_remove = plan
            .ops
            .iter()
            .position(|op| matches!(op, Op::Remove(_)))
            .expect("the ended runs go");
        // A count is never lost: the status is written before the runs it counts go.
        assert!(status_at < first_remove, "{plan:?}");
        lattice.apply(plan);
        let key = job_status_key("default", "backup");
        let status = &lattice.state.job_status_written[&key];
        assert_eq!((status.phase, status.succeeded), (JobPhase::Succeeded, 2));
        assert!(lattice.replicas("backup").is_empty());
        // Done: nothing more, not even an event.
        let again = lattice.plan_job("backup");
        assert!(again.ops.is_empty(), "{again:?}");
    }

    #[test]
    fn a_run_on_a_lost_host_fails_and_its_status_goes_with_it() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .job("backup", serde_json::json!({"backoffLimit": 0}));
        let plan = lattice.plan_job("backup");
        lattice.apply(plan);
        lattice.report("backup", 1, Phase::Running);
        let host = lattice.replicas("backup")[0].0.clone();
        lattice.live.remove(&host);
        let plan = lattice.plan_job("backup");
        assert!(plan.reasons().contains(&"RunFailed".to_owned()), "{plan:?}");
        assert!(
            plan.ops.iter().any(
                |op| matches!(op, Op::DeleteStatus(key) if key.starts_with(&format!("replicas.{host}.")))
            ),
            "{plan:?}"
        );
        assert_eq!(plan.removed().count(), 1);
    }

    #[test]
    fn the_runs_and_status_of_a_deleted_job_go() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .job("backup", serde_json::json!({"parallelism": 1}));
        let plan = lattice.plan_job("backup");
        lattice.apply(plan);
        assert_eq!(lattice.replicas("backup").len(), 1);
        lattice.delete_job("backup");
        let key = job_status_key("default", "backup");
        lattice.state.job_status = Mirror::fixed([Versioned {
            key: key.clone(),
            revision: 1,
            value: shoal_lattice::jobs::JobStatus::new("backup-uid"),
        }]);
        let plan = lattice.plan_orphans();
        assert_eq!(plan.removed().count(), 1, "{plan:?}");
        assert!(
            plan.ops
                .iter()
                .any(|op| matches!(op, Op::DeleteStatus(deleted) if *deleted == key)),
            "{plan:?}"
        );
        // And what this leader remembers writing goes too.
        assert!(!lattice.state.job_status_written.contains_key(&key));
    }
}

/// Store credentials renewed before they run out, over the harness.
mod stores {
    use std::sync::Arc;

    use shoal_lattice::auth::StoreSigner;

    use super::super::stores::{StoreMinter, plan_renewals};
    use super::*;

    #[test]
    fn a_due_credential_is_renewed_once_on_live_hosts_only() {
        let mut lattice = Harness::new();
        let host_key = shoal_lattice::secrets::new_key();
        lattice.host("h1").host("h2");
        for host in lattice.hosts.values_mut() {
            host.secrets_key = Some(host_key.public_key());
        }
        lattice.state.secrets_key = Some(shoal_lattice::secrets::new_key());
        lattice.app(
            "shop",
            1,
            2,
            serde_json::json!({"keyValue": [{"name": "cache"}]}),
        );
        lattice.converge("shop", 3);
        // Both replicas' credentials expire in a second; h2 is silent.
        let soon = shoal_lattice::records::now_millis() / 1000 + 1;
        for record in lattice.assignments.values_mut() {
            record.value.store_access_expires = Some(soon);
        }
        lattice.live.remove("h2");
        lattice.state.live_hosts = Some(lattice.live.clone());
        let minter = StoreMinter {
            signer: Arc::new(StoreSigner::generate()),
            clients_account: "ACLIENTS".to_owned(),
            lifetime: Duration::from_secs(60),
        };
        let renew = |lattice: &mut Harness| {
            lattice.mirror_records();
            plan_renewals(&mut lattice.state, Some(&minter), "test", lattice.now)
        };
        let plan = renew(&mut lattice);
        let renewed: Vec<(&str, Option<u64>)> = plan
            .ops
            .iter()
            .filter_map(|op| match op {
                Op::Rewrite { value, .. } => {
                    Some((value.host.as_str(), value.store_access_expires))
                }
                _ => None,
            })
            .collect();
        assert_eq!(renewed.len(), 1, "{plan:?}");
        assert_eq!(renewed[0].0, "h1");
        assert!(renewed[0].1.is_some_and(|expires| expires > soon + 30));
        lattice.apply(plan);
        // Looked for at most once a second, and once renewed not again.
        assert!(renew(&mut lattice).ops.is_empty());
        lattice.later(Duration::from_secs(2));
        assert!(renew(&mut lattice).ops.is_empty());
    }
}

/// What a pass cleans up before the apps' steps, over the harness.
mod cleanup {
    use super::*;

    fn refused(key: &str, revision: u64) -> shoal_lattice::Refused {
        shoal_lattice::Refused {
            key: key.to_owned(),
            revision,
            reason: "not a scheduler's".to_owned(),
        }
    }

    #[test]
    fn a_deleted_app_s_replicas_status_and_routes_go_and_an_invalid_one_s_stay() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .app("web", 1, 2, serde_json::json!({}))
            .app("api", 1, 1, serde_json::json!({}));
        lattice.converge("web", 3);
        lattice.converge("api", 3);
        lattice
            .app_status
            .insert("apps.default.web".to_owned(), Default::default());
        // web is deleted; api's record is one the mirror refuses (someone broke it).
        lattice.apps.clear();
        let broken = [refused("default.api", 9)];
        let (plan, reports) = lattice.plan_cleanup(&broken);
        let removed: Vec<&str> = plan
            .removed()
            .map(|record| record.value.app.as_str())
            .collect();
        assert_eq!(removed, ["web", "web"], "{plan:?}");
        assert!(
            plan.ops
                .iter()
                .any(|op| matches!(op, Op::DeleteStatus(key) if key == "apps.default.web")),
            "{plan:?}"
        );
        // The invalid app is told once, in an event and its status.
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].reasons(), ["InvalidSpec"]);
        let (_, again) = lattice.plan_cleanup(&broken);
        assert!(again.is_empty(), "told again: {again:?}");
    }

    #[test]
    fn an_overwritten_assignment_is_restored_and_an_unreadable_one_removed() {
        let mut lattice = Harness::new();
        lattice.host("h1").app("web", 1, 1, serde_json::json!({}));
        lattice.converge("web", 3);
        let key = lattice
            .assignments
            .keys()
            .next()
            .cloned()
            .expect("a replica");
        // Someone not a scheduler overwrote it (the mirror keeps the last readable one),
        // and wrote an unreadable one of its own elsewhere.
        lattice.refused = vec![refused(&key, 7), refused("h1.forged", 8)];
        let (plan, _) = lattice.plan_cleanup(&[]);
        assert!(
            plan.ops
                .iter()
                .any(|op| matches!(op, Op::Rewrite { key: restored, revision: 7, .. } if *restored == key)),
            "{plan:?}"
        );
        assert!(
            plan.ops.iter().any(|op| matches!(
                op,
                Op::RemoveUnreadable { key, revision: 8 } if key == "h1.forged"
            )),
            "{plan:?}"
        );
        assert_eq!(plan.reasons(), ["InvalidRecord", "InvalidRecord"]);
        lattice.apply(plan);
        assert_eq!(lattice.replicas("web").len(), 1);
    }
}

/// The hosts controller, over the harness: what hosts' comings and goings tell, and which
/// hosts a pass may place on.
mod hosts {
    use super::*;

    fn told(plan: &Plan) -> Vec<(String, String)> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                Op::Emit(event) => Some((event.reason.clone(), event.host.clone()?)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn losses_leaves_and_joins_are_told_once_and_a_new_leader_tells_none() {
        let mut state = empty_state();
        let set =
            |ids: &[&str]| -> HashSet<String> { ids.iter().map(|id| (*id).to_owned()).collect() };
        let timeout = Duration::from_secs(10);
        let lost_after = HashMap::from([("h2".to_owned(), Duration::from_secs(30))]);
        // A new leader has no last pass: it reports changes, not what it finds.
        let plan = super::super::hosts::plan_changes(
            "s",
            &state,
            &set(&["h1", "h2"]),
            &set(&["h1", "h2"]),
            &lost_after,
            timeout,
        );
        assert!(plan.ops.is_empty(), "{plan:?}");
        state.live_hosts = Some(set(&["h1", "h2", "h3"]));
        // h2 is silent (still known), h3's record is gone (it left), h4 is new.
        let plan = super::super::hosts::plan_changes(
            "s",
            &state,
            &set(&["h1", "h4"]),
            &set(&["h1", "h2", "h4"]),
            &lost_after,
            timeout,
        );
        assert_eq!(
            told(&plan),
            [
                ("HostLost".to_owned(), "h2".to_owned()),
                ("HostLeft".to_owned(), "h3".to_owned()),
                ("HostJoined".to_owned(), "h4".to_owned()),
            ]
        );
        // h2's own lostAfter is what it was silent for.
        let Some(Op::Emit(lost)) = plan.ops.first() else {
            panic!("{plan:?}");
        };
        assert!(lost.message.contains("30s"), "{}", lost.message);
    }

    #[test]
    fn a_cordoned_host_takes_no_new_replica_and_a_drained_one_s_move_first() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .host("h2")
            .app("web", 1, 1, serde_json::json!({}));
        lattice.control("h1", false);
        lattice.converge("web", 3);
        assert_eq!(lattice.replicas("web"), [("h2".to_owned(), 1)]);
        // Draining h2: a replacement first, on the only other host (cordoned hosts take
        // none, so h1 is uncordoned), and the drained replica goes once it is ready.
        lattice.controls.clear();
        lattice.control("h2", true);
        let plan = lattice.plan("web");
        assert_eq!(plan.removed().count(), 0, "{plan:?}");
        let placed: Vec<&str> = plan.placed().map(|a| a.host.as_str()).collect();
        assert_eq!(placed, ["h1"], "{plan:?}");
        lattice.apply(plan);
        lattice.report("web", 1, Phase::Ready);
        let plan = lattice.plan("web");
        let removed: Vec<&str> = plan
            .removed()
            .map(|record| record.value.host.as_str())
            .collect();
        assert_eq!(removed, ["h2"], "{plan:?}");
        assert!(plan.reasons().contains(&"Removed".to_owned()), "{plan:?}");
    }
}

/// The autoscaler, over the harness (what a window decides is `crate::autoscale`'s, tested
/// there).
mod autoscaler {
    use super::*;

    fn scaled_to(plans: &[Plan]) -> Vec<u32> {
        plans
            .iter()
            .flat_map(|plan| &plan.ops)
            .filter_map(|op| match op {
                Op::Scale { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    fn replicas(lattice: &Harness, name: &str) -> u32 {
        lattice.apps[&app_key("default", name)].spec.replicas
    }

    /// Passes every two seconds for `seconds`, applying what they plan; the replica counts
    /// scaled to, in order.
    fn run_for(lattice: &mut Harness, name: &str, seconds: u64) -> Vec<u32> {
        let mut scaled = Vec::new();
        for _ in 0..seconds / 2 {
            lattice.later(Duration::from_secs(2));
            let plans = lattice.plan_autoscale();
            scaled.extend(scaled_to(&plans));
            for plan in plans {
                lattice.apply(plan);
            }
            lattice.converge(name, 3);
        }
        scaled
    }

    #[test]
    fn load_scales_up_at_once_and_down_only_after_the_delay() {
        let mut lattice = Harness::new();
        let autoscale = serde_json::json!({"autoscale": {
            "min": 1, "max": 10, "targetConcurrency": 10, "window": "60s", "scaleDownDelay": "60s"
        }});
        lattice.host("h1").app("web", 1, 1, autoscale);
        lattice.converge("web", 3);
        // A host that runs no replica of the app is not heard, however loud.
        lattice.host("h2");
        lattice.load("h2", "web", 1_000_000);
        assert!(scaled_to(&lattice.plan_autoscale()).is_empty());
        lattice.load("h2", "web", 0);
        // 40 requests in flight at 10 each: up on the first pass that sees it, to 4 within
        // the panic window.
        lattice.load("h1", "web", 40_000);
        let up = run_for(&mut lattice, "web", 2);
        assert!(up.first().is_some_and(|to| *to >= 2), "{up:?}");
        let up = run_for(&mut lattice, "web", 10);
        assert_eq!(replicas(&lattice, "web"), 4, "{up:?}");
        // The load goes; the replicas stay through the delay, then go.
        for host in ["h1", "h2"] {
            lattice.load(host, "web", 0);
        }
        assert!(run_for(&mut lattice, "web", 50).is_empty());
        let down = run_for(&mut lattice, "web", 80);
        assert_eq!(down.last(), Some(&1), "{down:?}");
        assert_eq!(replicas(&lattice, "web"), 1);
    }

    #[test]
    fn a_backlog_scales_an_app_from_zero_and_up_as_keda_would() {
        let mut lattice = Harness::new();
        let spec = serde_json::json!({
            "triggers": [{"stream": "orders"}],
            "autoscale": {
                "min": 0, "max": 5, "targetPending": 100, "window": "20s", "scaleDownDelay": "20s"
            }
        });
        lattice.host("h1").host("h2").app("billing", 1, 1, spec);
        lattice.converge("billing", 3);
        // Nothing waits: it goes to zero.
        lattice.backlog("billing", 0);
        assert_eq!(run_for(&mut lattice, "billing", 60), [0]);
        // One message wakes it; 450 call for five replicas (100 a replica), no more.
        lattice.backlog("billing", 1);
        let up = run_for(&mut lattice, "billing", 2);
        assert_eq!(up, [1]);
        lattice.backlog("billing", 450);
        run_for(&mut lattice, "billing", 10);
        assert_eq!(replicas(&lattice, "billing"), 5);
        // Drained: back to zero after the delay.
        lattice.backlog("billing", 0);
        let down = run_for(&mut lattice, "billing", 120);
        assert_eq!(down.last(), Some(&0), "{down:?}");
    }

    #[test]
    fn an_idle_app_goes_to_zero_and_a_wake_brings_one_back_where_the_request_waits() {
        let mut lattice = Harness::new();
        let autoscale = serde_json::json!({"autoscale": {
            "min": 0, "max": 3, "window": "20s", "scaleDownDelay": "20s"
        }});
        lattice.host("h1").host("h2").app("web", 1, 1, autoscale);
        lattice.converge("web", 3);
        let down = run_for(&mut lattice, "web", 120);
        assert_eq!(down, [0]);
        assert!(lattice.replicas("web").is_empty());
        let wake = lattice.plan_wake("h2", "web").expect("a wake scales it up");
        assert_eq!(scaled_to(std::slice::from_ref(&wake)), [1]);
        // Said once: a wake again within a second (a host retrying, or a flood) is ignored,
        // even before the first is applied.
        assert!(lattice.plan_wake("h2", "web").is_none());
        lattice.apply(wake);
        // The first replica goes to the host that holds the request.
        lattice.converge("web", 3);
        assert_eq!(lattice.replicas("web"), [("h2".to_owned(), 1)]);
    }

    #[test]
    fn a_wake_for_an_app_that_cannot_sleep_or_from_a_stranger_is_ignored() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .app("web", 1, 0, serde_json::json!({"autoscale": {"min": 1}}))
            .app("api", 1, 0, serde_json::json!({"autoscale": {"min": 0}}));
        assert!(lattice.plan_wake("h1", "web").is_none());
        assert!(lattice.plan_wake("stranger", "api").is_none());
        assert!(lattice.plan_wake("h1", "api").is_some());
    }
}

/// The cron jobs controller, over the harness (which times come when is `crate::cron`'s,
/// tested there).
mod cron {
    use super::*;

    fn created(lattice: &Harness) -> usize {
        lattice
            .events
            .iter()
            .filter(|event| event.reason == "JobCreated")
            .count()
    }

    #[test]
    fn a_time_makes_one_job_even_when_a_new_leader_sees_it_again() {
        let mut lattice = Harness::new();
        lattice.cron("nightly", serde_json::json!({"schedule": "0 3 * * *"}));
        // The first look only reads the next time.
        let plan = lattice.plan_cron("2026-12-01T02:59:00Z");
        assert!(
            !plan.ops.iter().any(|op| matches!(op, Op::CreateJob { .. })),
            "{plan:?}"
        );
        lattice.apply(plan);
        let mut plan = lattice.plan_cron("2026-12-01T03:00:10Z");
        let creates = plan
            .ops
            .iter()
            .position(|op| matches!(op, Op::CreateJob { .. }))
            .expect("the job of 03:00");
        // The leader made the job and died before its status write landed.
        plan.ops.truncate(creates + 1);
        lattice.apply(plan);
        assert_eq!((lattice.jobs.len(), created(&lattice)), (1, 1));
        // The next leader sees the time again: the same job name, made once.
        let plan = lattice.plan_cron("2026-12-01T03:00:20Z");
        lattice.apply(plan);
        assert_eq!(
            (lattice.jobs.len(), created(&lattice)),
            (1, 1),
            "{:?}",
            lattice.jobs
        );
        // And the time is handled from then on.
        let plan = lattice.plan_cron("2026-12-01T03:00:30Z");
        assert!(
            !plan.ops.iter().any(|op| matches!(op, Op::CreateJob { .. })),
            "{plan:?}"
        );
    }

    #[test]
    fn replace_stops_the_running_job_before_making_the_next() {
        let mut lattice = Harness::new();
        lattice.cron(
            "hourly",
            serde_json::json!({"schedule": "0 * * * *", "concurrencyPolicy": "Replace"}),
        );
        let plan = lattice.plan_cron("2026-12-01T02:59:00Z");
        lattice.apply(plan);
        let plan = lattice.plan_cron("2026-12-01T03:00:05Z");
        lattice.apply(plan);
        let first: Vec<String> = lattice.jobs.keys().cloned().collect();
        assert_eq!(first.len(), 1);
        let plan = lattice.plan_cron("2026-12-01T04:00:05Z");
        let deleted = plan
            .ops
            .iter()
            .position(|op| matches!(op, Op::DeleteJob(key) if *key == first[0]))
            .expect("the running job is stopped");
        let made = plan
            .ops
            .iter()
            .position(|op| matches!(op, Op::CreateJob { .. }))
            .expect("the next job");
        assert!(deleted < made, "{plan:?}");
        lattice.apply(plan);
        assert_eq!(lattice.jobs.len(), 1);
        assert!(!lattice.jobs.contains_key(&first[0]));
    }
}

/// The apps controller (and rollouts), over the harness.
mod apps {
    use super::*;

    #[test]
    fn missing_replicas_are_placed_one_per_host_and_a_second_plan_is_empty() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .host("h2")
            .host("h3")
            .app("web", 1, 3, serde_json::json!({}));
        let plan = lattice.plan("web");
        let hosts: BTreeMap<&str, usize> =
            plan.placed()
                .fold(BTreeMap::new(), |mut hosts, assignment| {
                    *hosts.entry(assignment.host.as_str()).or_default() += 1;
                    hosts
                });
        assert_eq!(
            hosts,
            BTreeMap::from([("h1", 1), ("h2", 1), ("h3", 1)]),
            "{plan:?}"
        );
        // Each placement is told after its write.
        assert!(matches!(plan.ops[0], Op::Place(_)), "{plan:?}");
        assert_eq!(plan.reasons(), ["Placed", "Placed", "Placed"]);
        lattice.apply(plan);
        // Placed, not yet ready: nothing more to do, even before the mirror shows the writes.
        let again = lattice.plan("web");
        assert_eq!(
            again.placed().count() + again.removed().count(),
            0,
            "{again:?}"
        );
    }

    #[test]
    fn a_lost_host_s_replicas_are_removed_and_placed_on_live_hosts() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .host("h2")
            .app("web", 1, 2, serde_json::json!({}));
        assert_eq!(lattice.converge("web", 5), 1);
        assert_eq!(
            lattice.replicas("web"),
            [("h1".to_owned(), 1), ("h2".to_owned(), 1)]
        );
        lattice.live.remove("h2");
        let plan = lattice.plan("web");
        let removed: Vec<&str> = plan
            .removed()
            .map(|record| record.value.host.as_str())
            .collect();
        assert_eq!(removed, ["h2"], "{plan:?}");
        // Its status goes with it: a lost host cannot remove its own.
        assert!(
            plan.ops
                .iter()
                .any(|op| matches!(op, Op::DeleteStatus(key) if key.starts_with("replicas.h2."))),
            "{plan:?}"
        );
        let placed: Vec<&str> = plan.placed().map(|a| a.host.as_str()).collect();
        assert_eq!(placed, ["h1"], "{plan:?}");
        lattice.apply(plan);
        lattice.report("web", 1, Phase::Ready);
        assert_eq!(
            lattice.replicas("web"),
            [("h1".to_owned(), 1), ("h1".to_owned(), 1)]
        );
    }

    #[test]
    fn a_rollout_surges_within_its_bounds_and_removes_old_replicas_only_when_new_are_ready() {
        let mut lattice = Harness::new();
        let rollout = serde_json::json!({"rollout": {"maxSurge": 1, "maxUnavailable": 0}});
        lattice
            .host("h1")
            .host("h2")
            .host("h3")
            .app("web", 1, 3, rollout.clone());
        lattice.converge("web", 5);
        lattice.app("web", 2, 3, rollout);
        let mut passes = 0;
        loop {
            passes += 1;
            assert!(passes < 20, "the rollout never finished");
            let plan = lattice.plan("web");
            let (placed, removed) = (plan.placed().count(), plan.removed().count());
            if placed + removed == 0 {
                break;
            }
            lattice.apply(plan);
            let replicas = lattice.replicas("web");
            // Surge: never more than replicas + maxSurge at once.
            assert!(replicas.len() <= 4, "{replicas:?}");
            // Unavailability 0: before new replicas are ready, no old one goes.
            let ready = lattice
                .assignments
                .values()
                .filter(|record| {
                    lattice
                        .status
                        .get(&record.value.replica)
                        .is_some_and(|status| status.phase == Phase::Ready)
                })
                .count();
            assert!(ready >= 3, "{ready} ready of {replicas:?}");
            lattice.report("web", 2, Phase::Ready);
        }
        let replicas = lattice.replicas("web");
        assert_eq!(replicas.len(), 3, "{replicas:?}");
        assert!(
            replicas.iter().all(|(_, revision)| *revision == 2),
            "{replicas:?}"
        );
    }

    #[test]
    fn a_rollout_past_its_deadline_fails_once_and_rolls_back() {
        let mut lattice = Harness::new();
        let rollout = serde_json::json!({"rollout": {"progressDeadline": "30s"}});
        lattice
            .host("h1")
            .host("h2")
            .start_rollout("web", 2, rollout);
        // Revision 2's replicas never become ready.
        lattice.report("web", 2, Phase::Pending);
        lattice.later(Duration::from_secs(29));
        let plan = lattice.plan("web");
        assert!(
            !plan.ops.iter().any(|op| matches!(op, Op::Rollback { .. })),
            "{plan:?}"
        );
        lattice.apply(plan);
        lattice.later(Duration::from_secs(2));
        let plan = lattice.plan("web");
        assert_eq!(plan.reasons(), ["RolloutFailed"], "{plan:?}");
        assert!(
            plan.ops
                .iter()
                .any(|op| matches!(op, Op::Rollback { to: 1, .. })),
            "{plan:?}"
        );
        let key = app_key("default", "web");
        lattice.apply(plan);
        assert_eq!(lattice.apps[&key].revision, 3);
        assert_eq!(lattice.apps[&key].spec.component, "r/web:1");
        assert_eq!(
            lattice.state.failed[&key].rolled_back_to,
            Some(1),
            "{:?}",
            lattice.state.failed
        );
    }

    #[test]
    fn a_failed_rollout_whose_plan_stopped_early_is_told_by_the_next_pass() {
        let mut lattice = Harness::new();
        let rollout = serde_json::json!({"rollout": {"progressDeadline": "30s"}});
        lattice
            .host("h1")
            .host("h2")
            .start_rollout("web", 2, rollout);
        lattice.later(Duration::from_secs(31));
        // Past the deadline and a host lost at once: the plan removes and places before it
        // tells of the failure, and another leader's write refuses it at its first write.
        lattice.live.remove("h2");
        let fence = lattice.revision;
        let plan = lattice.plan("web");
        assert!(plan.removed().count() > 0, "{plan:?}");
        assert!(plan.reasons().contains(&"RolloutFailed".to_owned()));
        lattice.someone_else_writes();
        lattice.events.clear();
        let applied = lattice.apply_at(plan, fence);
        assert!(applied.stopped.is_some());
        assert!(
            !lattice
                .events
                .iter()
                .any(|event| event.reason == "RolloutFailed"),
            "{:?}",
            lattice.events
        );
        let key = app_key("default", "web");
        assert!(!lattice.state.failed.contains_key(&key));
        // The next pass tells it, and rolls back.
        let plan = lattice.plan("web");
        assert!(
            plan.reasons().contains(&"RolloutFailed".to_owned()),
            "{plan:?}"
        );
        lattice.apply(plan);
        assert_eq!(lattice.apps[&key].revision, 3);
    }

    #[test]
    fn an_app_deleted_and_applied_again_forgets_its_failed_rollout() {
        let mut lattice = Harness::new();
        let rollout = serde_json::json!({"rollout": {"progressDeadline": "30s"}});
        let fail_a_rollout = |lattice: &mut Harness| {
            lattice.start_rollout("web", 1, rollout.clone());
            lattice.later(Duration::from_secs(31));
            let plan = lattice.plan("web");
            let told = plan.reasons().contains(&"RolloutFailed".to_owned());
            let rolls_back = plan
                .ops
                .iter()
                .any(|op| matches!(op, Op::Rollback { to: 1, .. }));
            lattice.apply(plan);
            (told, rolls_back)
        };
        lattice.host("h1");
        assert_eq!(fail_a_rollout(&mut lattice), (true, true));
        // Deleted: its replicas go, and so does what this leader remembers of it.
        lattice.apps.clear();
        let (cleanup, _) = lattice.plan_cleanup(&[]);
        lattice.apply(cleanup);
        assert!(lattice.state.failed.is_empty());
        // Applied again, its revision 2 fails too: told again and rolled back again.
        assert_eq!(fail_a_rollout(&mut lattice), (true, true));
    }

    #[test]
    fn without_auto_rollback_a_failed_rollout_is_told_once_and_stays() {
        let mut lattice = Harness::new();
        let rollout =
            serde_json::json!({"rollout": {"progressDeadline": "30s", "autoRollback": false}});
        lattice.host("h1").start_rollout("web", 1, rollout);
        lattice.later(Duration::from_secs(31));
        let first = lattice.plan("web");
        assert_eq!(first.reasons(), ["RolloutFailed"]);
        assert!(!first.ops.iter().any(|op| matches!(op, Op::Rollback { .. })));
        lattice.apply(first);
        let second = lattice.plan("web");
        assert!(second.reasons().is_empty(), "told again: {second:?}");
    }

    #[test]
    fn a_plan_refused_by_the_fence_writes_nothing_and_the_next_plan_starts_over() {
        let mut lattice = Harness::new();
        lattice
            .host("h1")
            .host("h2")
            .app("web", 1, 2, serde_json::json!({}));
        let fence = lattice.revision;
        let plan = lattice.plan("web");
        assert_eq!(plan.placed().count(), 2);
        // A leader this one does not know replaced it wrote meanwhile.
        lattice.someone_else_writes();
        let mut placed = lattice.placed();
        let owner = lattice.owner("web");
        for assignment in plan.placed() {
            placed.push(Versioned {
                key: assignment_key(&assignment.host, &assignment.replica),
                revision: 0,
                value: assignment.clone(),
            });
        }
        let applied = lattice.apply_at(plan, fence);
        assert!(applied.stopped.is_some());
        assert_eq!(applied.not_created.len(), 2);
        assert!(lattice.assignments.is_empty());
        assert!(lattice.events.is_empty(), "{:?}", lattice.events);
        // What the pass counted provisionally is gone from its view again.
        placed.settle(&owner, &applied);
        assert!(placed.of(&owner).is_empty());
        // The next pass plans from what is there: both replicas again.
        assert_eq!(lattice.plan("web").placed().count(), 2);
    }

    #[test]
    fn failed_replicas_are_replaced_with_a_growing_backoff() {
        let mut lattice = Harness::new();
        lattice.host("h1").app("web", 1, 1, serde_json::json!({}));
        lattice.converge("web", 5);
        lattice.report("web", 1, Phase::Failed);
        let plan = lattice.plan("web");
        assert_eq!((plan.removed().count(), plan.placed().count()), (1, 1));
        lattice.apply(plan);
        lattice.report("web", 1, Phase::Failed);
        // Within the backoff (2 s after the first failure) the failed one stays.
        lattice.later(Duration::from_secs(1));
        let plan = lattice.plan("web");
        assert_eq!(plan.removed().count(), 0, "{plan:?}");
        lattice.later(Duration::from_secs(2));
        let plan = lattice.plan("web");
        assert_eq!(plan.removed().count(), 1, "{plan:?}");
        let key = app_key("default", "web");
        assert_eq!(lattice.state.backoff[&key].failures, 2);
    }
}
