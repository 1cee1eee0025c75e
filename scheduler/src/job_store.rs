//! Jobs and cron jobs through the control API: applying them (checked again here, whoever
//! sent them), listing them with their status, deleting them, and making a job from a cron
//! job's template. The controllers do the rest.

use std::collections::HashMap;

use shoal_lattice::api::{ApiError, AppliedJob, CronJobView, ErrorCode, JobManifest, JobView};
use shoal_lattice::jobs::{
    CronJobRecord, CronJobSpec, CronJobStatus, CronOrigin, JobRecord, JobSpec, JobStatus,
};
use shoal_lattice::names::{app_key, cron_job_status_key, job_status_key};
use shoal_lattice::records::now_millis;
use shoal_lattice::{Bucket, Error, Lattice};

use crate::api::{internal, refuse_invalid};

fn digest_problem(digest: &str) -> Option<String> {
    (!shoal_lattice::validate::is_digest(digest))
        .then(|| "digest: must be sha256: and 64 lowercase hex digits".to_owned())
}

fn cron_problems(cron: &JobManifest<CronJobSpec>) -> Vec<String> {
    let mut problems: Vec<String> = crate::cron::problems(&cron.name, &cron.spec)
        .into_iter()
        .map(|problem| problem.to_string())
        .collect();
    problems.extend(digest_problem(&cron.digest));
    problems
}

fn applied(kind: &str, namespace: &str, name: &str, change: &str) -> AppliedJob {
    AppliedJob {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        change: change.to_owned(),
    }
}

/// A new job record for `spec`.
fn new_job(
    namespace: &str,
    name: &str,
    spec: JobSpec,
    (digest, wasi): (&str, Option<&String>),
    cron: Option<CronOrigin>,
) -> JobRecord {
    JobRecord {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: nuid::next().to_string().to_ascii_lowercase(),
        digest: digest.to_owned(),
        wasi: wasi.cloned(),
        spec,
        created_at: now_millis(),
        cron,
    }
}

/// Stores the jobs and cron jobs of an apply: everything is checked first, and nothing is
/// stored when anything is wrong (or a job exists with another spec).
///
/// # Errors
/// Invalid with every problem; Conflict for a job that exists with another spec.
pub async fn apply(
    lattice: &Lattice,
    jobs: Vec<JobManifest<JobSpec>>,
    cron_jobs: Vec<JobManifest<CronJobSpec>>,
) -> Result<Vec<AppliedJob>, ApiError> {
    for job in &jobs {
        let mut problems: Vec<String> = job
            .spec
            .problems("spec")
            .into_iter()
            .map(|problem| problem.to_string())
            .collect();
        problems.extend(digest_problem(&job.digest));
        refuse_invalid(&format!("job {}/{}", job.namespace, job.name), problems)?;
    }
    for cron in &cron_jobs {
        refuse_invalid(
            &format!("cron job {}/{}", cron.namespace, cron.name),
            cron_problems(cron),
        )?;
    }
    // Jobs cannot change: one that exists must be the same, else nothing is stored.
    let mut new_jobs = Vec::new();
    let mut outcome = Vec::new();
    for job in jobs {
        let key = app_key(&job.namespace, &job.name);
        match lattice.get_checked::<JobRecord>(Bucket::Jobs, &key).await? {
            Some(Ok(existing))
                if existing.value.spec == job.spec && existing.value.digest == job.digest =>
            {
                outcome.push(applied("job", &job.namespace, &job.name, "unchanged"));
            }
            Some(Ok(_)) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "job {}/{} exists with another spec, and a job cannot be changed: delete it first (shoal delete job {} -n {}); nothing was stored",
                        job.namespace, job.name, job.name, job.namespace
                    ),
                ));
            }
            // Missing, or unreadable (written around the API): made anew.
            _ => new_jobs.push(job),
        }
    }
    for job in new_jobs {
        let record = new_job(
            &job.namespace,
            &job.name,
            job.spec,
            (&job.digest, job.wasi.as_ref()),
            None,
        );
        lattice
            .put(Bucket::Jobs, &app_key(&job.namespace, &job.name), &record)
            .await?;
        outcome.push(applied("job", &job.namespace, &job.name, "created"));
    }
    for cron in cron_jobs {
        let key = app_key(&cron.namespace, &cron.name);
        let existing = lattice
            .get_checked::<CronJobRecord>(Bucket::CronJobs, &key)
            .await?
            .and_then(Result::ok);
        let change = match &existing {
            Some(existing)
                if existing.value.spec == cron.spec
                    && existing.value.digest == cron.digest
                    && existing.value.wasi == cron.wasi =>
            {
                outcome.push(applied("cronjob", &cron.namespace, &cron.name, "unchanged"));
                continue;
            }
            Some(_) => "configured",
            None => "created",
        };
        let record = CronJobRecord {
            namespace: cron.namespace.clone(),
            name: cron.name.clone(),
            digest: cron.digest,
            wasi: cron.wasi,
            spec: cron.spec,
            created_at: existing.map_or_else(now_millis, |existing| existing.value.created_at),
        };
        lattice.put(Bucket::CronJobs, &key, &record).await?;
        outcome.push(applied("cronjob", &cron.namespace, &cron.name, change));
    }
    Ok(outcome)
}

/// Jobs whose namespace `visible` allows, with their status, by namespace and name.
///
/// # Errors
/// When the lattice cannot be read.
pub async fn list_jobs(
    lattice: &Lattice,
    visible: impl Fn(&str) -> bool,
) -> Result<Vec<JobView>, Error> {
    let status: HashMap<String, JobStatus> = lattice
        .list::<JobStatus>(Bucket::Status, "jobs.")
        .await?
        .into_iter()
        .map(|record| (record.key, record.value))
        .collect();
    Ok(lattice
        .list::<JobRecord>(Bucket::Jobs, "")
        .await?
        .into_iter()
        .filter(|record| visible(&record.value.namespace))
        .map(|record| JobView {
            status: status
                .get(&job_status_key(&record.value.namespace, &record.value.name))
                .filter(|status| status.uid == record.value.uid)
                .cloned(),
            job: record.value,
        })
        .collect())
}

/// Cron jobs whose namespace `visible` allows, with their status and their kept jobs.
///
/// # Errors
/// When the lattice cannot be read.
pub async fn list_cron_jobs(
    lattice: &Lattice,
    visible: impl Fn(&str) -> bool,
) -> Result<Vec<CronJobView>, Error> {
    let status: HashMap<String, CronJobStatus> = lattice
        .list::<CronJobStatus>(Bucket::Status, "cronjobs.")
        .await?
        .into_iter()
        .map(|record| (record.key, record.value))
        .collect();
    let mut jobs = list_jobs(lattice, &visible).await?;
    jobs.sort_by_key(|job| job.job.created_at);
    Ok(lattice
        .list::<CronJobRecord>(Bucket::CronJobs, "")
        .await?
        .into_iter()
        .filter(|record| visible(&record.value.namespace))
        .map(|record| {
            let cron = record.value;
            CronJobView {
                status: status
                    .get(&cron_job_status_key(&cron.namespace, &cron.name))
                    .cloned(),
                jobs: jobs
                    .iter()
                    .filter(|job| job.job.made_by(&cron.namespace, &cron.name))
                    .map(|job| {
                        (
                            job.job.name.clone(),
                            job.status.as_ref().map(|status| status.phase),
                        )
                    })
                    .collect(),
                cron_job: cron,
            }
        })
        .collect())
}

/// Deletes job `namespace/name` (its runs stop: the jobs controller removes them); `false`
/// when there is none.
///
/// # Errors
/// When the lattice cannot be written.
pub async fn delete_job(lattice: &Lattice, namespace: &str, name: &str) -> Result<bool, Error> {
    let key = app_key(namespace, name);
    if lattice
        .keys(Bucket::Jobs, &key)
        .await?
        .iter()
        .all(|found| *found != key)
    {
        return Ok(false);
    }
    lattice.delete(Bucket::Jobs, &key).await?;
    Ok(true)
}

/// Deletes cron job `namespace/name` and every job it made; `false` when there is none.
///
/// # Errors
/// When the lattice cannot be read or written.
pub async fn delete_cron_job(
    lattice: &Lattice,
    namespace: &str,
    name: &str,
) -> Result<bool, Error> {
    let key = app_key(namespace, name);
    if lattice
        .keys(Bucket::CronJobs, &key)
        .await?
        .iter()
        .all(|found| *found != key)
    {
        return Ok(false);
    }
    // The cron job first: no new job can be made while its jobs go.
    lattice.delete(Bucket::CronJobs, &key).await?;
    for job in lattice.list::<JobRecord>(Bucket::Jobs, "").await? {
        if job.value.made_by(namespace, name) {
            lattice.delete(Bucket::Jobs, &job.key).await?;
        }
    }
    Ok(true)
}

/// Makes job `namespace/name` from cron job `namespace/cron_job`'s template now.
///
/// # Errors
/// NotFound without the cron job; Conflict when a job of that name exists.
pub async fn create_from(
    lattice: &Lattice,
    namespace: &str,
    cron_job: &str,
    name: &str,
) -> Result<AppliedJob, ApiError> {
    let cron = lattice
        .get_checked::<CronJobRecord>(Bucket::CronJobs, &app_key(namespace, cron_job))
        .await?
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "there is no cron job {namespace}/{cron_job}; shoal get cronjobs lists them"
                ),
            )
        })?;
    let record = new_job(
        namespace,
        name,
        cron.value.spec.job_template,
        (&cron.value.digest, cron.value.wasi.as_ref()),
        Some(CronOrigin {
            cron_job: cron_job.to_owned(),
            scheduled_at: None,
        }),
    );
    match lattice
        .create(Bucket::Jobs, &app_key(namespace, name), &record)
        .await
    {
        Ok(_) => Ok(applied("job", namespace, name, "created")),
        Err(Error::Conflict { .. }) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("job {namespace}/{name} exists: give another name, or delete it first"),
        )),
        Err(error) => Err(internal(shoal_lattice::Chain(&error))),
    }
}
