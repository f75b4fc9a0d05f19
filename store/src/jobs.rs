//! Scan jobs and their expansion into branch tasks.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::Serialize;
use sqlx::{FromRow, PgPool};

use crate::{catalog::RepoId, Page, PageRequest, Result, StoreError};

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
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Job {
    /// 0–100, from the tasks that ended; never decreases while the job runs.
    pub fn progress(&self) -> i32 {
        match self.state.as_str() {
            "queued" => 0,
            "done" => 100,
            _ if self.tasks_total == 0 => 0,
            _ => (i64::from(self.tasks_done) * 100 / i64::from(self.tasks_total)) as i32,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "cancelled" | "failed")
    }
}

/// The columns of [`Job`], as a literal so that queries stay static strings.
macro_rules! job_columns {
    () => {
        "id, scan_key, scope, project_key, repository_slug, branch, requested_by, emails, state, \
         tasks_total, tasks_done, blobs_read, error, created_at, started_at, finished_at"
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
    create_job_with(pool, scope, requested_by, emails).await
}

/// [`create_job`] on any connection (in a caller's transaction).
pub async fn create_job_with<'e>(
    executor: impl sqlx::PgExecutor<'e>,
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
    .fetch_one(executor)
    .await?)
}

/// Records the `traceparent` of the request that created `job`, so the
/// leases of its tasks join that trace.
pub async fn set_traceparent(pool: &PgPool, job: JobId, traceparent: &str) -> Result<()> {
    sqlx::query("update scan_jobs set traceparent = $2 where id = $1")
        .bind(job)
        .bind(traceparent)
        .execute(pool)
        .await?;
    Ok(())
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
         where r.deleted_at is null and case $2
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

/// Jobs, newest first; only those `requested_by` asked for when given.
pub async fn list_jobs(
    pool: &PgPool,
    page: PageRequest,
    requested_by: Option<&str>,
) -> Result<Page<Job>> {
    let rows = sqlx::query_as::<_, Job>(concat!(
        "select ",
        job_columns!(),
        " from scan_jobs where ($3::text is null or requested_by = $3) order by id desc offset $1 limit $2"
    ))
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .bind(requested_by)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

/// Cancels one queued or running job and its unfinished tasks; a job that
/// already ended is a [`StoreError::Conflict`].
pub async fn cancel_job(pool: &PgPool, scan_key: &str) -> Result<Job> {
    let mut transaction = pool.begin().await?;
    let job: Job = sqlx::query_as(concat!(
        "select ",
        job_columns!(),
        " from scan_jobs where scan_key = $1 for update"
    ))
    .bind(scan_key)
    .fetch_optional(&mut *transaction)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("scan {scan_key}")))?;
    if job.is_finished() {
        return Err(StoreError::Conflict(format!(
            "scan {scan_key} already ended ({})",
            job.state
        )));
    }
    sqlx::query("update scan_jobs set state = 'cancelled', finished_at = now() where id = $1")
        .bind(job.id)
        .execute(&mut *transaction)
        .await?;
    sqlx::query(
        "update scan_tasks set state = 'cancelled', finished_at = now()
         where job_id = $1 and state in ('queued', 'leased')",
    )
    .bind(job.id)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    self::job(pool, job.id).await
}

/// A task of a job that failed, with its last error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct FailedTask {
    pub project_key: String,
    pub slug: String,
    pub branch: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Up to `limit` failed tasks of a job.
pub async fn failed_tasks(pool: &PgPool, job: JobId, limit: i64) -> Result<Vec<FailedTask>> {
    Ok(sqlx::query_as::<_, FailedTask>(
        "select p.key as project_key, r.slug, t.branch, t.attempts, t.last_error
         from scan_tasks t join repositories r on r.id = t.repository_id join projects p on p.id = r.project_id
         where t.job_id = $1 and t.state = 'failed' order by t.id limit $2",
    )
    .bind(job)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Where one branch stands: its latest task and what scans covered.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct BranchScan {
    pub head_commit: String,
    pub last_scanned_commit: Option<String>,
    /// Base policy digest of the last scan.
    pub last_scanned_base: Option<String>,
    /// The latest task for this branch, in any job.
    pub scan_key: Option<String>,
    pub task_state: Option<String>,
    pub commits_total: Option<i64>,
    pub commits_done: Option<i64>,
    /// Why the latest task failed, when it did (and no newer job is queued).
    pub last_error: Option<String>,
}

impl BranchScan {
    /// 0–100 for the latest task.
    pub fn progress(&self) -> i32 {
        match self.task_state.as_deref() {
            Some("queued") => 0,
            Some("leased") => {
                let total = self.commits_total.unwrap_or(0);
                let done = self.commits_done.unwrap_or(0);
                if total > 0 {
                    (done.min(total) * 99 / total) as i32
                } else {
                    0
                }
            }
            Some(_) => 100,
            None if self.last_scanned_commit.is_some() => 100,
            None => 0,
        }
    }
}

/// The scan state of `branch` of `repository`; `None` when the branch is
/// not in the catalog.
///
/// A job is recorded queued and expanded into branch tasks later, by the
/// coordinator; until then it has no task. A queued job whose scope takes
/// in this branch (a total or project rescan only when the repository is
/// not exempt, as [`expand_job`] decides) and that is newer than the
/// branch's latest task counts as that branch's queued task, so the branch
/// reads scheduled, under the new job's key, from the moment the request
/// was accepted.
pub async fn branch_scan(
    pool: &PgPool,
    repository: RepoId,
    branch: &str,
) -> Result<Option<BranchScan>> {
    Ok(sqlx::query_as::<_, BranchScan>(
        "select b.head_commit, b.last_scanned_commit, b.last_scanned_base,
                case when q.id is not null then q.scan_key else t.scan_key end as scan_key,
                case when q.id is not null then 'queued' else t.state end as task_state,
                case when q.id is null then t.commits_total end as commits_total,
                case when q.id is null then t.commits_done end as commits_done,
                case when q.id is null and t.state = 'failed'
                     then coalesce(t.last_error, 'the scan failed') end as last_error
         from branches b
         join repositories r on r.id = b.repository_id
         join projects p on p.id = r.project_id
         left join lateral (
             select j.id as job_id, j.scan_key, t.state, t.commits_total, t.commits_done, t.last_error
             from scan_tasks t join scan_jobs j on j.id = t.job_id
             where t.repository_id = b.repository_id and t.branch = b.name
             order by t.id desc limit 1
         ) t on true
         left join lateral (
             select j.id, j.scan_key from scan_jobs j
             where j.state = 'queued'
               and j.id > coalesce(t.job_id, 0)
               and case j.scope
                   when 'total' then not r.exempt
                   when 'project' then j.project_key = p.key and not r.exempt
                   when 'repository' then j.project_key = p.key and j.repository_slug = r.slug
                   else j.project_key = p.key and j.repository_slug = r.slug and j.branch = b.name
               end
             order by j.id desc limit 1
         ) q on true
         where b.repository_id = $1 and b.name = $2",
    )
    .bind(repository)
    .bind(branch)
    .fetch_optional(pool)
    .await?)
}
