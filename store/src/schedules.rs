//! Scheduled total rescans (docs/ARCHITECTURE.md, "Schedules"): the
//! instance's cron expression, and the leader's firing of it, once per
//! occurrence whichever coordinator leads.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::{
    audit,
    jobs::{self, Job, JobScope},
    Result, StoreError,
};

/// Who the scheduled rescans are requested by.
pub const REQUESTER: &str = "schedule";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    pub cron: String,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// A cron expression in UTC: five fields (minute hour day-of-month month
/// day-of-week), or six with seconds first, as croner reads them (names,
/// ranges, steps, lists, `L`, `#`, `W`).
pub fn parse(cron: &str) -> Result<croner::Cron> {
    use std::str::FromStr as _;
    let fields = cron.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(StoreError::Invalid(format!(
            "cron expression {cron:?}: expected 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first"
        )));
    }
    let parsed = croner::Cron::from_str(cron)
        .map_err(|error| StoreError::Invalid(format!("cron expression {cron:?}: {error}")))?;
    // One that never fires is a mistake (e.g. 30 February).
    parsed
        .find_next_occurrence(&Utc::now(), false)
        .map_err(|_| StoreError::Invalid(format!("cron expression {cron:?} never fires")))?;
    Ok(parsed)
}

/// The next time `cron` fires after `after`.
pub fn next_run(cron: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    parse(cron).ok()?.find_next_occurrence(&after, false).ok()
}

pub async fn get(pool: &PgPool) -> Result<Option<Schedule>> {
    Ok(
        sqlx::query_as("select cron, updated_by, updated_at from scan_schedule where id = 1")
            .fetch_optional(pool)
            .await?,
    )
}

/// Sets the schedule (validated), audited.
pub async fn set(pool: &PgPool, actor: &str, cron: &str) -> Result<Schedule> {
    let cron = cron.split_whitespace().collect::<Vec<_>>().join(" ");
    parse(&cron)?;
    let mut transaction = pool.begin().await?;
    let schedule: Schedule = sqlx::query_as(
        "insert into scan_schedule (id, cron, updated_by) values (1, $1, $2)
         on conflict (id) do update set cron = excluded.cron, updated_by = excluded.updated_by, updated_at = now()
         returning cron, updated_by, updated_at",
    )
    .bind(&cron)
    .bind(actor)
    .fetch_one(&mut *transaction)
    .await?;
    audit::record(
        &mut transaction,
        actor,
        "schedule.set",
        "total rescan",
        &serde_json::json!({ "cron": cron }),
    )
    .await?;
    transaction.commit().await?;
    Ok(schedule)
}

/// Removes the schedule; whether there was one.
pub async fn delete(pool: &PgPool, actor: &str) -> Result<bool> {
    let mut transaction = pool.begin().await?;
    let removed = sqlx::query("delete from scan_schedule where id = 1")
        .execute(&mut *transaction)
        .await?
        .rows_affected()
        > 0;
    if removed {
        audit::record(
            &mut transaction,
            actor,
            "schedule.delete",
            "total rescan",
            &serde_json::json!({}),
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(removed)
}

/// What [`fire_due`] did.
#[derive(Debug)]
pub enum Fired {
    /// No occurrence due that was not handled already.
    Nothing,
    /// The occurrence's total rescan (put it on the stream).
    Started(DateTime<Utc>, Box<Job>),
    /// The occurrence was skipped: the previous scheduled rescan still runs.
    Skipped(DateTime<Utc>),
}

/// Handles the schedule's latest occurrence at or before `now`, if it came
/// after the schedule was set and nobody handled it yet: starts a total
/// rescan, or skips it while the previous scheduled one is queued or
/// running. The occurrence's row is the guard: whichever coordinator
/// inserts it acts, in the same transaction, so an occurrence starts at
/// most one rescan across failover. Occurrences missed while no
/// coordinator led collapse into the latest one.
pub async fn fire_due(pool: &PgPool, now: DateTime<Utc>) -> Result<Fired> {
    let Some(schedule) = get(pool).await? else {
        return Ok(Fired::Nothing);
    };
    let cron = parse(&schedule.cron)?;
    let Ok(occurrence) = cron.find_previous_occurrence(&now, true) else {
        return Ok(Fired::Nothing);
    };
    if occurrence <= schedule.updated_at {
        return Ok(Fired::Nothing);
    }
    let mut transaction = pool.begin().await?;
    let claimed: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "insert into scheduled_runs (occurrence, cron) values ($1, $2)
         on conflict (occurrence) do nothing returning occurrence",
    )
    .bind(occurrence)
    .bind(&schedule.cron)
    .fetch_optional(&mut *transaction)
    .await?;
    if claimed.is_none() {
        return Ok(Fired::Nothing);
    }
    let (previous_runs,): (bool,) = sqlx::query_as(
        "select exists (select 1 from scheduled_runs r join scan_jobs j on j.id = r.job_id
                        where j.state in ('queued', 'running'))",
    )
    .fetch_one(&mut *transaction)
    .await?;
    if previous_runs {
        sqlx::query("update scheduled_runs set skipped = true where occurrence = $1")
            .bind(occurrence)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        return Ok(Fired::Skipped(occurrence));
    }
    let job = jobs::create_job_with(&mut *transaction, &JobScope::Total, REQUESTER, &[]).await?;
    sqlx::query("update scheduled_runs set job_id = $2 where occurrence = $1")
        .bind(occurrence)
        .bind(job.id)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    Ok(Fired::Started(occurrence, Box::new(job)))
}
