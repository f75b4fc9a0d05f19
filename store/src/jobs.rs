//! Scan jobs and their expansion into branch tasks.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sqlx::{FromRow, PgPool};

use crate::{Result, StoreError};

/// Database id of a scan job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct JobId(pub i64);

/// What a job scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobScope {
    Total,
    Project {
        project_key: String,
    },
    Repository {
        project_key: String,
        slug: String,
    },
    Branch {
        project_key: String,
        slug: String,
        branch: String,
    },
}

impl JobScope {
    fn parts(&self) -> (&'static str, Option<&str>, Option<&str>, Option<&str>) {
        match self {
            JobScope::Total => ("total", None, None, None),
            JobScope::Project { project_key } => ("project", Some(project_key), None, None),
            JobScope::Repository { project_key, slug } => {
                ("repository", Some(project_key), Some(slug), None)
            }
            JobScope::Branch {
                project_key,
                slug,
                branch,
            } => ("branch", Some(project_key), Some(slug), Some(branch)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct Job {
    pub id: JobId,
    pub scan_key: String,
    pub scope: String,
    pub project_key: Option<String>,
    pub repository_slug: Option<String>,
    pub branch: Option<String>,
    pub requested_by: String,
    pub emails: Vec<String>,
    pub state: String,
    pub tasks_total: i32,
    pub tasks_done: i32,
    pub blobs_read: i64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The columns of [`Job`], as a literal so that queries stay static strings.
macro_rules! job_columns {
    () => {
        "id, scan_key, scope, project_key, repository_slug, branch, requested_by, emails, state, \
         tasks_total, tasks_done, blobs_read, error, created_at"
    };
}

/// A new random scan key: 32 hex characters.
pub fn new_scan_key() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records a queued job.
pub async fn create_job(
    pool: &PgPool,
    scope: &JobScope,
    requested_by: &str,
    emails: &[String],
) -> Result<Job> {
    let (scope_name, project_key, slug, branch) = scope.parts();
    Ok(sqlx::query_as::<_, Job>(concat!(
        "insert into scan_jobs (scan_key, scope, project_key, repository_slug, branch, requested_by, emails)
         values ($1, $2, $3, $4, $5, $6, $7) returning ",
        job_columns!()
    ))
    .bind(new_scan_key())
    .bind(scope_name)
    .bind(project_key)
    .bind(slug)
    .bind(branch)
    .bind(requested_by)
    .bind(emails)
    .fetch_one(pool)
    .await?)
}

pub async fn find_job(pool: &PgPool, scan_key: &str) -> Result<Option<Job>> {
    Ok(sqlx::query_as::<_, Job>(concat!(
        "select ",
        job_columns!(),
        " from scan_jobs where scan_key = $1"
    ))
    .bind(scan_key)
    .fetch_optional(pool)
    .await?)
}

pub async fn job(pool: &PgPool, id: JobId) -> Result<Job> {
    sqlx::query_as::<_, Job>(concat!(
        "select ",
        job_columns!(),
        " from scan_jobs where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("job {}", id.0)))
}

/// Jobs still queued, oldest first: at start-up the coordinator re-enqueues
/// them, in case their stream entry was lost.
pub async fn queued_jobs(pool: &PgPool) -> Result<Vec<JobId>> {
    Ok(sqlx::query_scalar::<_, JobId>(
        "select id from scan_jobs where state = 'queued' order by id",
    )
    .fetch_all(pool)
    .await?)
}

/// Expands a queued job into one task per branch in its scope (exempt
/// repositories skipped for total and project scans) and marks it running.
/// Idempotent: expanding again adds nothing. Returns the number of tasks.
pub async fn expand_job(pool: &PgPool, id: JobId) -> Result<i64> {
    let mut transaction = pool.begin().await?;
    let job: Job = sqlx::query_as(concat!(
        "select ",
        job_columns!(),
        " from scan_jobs where id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(&mut *transaction)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("job {}", id.0)))?;
    if job.state != "queued" {
        transaction.commit().await?;
        return Ok(i64::from(job.tasks_total));
    }
    sqlx::query(
        "insert into scan_tasks (job_id, repository_id, branch)
         select $1, r.id, b.name
         from repositories r
         join projects p on p.id = r.project_id
         join branches b on b.repository_id = r.id
         where case $2
             when 'total' then not r.exempt
             when 'project' then p.key = $3 and not r.exempt
             when 'repository' then p.key = $3 and r.slug = $4
             else p.key = $3 and r.slug = $4 and b.name = $5
         end
         order by p.key, r.slug, b.name
         on conflict (job_id, repository_id, branch) do nothing",
    )
    .bind(id)
    .bind(&job.scope)
    .bind(&job.project_key)
    .bind(&job.repository_slug)
    .bind(&job.branch)
    .execute(&mut *transaction)
    .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from scan_tasks where job_id = $1")
        .bind(id)
        .fetch_one(&mut *transaction)
        .await?;
    // A job with nothing to scan is done at once.
    sqlx::query(
        "update scan_jobs set tasks_total = $2, started_at = now(),
             state = case when $2 = 0 then 'done' else 'running' end,
             finished_at = case when $2 = 0 then now() end
         where id = $1",
    )
    .bind(id)
    .bind(total as i32)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(total)
}
