//! The jobs controller: each pass, every job's runs are read (assignments with a job run,
//! their hosts' reports, their hosts' liveness), [`crate::jobs::step`] says what ended and
//! what to place, and this writes it: the job's status first (so a count is never lost),
//! then the ended runs' assignments go, then new runs are placed like replicas (same
//! filters and scores, on the live schedulable hosts). Runs of a deleted job go, and its
//! status with them.

use shoal_lattice::jobs::{JobRecord, JobStatus, log_name};
use shoal_lattice::names::job_status_key;

use super::placed::{Owner, Placed};
use super::plan::{create, remove};
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

pub(super) async fn pass(
    lattice: &Lattice,
    state: &mut State,
    observed: &PassView<'_>,
    placed: &mut Placed,
) -> Result<(), Error> {
    let jobs = state.jobs.snapshot();
    let now = observed.now;
    let wall = now_millis();
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
    // Runs of jobs that are gone (or replaced by a new job of the same name) go.
    let orphaned: Vec<(String, u64)> = placed
        .iter()
        .filter(|run| job_of(&run.value).is_some_and(|job| !current.contains(&job)))
        .map(|run| (run.key.clone(), run.revision))
        .collect();
    for (key, revision) in &orphaned {
        remove(lattice, state, key, *revision, now).await?;
    }
    let orphaned_keys: HashSet<&str> = orphaned.iter().map(|(key, _)| key.as_str()).collect();
    placed.retain(|run| !orphaned_keys.contains(run.key.as_str()));
    // And the statuses of jobs that are gone.
    let names: HashSet<String> = jobs
        .iter()
        .map(|job| job_status_key(&job.value.namespace, &job.value.name))
        .collect();
    for status in state.job_status.snapshot() {
        if !names.contains(&status.key) {
            lattice.delete(Bucket::Status, &status.key).await?;
        }
    }
    state
        .job_status_written
        .retain(|key, _| names.contains(key));
    for job in jobs {
        let job = job.value;
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
        let mut step = step(&job, previous.as_ref(), &runs, wall);
        let new_runs = if step.place > 0 {
            place(
                lattice,
                state,
                observed,
                &job,
                step.place,
                placed,
                &mut step.status,
            )
            .await?
        } else {
            0
        };
        step.status.active = step.status.active.saturating_add(new_runs);
        if previous.as_ref() != Some(&step.status) {
            lattice.put(Bucket::Status, &key, &step.status).await?;
            state
                .job_status_written
                .insert(key.clone(), step.status.clone());
        }
        for run in &step.ended {
            let (reason, outcome) = if run.succeeded {
                ("RunSucceeded", "succeeded")
            } else {
                ("RunFailed", "failed")
            };
            lattice
                .emit(
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
                )
                .await;
        }
        if previous
            .as_ref()
            .is_none_or(|previous| !previous.finished())
            && step.status.finished()
        {
            tracing::info!(job = %job.name, phase = %step.status.phase, "job ended");
            lattice
                .emit(job_event(
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
                ))
                .await;
        }
        for stopped in &step.stopped {
            lattice
                .emit(job_event(
                    observed.source,
                    &job.namespace,
                    &job.name,
                    "Stopped",
                    format!("run {stopped} stopped: the job has ended"),
                ))
                .await;
        }
        for (key, revision) in &step.remove {
            remove(lattice, state, key, *revision, now).await?;
        }
        // A lost host cannot clean up its own run's status.
        for (host, replica) in lost {
            lattice
                .delete(Bucket::Status, &replica_status_key(&host, &replica))
                .await?;
        }
        let removed: HashSet<String> = step.remove.iter().map(|(key, _)| key.clone()).collect();
        placed.remove_of(&owner, &removed);
    }
    Ok(())
}

/// Places `count` runs of `job`; returns how many were placed, and says in the status why
/// the others were not.
async fn place(
    lattice: &Lattice,
    state: &mut State,
    observed: &PassView<'_>,
    job: &JobRecord,
    count: u32,
    placed: &mut Placed,
    status: &mut JobStatus,
) -> Result<u32, Error> {
    let template = job.spec.template();
    let owner = Owner::job(&job.namespace, &job.name, &job.uid);
    let trusted_keys = match state.trusted_keys(&job.namespace) {
        Ok(keys) => keys,
        Err(why) => {
            status.message = Some(why);
            return Ok(0);
        }
    };
    // Under a trust policy, only hosts that check signatures; with stores on a secure
    // lattice, only hosts a store credential can be sealed to.
    let sealed_to_host = observed.secure && !template.key_value.is_empty();
    let plan = placement::place(
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
    status.message = plan
        .report
        .as_ref()
        .map(|report| format!("{} run(s) waiting for a host: {report}", plan.unplaced));
    let mut count_placed = 0;
    for host in &plan.hosts {
        let access = match super::stores::access_for(
            super::stores::Issuer::of(observed, state),
            (&job.namespace, &job.name),
            &template.key_value,
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
        let record = create(lattice, state, assignment, observed.now).await?;
        let run = &record.value.replica;
        tracing::info!(job = %job.name, %run, %host, "run placed");
        lattice
            .emit(
                job_event(
                    observed.source,
                    &job.namespace,
                    &job.name,
                    "Placed",
                    format!("run {run} placed on host {host}"),
                )
                .on(host, run),
            )
            .await;
        placed.push(record);
        count_placed += 1;
    }
    Ok(count_placed)
}
