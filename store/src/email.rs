//! The e-mail outbox (docs/ARCHITECTURE.md, "E-mail"): a row per address
//! of a job that ended, claimed by the leader with a row lock held while it
//! talks to the SMTP server, so a coordinator that dies mid-send leaves the
//! row to the next leader and a sent message is marked in the same
//! transaction that claimed it.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::{
    jobs::{self, Job, JobId},
    Result,
};

/// Attempts before a message is given up (its row stays, `failed`).
pub const MAX_ATTEMPTS: i32 = 8;

/// One message to send, claimed: the row is locked until [`Claimed::sent`]
/// or [`Claimed::failed`] (or the claim is dropped, which releases it).
pub struct Claimed {
    transaction: Transaction<'static, Postgres>,
    pub id: i64,
    pub address: String,
    pub attempts: i32,
    pub job: Job,
}

/// The next due message nobody else holds, if any.
pub async fn claim_next(pool: &PgPool) -> Result<Option<Claimed>> {
    let mut transaction = pool.begin().await?;
    let row: Option<(i64, i64, String, i32)> = sqlx::query_as(
        "select id, job_id, address, attempts from email_outbox
         where state = 'pending' and next_attempt_at <= now()
         order by next_attempt_at, id limit 1
         for update skip locked",
    )
    .fetch_optional(&mut *transaction)
    .await?;
    let Some((id, job_id, address, attempts)) = row else {
        return Ok(None);
    };
    let job = jobs::job(pool, JobId(job_id)).await?;
    Ok(Some(Claimed {
        transaction,
        id,
        address,
        attempts,
        job,
    }))
}

impl Claimed {
    pub async fn sent(mut self) -> Result<()> {
        sqlx::query("update email_outbox set state = 'sent', sent_at = now(), attempts = attempts + 1, last_error = null where id = $1")
            .bind(self.id)
            .execute(&mut *self.transaction)
            .await?;
        self.transaction.commit().await?;
        Ok(())
    }

    /// Records a failed attempt: retried after `backoff`, given up after
    /// [`MAX_ATTEMPTS`].
    pub async fn failed(mut self, error: &str, backoff: std::time::Duration) -> Result<()> {
        let error: String = error.chars().take(1000).collect();
        sqlx::query(
            "update email_outbox set attempts = attempts + 1, last_error = $2,
                 state = case when attempts + 1 >= $3 then 'failed' else 'pending' end,
                 next_attempt_at = now() + make_interval(secs => $4)
             where id = $1",
        )
        .bind(self.id)
        .bind(error)
        .bind(MAX_ATTEMPTS)
        .bind(backoff.as_secs_f64())
        .execute(&mut *self.transaction)
        .await?;
        self.transaction.commit().await?;
        Ok(())
    }
}

/// A finding a job reported for the first time, as a summary lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NewFinding {
    pub project_key: String,
    pub slug: String,
    pub branch: String,
    pub path: String,
    pub line: Option<i32>,
    pub rule_name: String,
    pub severity: String,
    pub redacted: String,
}

/// What a job's summary says of its findings: counts of new ones by
/// severity, and the first `limit` of them (most severe first).
pub async fn new_findings(
    pool: &PgPool,
    job: &Job,
    limit: i64,
) -> Result<(Vec<(String, i64)>, Vec<NewFinding>)> {
    let listed: Vec<NewFinding> = sqlx::query_as(
        "select distinct on (f.id) p.key as project_key, r.slug, fb.branch, f.path, f.line, f.rule_name,
                f.severity, f.redacted
         from findings f
         join finding_branches fb on fb.finding_id = f.id
         join scan_tasks t on t.id = fb.task_id
         join repositories r on r.id = f.repository_id
         join projects p on p.id = r.project_id
         where t.job_id = $1 and f.scan_date >= $2
         order by f.id",
    )
    .bind(job.id)
    .bind(job.created_at)
    .fetch_all(pool)
    .await?;
    let mut listed = listed;
    let rank = |severity: &str| match severity {
        "CRITICAL" => 0,
        "HIGH" => 1,
        "MEDIUM" => 2,
        _ => 3,
    };
    listed.sort_by(|a, b| {
        rank(&a.severity).cmp(&rank(&b.severity)).then_with(|| {
            (&a.project_key, &a.slug, &a.path).cmp(&(&b.project_key, &b.slug, &b.path))
        })
    });
    // Counted over the whole list before it is cut to `limit`; sorted by
    // severity, so equal severities are neighbours.
    let mut counts: Vec<(String, i64)> = Vec::new();
    for finding in &listed {
        match counts.last_mut() {
            Some((severity, count)) if *severity == finding.severity => *count += 1,
            _ => counts.push((finding.severity.clone(), 1)),
        }
    }
    listed.truncate(limit.max(0) as usize);
    Ok((counts, listed))
}

/// The outbox rows of a job: (address, state, attempts, sent at).
pub async fn job_outbox(
    pool: &PgPool,
    job: JobId,
) -> Result<Vec<(String, String, i32, Option<DateTime<Utc>>)>> {
    Ok(sqlx::query_as(
        "select address, state, attempts, sent_at from email_outbox where job_id = $1 order by address",
    )
    .bind(job)
    .fetch_all(pool)
    .await?)
}
