//! Code Insights: reports on commits and their annotations. leakscan writes
//! a `SECURITY` report on a branch's head commit when a scan of the branch
//! completes ([`write_scan_report`], in the completion's transaction); other
//! tools may store theirs through the API. The gateway validates every
//! field and speaks both the Cloud and the Data Center shapes; this module
//! only stores them.

use chrono::{DateTime, Utc};
use sqlx::{types::Json, PgPool, Postgres, Transaction};

use crate::{
    catalog::RepoId,
    findings::REVIEWED,
    page::{Page, PageRequest},
    Result, StoreError,
};

/// Most annotations one report holds.
pub const MAX_ANNOTATIONS_PER_REPORT: i64 = 1000;
/// Most annotations one bulk request may carry.
pub const MAX_ANNOTATIONS_PER_REQUEST: usize = 100;
/// The key of the report leakscan writes on scanned commits.
pub const SCAN_REPORT_KEY: &str = "leakscan-secrets";
/// Longest annotation summary.
pub const MAX_SUMMARY_CHARS: usize = 450;

/// A stored report.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Report {
    pub id: i64,
    pub commit: String,
    pub report_key: String,
    pub uuid: String,
    pub title: String,
    pub details: Option<String>,
    pub report_type: Option<String>,
    pub result: Option<String>,
    pub reporter: Option<String>,
    pub link: Option<String>,
    pub logo_url: Option<String>,
    pub remote_link_enabled: Option<bool>,
    /// `[{title, type, value}]`
    pub data: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A report as a client puts it (already validated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewReport {
    pub title: String,
    pub details: Option<String>,
    pub report_type: Option<String>,
    pub result: Option<String>,
    pub reporter: Option<String>,
    pub link: Option<String>,
    pub logo_url: Option<String>,
    pub remote_link_enabled: Option<bool>,
    pub data: serde_json::Value,
}

/// A stored annotation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Annotation {
    pub id: i64,
    pub report_key: String,
    pub external_id: String,
    pub uuid: String,
    pub annotation_type: String,
    pub path: Option<String>,
    pub line: Option<i32>,
    pub summary: String,
    pub details: Option<String>,
    pub result: Option<String>,
    pub severity: Option<String>,
    pub link: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An annotation as a client puts it (already validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAnnotation {
    pub external_id: String,
    pub annotation_type: String,
    pub path: Option<String>,
    pub line: Option<i32>,
    pub summary: String,
    pub details: Option<String>,
    pub result: Option<String>,
    pub severity: Option<String>,
    pub link: Option<String>,
}

const REPORT_COLUMNS: &str =
    "id, commit, report_key, uuid::text as uuid, title, details, report_type, result,
     reporter, link, logo_url, remote_link_enabled, data, created_at, updated_at";

const ANNOTATION_COLUMNS: &str = "a.id, r.report_key, a.external_id, a.uuid::text as uuid, a.annotation_type,
     a.path, a.line, a.summary, a.details, a.result, a.severity, a.link, a.created_at, a.updated_at";

/// A report or annotation id in a path: its key / external id, or its uuid
/// with or without braces (as Bitbucket Cloud accepts either).
fn uuid_form(id: &str) -> String {
    id.trim_start_matches('{')
        .trim_end_matches('}')
        .to_ascii_lowercase()
}

/// Creates or replaces report `key` on `commit`; returns it and whether it
/// is new. `clear_annotations`: a replaced report loses its annotations (as
/// Data Center does; Cloud keeps them).
pub async fn put_report(
    pool: &PgPool,
    repository: RepoId,
    commit: &str,
    key: &str,
    report: &NewReport,
    clear_annotations: bool,
) -> Result<(Report, bool)> {
    let mut transaction = pool.begin().await?;
    let (report, created) =
        upsert_report(&mut transaction, repository, commit, key, report).await?;
    if clear_annotations && !created {
        sqlx::query("delete from insight_annotations where report_id = $1")
            .bind(report.id)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok((report, created))
}

async fn upsert_report(
    transaction: &mut Transaction<'_, Postgres>,
    repository: RepoId,
    commit: &str,
    key: &str,
    report: &NewReport,
) -> Result<(Report, bool)> {
    let (id, created): (i64, bool) = sqlx::query_as(
        "insert into insight_reports (repository_id, commit, report_key, title, details, report_type, result,
             reporter, link, logo_url, remote_link_enabled, data)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         on conflict (repository_id, commit, report_key) do update set
             title = excluded.title, details = excluded.details, report_type = excluded.report_type,
             result = excluded.result, reporter = excluded.reporter, link = excluded.link,
             logo_url = excluded.logo_url, remote_link_enabled = excluded.remote_link_enabled,
             data = excluded.data, updated_at = now()
         returning id, (xmax = 0) as created",
    )
    .bind(repository)
    .bind(commit)
    .bind(key)
    .bind(&report.title)
    .bind(&report.details)
    .bind(&report.report_type)
    .bind(&report.result)
    .bind(&report.reporter)
    .bind(&report.link)
    .bind(&report.logo_url)
    .bind(report.remote_link_enabled)
    .bind(Json(&report.data))
    .fetch_one(&mut **transaction)
    .await?;
    let report = sqlx::query_as::<_, Report>(sqlx::AssertSqlSafe(format!(
        "select {REPORT_COLUMNS} from insight_reports where id = $1"
    )))
    .bind(id)
    .fetch_one(&mut **transaction)
    .await?;
    Ok((report, created))
}

/// Report `id` (key or uuid) on `commit`.
pub async fn get_report(
    pool: &PgPool,
    repository: RepoId,
    commit: &str,
    id: &str,
) -> Result<Option<Report>> {
    Ok(sqlx::query_as::<_, Report>(sqlx::AssertSqlSafe(format!(
        "select {REPORT_COLUMNS} from insight_reports
         where repository_id = $1 and commit = $2 and (report_key = $3 or uuid::text = $4)"
    )))
    .bind(repository)
    .bind(commit)
    .bind(id)
    .bind(uuid_form(id))
    .fetch_optional(pool)
    .await?)
}

/// The reports on `commit`, oldest first, and how many there are.
pub async fn list_reports(
    pool: &PgPool,
    repository: RepoId,
    commit: &str,
    page: PageRequest,
) -> Result<(Page<Report>, i64)> {
    let rows = sqlx::query_as::<_, Report>(sqlx::AssertSqlSafe(format!(
        "select {REPORT_COLUMNS} from insight_reports where repository_id = $1 and commit = $2
         order by created_at, id offset $3 limit $4"
    )))
    .bind(repository)
    .bind(commit)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "select count(*) from insight_reports where repository_id = $1 and commit = $2",
    )
    .bind(repository)
    .bind(commit)
    .fetch_one(pool)
    .await?;
    Ok((page.page(rows), total))
}

/// Deletes a report and its annotations; false when there was none.
pub async fn delete_report(pool: &PgPool, report: i64) -> Result<bool> {
    Ok(sqlx::query("delete from insight_reports where id = $1")
        .bind(report)
        .execute(pool)
        .await?
        .rows_affected()
        > 0)
}

/// Creates or updates annotations (by external id) of `report`, all or
/// none: a report may not end up with more than
/// [`MAX_ANNOTATIONS_PER_REPORT`].
pub async fn put_annotations(
    pool: &PgPool,
    report: i64,
    annotations: &[NewAnnotation],
) -> Result<Vec<Annotation>> {
    let mut transaction = pool.begin().await?;
    // Concurrent posts to one report count one after the other.
    sqlx::query("select 1 from insight_reports where id = $1 for update")
        .bind(report)
        .fetch_optional(&mut *transaction)
        .await?
        .ok_or_else(|| StoreError::NotFound("report".into()))?;
    let stored = upsert_annotations(&mut transaction, report, annotations).await?;
    let count: i64 =
        sqlx::query_scalar("select count(*) from insight_annotations where report_id = $1")
            .bind(report)
            .fetch_one(&mut *transaction)
            .await?;
    if count > MAX_ANNOTATIONS_PER_REPORT {
        return Err(StoreError::Invalid(format!(
            "a report holds at most {MAX_ANNOTATIONS_PER_REPORT} annotations; this would make {count}"
        )));
    }
    transaction.commit().await?;
    Ok(stored)
}

async fn upsert_annotations(
    transaction: &mut Transaction<'_, Postgres>,
    report: i64,
    annotations: &[NewAnnotation],
) -> Result<Vec<Annotation>> {
    let column = |get: fn(&NewAnnotation) -> Option<String>| -> Vec<Option<String>> {
        annotations.iter().map(get).collect()
    };
    let ids: Vec<i64> = sqlx::query_scalar(
        "insert into insight_annotations (report_id, external_id, annotation_type, path, line, summary,
             details, result, severity, link)
         select $1, * from unnest($2::text[], $3::text[], $4::text[], $5::integer[], $6::text[],
             $7::text[], $8::text[], $9::text[], $10::text[])
         on conflict (report_id, external_id) do update set
             annotation_type = excluded.annotation_type, path = excluded.path, line = excluded.line,
             summary = excluded.summary, details = excluded.details, result = excluded.result,
             severity = excluded.severity, link = excluded.link, updated_at = now()
         returning id",
    )
    .bind(report)
    .bind(column(|a| Some(a.external_id.clone())))
    .bind(column(|a| Some(a.annotation_type.clone())))
    .bind(column(|a| a.path.clone()))
    .bind(annotations.iter().map(|a| a.line).collect::<Vec<_>>())
    .bind(column(|a| Some(a.summary.clone())))
    .bind(column(|a| a.details.clone()))
    .bind(column(|a| a.result.clone()))
    .bind(column(|a| a.severity.clone()))
    .bind(column(|a| a.link.clone()))
    .fetch_all(&mut **transaction)
    .await
    .map_err(|error| match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("21000") => {
            StoreError::Invalid("an external id appears twice in one request".into())
        }
        _ => StoreError::from(error),
    })?;
    Ok(sqlx::query_as::<_, Annotation>(sqlx::AssertSqlSafe(format!(
        "select {ANNOTATION_COLUMNS} from insight_annotations a join insight_reports r on r.id = a.report_id
         where a.id = any($1) order by a.id"
    )))
    .bind(&ids)
    .fetch_all(&mut **transaction)
    .await?)
}

/// Annotation `id` (external id or uuid) of `report`.
pub async fn get_annotation(pool: &PgPool, report: i64, id: &str) -> Result<Option<Annotation>> {
    Ok(sqlx::query_as::<_, Annotation>(sqlx::AssertSqlSafe(format!(
        "select {ANNOTATION_COLUMNS} from insight_annotations a join insight_reports r on r.id = a.report_id
         where a.report_id = $1 and (a.external_id = $2 or a.uuid::text = $3)"
    )))
    .bind(report)
    .bind(id)
    .bind(uuid_form(id))
    .fetch_optional(pool)
    .await?)
}

/// A report's annotations, in the order they were made, and how many there are.
pub async fn list_annotations(
    pool: &PgPool,
    report: i64,
    page: PageRequest,
) -> Result<(Page<Annotation>, i64)> {
    let rows = sqlx::query_as::<_, Annotation>(sqlx::AssertSqlSafe(format!(
        "select {ANNOTATION_COLUMNS} from insight_annotations a join insight_reports r on r.id = a.report_id
         where a.report_id = $1 order by a.id offset $2 limit $3"
    )))
    .bind(report)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    let total: i64 =
        sqlx::query_scalar("select count(*) from insight_annotations where report_id = $1")
            .bind(report)
            .fetch_one(pool)
            .await?;
    Ok((page.page(rows), total))
}

/// Deletes annotations of `report`: those with the given external ids or
/// uuids, or all of them. Returns how many went.
pub async fn delete_annotations(pool: &PgPool, report: i64, ids: Option<&[String]>) -> Result<u64> {
    let uuids: Option<Vec<String>> = ids.map(|ids| ids.iter().map(|id| uuid_form(id)).collect());
    Ok(sqlx::query(
        "delete from insight_annotations where report_id = $1
             and ($2::text[] is null or external_id = any($2) or uuid::text = any($3))",
    )
    .bind(report)
    .bind(ids)
    .bind(uuids)
    .execute(pool)
    .await?
    .rows_affected())
}

/// leakscan's own report after a branch scan: on the head commit, `FAILED`
/// with one `VULNERABILITY` annotation per unreviewed finding of the branch
/// (the most severe and newest first, at most
/// [`MAX_ANNOTATIONS_PER_REPORT`]), `PASSED` without. Replaces the report
/// an earlier scan of that commit wrote.
pub async fn write_scan_report(
    transaction: &mut Transaction<'_, Postgres>,
    repository: RepoId,
    branch: &str,
    head_commit: &str,
    duration_ms: i64,
) -> Result<()> {
    let findings: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "select count(*) from findings f join finding_branches b on b.finding_id = f.id
         where f.repository_id = $1 and b.branch = $2 and not {REVIEWED}"
    )))
    .bind(repository)
    .bind(branch)
    .fetch_one(&mut **transaction)
    .await?;
    let shown = findings.min(MAX_ANNOTATIONS_PER_REPORT);
    let details = if findings == 0 {
        format!("No secrets found on branch {branch}.")
    } else if findings > shown {
        format!(
            "{findings} secrets found on branch {branch}; the {shown} most severe and newest are annotated. Rotate every exposed credential, then remove it from the code."
        )
    } else {
        format!(
            "{findings} secrets found on branch {branch}. Rotate every exposed credential, then remove it from the code."
        )
    };
    let report = NewReport {
        title: "leakscan secret scan".into(),
        details: Some(details),
        report_type: Some("SECURITY".into()),
        result: Some(if findings == 0 { "PASSED" } else { "FAILED" }.into()),
        reporter: Some("leakscan".into()),
        data: serde_json::json!([
            {"title": "Findings", "type": "NUMBER", "value": findings},
            {"title": "Duration", "type": "DURATION", "value": duration_ms},
            {"title": "Safe to merge", "type": "BOOLEAN", "value": findings == 0},
        ]),
        ..NewReport::default()
    };
    let (stored, _) = upsert_report(
        transaction,
        repository,
        head_commit,
        SCAN_REPORT_KEY,
        &report,
    )
    .await?;
    sqlx::query("delete from insight_annotations where report_id = $1")
        .bind(stored.id)
        .execute(&mut **transaction)
        .await?;
    // The summary names the rule and the redacted secret only.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into insight_annotations (report_id, external_id, annotation_type, path, line, summary,
             details, result, severity)
         select $1, 'leakscan-' || f.fingerprint || '-' || f.id, 'VULNERABILITY', f.path, f.line,
                left(f.rule_name || ': ' || f.redacted || ' committed in ' || left(f.commit, 12), $5),
                'Rule ' || f.rule_id || ', introduced in commit ' || f.commit
                    || coalesce(' by ' || nullif(f.author, ''), '')
                    || coalesce(' on ' || to_char(f.commit_date at time zone 'UTC', 'YYYY-MM-DD'), '')
                    || '. Fingerprint ' || f.fingerprint || '.',
                'FAILED', f.severity
         from findings f join finding_branches b on b.finding_id = f.id
         where f.repository_id = $2 and b.branch = $3 and not {REVIEWED}
         order by case f.severity when 'CRITICAL' then 0 when 'HIGH' then 1 when 'MEDIUM' then 2 else 3 end,
                  f.commit_date desc nulls last, f.id
         limit $4"
    )))
    .bind(stored.id)
    .bind(repository)
    .bind(branch)
    .bind(MAX_ANNOTATIONS_PER_REPORT)
    .bind(MAX_SUMMARY_CHARS as i32)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}
