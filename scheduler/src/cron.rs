//! Cron schedules, read with `croner` in an IANA time zone (`chrono-tz`), as pure functions
//! of a clock the caller gives: which scheduled times fell in a span, and the next one.
//!
//! A time is the instant croner resolves it to, so daylight saving is croner's rule
//! (Vixie cron's): a fixed time (`30 1 * * *`) runs once when the clocks go back, at the
//! earlier of its two instants, and once when they go forward, at the first instant after
//! the gap; an interval (`*/15 * * * *`) runs at every real instant it names.

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use shoal_lattice::jobs::{
    ConcurrencyPolicy, CronJobRecord, CronJobStatus, JobPhase, JobRecord, JobStatus,
};
use shoal_lattice::validate::Problem;

/// Where the cron jobs controller reads the time: the system's, or (for tests of schedules
/// that span hours or a daylight-saving change) a clock that starts at `start` when the
/// system clock reads `anchor` and runs `rate` times as fast. Every scheduler of a lattice
/// given the same one reads the same time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A faster clock, for tests.
    Scaled {
        /// Its time at `anchor` (ms since the epoch).
        start: u64,
        /// The system time it starts at (ms since the epoch).
        anchor: u64,
        /// How many times as fast it runs.
        rate: u32,
    },
}

impl Clock {
    /// Now, in ms since the epoch.
    pub fn now(self) -> u64 {
        let system = shoal_lattice::records::now_millis();
        match self {
            Clock::System => system,
            Clock::Scaled {
                start,
                anchor,
                rate,
            } => start.saturating_add(
                system
                    .saturating_sub(anchor)
                    .saturating_mul(u64::from(rate)),
            ),
        }
    }

    /// Reads `START,ANCHOR,RATE`: an RFC 3339 time, system ms since the epoch and a factor.
    ///
    /// # Errors
    /// What part is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',');
        let (Some(start), Some(anchor), Some(rate), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("a clock is START,ANCHOR_MS,RATE".to_owned());
        };
        let start = DateTime::parse_from_rfc3339(start)
            .map_err(|error| format!("START is not an RFC 3339 time: {error}"))?;
        Ok(Clock::Scaled {
            start: utc_to_millis(start.with_timezone(&Utc)).ok_or("START is before 1970")?,
            anchor: anchor.parse().map_err(|_| "ANCHOR_MS is not a number")?,
            rate: rate.parse().map_err(|_| "RATE is not a number")?,
        })
    }
}

/// Scheduled times looked at in one call at most: a scheduler down for long with a
/// `* * * * *` schedule must not loop over every minute it missed.
pub const MAX_TIMES: usize = 1000;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

/// Why a schedule cannot be read: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError {
    /// `schedule` or `timeZone`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn millis_to_utc(millis: u64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(i64::try_from(millis).ok()?)
        .single()
}

fn utc_to_millis(time: DateTime<Utc>) -> Option<u64> {
    u64::try_from(time.timestamp_millis()).ok()
}

impl Schedule {
    /// Reads `schedule` (five fields or a macro such as `@hourly`) in `zone` (an IANA
    /// name; UTC without one).
    ///
    /// # Errors
    /// Which field is wrong and why.
    pub fn parse(schedule: &str, zone: Option<&str>) -> Result<Self, ScheduleError> {
        let zone = match zone {
            None => Tz::UTC,
            Some(name) => Tz::from_str(name).map_err(|_| ScheduleError {
                field: "timeZone",
                reason: format!("{name:?} is not an IANA time zone name like Europe/Paris or UTC"),
            })?,
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|error| ScheduleError {
                field: "schedule",
                reason: format!(
                    "{error}: use five fields (minute hour day-of-month month day-of-week, like */15 * * * *) or @hourly, @daily, @weekly, @monthly, @yearly"
                ),
            })?;
        Ok(Self { cron, zone })
    }

    /// The first scheduled time after `after` (ms since the epoch).
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let start = millis_to_utc(after)?.with_timezone(&self.zone);
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        utc_to_millis(next.with_timezone(&Utc))
    }

    /// The last scheduled time at or before `at` (ms since the epoch).
    pub fn last_at_or_before(&self, at: u64) -> Option<u64> {
        let start = millis_to_utc(at)?.with_timezone(&self.zone);
        let last = self.cron.find_previous_occurrence(&start, true).ok()?;
        utc_to_millis(last.with_timezone(&Utc))
    }

    /// The scheduled times after `after` up to and including `until`, oldest first: the
    /// newest [`MAX_TIMES`] of them, found walking back from `until`, so a long outage
    /// costs no more than a short one.
    pub fn times_between(&self, after: u64, until: u64) -> Vec<u64> {
        let mut times = Vec::new();
        let mut cursor = self.last_at_or_before(until);
        while let Some(time) = cursor.filter(|time| *time > after) {
            times.push(time);
            if times.len() == MAX_TIMES {
                break;
            }
            cursor = time
                .checked_sub(1)
                .and_then(|before| self.last_at_or_before(before));
        }
        times.reverse();
        times
    }
}

/// Every problem of cron job `name` with `spec`, paths as in a manifest: the name's length,
/// the spec's bounds, and the schedule and time zone as they are read here.
pub fn problems(name: &str, spec: &shoal_lattice::jobs::CronJobSpec) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Some(reason) = shoal_lattice::jobs::cron_job_name_problem(name) {
        problems.push(Problem {
            path: "metadata.name".to_owned(),
            reason,
        });
    }
    problems.extend(spec.problems("spec"));
    if let Err(problem) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
        problems.push(Problem {
            path: format!("spec.{}", problem.field),
            reason: problem.reason,
        });
    }
    problems
}

/// The name of the job a cron job makes for the time `at`: the same on every scheduler,
/// so a time's job is made once even when two leaders both try (the second create fails).
pub fn job_name(cron_job: &str, at: u64) -> String {
    format!("{cron_job}-{}", at / 60_000)
}

/// How long after `at` the job for it starts: up to `jitter`, the same for a cron job and
/// time on every scheduler (FNV-1a of both, a hash that does not change between builds).
pub fn jitter_for(cron: &CronJobRecord, at: u64) -> u64 {
    let Some(jitter) = cron.spec.jitter else {
        return 0;
    };
    let span = u64::try_from(jitter.0.as_millis()).unwrap_or(u64::MAX);
    if span == 0 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{}/{}/{at}", cron.namespace, cron.name).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % span
}

/// One job a cron job made, as the pass sees it.
#[derive(Debug, Clone, Copy)]
pub struct MadeJob<'a> {
    /// The job.
    pub job: &'a JobRecord,
    /// Its status, if written.
    pub status: Option<&'a JobStatus>,
}

impl MadeJob<'_> {
    fn phase(&self) -> JobPhase {
        self.status
            .filter(|status| status.uid == self.job.uid)
            .map_or(JobPhase::Running, |status| status.phase)
    }
}

/// What one pass does for a cron job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CronStep {
    /// Its status after the pass.
    pub status: CronJobStatus,
    /// A job to make: its name and scheduled time.
    pub create: Option<(String, u64)>,
    /// Running jobs to stop (`Replace`): deleted, which stops their runs.
    pub replace: Vec<String>,
    /// Finished jobs past the history limits, to delete.
    pub trim: Vec<String>,
    /// A time not run, and why (for an event).
    pub skipped: Option<(u64, String)>,
}

/// One pass over `cron` at `now` (ms since the epoch, from the scheduler's clock).
pub fn step(
    cron: &CronJobRecord,
    schedule: &Schedule,
    previous: Option<&CronJobStatus>,
    made: &[MadeJob<'_>],
    now: u64,
) -> CronStep {
    let spec = &cron.spec;
    let mut step = CronStep::default();
    // A cron job seen for the first time starts from now, on this scheduler's clock: no
    // job for the times before it existed.
    let Some(mut status) = previous.cloned() else {
        step.status = CronJobStatus {
            last_scheduled: Some(now),
            next: schedule.next_after(now),
            ..CronJobStatus::default()
        };
        return step;
    };
    status.problem = None;
    let since = status.last_scheduled.unwrap_or(now);
    // The newest time whose (jittered) start has come; older missed ones are not run.
    let due = schedule
        .times_between(since, now)
        .into_iter()
        .rev()
        .find(|at| at.saturating_add(jitter_for(cron, *at)) <= now);
    if let Some(at) = due {
        status.last_scheduled = Some(at);
        let late = Duration::from_millis(now.saturating_sub(at));
        let running: Vec<&MadeJob<'_>> = made
            .iter()
            .filter(|job| job.phase() == JobPhase::Running)
            .collect();
        if spec.suspend {
            step.skipped = Some((at, "the cron job is suspended".to_owned()));
        } else if spec
            .starting_deadline
            .is_some_and(|deadline| late > deadline.0)
        {
            step.skipped = Some((
                at,
                format!(
                    "missed by {}, more than its startingDeadline",
                    humantime::format_duration(Duration::from_secs(late.as_secs()))
                ),
            ));
        } else if !running.is_empty() && spec.concurrency_policy == ConcurrencyPolicy::Forbid {
            step.skipped = Some((
                at,
                format!(
                    "job {} still runs (concurrencyPolicy Forbid)",
                    running[0].job.name
                ),
            ));
        } else {
            if spec.concurrency_policy == ConcurrencyPolicy::Replace {
                step.replace = running.iter().map(|job| job.job.name.clone()).collect();
            }
            step.create = Some((job_name(&cron.name, at), at));
        }
    }
    // History: the newest finished jobs of each outcome are kept.
    let mut finished: Vec<&MadeJob<'_>> = made
        .iter()
        .filter(|job| job.phase() != JobPhase::Running)
        .collect();
    finished.sort_by_key(|job| std::cmp::Reverse(job.job.created_at));
    let (mut succeeded, mut failed) = (0u32, 0u32);
    for job in finished {
        let (count, kept) = if job.phase() == JobPhase::Succeeded {
            if let Some(at) = job.status.and_then(|status| status.finished_at) {
                status.last_successful = status.last_successful.max(Some(at));
            }
            (&mut succeeded, spec.successful_kept())
        } else {
            (&mut failed, spec.failed_kept())
        };
        *count += 1;
        if *count > kept {
            step.trim.push(job.job.name.clone());
        }
    }
    status.next = schedule.next_after(now.max(status.last_scheduled.unwrap_or(0)));
    step.status = status;
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of an RFC 3339 time.
    fn at(text: &str) -> u64 {
        utc_to_millis(
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc),
        )
        .unwrap()
    }

    #[test]
    fn macros_fields_and_zones_parse_and_bad_ones_say_which_field() {
        assert!(Schedule::parse("@hourly", None).is_ok());
        assert!(Schedule::parse("*/5 * * * *", Some("Europe/Paris")).is_ok());
        assert_eq!(
            Schedule::parse("* * * *", None).unwrap_err().field,
            "schedule"
        );
        assert_eq!(
            Schedule::parse("0 0 * * * *", None).unwrap_err().field,
            "schedule"
        );
        assert_eq!(
            Schedule::parse("@hourly", Some("Mars/Olympus"))
                .unwrap_err()
                .field,
            "timeZone"
        );
    }

    #[test]
    fn times_are_read_in_the_time_zone() {
        let daily = Schedule::parse("0 9 * * *", Some("Europe/Paris")).unwrap();
        // 09:00 in Paris in winter is 08:00 UTC.
        assert_eq!(
            daily.next_after(at("2026-12-01T00:00:00Z")),
            Some(at("2026-12-01T08:00:00Z"))
        );
        let every_five = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            every_five.times_between(at("2026-12-01T00:00:00Z"), at("2026-12-01T00:20:00Z")),
            [
                at("2026-12-01T00:05:00Z"),
                at("2026-12-01T00:10:00Z"),
                at("2026-12-01T00:15:00Z"),
                at("2026-12-01T00:20:00Z")
            ]
        );
        // A long outage: at most MAX_TIMES, the newest.
        let every_minute = Schedule::parse("* * * * *", None).unwrap();
        let missed =
            every_minute.times_between(at("2026-01-01T00:00:00Z"), at("2026-12-01T00:00:00Z"));
        assert_eq!(missed.len(), MAX_TIMES);
        assert_eq!(missed.last(), Some(&at("2026-12-01T00:00:00Z")));
    }

    #[test]
    fn a_fixed_time_runs_once_when_the_clocks_go_back_and_once_when_they_go_forward() {
        // New York falls back at 02:00 EDT on 2026-11-01: 01:30 happens twice.
        let nightly = Schedule::parse("30 1 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            nightly.times_between(
                at("2026-11-01T00:00:00-04:00"),
                at("2026-11-01T04:00:00-05:00")
            ),
            [at("2026-11-01T01:30:00-04:00")]
        );
        // It springs forward at 02:00 EST on 2026-03-08: 02:30 never happens; the job runs
        // at the first instant after the gap.
        let early = Schedule::parse("30 2 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            early.times_between(
                at("2026-03-08T00:00:00-05:00"),
                at("2026-03-08T05:00:00-04:00")
            ),
            [at("2026-03-08T03:00:00-04:00")]
        );
        // An interval runs at each real instant, both 01:30s included.
        let half_hourly = Schedule::parse("*/30 * * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            half_hourly
                .times_between(
                    at("2026-11-01T01:00:00-04:00"),
                    at("2026-11-01T02:00:00-05:00")
                )
                .len(),
            4
        );
    }
}

#[cfg(test)]
mod step_tests {
    use super::*;
    use shoal_lattice::jobs::{CronJobSpec, CronOrigin, JobSpec};

    const MINUTE: u64 = 60_000;

    fn cron(policy: ConcurrencyPolicy) -> CronJobRecord {
        CronJobRecord {
            namespace: "default".into(),
            name: "tick".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            wasi: None,
            spec: CronJobSpec {
                schedule: "* * * * *".into(),
                time_zone: None,
                concurrency_policy: policy,
                starting_deadline: None,
                successful_jobs_history_limit: Some(2),
                failed_jobs_history_limit: Some(1),
                suspend: false,
                jitter: None,
                job_template: serde_json::from_value::<JobSpec>(
                    serde_json::json!({"component": "r/task:1"}),
                )
                .unwrap(),
            },
            created_at: 0,
        }
    }

    fn job(name: &str, created_at: u64) -> JobRecord {
        JobRecord {
            namespace: "default".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            digest: format!("sha256:{}", "a".repeat(64)),
            wasi: None,
            spec: cron(ConcurrencyPolicy::Allow).spec.job_template,
            created_at,
            cron: Some(CronOrigin {
                cron_job: "tick".into(),
                scheduled_at: Some(created_at),
            }),
        }
    }

    fn ended(job: &JobRecord, phase: JobPhase) -> JobStatus {
        JobStatus {
            phase,
            finished_at: Some(job.created_at + 1),
            ..JobStatus::new(&job.uid)
        }
    }

    #[test]
    fn each_time_makes_one_job_named_by_its_minute_whoever_leads() {
        let cron = cron(ConcurrencyPolicy::Allow);
        let schedule = Schedule::parse(&cron.spec.schedule, None).unwrap();
        // Seen first: starts from now, no job for earlier times.
        let seen = step(&cron, &schedule, None, &[], 2 * MINUTE + 30_000);
        assert_eq!(seen.create, None);
        assert_eq!(seen.status.next, Some(3 * MINUTE));
        let first = step(&cron, &schedule, Some(&seen.status), &[], 3 * MINUTE + 10);
        assert_eq!(first.create, Some(("tick-3".to_owned(), 3 * MINUTE)));
        // A leader that took over before the status was written computes the same job
        // (whose create then fails: it exists); after the status, nothing until the next.
        let successor = step(&cron, &schedule, Some(&seen.status), &[], 3 * MINUTE + 500);
        assert_eq!(successor.create, first.create);
        let again = step(&cron, &schedule, Some(&first.status), &[], 3 * MINUTE + 900);
        assert_eq!(again.create, None);
        assert_eq!(again.status.next, Some(4 * MINUTE));
        // Five minutes missed: only the newest runs.
        let late = step(&cron, &schedule, Some(&first.status), &[], 9 * MINUTE + 1);
        assert_eq!(late.create, Some(("tick-9".to_owned(), 9 * MINUTE)));
    }

    /// A status from when the cron job was first seen, at 0.
    fn started() -> CronJobStatus {
        CronJobStatus {
            last_scheduled: Some(0),
            ..CronJobStatus::default()
        }
    }

    #[test]
    fn forbid_skips_while_one_runs_and_replace_stops_it() {
        let running = job("tick-3", 3 * MINUTE);
        let made = [MadeJob {
            job: &running,
            status: None,
        }];
        let forbid = cron(ConcurrencyPolicy::Forbid);
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let skipped = step(&forbid, &schedule, Some(&started()), &made, 4 * MINUTE);
        assert_eq!(skipped.create, None);
        assert_eq!(skipped.status.last_scheduled, Some(4 * MINUTE));
        assert!(skipped.skipped.unwrap().1.contains("tick-3 still runs"));
        let replace = cron(ConcurrencyPolicy::Replace);
        let replaced = step(&replace, &schedule, Some(&started()), &made, 4 * MINUTE);
        assert_eq!(replaced.replace, ["tick-3"]);
        assert_eq!(replaced.create.unwrap().0, "tick-4");
        let allow = cron(ConcurrencyPolicy::Allow);
        let both = step(&allow, &schedule, Some(&started()), &made, 4 * MINUTE);
        assert!(both.replace.is_empty() && both.create.is_some());
    }

    #[test]
    fn history_limits_trim_the_oldest_and_suspend_and_deadline_skip() {
        let cron = cron(ConcurrencyPolicy::Allow);
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let jobs: Vec<JobRecord> = (1..=5)
            .map(|m| job(&format!("tick-{m}"), m * MINUTE))
            .collect();
        let statuses = [
            ended(&jobs[0], JobPhase::Succeeded),
            ended(&jobs[1], JobPhase::Failed),
            ended(&jobs[2], JobPhase::Succeeded),
            ended(&jobs[3], JobPhase::Failed),
            ended(&jobs[4], JobPhase::Succeeded),
        ];
        let made: Vec<MadeJob<'_>> = jobs
            .iter()
            .zip(&statuses)
            .map(|(job, status)| MadeJob {
                job,
                status: Some(status),
            })
            .collect();
        let trimmed = step(&cron, &schedule, Some(&started()), &made, 5 * MINUTE + 1);
        // Two succeeded kept (5, 3), one failed (4).
        assert_eq!(trimmed.trim, ["tick-2", "tick-1"]);
        assert_eq!(trimmed.status.last_successful, Some(5 * MINUTE + 1));

        let mut suspended = cron.clone();
        suspended.spec.suspend = true;
        let skipped = step(&suspended, &schedule, Some(&started()), &[], 6 * MINUTE);
        assert_eq!(skipped.create, None);
        assert_eq!(skipped.skipped.unwrap().1, "the cron job is suspended");

        let mut strict = cron.clone();
        strict.spec.starting_deadline =
            Some(shoal_lattice::quantity::Span(Duration::from_secs(10)));
        let missed = step(
            &strict,
            &schedule,
            Some(&started()),
            &[],
            6 * MINUTE + 11_000,
        );
        assert_eq!(missed.create, None);
        let on_time = step(
            &strict,
            &schedule,
            Some(&started()),
            &[],
            6 * MINUTE + 9_000,
        );
        assert!(on_time.create.is_some());
    }

    #[test]
    fn jitter_delays_each_time_the_same_way_everywhere() {
        let mut cron = cron(ConcurrencyPolicy::Allow);
        cron.spec.jitter = Some(shoal_lattice::quantity::Span(Duration::from_secs(30)));
        let schedule = Schedule::parse("* * * * *", None).unwrap();
        let delay = jitter_for(&cron, 3 * MINUTE);
        assert!(delay < 30_000);
        assert_eq!(delay, jitter_for(&cron, 3 * MINUTE));
        let before = step(
            &cron,
            &schedule,
            Some(&CronJobStatus {
                last_scheduled: Some(2 * MINUTE),
                ..CronJobStatus::default()
            }),
            &[],
            3 * MINUTE + delay.saturating_sub(1),
        );
        // Not yet due (unless the jitter is 0).
        assert_eq!(before.create.is_some(), delay == 0);
        let after = step(&cron, &schedule, Some(&started()), &[], 3 * MINUTE + delay);
        assert_eq!(after.create.unwrap().1, 3 * MINUTE);
    }
}
