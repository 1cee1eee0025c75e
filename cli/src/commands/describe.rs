//! `shoal describe app NAME`: spec, revision, replicas per host, conditions, and why
//! replicas could not be placed. `shoal describe config NAME`: a config object's values and
//! the apps that use it. `shoal describe job NAME`: its counts and runs, running and ended.
//! `shoal describe cronjob NAME`: its schedule, times and kept jobs.

use clap::Args;
use clap::ValueEnum;
use shoal_lattice::api::{AppDetail, ConfigView, CronJobView, JobView, ReplicaView};
use shoal_lattice::api::{DescribeApp, DescribeConfig, GetCronJobs, GetJobs, GetReplicas};
use shoal_lattice::records::DEFAULT_NAMESPACE;

use crate::commands::get::{age, table};
use crate::lattice::LatticeArgs;
use crate::output::{Format, print};

/// What `describe` and `delete` name.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Object {
    /// An app.
    App,
    /// A config object.
    Config,
    /// A secret (delete only: `shoal get secrets` lists them; no command shows values).
    Secret,
    /// A job.
    Job,
    /// A cron job.
    #[value(name = "cronjob")]
    CronJob,
}

/// Show an app, a config object, a job or a cron job in detail.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// What to describe.
    pub kind: Object,
    /// Its name.
    pub name: String,
    /// Its namespace.
    #[arg(short, long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(args: DescribeArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal describe").await?;
    if let Object::Secret = args.kind {
        anyhow::bail!(
            "secrets are not described: shoal get secrets lists their keys and users, and no command shows their values"
        );
    }
    if let Object::Job = args.kind {
        let jobs: Vec<JobView> = api
            .call(GetJobs {
                namespace: Some(args.namespace.clone()),
            })
            .await?;
        let job = jobs
            .into_iter()
            .find(|job| job.job.name == args.name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "there is no job {}/{}; shoal get jobs lists them",
                    args.namespace,
                    args.name
                )
            })?;
        let replicas: Vec<ReplicaView> = api
            .call(GetReplicas {
                namespace: Some(args.namespace.clone()),
            })
            .await?;
        let running: Vec<ReplicaView> = replicas
            .into_iter()
            .filter(|run| {
                run.assignment
                    .job
                    .as_ref()
                    .is_some_and(|run| run.uid == job.job.uid)
            })
            .collect();
        print(args.output, &job, |job| render_job(job, &running))?;
        return Ok(0);
    }
    if let Object::CronJob = args.kind {
        let crons: Vec<CronJobView> = api
            .call(GetCronJobs {
                namespace: Some(args.namespace.clone()),
            })
            .await?;
        let cron = crons
            .into_iter()
            .find(|cron| cron.cron_job.name == args.name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "there is no cron job {}/{}; shoal get cronjobs lists them",
                    args.namespace,
                    args.name
                )
            })?;
        print(args.output, &cron, render_cron_job)?;
        return Ok(0);
    }
    if let Object::Config = args.kind {
        let described: ConfigView = api
            .call(DescribeConfig {
                namespace: args.namespace.clone(),
                name: args.name.clone(),
            })
            .await?;
        print(args.output, &described, render_config)?;
        return Ok(0);
    }
    let described: AppDetail = api
        .call(DescribeApp {
            namespace: args.namespace.clone(),
            name: args.name.clone(),
        })
        .await?;
    print(args.output, &described, render)?;
    Ok(0)
}

fn render_job(described: &JobView, running: &[ReplicaView]) -> String {
    use crate::commands::get::{span, time};
    let job = &described.job;
    let spec = &job.spec;
    let mut out = format!(
        "Name:          {}\nNamespace:     {}\nComponent:     {}\nDigest:        {}\nCreated:       {} ago\n",
        job.name,
        job.namespace,
        spec.component,
        job.digest,
        age(job.created_at)
    );
    if let Some(origin) = &job.cron {
        out += &format!(
            "Made by:       cron job {}{}\n",
            origin.cron_job,
            origin.scheduled_at.map_or_else(
                || " (by hand)".to_owned(),
                |at| format!(" for {}", time(at))
            )
        );
    }
    out += &format!(
        "Completions:   {}   Parallelism: {}   Backoff limit: {}{}\n",
        spec.completions(),
        spec.parallelism(),
        spec.backoff_limit(),
        spec.active_deadline
            .map(|deadline| format!(
                "   Active deadline: {}",
                humantime::format_duration(deadline.0)
            ))
            .unwrap_or_default()
    );
    if !spec.args.is_empty() {
        out += &format!("Args:          {}\n", spec.args.join(" "));
    }
    match &described.status {
        Some(status) => {
            out += &format!(
                "Phase:         {}{}\nCounts:        {} succeeded, {} failed, {} active\n",
                status.phase,
                status
                    .reason
                    .as_ref()
                    .map(|reason| format!(
                        " ({reason}: {})",
                        status.message.clone().unwrap_or_default()
                    ))
                    .unwrap_or_default(),
                status.succeeded,
                status.failed,
                status.active
            );
            if let Some(started) = status.started_at {
                out += &format!("Started:       {}\n", time(started));
            }
            if let Some(finished) = status.finished_at {
                out += &format!(
                    "Finished:      {} (took {})\n",
                    time(finished),
                    span(finished.saturating_sub(status.started_at.unwrap_or(finished)))
                );
            }
            if !status.finished()
                && let Some(message) = &status.message
            {
                out += &format!("Waiting:       {message}\n");
            }
            let mut runs = table(&["RUN", "HOST", "PHASE", "EXIT", "PLACED", "ENDED", "MESSAGE"]);
            for run in &status.runs {
                runs.add_row(vec![
                    run.run.clone(),
                    run.host.clone(),
                    if run.succeeded { "succeeded" } else { "failed" }.to_owned(),
                    run.exit_code
                        .map(|code| code.to_string())
                        .unwrap_or_default(),
                    time(run.placed_at),
                    time(run.finished_at),
                    run.message.clone(),
                ]);
            }
            for run in running {
                let status = run.status.as_ref();
                runs.add_row(vec![
                    run.assignment.replica.clone(),
                    run.assignment.host.clone(),
                    status.map_or_else(|| "pending".to_owned(), |s| s.phase.to_string()),
                    String::new(),
                    time(run.assignment.created_at),
                    String::new(),
                    status.and_then(|s| s.message.clone()).unwrap_or_default(),
                ]);
            }
            out += &format!("Runs:\n{runs}\n");
        }
        None => out += "Phase:         no status yet (is a scheduler running?)\n",
    }
    out += &format!(
        "Logs:          shoal logs job/{} -n {}\nEvents:        shoal events --job {} -n {}\n",
        job.name, job.namespace, job.name, job.namespace
    );
    out
}

fn render_cron_job(described: &CronJobView) -> String {
    use crate::commands::get::time;
    let cron = &described.cron_job;
    let spec = &cron.spec;
    let mut out = format!(
        "Name:          {}\nNamespace:     {}\nSchedule:      {} ({})\nConcurrency:   {:?}\nSuspended:     {}\nHistory kept:  {} succeeded, {} failed\nComponent:     {}\nCreated:       {} ago\n",
        cron.name,
        cron.namespace,
        spec.schedule,
        spec.time_zone.as_deref().unwrap_or("UTC"),
        spec.concurrency_policy,
        spec.suspend,
        spec.successful_kept(),
        spec.failed_kept(),
        spec.job_template.component,
        age(cron.created_at)
    );
    if let Some(deadline) = spec.starting_deadline {
        out += &format!(
            "Deadline:      start within {}\n",
            humantime::format_duration(deadline.0)
        );
    }
    if let Some(jitter) = spec.jitter {
        out += &format!(
            "Jitter:        up to {}\n",
            humantime::format_duration(jitter.0)
        );
    }
    if let Some(status) = &described.status {
        if let Some(problem) = &status.problem {
            out += &format!("Problem:       {problem}\n");
        }
        for (label, at) in [
            ("Last time:    ", status.last_scheduled),
            ("Last success: ", status.last_successful),
            ("Next time:    ", status.next),
        ] {
            if let Some(at) = at {
                out += &format!("{label} {}\n", time(at));
            }
        }
    }
    out += "Jobs:\n";
    for (name, phase) in &described.jobs {
        out += &format!(
            "  {name}  {}\n",
            phase.map_or_else(|| "pending".to_owned(), |phase| phase.to_string())
        );
    }
    out += &format!(
        "Events:        shoal events --cronjob {} -n {}\n",
        cron.name, cron.namespace
    );
    out
}

fn render_config(described: &ConfigView) -> String {
    let object = &described.object;
    let mut out = format!(
        "Name:        {}\nNamespace:   {}\nVersion:     {}\nCreated:     {} ago\nUpdated:     {} ago\nUsed by:     {}\nData:\n",
        object.name,
        object.namespace,
        object.version,
        age(object.created_at),
        age(object.updated_at),
        if described.used_by.is_empty() {
            "no app".to_owned()
        } else {
            described.used_by.join(", ")
        }
    );
    for (key, value) in &object.data {
        out += &format!("  {key}: {value}\n");
    }
    out
}

fn render(described: &AppDetail) -> String {
    let app = &described.app;
    let mut out = format!(
        "Name:        {}\nNamespace:   {}\nRevision:    {}\nGeneration:  {}\nComponent:   {}\nDigest:      {}\nCreated:     {} ago\n",
        app.name,
        app.namespace,
        app.revision,
        app.generation,
        app.spec.component,
        app.digest,
        age(app.created_at)
    );
    if !app.spec.config_from.is_empty() {
        let objects: Vec<String> = app
            .spec
            .config_from
            .iter()
            .map(|name| match app.config_objects.get(name) {
                Some(pinned) => format!("{name} (version {})", pinned.version),
                None => name.clone(),
            })
            .collect();
        out += &format!("Config from: {}\n", objects.join(", "));
    }
    if !app.spec.secrets.is_empty() {
        let secrets: Vec<String> = app
            .spec
            .secrets
            .iter()
            .map(|name| match app.secret_versions.get(name) {
                Some(version) => format!("{name} (version {version})"),
                None => name.clone(),
            })
            .collect();
        out += &format!("Secrets:     {}\n", secrets.join(", "));
    }
    if let Some(autoscale) = &app.spec.autoscale {
        let decided = described
            .status
            .as_ref()
            .and_then(|status| status.autoscale.as_ref())
            .map(|status| {
                format!(
                    "; wants {}{}",
                    status.wanted,
                    if status.panicking { " (panic)" } else { "" }
                )
            })
            .unwrap_or_default();
        out += &format!(
            "Autoscale:   {}-{} replicas, target {} in flight each; now {}.{} in flight{decided}\n",
            autoscale.min(),
            autoscale.max(),
            autoscale.target(),
            described.load_milli / 1000,
            (described.load_milli % 1000) / 100,
        );
    }
    if !app.spec.key_value.is_empty() {
        let stores: Vec<String> = app
            .spec
            .key_value
            .iter()
            .map(|store| {
                format!(
                    "{} (max {})",
                    store.name,
                    shoal_lattice::quantity::Memory(store.max_bytes())
                )
            })
            .collect();
        out += &format!("Key-value:   {}\n", stores.join(", "));
    }
    if !app.spec.publish.is_empty() {
        out += &format!("Publishes:   {}\n", app.spec.publish.join(", "));
    }
    if !app.spec.triggers.is_empty() {
        out += "Triggers:\n";
        for trigger in &app.spec.triggers {
            out += &format!("  {}\n", describe_trigger(trigger));
        }
        for view in &described.triggers {
            let state = match (&view.state, &view.error) {
                (Some(state), _) => format!(
                    "{} pending, {} unacknowledged, {} redelivered{}, {} in the stream",
                    state.pending,
                    state.ack_pending,
                    state.redelivered,
                    state
                        .dead_lettered
                        .map(|count| format!(", {count} dead-lettered"))
                        .unwrap_or_default(),
                    state.messages
                ),
                (None, why) => format!("cannot be read: {}", why.as_deref().unwrap_or("no answer")),
            };
            out += &format!(
                "  stream {} consumer {}: {state}\n",
                view.stream, view.consumer
            );
        }
    }
    match &described.status {
        Some(status) => {
            out += &format!(
                "Replicas:    {} desired, {} placed, {} ready (observed generation {})\n",
                status.desired, status.placed, status.ready, status.observed_generation
            );
            if let Some(unplaced) = &status.unplaced {
                out += &format!("Placement:   {unplaced}\n");
            }
            out += "Conditions:\n";
            for condition in &status.conditions {
                out += &format!(
                    "  {:<10} {:<5} {:<14} {}\n",
                    condition.kind, condition.status, condition.reason, condition.message
                );
            }
        }
        None => out += "Replicas:    no status yet (is a scheduler running?)\n",
    }
    let spec = serde_saphyr::to_string(&app.spec).unwrap_or_default();
    out += "Spec:\n";
    for line in spec.lines() {
        out += &format!("  {line}\n");
    }
    let mut replicas = table(&[
        "REPLICA", "HOST", "REVISION", "PHASE", "RESTARTS", "REASON", "MESSAGE",
    ]);
    for ReplicaView { assignment, status } in &described.replicas {
        let restarts = status.as_ref().map_or(0, |status| status.restarts);
        replicas.add_row(vec![
            assignment.replica.clone(),
            assignment.host.clone(),
            assignment.revision.to_string(),
            status
                .as_ref()
                .map_or_else(|| "pending".to_owned(), |status| status.phase.to_string()),
            restarts.to_string(),
            status
                .as_ref()
                .and_then(|status| status.reason.clone())
                .unwrap_or_default(),
            // What is going on now, else why it was last restarted.
            status
                .as_ref()
                .and_then(|status| {
                    status.message.clone().or_else(|| {
                        status
                            .last_restart
                            .as_ref()
                            .map(|why| format!("last restarted: {why}"))
                    })
                })
                .unwrap_or_default(),
        ]);
    }
    out += &format!("Replicas by host:\n{replicas}\n");
    out
}

/// One trigger on a line: its subject, or its stream and consumer with their settings.
pub(crate) fn describe_trigger(trigger: &shoal_lattice::records::Trigger) -> String {
    let Some(stream) = &trigger.stream else {
        return format!("subject {}", trigger.subject.as_deref().unwrap_or_default());
    };
    let mut line = format!("stream {stream}");
    if let Some(subject) = &trigger.subject {
        line += &format!(" ({subject})");
    }
    line += &format!(
        " consumer {}, ackWait {}s, maxDeliver {}",
        trigger.consumer(),
        trigger.ack_wait().as_secs(),
        trigger.max_deliver()
    );
    if let Some(dead_letter) = &trigger.dead_letter {
        line += &format!(", deadLetter {dead_letter}");
    }
    line
}
