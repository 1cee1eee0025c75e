//! The cron jobs controller: each pass, every cron job's schedule is read with the
//! scheduler's clock, [`crate::cron::step`] says whether a time has come and what its
//! history keeps, and the plan writes it: jobs stopped for `Replace` (deleted: their runs
//! go), the new job (a `create`, so a time two leaders both see makes one job), the status
//! (the time handled), then the history trimmed.

use shoal_lattice::jobs::{CronJobStatus, CronOrigin, JobRecord, JobStatus, cron_log_name};
use shoal_lattice::names::{cron_job_status_key, job_status_key};

use super::jobs::job_event;
use super::plan::{Op, Plan};
use super::*;
use crate::cron::{MadeJob, Schedule, step};

/// Plans and applies the cron jobs' step at `now` (ms since the epoch, by the
/// scheduler's clock).
pub(super) async fn pass(
    lattice: &Lattice,
    state: &mut State,
    source: &str,
    now: u64,
) -> Result<(), Error> {
    let plan = plan_cron(state, source, now);
    let applied = super::plan::apply(lattice, state, plan, Instant::now()).await;
    match applied.stopped {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Plans every cron job's step: jobs stopped for `Replace` (deleted: their runs go), the
/// new job (a create, so a time two leaders both see makes one job), the status (the time
/// handled), then the history trimmed; and the statuses of cron jobs that are gone.
pub(super) fn plan_cron(state: &State, source: &str, now: u64) -> Plan {
    let mut plan = Plan::default();
    let crons = state.cron_jobs.snapshot();
    let jobs = state.jobs.snapshot();
    let statuses: HashMap<String, JobStatus> = state
        .job_status
        .snapshot()
        .into_iter()
        .map(|status| (status.key, status.value))
        .collect();
    let names: HashSet<String> = crons
        .iter()
        .map(|cron| cron_job_status_key(&cron.value.namespace, &cron.value.name))
        .collect();
    for status in state.cron_status.snapshot() {
        if !names.contains(&status.key) {
            plan.push(Op::DeleteStatus(status.key));
        }
    }
    for cron in crons {
        let cron = cron.value;
        let key = cron_job_status_key(&cron.namespace, &cron.name);
        let previous = state.cron_status.get(&key).map(|status| status.value);
        let schedule = match Schedule::parse(&cron.spec.schedule, cron.spec.time_zone.as_deref()) {
            Ok(schedule) => schedule,
            Err(problem) => {
                // Written around the API (which checks schedules): said once, in its status.
                let status = CronJobStatus {
                    problem: Some(problem.to_string()),
                    ..previous.clone().unwrap_or_default()
                };
                if previous.as_ref() != Some(&status) {
                    plan.push(Op::PutCronJobStatus(key, Box::new(status)));
                }
                continue;
            }
        };
        let made: Vec<MadeJob<'_>> = jobs
            .iter()
            .filter(|job| job.value.made_by(&cron.namespace, &cron.name))
            .map(|job| MadeJob {
                job: &job.value,
                status: statuses.get(&job_status_key(&job.value.namespace, &job.value.name)),
            })
            .collect();
        let step = step(&cron, &schedule, previous.as_ref(), &made, now);
        for replaced in &step.replace {
            plan.push(Op::DeleteJob(app_key(&cron.namespace, replaced)));
            plan.push(Op::Emit(job_event(
                source,
                &cron.namespace,
                replaced,
                "Stopped",
                format!(
                    "job {replaced} stopped and deleted: cron job {} starts another (concurrencyPolicy Replace)",
                    cron.name
                ),
            )));
        }
        if let Some((name, at)) = &step.create {
            let job = JobRecord {
                namespace: cron.namespace.clone(),
                name: name.clone(),
                uid: nuid::next().to_string().to_ascii_lowercase(),
                digest: cron.digest.clone(),
                wasi: cron.wasi.clone(),
                spec: cron.spec.job_template.clone(),
                created_at: now_millis(),
                cron: Some(CronOrigin {
                    cron_job: cron.name.clone(),
                    scheduled_at: Some(*at),
                }),
            };
            plan.push(Op::CreateJob {
                key: app_key(&cron.namespace, name),
                job: Box::new(job),
                made: Event::app(
                    source,
                    &cron.namespace,
                    &cron_log_name(&cron.name),
                    "JobCreated",
                    format!("made job {name} for {}", time_text(*at)),
                ),
            });
        }
        if let Some((at, why)) = &step.skipped {
            plan.push(Op::Emit(Event::app(
                source,
                &cron.namespace,
                &cron_log_name(&cron.name),
                "Skipped",
                format!("no job for {}: {why}", time_text(*at)),
            )));
        }
        if previous.as_ref() != Some(&step.status) {
            plan.push(Op::PutCronJobStatus(key, Box::new(step.status)));
        }
        for trimmed in &step.trim {
            plan.push(Op::DeleteJob(app_key(&cron.namespace, trimmed)));
        }
    }
    plan
}

/// `2026-12-01T09:00:00Z` for ms since the epoch.
fn time_text(millis: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(millis))
        .to_string()
}
