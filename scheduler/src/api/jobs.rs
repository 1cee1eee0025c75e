//! How the scheduler does the verbs on jobs and cron jobs (the records' rules are in
//! [`crate::job_store`]).

use shoal_lattice::api::{
    AppliedJob, ApplyJobs, CreateJobFrom, CronJobView, DeleteCronJob, DeleteJob, ErrorCode,
    GetCronJobs, GetJobs, JobView,
};

use super::{ApiError, Context, Handle};
use crate::job_store;

impl Handle for ApplyJobs {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<AppliedJob>, ApiError> {
        job_store::apply(cx.lattice, self.jobs, self.cron_jobs).await
    }
}

impl Handle for GetJobs {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<JobView>, ApiError> {
        let visible = cx.visible(self.namespace.as_deref());
        Ok(job_store::list_jobs(cx.lattice, visible).await?)
    }
}

impl Handle for GetCronJobs {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<CronJobView>, ApiError> {
        let visible = cx.visible(self.namespace.as_deref());
        Ok(job_store::list_cron_jobs(cx.lattice, visible).await?)
    }
}

impl Handle for DeleteJob {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let Self { namespace, name } = self;
        if !job_store::delete_job(cx.lattice, &namespace, &name).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("there is no job {namespace}/{name}; shoal get jobs lists them"),
            ));
        }
        Ok(())
    }
}

impl Handle for DeleteCronJob {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let Self { namespace, name } = self;
        if !job_store::delete_cron_job(cx.lattice, &namespace, &name).await? {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("there is no cron job {namespace}/{name}; shoal get cronjobs lists them"),
            ));
        }
        Ok(())
    }
}

impl Handle for CreateJobFrom {
    async fn handle(self, cx: &Context<'_>) -> Result<AppliedJob, ApiError> {
        job_store::create_from(cx.lattice, &self.namespace, &self.cron_job, &self.name).await
    }
}
