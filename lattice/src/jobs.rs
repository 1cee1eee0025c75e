//! Jobs and cron jobs as stored in the lattice.
//!
//! A job (`kind: Job`) runs a `wasi:cli` command component to completion: `completions`
//! runs must exit 0, at most `parallelism` at once; a run that exits non-zero, traps, or
//! whose host is lost counts against `backoffLimit`. Its record lives in the jobs bucket
//! (`<namespace>.<name>`), its status (runs, counts, phase) in the status bucket
//! (`jobs.<namespace>.<name>`); each run is an [`Assignment`](crate::records::Assignment)
//! with [`JobRun`] set, which hosts run instead of serving.
//!
//! A cron job (`kind: CronJob`) makes a job from its template at each time of its schedule;
//! its record lives in the cron jobs bucket (`<namespace>.<name>`), its status in
//! `cronjobs.<namespace>.<name>` in the status bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quantity::Span;
use crate::records::AppSpec;
use crate::validate::{Invalid, Problems, Validate};

/// Most runs a job may ask to complete.
pub const MAX_COMPLETIONS: u32 = 10_000;
/// Most runs of one job at once.
pub const MAX_PARALLELISM: u32 = 1_000;
/// Most failed runs a job may retry.
pub const MAX_BACKOFF_LIMIT: u32 = 1_000;
/// Longest `activeDeadline` and `startingDeadline`.
pub const MAX_JOB_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most arguments of a job, and the longest one.
pub const MAX_ARGS: usize = 256;
/// Longest argument.
pub const MAX_ARG: usize = 4096;
/// Runs a job's status keeps (the newest).
pub const RUNS_KEPT: usize = 50;
/// Most jobs of a cron job's history a limit may keep.
pub const MAX_HISTORY: u32 = 100;
/// Longest cron job name: its jobs are named `<name>-<minute>`, and names are at most 63.
pub const MAX_CRON_JOB_NAME: usize = 52;
/// Longest `jitter`.
pub const MAX_JITTER: Duration = Duration::from_secs(3600);

/// Why `name` cannot name a cron job, beyond the naming rules: its jobs' names add a time.
pub fn cron_job_name_problem(name: &str) -> Option<String> {
    (name.len() > MAX_CRON_JOB_NAME).then(|| {
        format!(
            "a cron job's name must be at most {MAX_CRON_JOB_NAME} characters (its jobs add a time)"
        )
    })
}

/// The name a job's logs and events are published under: `job=<name>`, which no app's
/// name can be.
pub fn log_name(job: &str) -> String {
    format!("job={job}")
}

/// The name a cron job's events are published under: `cronjob=<name>`.
pub fn cron_log_name(cron_job: &str) -> String {
    format!("cronjob={cron_job}")
}

crate::records::workload_spec! {
    /// What a job runs, and how many times.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct JobSpec {
        /// Arguments after the program name.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub args: Vec<String>,
        /// Runs that must exit 0 (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub completions: Option<u32>,
        /// Most runs at once (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub parallelism: Option<u32>,
        /// Failed runs retried before the job fails (default 6).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub backoff_limit: Option<u32>,
        /// How long the job may run in all, from its start; then it fails and its runs
        /// stop.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub active_deadline: Option<Span>,
    }
}

impl JobSpec {
    /// Runs that must succeed.
    pub fn completions(&self) -> u32 {
        self.completions.unwrap_or(1)
    }

    /// Most runs at once.
    pub fn parallelism(&self) -> u32 {
        self.parallelism.unwrap_or(1)
    }

    /// Failed runs allowed before the job fails.
    pub fn backoff_limit(&self) -> u32 {
        self.backoff_limit.unwrap_or(6)
    }

    /// How a run is placed and limited, in the shape replicas use: a host runs it with the
    /// same limits, environment and grants as an app's replica (one run per request of the
    /// timeout: 1h unless the job says otherwise).
    pub fn template(&self) -> AppSpec {
        let mut spec = AppSpec::of_workload(self.workload());
        let timeout = spec
            .limits
            .timeout
            .unwrap_or(Span(Duration::from_secs(3600)));
        spec.limits.timeout = Some(timeout);
        spec
    }

    /// Every problem of this spec, with field paths under `prefix` (`spec` in a manifest).
    pub fn problems(&self, prefix: &str) -> Vec<crate::validate::Problem> {
        let mut found = Problems::default();
        found.job(prefix, self);
        found.0
    }
}

/// A run's part of an assignment: which job it belongs to and its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRun {
    /// The job's uid: a run of a deleted job is never counted for a new one of the same name.
    pub uid: String,
    /// Arguments after the program name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// Which cron job made a job, and for which time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronOrigin {
    /// The cron job's name (same namespace).
    pub cron_job: String,
    /// The scheduled time (ms since the epoch); `None` for `shoal create job --from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<u64>,
}

/// A job as stored (`<namespace>.<name>` in the jobs bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Unique id of this job (a job deleted and made again gets another).
    pub uid: String,
    /// The component's manifest digest, pinned when the job was made.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
    /// What it runs.
    pub spec: JobSpec,
    /// When it was made (ms since the epoch).
    pub created_at: u64,
    /// The cron job that made it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<CronOrigin>,
}

impl JobRecord {
    /// Whether cron job `namespace/cron_job` made this job (on schedule or by hand).
    pub fn made_by(&self, namespace: &str, cron_job: &str) -> bool {
        self.namespace == namespace
            && self
                .cron
                .as_ref()
                .is_some_and(|origin| origin.cron_job == cron_job)
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum JobPhase {
    /// Runs go on.
    Running,
    /// `completions` runs exited 0.
    Succeeded,
    /// Too many runs failed, or the deadline passed, or it was stopped.
    Failed,
}

impl std::fmt::Display for JobPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobPhase::Running => "running",
            JobPhase::Succeeded => "succeeded",
            JobPhase::Failed => "failed",
        })
    }
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The run's id (its assignment's replica id).
    pub run: String,
    /// Where it ran.
    pub host: String,
    /// When it was placed (ms since the epoch).
    pub placed_at: u64,
    /// When it ended, as far as the scheduler knows (ms since the epoch).
    pub finished_at: u64,
    /// Its exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether it counts as a completion.
    pub succeeded: bool,
    /// Why it ended, for people: `exit code 3`, `its host was lost`, `trapped: …`.
    pub message: String,
}

/// A job's status (`jobs.<namespace>.<name>` in the status bucket), written by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// The job this is about.
    pub uid: String,
    /// Where the job is.
    pub phase: JobPhase,
    /// Runs going on.
    pub active: u32,
    /// Runs that exited 0.
    pub succeeded: u32,
    /// Runs that failed.
    pub failed: u32,
    /// When the first run was placed (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When it succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// No run is placed before this, after a failure (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<u64>,
    /// Why it ended: `Completed`, `BackoffLimitExceeded`, `DeadlineExceeded`, `Replaced`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What keeps runs from being placed, or how it ended, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The newest runs that ended, oldest first (at most [`RUNS_KEPT`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunRecord>,
}

impl JobStatus {
    /// The status of a job no run of which has been placed yet.
    pub fn new(uid: &str) -> Self {
        Self {
            uid: uid.to_owned(),
            phase: JobPhase::Running,
            active: 0,
            succeeded: 0,
            failed: 0,
            started_at: None,
            finished_at: None,
            retry_at: None,
            reason: None,
            message: None,
            runs: Vec::new(),
        }
    }

    /// Whether the job has ended.
    pub fn finished(&self) -> bool {
        self.phase != JobPhase::Running
    }
}

/// What a cron job does when a time comes while a job it made still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConcurrencyPolicy {
    /// Start another.
    #[default]
    Allow,
    /// Skip this time.
    Forbid,
    /// Stop the running one and start another.
    Replace,
}

/// A job made on a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobSpec {
    /// Five cron fields (`*/5 * * * *`) or a macro (`@hourly`, `@daily`, …).
    pub schedule: String,
    /// The IANA time zone the schedule is read in (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a time does while a job it made runs (default Allow).
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A time missed by more than this (the scheduler was down) is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Span>,
    /// Succeeded jobs kept (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful_jobs_history_limit: Option<u32>,
    /// Failed jobs kept (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_jobs_history_limit: Option<u32>,
    /// No new jobs while set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Each job starts up to this much after its time (the same delay for a given cron
    /// job and time, on any scheduler), so many cron jobs on one schedule do not start at
    /// once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Span>,
    /// The job each time makes.
    pub job_template: JobSpec,
}

impl CronJobSpec {
    /// Succeeded jobs kept.
    pub fn successful_kept(&self) -> u32 {
        self.successful_jobs_history_limit.unwrap_or(3)
    }

    /// Failed jobs kept.
    pub fn failed_kept(&self) -> u32 {
        self.failed_jobs_history_limit.unwrap_or(1)
    }

    /// Every problem of this spec that the lattice checks (the scheduler parses the
    /// schedule and time zone), with field paths under `prefix`.
    pub fn problems(&self, prefix: &str) -> Vec<crate::validate::Problem> {
        let mut found = Problems::default();
        found.cron_job(prefix, self);
        found.0
    }
}

/// A cron job as stored (`<namespace>.<name>` in the cron jobs bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The job template's component digest, pinned when the cron job was applied.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
    /// What it makes and when.
    pub spec: CronJobSpec,
    /// When it was made (ms since the epoch).
    pub created_at: u64,
}

/// A cron job's status (`cronjobs.<namespace>.<name>` in the status bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobStatus {
    /// The latest scheduled time handled: made, or skipped (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scheduled: Option<u64>,
    /// When a job it made last succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<u64>,
    /// The next time, as of the last pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// Why the schedule cannot be read, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Problems {
    fn job(&mut self, prefix: &str, job: &JobSpec) {
        let at = |field: &str| format!("{prefix}.{field}");
        self.spec(prefix, &job.template());
        if !(1..=MAX_COMPLETIONS).contains(&job.completions()) {
            self.add(
                at("completions"),
                format!("must be between 1 and {MAX_COMPLETIONS}"),
            );
        }
        if !(1..=MAX_PARALLELISM).contains(&job.parallelism()) {
            self.add(
                at("parallelism"),
                format!("must be between 1 and {MAX_PARALLELISM}"),
            );
        }
        if job.backoff_limit() > MAX_BACKOFF_LIMIT {
            self.add(
                at("backoffLimit"),
                format!("must be at most {MAX_BACKOFF_LIMIT}"),
            );
        }
        if job.active_deadline.is_some_and(|span| span.0.is_zero()) {
            self.add(at("activeDeadline"), "must be more than 0s");
        }
        self.span(&at("activeDeadline"), job.active_deadline, MAX_JOB_DEADLINE);
        if job.args.len() > MAX_ARGS {
            self.add(
                at("args"),
                format!("must have at most {MAX_ARGS} arguments"),
            );
        }
        for (index, arg) in job.args.iter().enumerate() {
            self.text(&at(&format!("args[{index}]")), arg, MAX_ARG);
        }
    }

    fn cron_job(&mut self, prefix: &str, cron: &CronJobSpec) {
        let at = |field: &str| format!("{prefix}.{field}");
        if cron.schedule.trim().is_empty() {
            self.add(
                at("schedule"),
                "must be 5 cron fields or a macro like @hourly",
            );
        }
        self.text(&at("schedule"), &cron.schedule, 256);
        if let Some(zone) = &cron.time_zone {
            self.text(&at("timeZone"), zone, 64);
        }
        self.span(
            &at("startingDeadline"),
            cron.starting_deadline,
            MAX_JOB_DEADLINE,
        );
        self.span(&at("jitter"), cron.jitter, MAX_JITTER);
        for (field, limit) in [
            (
                "successfulJobsHistoryLimit",
                cron.successful_jobs_history_limit,
            ),
            ("failedJobsHistoryLimit", cron.failed_jobs_history_limit),
        ] {
            if limit.is_some_and(|limit| limit > MAX_HISTORY) {
                self.add(at(field), format!("must be at most {MAX_HISTORY}"));
            }
        }
        self.job(&at("jobTemplate"), &cron.job_template);
    }
}

impl Validate for JobRecord {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("name", "job name", &self.name);
        found.name("namespace", "namespace", &self.namespace);
        found.replica("uid", &self.uid);
        found.digest("digest", &self.digest);
        found.job("spec", &self.spec);
        if let Some(cron) = &self.cron {
            found.name("cron.cronJob", "cron job name", &cron.cron_job);
        }
        found.finish()
    }
}

impl Validate for JobStatus {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.replica("uid", &self.uid);
        if self.runs.len() > RUNS_KEPT {
            found.add("runs", format!("must hold at most {RUNS_KEPT} runs"));
        }
        for (index, run) in self.runs.iter().enumerate() {
            found.replica(&format!("runs[{index}].run"), &run.run);
            found.text(
                &format!("runs[{index}].message"),
                &run.message,
                crate::validate::MAX_MESSAGE,
            );
        }
        found.finish()
    }
}

impl Validate for CronJobRecord {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        found.name("name", "cron job name", &self.name);
        if let Some(problem) = cron_job_name_problem(&self.name) {
            found.add("name", problem);
        }
        found.name("namespace", "namespace", &self.namespace);
        found.digest("digest", &self.digest);
        found.cron_job("spec", &self.spec);
        found.finish()
    }
}

impl Validate for CronJobStatus {
    fn validate(&self) -> Result<(), Invalid> {
        let mut found = Problems::default();
        if let Some(problem) = &self.problem {
            found.text("problem", problem, crate::validate::MAX_MESSAGE);
        }
        found.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobSpec {
        serde_json::from_value(serde_json::json!({
            "component": "localhost:5000/jobs/task:1.0",
            "args": ["--exit", "0"],
            "completions": 3,
            "parallelism": 2,
        }))
        .unwrap()
    }

    /// A job and an app as stored before their shared fields were declared once: each
    /// reads as it did and is written back the same (a job's empty placement and limits,
    /// written out before, are now left out, and read back as the same defaults).
    #[test]
    fn records_of_today_read_and_write_as_before() {
        let app = serde_json::json!({
            "component": "r/web:1",
            "replicas": 3,
            "placement": {"requires": {"zone": "a"}, "spreadBy": "rack"},
            "limits": {"memory": "64Mi", "timeout": "30s"},
            "routes": [{"path": "/"}],
            "config": {"MODE": "fast"},
            "configFrom": ["settings"],
            "env": {"A": "1"},
            "secrets": ["db"],
            "keyValue": [{"name": "cache"}],
            "allowedOutbound": ["https://api.example"],
            "revisionHistoryLimit": 4,
            "expose": {"namespaces": ["team-b"]},
        });
        let read: AppSpec = serde_json::from_value(app.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), app);
        assert_eq!(read.workload().allowed_outbound, ["https://api.example"]);

        let job = serde_json::json!({
            "component": "r/task:1",
            "args": ["--exit", "0"],
            "env": {"A": "1"},
            "config": {"MODE": "fast"},
            "placement": {"requires": {"zone": "a"}},
            "limits": {"timeout": "30s"},
            "allowedOutbound": ["https://api.example"],
            "completions": 3,
        });
        let read: JobSpec = serde_json::from_value(job.clone()).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), job);

        let bare = serde_json::json!({
            "component": "r/task:1",
            "placement": {},
            "limits": {},
        });
        let read: JobSpec = serde_json::from_value(bare).unwrap();
        let written = serde_json::to_value(&read).unwrap();
        assert_eq!(written, serde_json::json!({"component": "r/task:1"}));
        assert_eq!(serde_json::from_value::<JobSpec>(written).unwrap(), read);
    }

    #[test]
    fn a_run_is_confined_as_its_job_says_and_granted_nothing_more() {
        let mut spec = job();
        spec.env.insert("A".into(), "1".into());
        spec.allowed_outbound.push("https://api.example".into());
        let run = spec.template();
        assert_eq!(run.workload().component, spec.component);
        assert_eq!(run.env, spec.env);
        assert_eq!(run.allowed_outbound, spec.allowed_outbound);
        assert_eq!(run.replicas, 0);
        assert!(run.routes.is_empty() && run.secrets.is_empty() && run.key_value.is_empty());
    }

    #[test]
    fn defaults_and_bounds() {
        let spec = job();
        assert_eq!(
            (spec.completions(), spec.parallelism(), spec.backoff_limit()),
            (3, 2, 6)
        );
        assert!(spec.problems("spec").is_empty());
        assert_eq!(
            spec.template().limits.timeout,
            Some(Span(Duration::from_secs(3600)))
        );
        let bad = JobSpec {
            completions: Some(0),
            parallelism: Some(MAX_PARALLELISM + 1),
            backoff_limit: Some(MAX_BACKOFF_LIMIT + 1),
            active_deadline: Some(Span(Duration::ZERO)),
            args: vec!["x".repeat(MAX_ARG + 1)],
            ..spec
        };
        let paths: Vec<String> = bad
            .problems("spec")
            .into_iter()
            .map(|problem| problem.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.completions",
                "spec.parallelism",
                "spec.backoffLimit",
                "spec.activeDeadline",
                "spec.args[0]"
            ]
        );
    }

    #[test]
    fn a_cron_job_checks_its_template_under_its_path() {
        let cron = CronJobSpec {
            schedule: "@hourly".into(),
            time_zone: Some("Europe/Paris".into()),
            concurrency_policy: ConcurrencyPolicy::Forbid,
            starting_deadline: None,
            successful_jobs_history_limit: Some(MAX_HISTORY + 1),
            failed_jobs_history_limit: None,
            suspend: false,
            jitter: None,
            job_template: JobSpec {
                completions: Some(0),
                ..job()
            },
        };
        let paths: Vec<String> = cron
            .problems("spec")
            .into_iter()
            .map(|problem| problem.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.successfulJobsHistoryLimit",
                "spec.jobTemplate.completions"
            ]
        );
    }
}
