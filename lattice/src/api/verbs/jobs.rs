//! The verbs on jobs and cron jobs: apply, delete, make a job from a cron job now, and the
//! listings.

use serde::{Deserialize, Serialize};

use super::{Rules, Verb, check_named, listing, named_verb};
use crate::Error;
use crate::api::{AppliedJob, CronJobView, JobView};
use crate::auth::Role;
use crate::jobs::{CronJobSpec, JobSpec};

/// One job or cron job of an `apply`, its component already pinned by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobManifest<S> {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The spec as written.
    pub spec: S,
    /// The component's manifest digest.
    pub digest: String,
    /// The WASI version the component needs a host to run (`0.3`), read from its exports at
    /// apply; none for WASI 0.2 (and for records made before Shoal ran 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wasi: Option<String>,
}

/// Create jobs (a job cannot be changed: the same spec again is no change, another is
/// refused) and create or update cron jobs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplyJobs {
    /// The jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobManifest<JobSpec>>,
    /// The cron jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cron_jobs: Vec<JobManifest<CronJobSpec>>,
}

impl ApplyJobs {
    /// The namespace and name of each job and cron job.
    fn names(&self) -> impl Iterator<Item = (&str, &str)> {
        let jobs = self.jobs.iter().map(|job| (&job.namespace, &job.name));
        let cron_jobs = self
            .cron_jobs
            .iter()
            .map(|cron| (&cron.namespace, &cron.name));
        jobs.chain(cron_jobs)
            .map(|(namespace, name)| (namespace.as_str(), name.as_str()))
    }
}

impl Rules for ApplyJobs {
    fn verb(&self) -> &'static str {
        "apply"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        let namespaces = self.names().map(|(namespace, _)| namespace);
        (Role::Editor, namespaces.collect())
    }

    fn check_names(&self) -> Result<(), Error> {
        self.names()
            .try_for_each(|(namespace, name)| check_named(namespace, "job", name))
    }
}

impl Verb for ApplyJobs {
    type Answer = Vec<AppliedJob>;
}

listing!(
    /// Jobs with their status.
    GetJobs,
    Vec<JobView>
);
listing!(
    /// Cron jobs with their status and the jobs they made.
    GetCronJobs,
    Vec<CronJobView>
);
named_verb!(
    /// Delete a job: its runs stop.
    DeleteJob, "job", |_| "delete", Role::Editor, (), resend: true
);
named_verb!(
    /// Delete a cron job and the jobs it made.
    DeleteCronJob, "job", |_| "delete", Role::Editor, (), resend: true
);

/// Make a job from a cron job's template now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateJobFrom {
    /// Namespace.
    pub namespace: String,
    /// The cron job.
    pub cron_job: String,
    /// The job's name.
    pub name: String,
}

impl Rules for CreateJobFrom {
    fn verb(&self) -> &'static str {
        "create"
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        (Role::Editor, vec![self.namespace.as_str()])
    }

    fn check_names(&self) -> Result<(), Error> {
        check_named(&self.namespace, "cron job", &self.cron_job)?;
        check_named(&self.namespace, "job", &self.name)
    }
}

impl Verb for CreateJobFrom {
    type Answer = AppliedJob;
}
