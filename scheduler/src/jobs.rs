//! The jobs controller's pure step, after Kubernetes' Job controller: given a job, its
//! last status and its runs as they stand, which runs ended (recorded once each, by run
//! id, so a pass that is repeated counts nothing twice), which go, how many to place, and
//! the job's new status.
//!
//! A run ends when its host reports it succeeded or failed, or when its host is lost (a
//! failure: the run is placed again elsewhere, counted against `backoffLimit`). The job
//! succeeds at `completions` successes and fails past `backoffLimit` failures or at its
//! `activeDeadline`; either way its other runs stop. After a failure the next run waits a
//! second, doubling with each failure up to a minute.

use std::collections::HashSet;
use std::time::Duration;

use shoal_lattice::jobs::{JobPhase, JobRecord, JobStatus, RUNS_KEPT, RunRecord};
use shoal_lattice::records::{Assignment, Phase, ReplicaStatus};

/// The longest wait before a failed job's next run.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// One run of the job as the pass sees it.
#[derive(Debug, Clone, Copy)]
pub struct RunView<'a> {
    /// Its assignment's key and KV revision.
    pub key: &'a str,
    /// Its assignment's KV revision.
    pub revision: u64,
    /// The assignment.
    pub assignment: &'a Assignment,
    /// What its host last reported.
    pub status: Option<&'a ReplicaStatus>,
    /// Whether its host is live.
    pub host_live: bool,
}

/// What a pass does for one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStep {
    /// The job's status after this pass.
    pub status: JobStatus,
    /// Runs whose assignments go: ended, or stopped because the job ended.
    pub remove: Vec<(String, u64)>,
    /// Runs to place now.
    pub place: u32,
    /// Runs stopped because the job ended (events say so).
    pub stopped: Vec<String>,
    /// Runs newly recorded as ended.
    pub ended: Vec<RunRecord>,
}

/// How long the next run waits after `failed` failures.
fn retry_delay(failed: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1u32 << failed.saturating_sub(1).min(16))
        .min(MAX_RETRY_DELAY)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One pass over `job` at `now` (ms since the epoch).
pub fn step(
    job: &JobRecord,
    previous: Option<&JobStatus>,
    runs: &[RunView<'_>],
    now: u64,
) -> JobStep {
    let spec = &job.spec;
    let mut status = previous
        .filter(|status| status.uid == job.uid)
        .cloned()
        .unwrap_or_else(|| JobStatus::new(&job.uid));
    let recorded: HashSet<String> = status.runs.iter().map(|run| run.run.clone()).collect();
    let mut remove = Vec::new();
    let mut ended = Vec::new();
    let mut active: Vec<&RunView<'_>> = Vec::new();
    for run in runs {
        let assignment = run.assignment;
        let reported = run
            .status
            .filter(|reported| reported.observed_generation == assignment.generation);
        let outcome = match reported {
            Some(reported) if reported.phase == Phase::Succeeded => Some((
                true,
                reported.exit_code,
                reported
                    .message
                    .clone()
                    .unwrap_or_else(|| "exit code 0".to_owned()),
            )),
            Some(reported) if reported.phase == Phase::Failed => Some((
                false,
                reported.exit_code,
                reported
                    .message
                    .clone()
                    .or_else(|| reported.reason.clone())
                    .unwrap_or_else(|| "failed".to_owned()),
            )),
            _ if !run.host_live => Some((false, None, "its host was lost".to_owned())),
            _ => None,
        };
        let Some((succeeded, exit_code, message)) = outcome else {
            active.push(run);
            continue;
        };
        remove.push((run.key.to_owned(), run.revision));
        if recorded.contains(&assignment.replica) {
            continue;
        }
        let record = RunRecord {
            run: assignment.replica.clone(),
            host: assignment.host.clone(),
            placed_at: assignment.created_at,
            finished_at: now,
            exit_code,
            succeeded,
            message,
        };
        // A run that ends after the job did (stopped too late) changes no count.
        if !status.finished() {
            if succeeded {
                status.succeeded = status.succeeded.saturating_add(1);
            } else {
                status.failed = status.failed.saturating_add(1);
                status.retry_at = Some(now.saturating_add(millis(retry_delay(status.failed))));
            }
        }
        status.runs.push(record.clone());
        ended.push(record);
    }
    let excess = status.runs.len().saturating_sub(RUNS_KEPT);
    status.runs.drain(..excess);

    if !status.finished() {
        let deadline_passed = spec.active_deadline.is_some_and(|deadline| {
            status
                .started_at
                .is_some_and(|started| now >= started.saturating_add(millis(deadline.0)))
        });
        let end = if status.succeeded >= spec.completions() {
            Some((
                JobPhase::Succeeded,
                "Completed",
                format!(
                    "{} of {} runs succeeded",
                    status.succeeded,
                    spec.completions()
                ),
            ))
        } else if status.failed > spec.backoff_limit() {
            Some((
                JobPhase::Failed,
                "BackoffLimitExceeded",
                format!(
                    "{} runs failed, more than its backoffLimit of {}",
                    status.failed,
                    spec.backoff_limit()
                ),
            ))
        } else if deadline_passed {
            Some((
                JobPhase::Failed,
                "DeadlineExceeded",
                format!(
                    "still running after its activeDeadline of {}",
                    humantime::format_duration(
                        spec.active_deadline.map(|d| d.0).unwrap_or_default()
                    )
                ),
            ))
        } else {
            None
        };
        if let Some((phase, reason, message)) = end {
            status.phase = phase;
            status.reason = Some(reason.to_owned());
            status.message = Some(message);
            status.finished_at = Some(now);
            status.retry_at = None;
        }
    }

    let mut place = 0;
    let mut stopped = Vec::new();
    if status.finished() {
        for run in &active {
            remove.push((run.key.to_owned(), run.revision));
            stopped.push(run.assignment.replica.clone());
        }
        active.clear();
    } else {
        let remaining = spec.completions().saturating_sub(status.succeeded);
        let wanted = spec.parallelism().min(remaining);
        let running = u32::try_from(active.len()).unwrap_or(u32::MAX);
        if wanted > running && status.retry_at.is_none_or(|at| now >= at) {
            place = wanted - running;
            status.retry_at = None;
            status.started_at.get_or_insert(now);
        }
    }
    status.active = u32::try_from(active.len()).unwrap_or(u32::MAX);
    JobStep {
        status,
        remove,
        place,
        stopped,
        ended,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_lattice::jobs::{JobRun, JobSpec};

    fn job(completions: u32, parallelism: u32, backoff_limit: u32) -> JobRecord {
        JobRecord {
            namespace: "default".into(),
            name: "task".into(),
            uid: "u1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            wasi: None,
            spec: JobSpec {
                completions: Some(completions),
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff_limit),
                ..serde_json::from_value(serde_json::json!({"component": "r/task:1"})).unwrap()
            },
            created_at: 0,
            cron: None,
        }
    }

    fn run(id: &str, host: &str) -> Assignment {
        let job = job(1, 1, 0);
        Assignment {
            replica: id.into(),
            app: "task".into(),
            namespace: "default".into(),
            revision: 1,
            generation: 1,
            host: host.into(),
            digest: job.digest.clone(),
            config_objects: Default::default(),
            secrets: None,
            template: job.spec.template(),
            created_at: 5,
            job: Some(JobRun {
                uid: "u1".into(),
                args: Vec::new(),
            }),
            trusted_keys: Vec::new(),
            private_egress: Vec::new(),
            store_access: None,
            store_access_expires: None,
        }
    }

    fn reported(assignment: &Assignment, phase: Phase, code: Option<i32>) -> ReplicaStatus {
        ReplicaStatus {
            restarts: 0,
            last_restart: None,
            replica: assignment.replica.clone(),
            app: assignment.app.clone(),
            namespace: assignment.namespace.clone(),
            revision: 1,
            host: assignment.host.clone(),
            phase,
            reason: None,
            message: code.map(|code| format!("exit code {code}")),
            observed_generation: 1,
            since: 0,
            exit_code: code,
        }
    }

    fn view<'a>(
        assignment: &'a Assignment,
        status: Option<&'a ReplicaStatus>,
        live: bool,
    ) -> RunView<'a> {
        RunView {
            key: &assignment.replica,
            revision: 7,
            assignment,
            status,
            host_live: live,
        }
    }

    #[test]
    fn completions_and_parallelism_are_honoured() {
        let job = job(3, 2, 6);
        // Nothing runs: two at once.
        let first = step(&job, None, &[], 1_000);
        assert_eq!((first.place, first.status.started_at), (2, Some(1_000)));
        // One succeeds, one runs: one more (3 - 1 = 2 remaining, 1 running).
        let (a, b) = (run("a", "h1"), run("b", "h2"));
        let done = reported(&a, Phase::Succeeded, Some(0));
        let next = step(
            &job,
            Some(&first.status),
            &[view(&a, Some(&done), true), view(&b, None, true)],
            2_000,
        );
        assert_eq!(
            (next.place, next.status.succeeded, next.status.active),
            (1, 1, 1)
        );
        assert_eq!(next.remove, [("a".to_owned(), 7)]);
        // The same pass again (the removal did not land): nothing counted twice.
        let again = step(
            &job,
            Some(&next.status),
            &[view(&a, Some(&done), true), view(&b, None, true)],
            2_100,
        );
        assert_eq!(again.status.succeeded, 1);
        // With two left to finish and one running, never more than the remaining count.
        let (c, d) = (run("c", "h1"), run("d", "h2"));
        let (b_done, c_done) = (
            reported(&b, Phase::Succeeded, Some(0)),
            reported(&c, Phase::Succeeded, Some(0)),
        );
        let last = step(
            &job,
            Some(&again.status),
            &[
                view(&b, Some(&b_done), true),
                view(&c, Some(&c_done), true),
                view(&d, None, true),
            ],
            3_000,
        );
        assert_eq!(last.status.phase, JobPhase::Succeeded);
        assert_eq!(last.status.reason.as_deref(), Some("Completed"));
        // The run still going is stopped: the job is done.
        assert_eq!(last.stopped, ["d"]);
        assert_eq!(last.place, 0);
    }

    #[test]
    fn failures_retry_with_a_delay_up_to_the_backoff_limit_and_a_lost_host_counts() {
        let job = job(1, 1, 1);
        let a = run("a", "h1");
        let failed = reported(&a, Phase::Failed, Some(3));
        let first = step(&job, None, &[view(&a, Some(&failed), true)], 10_000);
        assert_eq!(first.status.failed, 1);
        assert_eq!(first.ended[0].exit_code, Some(3));
        // Not placed again before the delay (1 s after the first failure).
        assert_eq!(first.place, 0);
        assert_eq!(first.status.retry_at, Some(11_000));
        let waited = step(&job, Some(&first.status), &[], 11_000);
        assert_eq!(waited.place, 1);
        // Its host is lost: a second failure, past the limit of 1.
        let b = run("b", "h2");
        let lost = step(&job, Some(&waited.status), &[view(&b, None, false)], 12_000);
        assert_eq!(lost.ended[0].message, "its host was lost");
        assert_eq!(lost.status.phase, JobPhase::Failed);
        assert_eq!(lost.status.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(lost.place, 0);
        assert_eq!(retry_delay(3), Duration::from_secs(4));
        assert_eq!(retry_delay(40), MAX_RETRY_DELAY);
    }

    #[test]
    fn the_deadline_fails_the_job_and_stops_its_runs() {
        let mut job = job(1, 1, 6);
        job.spec.active_deadline = Some(shoal_lattice::quantity::Span(Duration::from_secs(5)));
        let first = step(&job, None, &[], 1_000);
        let a = run("a", "h1");
        let running = reported(&a, Phase::Running, None);
        let on_time = step(
            &job,
            Some(&first.status),
            &[view(&a, Some(&running), true)],
            5_999,
        );
        assert_eq!(on_time.status.phase, JobPhase::Running);
        let late = step(
            &job,
            Some(&on_time.status),
            &[view(&a, Some(&running), true)],
            6_000,
        );
        assert_eq!(late.status.phase, JobPhase::Failed);
        assert_eq!(late.status.reason.as_deref(), Some("DeadlineExceeded"));
        assert_eq!(late.stopped, ["a"]);
        // A status of another job of the same name is not this one's.
        let mut other = late.status.clone();
        other.uid = "u0".into();
        assert_eq!(
            step(&job, Some(&other), &[], 7_000).status.phase,
            JobPhase::Running
        );
    }
}
