//! End-to-end tests of jobs and cron jobs over real hosts: completions and parallelism, a
//! failing job retried up to its backoff limit, a run whose host is killed retried
//! elsewhere, the active deadline, logs and describe; cron jobs on a fast clock through a
//! scheduler failover and a daylight-saving fall-back, Forbid, Replace, history limits
//! and `shoal create job --from`. Real nats-server, registry and `shoal` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::eventually;
use support::lattice::Lattice;

/// `job`'s row of `shoal get jobs -o json`.
fn job(lattice: &Lattice, name: &str) -> serde_json::Value {
    lattice.row("jobs", name)
}

/// Waits until job `name` has ended; returns its status.
fn ended(lattice: &Lattice, name: &str, patience: Duration) -> serde_json::Value {
    eventually(patience, &format!("job {name} to end"), || {
        let status = job(lattice, name)["status"].clone();
        (status["phase"] == "succeeded" || status["phase"] == "failed").then_some(status)
    })
}

fn job_manifest(name: &str, component: &str, spec: &str) -> String {
    format!(
        "apiVersion: shoal.dev/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  component: {component}\n{spec}"
    )
}

/// Runs of `job` now assigned: (run, host).
fn runs(lattice: &Lattice, job: &str) -> Vec<(String, String)> {
    let rows: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "replicas", "-o", "json"])).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|row| row["app"] == job && row["job"].is_object())
        .map(|row| {
            (
                row["replica"].as_str().unwrap().to_owned(),
                row["host"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn jobs_run_to_completion_retry_failures_and_survive_a_lost_host() {
    let lattice = Lattice::start();
    let scheduler = lattice.scheduler("s1");
    let mut hosts = [lattice.host("h1", &[]), lattice.host("h2", &[])];
    let cli = lattice.push_guest("hello-cli", "1.0");

    // Four completions, two at a time: never more than two runs at once.
    let applied = lattice.apply(&job_manifest(
        "count",
        &cli,
        "  args: [--sleep, '400', counted]\n  env: {ROUND: one}\n  completions: 4\n  parallelism: 2\n",
    ));
    assert!(applied.contains("job default/count created"), "{applied}");
    let started = Instant::now();
    let mut most = 0;
    while job(&lattice, "count")["status"]["phase"] != "succeeded" {
        most = most.max(runs(&lattice, "count").len());
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "count never ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = job(&lattice, "count")["status"].clone();
    assert_eq!(
        (status["succeeded"].as_u64(), status["failed"].as_u64()),
        (Some(4), Some(0)),
        "{status}"
    );
    assert!(most <= 2, "{most} runs at once");
    assert_eq!(status["runs"].as_array().unwrap().len(), 4);
    // Applying it again changes nothing; another spec under its name is refused.
    let again = lattice.apply(&job_manifest(
        "count",
        &cli,
        "  args: [--sleep, '400', counted]\n  env: {ROUND: one}\n  completions: 4\n  parallelism: 2\n",
    ));
    assert!(again.contains("job default/count unchanged"), "{again}");
    let (ok, _, stderr) = lattice.try_apply(&job_manifest("count", &cli, "  completions: 5\n"));
    assert!(
        !ok && stderr.contains("a job cannot be changed"),
        "{stderr}"
    );
    // Its runs' output, under the job's name: its arguments and environment.
    let logs = lattice.ok(&["logs", "job/count"]);
    assert_eq!(
        logs.matches("args: [\"--sleep\", \"400\", \"counted\"]")
            .count(),
        4,
        "{logs}"
    );
    assert_eq!(logs.matches("env: [\"ROUND=one\"]").count(), 4, "{logs}");
    let described = lattice.ok(&["describe", "job", "count"]);
    assert!(
        described.contains("Phase:         succeeded (Completed: 4 of 4 runs succeeded)")
            && described.contains("Counts:        4 succeeded, 0 failed, 0 active"),
        "{described}"
    );

    // A job that fails: retried up to its backoff limit, then failed, exit codes kept.
    lattice.apply(&job_manifest(
        "broken",
        &cli,
        "  args: [--exit, '3']\n  backoffLimit: 2\n",
    ));
    let status = ended(&lattice, "broken", Duration::from_secs(60));
    assert_eq!(status["phase"], "failed");
    assert_eq!(status["reason"], "BackoffLimitExceeded");
    assert_eq!(status["failed"], 3);
    // WASI 0.2's wasi:cli/exit carries success or failure, not a number: any non-zero
    // exit is 1.
    assert!(
        status["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|run| run["exitCode"] == 1 && run["message"] == "exit code 1"),
        "{status}"
    );
    let events = lattice.events(&["--job", "broken"]);
    assert_eq!(
        events
            .iter()
            .filter(|event| event["reason"] == "RunFailed")
            .count(),
        3,
        "{events:?}"
    );

    // A run whose host dies (SIGKILL) is retried on the other host and the job completes.
    lattice.apply(&job_manifest(
        "survivor",
        &cli,
        "  args: [--sleep, '3000']\n",
    ));
    let (_, first_host) = eventually(Duration::from_secs(20), "survivor to run", || {
        let placed = runs(&lattice, "survivor");
        let running = job(&lattice, "survivor")["status"]["active"] == 1;
        placed.into_iter().next().filter(|_| running)
    });
    let index = usize::from(first_host == "h2");
    hosts[index].kill();
    let status = ended(&lattice, "survivor", Duration::from_secs(60));
    assert_eq!(status["phase"], "succeeded", "{status}");
    let recorded = status["runs"].as_array().unwrap();
    assert_eq!(recorded.len(), 2, "{status}");
    assert_eq!(recorded[0]["host"], first_host.as_str());
    assert_eq!(recorded[0]["message"], "its host was lost");
    assert_ne!(recorded[1]["host"], first_host.as_str());
    assert_eq!(recorded[1]["succeeded"], true);

    // Past its active deadline a job fails and its run stops.
    lattice.apply(&job_manifest(
        "slowpoke",
        &cli,
        "  args: [--sleep, '60000']\n  activeDeadline: 2s\n",
    ));
    let status = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ended(&lattice, "slowpoke", Duration::from_secs(30))
    }))
    .unwrap_or_else(|timed_out| {
        // Seen once in a CI run (and never alone): say what the scheduler and hosts did.
        eprintln!("slowpoke: {}", job(&lattice, "slowpoke"));
        eprintln!("scheduler log:\n{}", scheduler.log());
        for host in &hosts {
            eprintln!("host {} log:\n{}", host.id, host.log());
        }
        std::panic::resume_unwind(timed_out)
    });
    assert_eq!(status["reason"], "DeadlineExceeded", "{status}");
    eventually(Duration::from_secs(10), "slowpoke's run to stop", || {
        runs(&lattice, "slowpoke").is_empty().then_some(())
    });

    // Deleting a running job stops its run.
    lattice.apply(&job_manifest(
        "doomed",
        &cli,
        "  args: [--sleep, '60000']\n",
    ));
    eventually(Duration::from_secs(20), "doomed to run", || {
        (!runs(&lattice, "doomed").is_empty()).then_some(())
    });
    assert!(
        lattice
            .ok(&["delete", "job", "doomed"])
            .contains("job default/doomed deleted")
    );
    eventually(Duration::from_secs(10), "doomed's run to stop", || {
        runs(&lattice, "doomed").is_empty().then_some(())
    });
}

/// A scheduler reading cron schedules by `clock` (`START,ANCHOR_MS,RATE`).
fn cron_scheduler(lattice: &Lattice, id: &str, clock: &str) -> support::lattice::Process {
    lattice.scheduler_with(id, &["--cron-clock", clock])
}

/// The messages of the events of cron job `name` with `reason`.
fn cron_events(lattice: &Lattice, name: &str, reason: &str) -> Vec<String> {
    lattice
        .events(&["--cronjob", name])
        .into_iter()
        .filter(|event| event["reason"] == reason)
        .map(|event| event["message"].as_str().unwrap().to_owned())
        .collect()
}

/// Minutes since the epoch of an RFC 3339 time: the suffix of a cron job's job names.
fn minute(rfc3339: &str) -> u64 {
    let seconds = humantime::parse_rfc3339(rfc3339)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    seconds / 60
}

#[test]
fn cron_jobs_fire_once_per_time_across_a_failover_and_a_fall_back() {
    let lattice = Lattice::start();
    // The cron clock stands at 01:20 New York summer time (05:20Z) until three seconds from
    // now, then runs 600 times as fast (a second is ten minutes): 01:30 EDT comes one
    // second later, the clocks go back an hour at 02:00 EDT, and 01:30 EST comes at seven.
    let anchor = support::now_ms() + 3000;
    let clock = format!("2026-11-01T05:20:00Z,{anchor},600");
    let mut first = cron_scheduler(&lattice, "s1", &clock);
    let _host = lattice.host("h1", &[]);
    let cli = lattice.push_guest("hello-cli", "1.0");
    let cron = |name: &str, schedule: &str, extra: &str, args: &str| {
        format!(
            "apiVersion: shoal.dev/v1\nkind: CronJob\nmetadata: {{name: {name}}}\nspec:\n  schedule: '{schedule}'\n{extra}  jobTemplate:\n    component: {cli}\n    args: {args}\n"
        )
    };
    let manifest = [
        cron(
            "nightly",
            "30 1 * * *",
            "  timeZone: America/New_York\n",
            "[nightly]",
        ),
        // Every ten clock minutes (a second), each job taking 2.5 s: Forbid skips.
        cron(
            "tick",
            "*/10 * * * *",
            "  concurrencyPolicy: Forbid\n  successfulJobsHistoryLimit: 2\n",
            "[--sleep, '2500']",
        ),
        // Every half hour (three seconds), each job running a minute: Replace stops it.
        cron(
            "swap",
            "*/30 * * * *",
            "  concurrencyPolicy: Replace\n",
            "[--sleep, '60000']",
        ),
    ]
    .join("---\n");
    let applied = lattice.apply(&manifest);
    assert!(
        applied.contains("cronjob default/nightly created"),
        "{applied}"
    );
    assert!(
        support::now_ms() < anchor,
        "applying took too long for the clock"
    );

    // The leader dies four seconds in (02:00 EDT, 01:00 EST); another takes over.
    while support::now_ms() < anchor + 4000 {
        std::thread::sleep(Duration::from_millis(100));
    }
    first.kill();
    let _second = cron_scheduler(&lattice, "s2", &clock);
    // Until 02:40 EST (14 s in).
    while support::now_ms() < anchor + 14_000 {
        std::thread::sleep(Duration::from_millis(200));
    }

    // 01:30 happened twice on the wall clock; the nightly job ran once, for 05:30Z.
    let made = cron_events(&lattice, "nightly", "JobCreated");
    assert_eq!(
        made,
        [format!(
            "made job nightly-{} for 2026-11-01T05:30:00Z",
            minute("2026-11-01T05:30:00Z")
        )],
    );
    let nightly = job(
        &lattice,
        &format!("nightly-{}", minute("2026-11-01T05:30:00Z")),
    );
    assert_eq!(nightly["status"]["phase"], "succeeded", "{nightly}");

    // Every time of tick made one job or was skipped, never two jobs, across the
    // failover; Forbid skipped times while one ran; history keeps two succeeded.
    let made = cron_events(&lattice, "tick", "JobCreated");
    let mut times: Vec<&str> = made.iter().map(|m| m.rsplit(' ').next().unwrap()).collect();
    let count = times.len();
    times.sort();
    times.dedup();
    assert_eq!(times.len(), count, "a time made two jobs: {made:?}");
    assert!(count >= 3, "{made:?}");
    let skipped = cron_events(&lattice, "tick", "Skipped");
    assert!(
        skipped
            .iter()
            .any(|message| message.contains("still runs (concurrencyPolicy Forbid)")),
        "{skipped:?}"
    );
    let jobs: serde_json::Value =
        serde_json::from_str(&lattice.ok(&["get", "jobs", "-o", "json"])).unwrap();
    let kept = |cron: &str, phase: &str| {
        jobs.as_array()
            .unwrap()
            .iter()
            .filter(|job| job["cron"]["cronJob"] == cron && job["status"]["phase"] == phase)
            .count()
    };
    assert!(kept("tick", "succeeded") <= 2, "{jobs}");

    // Replace stopped the running swap job each time a new one came.
    let stopped: Vec<String> = lattice
        .events(&[])
        .into_iter()
        .filter(|event| {
            event["reason"] == "Stopped"
                && event["message"]
                    .as_str()
                    .unwrap()
                    .contains("concurrencyPolicy Replace")
        })
        .map(|event| event["message"].as_str().unwrap().to_owned())
        .collect();
    assert!(!stopped.is_empty(), "nothing replaced");
    assert!(
        kept("swap", "running") + kept("swap", "pending") <= 1,
        "{jobs}"
    );

    // The table, and a job made by hand from a template.
    let nightly = lattice.row("cronjobs", "nightly");
    assert_eq!(nightly["spec"]["timeZone"], "America/New_York", "{nightly}");
    let created = lattice.ok(&["create", "job", "by-hand", "--from", "cronjob/nightly"]);
    assert!(created.contains("job default/by-hand created from cron job nightly"));
    let status = ended(&lattice, "by-hand", Duration::from_secs(30));
    assert_eq!(status["phase"], "succeeded");

    // A cron job deleted takes its jobs with it.
    lattice.ok(&["delete", "cronjob", "tick"]);
    eventually(Duration::from_secs(10), "tick's jobs to go", || {
        let jobs: serde_json::Value =
            serde_json::from_str(&lattice.ok(&["get", "jobs", "-o", "json"])).unwrap();
        jobs.as_array()
            .unwrap()
            .iter()
            .all(|job| job["cron"]["cronJob"] != "tick")
            .then_some(())
    });
}
