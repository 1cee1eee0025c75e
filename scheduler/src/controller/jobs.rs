//! The jobs controller: each pass, every job's runs are read (assignments with a job run,
//! their hosts' reports, their hosts' liveness), [`crate::jobs::step`] says what ended and
//! what to place, and the plan writes it: new runs placed like replicas (same filters and
//! scores, on the live schedulable hosts), then the job's status (so a count is never
//! lost), then the ended runs' assignments go. Runs of a deleted job go, and its status
//! with them.

use shoal_lattice::jobs::{JobRecord, JobStatus, log_name};
use shoal_lattice::names::job_status_key;

use super::placed::{Owner, Placed};
use super::plan::{Op, Plan};
use super::*;
use crate::jobs::{RunView, step};

/// The run's job: `(namespace, name, uid)`.
fn job_of(assignment: &Assignment) -> Option<(&str, &str, &str)> {
    let run = assignment.job.as_ref()?;
    Some((&assignment.namespace, &assignment.app, &run.uid))
}

/// An event about job `namespace/name`.
pub(super) fn job_event(
    source: &str,
    namespace: &str,
    name: &str,
    reason: &str,
    message: String,
) -> Event {
    Event::app(source, namespace, &log_name(name), reason, message)
}

/// Plans and applies every job's step: the runs and statuses of jobs that are gone first,
/// then each job's.
pub(super) async fn pass(
    lattice: &Lattice,
    state: &mut State,
    observed: &PassView<'_>,
    placed: &mut Placed,
) -> Result<(), Error> {
    let jobs = state.jobs.snapshot();
    let plan = plan_orphans(state, &jobs, placed);
    let applied = super::plan::apply(lattice, state, plan, observed.now).await;
    if let Some(error) = applied.stopped {
        return Err(error);
    }
    for job in jobs {
        let job = job.value;
        let owner = Owner::job(&job.namespace, &job.name, &job.uid);
        let plan = plan_job(state, observed, &job, placed);
        let applied = super::plan::apply(lattice, state, plan, observed.now).await;
        placed.settle(&owner, &applied);
        if let Some(error) = applied.stopped {
            return Err(error);
        }
    }
    Ok(())
}

/// Plans the removal of the runs of jobs that are gone (not among `jobs`, or replaced by a
/// new job of the same name), and of their statuses; `placed` forgets those runs.
pub(super) fn plan_orphans(
    state: &mut State,
    jobs: &[Versioned<JobRecord>],
    placed: &mut Placed,
) -> Plan {
    let mut plan = Plan::default();
    let current: HashSet<(&str, &str, &str)> = jobs
        .iter()
        .map(|job| {
            (
                job.value.namespace.as_str(),
                job.value.name.as_str(),
                job.value.uid.as_str(),
            )
        })
        .collect();
    let orphaned: Vec<Versioned<Assignment>> = placed
        .iter()
        .filter(|run| job_of(&run.value).is_some_and(|job| !current.contains(&job)))
        .cloned()
        .collect();
    let orphaned_keys: HashSet<String> = orphaned.iter().map(|run| run.key.clone()).collect();
    plan.ops.extend(orphaned.into_iter().map(Op::Remove));
    placed.retain(|run| !orphaned_keys.contains(&run.key));
    let names: HashSet<String> = jobs
        .iter()
        .map(|job| job_status_key(&job.value.namespace, &job.value.name))
        .collect();
    for status in state.job_status.snapshot() {
        if !names.contains(&status.key) {
            plan.push(Op::DeleteStatus(status.key));
        }
    }
    state
        .job_status_written
        .retain(|key, _| names.contains(key));
    plan
}

/// Plans one job's step: [`crate::jobs::step`] says what ended and how many runs to place;
/// the plan places them like replicas, writes the job's status, tells what happened and
/// removes the ended runs. `placed` follows the plan.
pub(super) fn plan_job(
    state: &mut State,
    observed: &PassView<'_>,
    job: &JobRecord,
    placed: &mut Placed,
) -> Plan {
    let mut plan = Plan::default();
    let wall = now_millis();
    let key = job_status_key(&job.namespace, &job.name);
    // What this leader wrote last, if the mirror has not shown it yet.
    let previous = state
        .job_status_written
        .get(&key)
        .cloned()
        .or_else(|| state.job_status.get(&key).map(|status| status.value));
    let owner = Owner::job(&job.namespace, &job.name, &job.uid);
    let runs: Vec<RunView<'_>> = placed
        .of(&owner)
        .iter()
        .map(|run| RunView {
            key: &run.key,
            revision: run.revision,
            assignment: &run.value,
            status: observed.status.get(&run.value.replica),
            host_live: observed.live.contains(&run.value.host),
        })
        .collect();
    let lost: Vec<(String, String)> = runs
        .iter()
        .filter(|run| !run.host_live)
        .map(|run| (run.assignment.host.clone(), run.assignment.replica.clone()))
        .collect();
    let mut step = step(job, previous.as_ref(), &runs, wall);
    let new_runs = if step.place > 0 {
        place(
            &mut plan,
            state,
            observed,
            job,
            step.place,
            placed,
            &mut step.status,
        )
    } else {
        0
    };
    step.status.active = step.status.active.saturating_add(new_runs);
    if previous.as_ref() != Some(&step.status) {
        plan.push(Op::PutJobStatus(key, Box::new(step.status.clone())));
    }
    for run in &step.ended {
        let (reason, outcome) = if run.succeeded {
            ("RunSucceeded", "succeeded")
        } else {
            ("RunFailed", "failed")
        };
        plan.push(Op::Emit(
            job_event(
                observed.source,
                &job.namespace,
                &job.name,
                reason,
                format!(
                    "run {} on host {} {outcome}: {}",
                    run.run, run.host, run.message
                ),
            )
            .on(&run.host, &run.run),
        ));
    }
    if previous
        .as_ref()
        .is_none_or(|previous| !previous.finished())
        && step.status.finished()
    {
        tracing::info!(job = %job.name, phase = %step.status.phase, "job ended");
        plan.push(Op::Emit(job_event(
            observed.source,
            &job.namespace,
            &job.name,
            if step.status.phase == shoal_lattice::jobs::JobPhase::Succeeded {
                "Completed"
            } else {
                "Failed"
            },
            format!(
                "job {} {}: {}",
                job.name,
                step.status.phase,
                step.status.message.clone().unwrap_or_default()
            ),
        )));
    }
    for stopped in &step.stopped {
        plan.push(Op::Emit(job_event(
            observed.source,
            &job.namespace,
            &job.name,
            "Stopped",
            format!("run {stopped} stopped: the job has ended"),
        )));
    }
    let removed: HashSet<String> = step.remove.iter().map(|(key, _)| key.clone()).collect();
    for (key, revision) in &step.remove {
        // `step` removes only runs it was shown.
        if let Some(run) = placed.of(&owner).iter().find(|run| &run.key == key) {
            plan.push(Op::Remove(Versioned {
                revision: *revision,
                ..run.clone()
            }));
        }
    }
    // A lost host cannot clean up its own run's status.
    for (host, replica) in lost {
        plan.push(Op::DeleteStatus(replica_status_key(&host, &replica)));
    }
    placed.remove_of(&owner, &removed);
    plan
}

/// Plans `count` runs of `job` into `plan` (and, provisionally, `placed`); returns how many,
/// and says in the status why the others wait.
fn place(
    plan: &mut Plan,
    state: &mut State,
    observed: &PassView<'_>,
    job: &JobRecord,
    count: u32,
    placed: &mut Placed,
    status: &mut JobStatus,
) -> u32 {
    let template = job.spec.template();
    let owner = Owner::job(&job.namespace, &job.name, &job.uid);
    let trusted_keys = match state.trusted_keys(&job.namespace) {
        Ok(keys) => keys,
        Err(why) => {
            status.message = Some(why);
            return 0;
        }
    };
    // Under a trust policy, only hosts that check signatures; with stores on a secure
    // lattice, only hosts a store credential can be sealed to.
    let sealed_to_host = observed.secure && template.needs_app_credential();
    let placement = placement::place(
        &placed.host_views(
            observed.hosts,
            &owner,
            (&job.digest, job.wasi.as_deref()),
            |host| {
                (trusted_keys.is_empty() || host.verifies_signatures)
                    && (!sealed_to_host || host.secrets_key.is_some())
            },
        ),
        &Request {
            count,
            memory: template.memory_request().0,
            cpu: template.cpu_request().0,
            requires: template.placement.requires.clone(),
            spread_by: template.placement.spread_by.clone(),
            spread_counts: HashMap::new(),
            prefer: None,
            wasi: job.wasi.clone(),
        },
    );
    status.message = placement
        .report
        .as_ref()
        .map(|report| format!("{} run(s) waiting for a host: {report}", placement.unplaced));
    let mut count_placed = 0;
    for host in &placement.hosts {
        let access = match super::stores::access_for(
            super::stores::Issuer::of(observed, state),
            (&job.namespace, &job.name),
            &template,
            (host, observed.hosts.get(host)),
            now_millis() / 1000,
        ) {
            Ok(access) => access,
            Err(why) => {
                status.message = Some(format!("the job's key-value stores cannot be given: {why}"));
                continue;
            }
        };
        let assignment = Assignment {
            replica: replica_id(&job.name),
            app: job.name.clone(),
            namespace: job.namespace.clone(),
            revision: 1,
            generation: 1,
            host: host.clone(),
            digest: job.digest.clone(),
            config_objects: BTreeMap::new(),
            secrets: None,
            template: template.clone(),
            created_at: now_millis(),
            job: Some(shoal_lattice::jobs::JobRun {
                uid: job.uid.clone(),
                args: job.spec.args.clone(),
            }),
            trusted_keys: trusted_keys.clone(),
            private_egress: state.private_egress(),
            store_access: access.as_ref().map(|(sealed, _)| sealed.clone()),
            store_access_expires: access.map(|(_, expires)| expires),
        };
        let run = assignment.replica.clone();
        placed.push(Versioned {
            key: assignment_key(host, &run),
            revision: 0,
            value: assignment.clone(),
        });
        plan.push(Op::Place(assignment));
        plan.push(Op::Emit(
            job_event(
                observed.source,
                &job.namespace,
                &job.name,
                "Placed",
                format!("run {run} placed on host {host}"),
            )
            .on(host, &run),
        ));
        count_placed += 1;
    }
    count_placed
}
