//! Branch tasks: leasing to workers, heartbeats, completion, failure and
//! expiry. The decisions are pure functions ([`after_failure`],
//! [`job_outcome`]) over the state the queries load.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgPool, Postgres, Transaction};

use crate::{catalog::RepoId, jobs::JobId, Result, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct TaskId(pub i64);

/// Limits on how much runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Tasks leased at once across the instance.
    pub instance: u32,
    /// Tasks leased at once by one worker.
    pub per_worker: u32,
}

/// A task handed to a worker.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct LeasedTask {
    pub task_id: TaskId,
    pub lease_id: String,
    pub job_id: JobId,
    pub scan_key: String,
    pub repository_id: RepoId,
    pub project_key: String,
    pub slug: String,
    pub clone_url: String,
    pub branch: String,
    pub last_scanned_commit: Option<String>,
    pub last_scanned_digest: Option<String>,
    pub attempts: i32,
    pub lease_expires_at: DateTime<Utc>,
    /// Seconds from the task's creation to this lease (on a first attempt,
    /// how long it waited in the queue).
    pub queued_seconds: f64,
    /// The trace of the request that created the job, when it was traced.
    pub traceparent: Option<String>,
}

/// What happens to a task whose attempt failed or whose lease expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    Requeue,
    Fail,
}

/// A task is retried while it has attempts left and retrying can help.
pub fn after_failure(attempts: i32, max_attempts: i32, retryable: bool) -> AfterFailure {
    if retryable && attempts < max_attempts {
        AfterFailure::Requeue
    } else {
        AfterFailure::Fail
    }
}

/// A job's state and progress from its task counts.
pub fn job_outcome(total: i64, done: i64, failed: i64, cancelled: i64) -> (&'static str, i16) {
    let finished = done + failed + cancelled;
    let progress = if total == 0 {
        100
    } else {
        (finished * 100 / total) as i16
    };
    let state = if finished < total {
        "running"
    } else if cancelled > 0 {
        "cancelled"
    } else if failed > 0 {
        "failed"
    } else {
        "done"
    };
    (state, progress)
}

/// Leases the oldest queued task to `worker`, within the parallelism limits.
/// A task waits while another job's task of the same branch is leased: two
/// full scans of one branch at once would each keep only their own
/// findings and delete the other's.
pub async fn lease_next_task(
    pool: &PgPool,
    worker: &str,
    lease_ms: u32,
    limits: Parallelism,
) -> Result<Option<LeasedTask>> {
    let mut transaction = pool.begin().await?;
    // One leaser at a time, so the limits hold across coordinator replicas.
    // Try, never wait: a leaser blocked on the lock would hold a pooled
    // connection that heartbeats and completions need; callers poll again.
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock(7243001)")
        .fetch_one(&mut *transaction)
        .await?;
    if !locked {
        transaction.commit().await?;
        return Ok(None);
    }
    let (instance, mine): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where leased_by = $1) from scan_tasks where state = 'leased'",
    )
    .bind(worker)
    .fetch_one(&mut *transaction)
    .await?;
    if instance >= i64::from(limits.instance) || mine >= i64::from(limits.per_worker) {
        transaction.commit().await?;
        return Ok(None);
    }
    let lease_id = crate::jobs::new_scan_key();
    let leased = sqlx::query_as::<_, LeasedTask>(
        "with next as (
             select t.id from scan_tasks t join scan_jobs j on j.id = t.job_id
             where t.state = 'queued' and j.state = 'running'
               and not exists (
                   select 1 from scan_tasks busy
                   where busy.repository_id = t.repository_id and busy.branch = t.branch
                     and busy.state = 'leased'
               )
             order by t.id for update of t skip locked limit 1
         ), leased as (
             update scan_tasks t set state = 'leased', lease_id = $2, leased_by = $1, leased_at = now(),
                 lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
                 attempts = attempts + 1
             from next where t.id = next.id
             returning t.*
         )
         select l.id as task_id, l.lease_id, l.job_id, j.scan_key, l.repository_id, p.key as project_key,
                r.slug, r.clone_url, l.branch, b.last_scanned_commit, b.last_scanned_digest, l.attempts, l.lease_expires_at,
                extract(epoch from now() - l.created_at)::float8 as queued_seconds, j.traceparent
         from leased l
         join scan_jobs j on j.id = l.job_id
         join repositories r on r.id = l.repository_id
         join projects p on p.id = r.project_id
         left join branches b on b.repository_id = l.repository_id and b.name = l.branch",
    )
    .bind(worker)
    .bind(&lease_id)
    .bind(f64::from(lease_ms))
    .fetch_optional(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(leased)
}

/// Progress a worker reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskProgress {
    pub commits_total: i64,
    pub commits_done: i64,
    pub blobs_read: i64,
}

/// Extends the lease and records progress; `Ok(true)` means "cancel".
/// A lease that is no longer the task's current one is an error.
pub async fn heartbeat(
    pool: &PgPool,
    task: TaskId,
    lease_id: &str,
    lease_ms: u32,
    progress: TaskProgress,
) -> Result<bool> {
    let row: Option<(String, String)> = sqlx::query_as(
        "update scan_tasks t set lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
             commits_total = $4, commits_done = $5, blobs_read = $6
         from scan_jobs j
         where t.id = $1 and t.lease_id = $2 and t.state in ('leased', 'cancelled') and j.id = t.job_id
         returning t.state, j.state",
    )
    .bind(task)
    .bind(lease_id)
    .bind(f64::from(lease_ms))
    .bind(progress.commits_total)
    .bind(progress.commits_done)
    .bind(progress.blobs_read)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((task_state, job_state)) => Ok(task_state == "cancelled" || job_state == "cancelled"),
        None => Err(lease_lost(task)),
    }
}

pub(crate) fn lease_lost(task: TaskId) -> StoreError {
    StoreError::Invalid(format!(
        "task {} is not leased under this lease any more",
        task.0
    ))
}

/// The repository and branch of a task leased under `lease_id`.
pub async fn leased_task_target(
    pool: &PgPool,
    task: TaskId,
    lease_id: &str,
) -> Result<(RepoId, String)> {
    sqlx::query_as("select repository_id, branch from scan_tasks where id = $1 and lease_id = $2 and state = 'leased'")
        .bind(task)
        .bind(lease_id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| lease_lost(task))
}

/// What a completed branch scan covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    pub head_commit: String,
    pub blobs_read: i64,
    /// Digest of the effective policy (base and config file) scanned under.
    pub policy_digest: String,
    /// Digest of the base policy the task was leased with.
    pub base_digest: String,
    /// The whole history was scanned: the branch keeps exactly the findings
    /// this task reported.
    pub full_scan: bool,
}

/// Marks a task done, records what its branch scan covered, and finishes
/// the job when it was the last one. Returns how long the task was leased,
/// in milliseconds.
pub async fn complete_task(
    pool: &PgPool,
    task: TaskId,
    lease_id: &str,
    completion: &Completion,
) -> Result<i64> {
    let head_commit = completion.head_commit.as_str();
    let blobs_read = completion.blobs_read;
    let mut transaction = pool.begin().await?;
    let row: Option<(JobId, RepoId, String, i64)> = sqlx::query_as(
        "update scan_tasks set state = 'done', finished_at = now(), head_commit = $3, blobs_read = $4,
             lease_id = null, lease_expires_at = null
         where id = $1 and lease_id = $2 and state = 'leased'
         returning job_id, repository_id, branch,
             (extract(epoch from now() - coalesce(leased_at, now())) * 1000)::bigint",
    )
    .bind(task)
    .bind(lease_id)
    .bind(head_commit)
    .bind(blobs_read)
    .fetch_optional(&mut *transaction)
    .await?;
    let (job, repository, branch, duration_ms) = row.ok_or_else(|| lease_lost(task))?;
    if completion.full_scan {
        crate::findings::keep_only_task_findings(&mut transaction, repository, &branch, task.0)
            .await?;
    }
    // An empty branch has no head commit to report on.
    if !head_commit.is_empty() {
        crate::insights::write_scan_report(
            &mut transaction,
            repository,
            &branch,
            head_commit,
            duration_ms,
        )
        .await?;
    }
    sqlx::query(
        "update branches set last_scanned_commit = $3, head_commit = $3, last_scanned_at = now(),
             last_scanned_digest = $4, last_scanned_base = $5
         where repository_id = $1 and name = $2",
    )
    .bind(repository)
    .bind(&branch)
    .bind(head_commit)
    .bind(&completion.policy_digest)
    .bind(&completion.base_digest)
    .execute(&mut *transaction)
    .await?;
    settle_job(&mut transaction, job).await?;
    transaction.commit().await?;
    Ok(duration_ms)
}

/// Records a failed attempt: back to the queue while attempts remain and
/// retrying can help, failed (with the error kept) otherwise.
pub async fn fail_task(
    pool: &PgPool,
    task: TaskId,
    lease_id: &str,
    error: &str,
    retryable: bool,
    max_attempts: i32,
) -> Result<AfterFailure> {
    let mut transaction = pool.begin().await?;
    let row: Option<(JobId, i32)> =
        sqlx::query_as("select job_id, attempts from scan_tasks where id = $1 and lease_id = $2 and state = 'leased' for update")
            .bind(task)
            .bind(lease_id)
            .fetch_optional(&mut *transaction)
            .await?;
    let (job, attempts) = row.ok_or_else(|| lease_lost(task))?;
    let outcome = after_failure(attempts, max_attempts, retryable);
    apply_failure(&mut transaction, task, error, outcome).await?;
    settle_job(&mut transaction, job).await?;
    transaction.commit().await?;
    Ok(outcome)
}

/// Longest error text kept for a task.
const MAX_ERROR_CHARS: usize = 2_000;

/// `error` as it may be kept and shown to anyone who can read the
/// repository: credentials in URLs (`scheme://user:secret@host`) masked,
/// control characters but newlines replaced, at most [`MAX_ERROR_CHARS`].
/// A worker's error often quotes git, which quotes the clone URL.
pub fn safe_error(error: &str) -> String {
    let mut safe = String::with_capacity(error.len().min(MAX_ERROR_CHARS));
    let mut rest = error;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        safe.push_str(before);
        let (userinfo, host, after_authority) = crate::catalog::split_authority(after);
        if userinfo.is_some() {
            safe.push_str("***@");
        }
        safe.push_str(host);
        rest = after_authority;
    }
    safe.push_str(rest);
    safe.chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .take(MAX_ERROR_CHARS)
        .collect()
}

async fn apply_failure(
    transaction: &mut Transaction<'_, Postgres>,
    task: TaskId,
    error: &str,
    outcome: AfterFailure,
) -> Result<()> {
    let state = match outcome {
        AfterFailure::Requeue => "queued",
        AfterFailure::Fail => "failed",
    };
    sqlx::query(
        "update scan_tasks set state = $2, last_error = $3, lease_id = null, leased_by = null, lease_expires_at = null,
             finished_at = case when $2 = 'failed' then now() end
         where id = $1",
    )
    .bind(task)
    .bind(state)
    .bind(safe_error(error))
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// Takes back every lease that expired (its worker died or hung): the task
/// is queued again, or failed once it has used `max_attempts`.
pub async fn expire_leases(
    pool: &PgPool,
    max_attempts: i32,
) -> Result<Vec<(TaskId, AfterFailure)>> {
    let mut transaction = pool.begin().await?;
    let expired: Vec<(TaskId, JobId, i32)> = sqlx::query_as(
        "select id, job_id, attempts from scan_tasks
         where state = 'leased' and lease_expires_at < now() order by id for update skip locked",
    )
    .fetch_all(&mut *transaction)
    .await?;
    let mut outcomes = Vec::with_capacity(expired.len());
    for (task, job, attempts) in expired {
        let outcome = after_failure(attempts, max_attempts, true);
        apply_failure(
            &mut transaction,
            task,
            "lease expired: the worker stopped answering",
            outcome,
        )
        .await?;
        settle_job(&mut transaction, job).await?;
        outcomes.push((task, outcome));
    }
    transaction.commit().await?;
    Ok(outcomes)
}

/// The work waiting and running now: what autoscalers poll (the
/// coordinator's `/scaling`). Cheap: it reads the partial indexes of queued
/// and leased tasks only.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// Queued tasks of running jobs: what workers could take now.
    pub tasks_pending: i64,
    pub tasks_leased: i64,
    /// Seconds since the oldest pending task was queued (0 when none).
    pub oldest_pending_seconds: f64,
    /// Seconds since the oldest leased task was leased (0 when none).
    pub oldest_leased_seconds: f64,
}

pub async fn load(pool: &PgPool) -> Result<Load> {
    let (tasks_pending, oldest_pending_seconds): (i64, f64) = sqlx::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(t.created_at))::float8, 0)
         from scan_tasks t join scan_jobs j on j.id = t.job_id
         where t.state = 'queued' and j.state = 'running'",
    )
    .fetch_one(pool)
    .await?;
    let (tasks_leased, oldest_leased_seconds): (i64, f64) = sqlx::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(coalesce(leased_at, now())))::float8, 0)
         from scan_tasks where state = 'leased'",
    )
    .fetch_one(pool)
    .await?;
    Ok(Load {
        tasks_pending,
        tasks_leased,
        oldest_pending_seconds,
        oldest_leased_seconds,
    })
}

/// Jobs and tasks by state, and the [`Load`]: what the coordinator's
/// `/metrics` reads at each scrape. The counts by state read every row,
/// finished ones included (they only grow: a scrape every 15 s of a table
/// of a million tasks costs a sequential scan each time).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overview {
    pub jobs: Vec<(String, i64)>,
    pub tasks: Vec<(String, i64)>,
    pub load: Load,
}

pub async fn overview(pool: &PgPool) -> Result<Overview> {
    let jobs: Vec<(String, i64)> =
        sqlx::query_as("select state, count(*) from scan_jobs group by state order by state")
            .fetch_all(pool)
            .await?;
    let tasks: Vec<(String, i64)> =
        sqlx::query_as("select state, count(*) from scan_tasks group by state order by state")
            .fetch_all(pool)
            .await?;
    Ok(Overview {
        jobs,
        tasks,
        load: load(pool).await?,
    })
}

/// Cancels the jobs in `state` (`queued` or `running`) and their unfinished
/// tasks; running workers learn it from their next heartbeat.
pub async fn cancel_jobs(pool: &PgPool, state: &str) -> Result<u64> {
    if state != "queued" && state != "running" {
        return Err(StoreError::Invalid(format!(
            "cannot cancel jobs in state {state:?}"
        )));
    }
    let mut transaction = pool.begin().await?;
    let jobs: Vec<JobId> = sqlx::query_scalar(
        "update scan_jobs set state = 'cancelled', finished_at = now() where state = $1 returning id",
    )
    .bind(state)
    .fetch_all(&mut *transaction)
    .await?;
    let ids: Vec<i64> = jobs.iter().map(|job| job.0).collect();
    sqlx::query(
        "update scan_tasks set state = 'cancelled', finished_at = now()
         where job_id = any($1) and state in ('queued', 'leased')",
    )
    .bind(&ids)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(jobs.len() as u64)
}

/// Recomputes a job's counts and state from its tasks.
async fn settle_job(transaction: &mut Transaction<'_, Postgres>, job: JobId) -> Result<()> {
    // Under the job's row lock: a task completing at the same moment waits
    // here until this transaction commits, and its count (a new statement,
    // so a new snapshot) then sees this task's state. Without the lock both
    // count before either commits and the job stays running for ever.
    sqlx::query("select 1 from scan_jobs where id = $1 for update")
        .bind(job)
        .execute(&mut **transaction)
        .await?;
    let (total, done, failed, cancelled, blobs): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where state = 'done'), count(*) filter (where state = 'failed'),
                count(*) filter (where state = 'cancelled'), coalesce(sum(blobs_read), 0)::bigint
         from scan_tasks where job_id = $1",
    )
    .bind(job)
    .fetch_one(&mut **transaction)
    .await?;
    let (state, _) = job_outcome(total, done, failed, cancelled);
    sqlx::query(
        "update scan_jobs set tasks_done = $2, blobs_read = $3,
             state = case when state = 'cancelled' then state else $4 end,
             finished_at = case
                 when state = 'cancelled' then finished_at
                 when $4 <> 'running' then coalesce(finished_at, now())
             end
         where id = $1",
    )
    .bind(job)
    .bind((done + failed + cancelled) as i32)
    .bind(blobs)
    .bind(state)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_retry_while_attempts_remain() {
        assert_eq!(after_failure(1, 3, true), AfterFailure::Requeue);
        assert_eq!(after_failure(3, 3, true), AfterFailure::Fail);
        assert_eq!(after_failure(1, 3, false), AfterFailure::Fail);
    }

    /// Regression (issue 13): a failed task's error quoted git, and git
    /// quotes the clone URL with whatever credentials it holds; the error
    /// is shown with the branch's status.
    #[test]
    fn errors_are_kept_without_credentials_or_control_characters() {
        let error = "clone https://bob:hunter2-9f8e@git.example.com/acme/app.git: fatal: \
                     Authentication failed for 'https://bob:hunter2-9f8e@git.example.com/acme/app.git/'\x1b[0m";
        let safe = safe_error(error);
        assert!(!safe.contains("hunter2"), "{safe}");
        assert!(!safe.contains('\x1b'), "{safe}");
        assert_eq!(
            safe,
            "clone https://***@git.example.com/acme/app.git: fatal: \
             Authentication failed for 'https://***@git.example.com/acme/app.git/' [0m"
        );
        // Userinfo with an @ in it, an ssh URL, a URL without credentials.
        assert_eq!(
            safe_error("ssh://deploy@host:22/r.git and https://a:b@c@d.example/x and http://plain.example/y"),
            "ssh://***@host:22/r.git and https://***@d.example/x and http://plain.example/y"
        );
        assert_eq!(
            safe_error("line one\nline two\r\tend"),
            "line one\nline two  end"
        );
        assert_eq!(
            safe_error(&"é".repeat(5_000)).chars().count(),
            MAX_ERROR_CHARS
        );
        assert_eq!(safe_error("ends with scheme://"), "ends with scheme://");
    }

    #[test]
    fn job_outcome_from_task_counts() {
        assert_eq!(job_outcome(4, 1, 0, 0), ("running", 25));
        assert_eq!(job_outcome(4, 4, 0, 0), ("done", 100));
        assert_eq!(job_outcome(4, 3, 1, 0), ("failed", 100));
        assert_eq!(job_outcome(4, 2, 1, 1), ("cancelled", 100));
        assert_eq!(job_outcome(0, 0, 0, 0), ("done", 100));
    }
}
