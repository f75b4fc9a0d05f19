//! Findings: written idempotently (a retried batch adds nothing), the
//! secret encrypted, and linked to every branch they were found on.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    catalog::RepoId,
    secrets::{redact, SecretBox},
    Result,
};

/// A finding as a worker reports it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewFinding {
    pub rule_id: String,
    pub rule_name: String,
    pub severity: String,
    pub commit: String,
    pub path: String,
    pub line: Option<i32>,
    pub author: String,
    pub author_email: String,
    pub commit_date: Option<DateTime<Utc>>,
    pub secret: Vec<u8>,
    /// `HIGH`, `MEDIUM` or `LOW` (None: the worker did not say).
    pub confidence: Option<String>,
}

impl std::fmt::Debug for NewFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewFinding")
            .field("rule_id", &self.rule_id)
            .field("commit", &self.commit)
            .field("path", &self.path)
            .field("line", &self.line)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .finish()
    }
}

/// Records a batch that scan task `task` found on `branch` of `repository`;
/// returns how many findings were new. Recording the same batch again
/// changes nothing.
pub async fn record_findings(
    pool: &PgPool,
    secrets: &SecretBox,
    repository: RepoId,
    branch: &str,
    task: i64,
    findings: &[NewFinding],
) -> Result<u64> {
    let mut transaction = pool.begin().await?;
    let inserted = insert_findings(
        &mut transaction,
        secrets,
        repository,
        branch,
        task,
        findings,
    )
    .await?;
    transaction.commit().await?;
    Ok(inserted)
}

/// Records a batch for the scan task `task` leased as `lease_id`, in the
/// transaction that checks the lease: the task's row is locked (shared)
/// first, so a lease that expires or is taken over meanwhile either waits
/// for this write or makes it fail; a worker that lost its lease never
/// writes findings.
pub async fn record_task_findings(
    pool: &PgPool,
    secrets: &SecretBox,
    task: crate::tasks::TaskId,
    lease_id: &str,
    findings: &[NewFinding],
) -> Result<u64> {
    let mut transaction = pool.begin().await?;
    let (repository, branch): (RepoId, String) = sqlx::query_as(
        "select repository_id, branch from scan_tasks
         where id = $1 and lease_id = $2 and state = 'leased' for share",
    )
    .bind(task)
    .bind(lease_id)
    .fetch_optional(&mut *transaction)
    .await?
    .ok_or_else(|| crate::tasks::lease_lost(task))?;
    let inserted = insert_findings(
        &mut transaction,
        secrets,
        repository,
        &branch,
        task.0,
        findings,
    )
    .await?;
    transaction.commit().await?;
    Ok(inserted)
}

async fn insert_findings(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    secrets: &SecretBox,
    repository: RepoId,
    branch: &str,
    task: i64,
    findings: &[NewFinding],
) -> Result<u64> {
    let transaction = &mut **transaction;
    let key = secrets.active_key(transaction).await?;
    let mut inserted = 0;
    for finding in findings {
        let fingerprint = secrets.fingerprint(&finding.rule_id, &finding.secret);
        let ciphertext = key.seal(&finding.secret);
        // A row stored before reviews existed gets its secret hash here.
        let (id, new): (i64, bool) = sqlx::query_as(
            "insert into findings (repository_id, rule_id, rule_name, severity, commit, path, line, author,
                 author_email, commit_date, fingerprint, redacted, secret_key_id, secret_ciphertext, secret_hash,
                 confidence)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
             on conflict (repository_id, commit, path, rule_id, fingerprint)
             do update set secret_hash = coalesce(findings.secret_hash, excluded.secret_hash),
                           confidence = coalesce(excluded.confidence, findings.confidence)
             returning id, (xmax = 0) as new",
        )
        .bind(repository)
        .bind(&finding.rule_id)
        .bind(&finding.rule_name)
        .bind(&finding.severity)
        .bind(&finding.commit)
        .bind(&finding.path)
        .bind(finding.line)
        .bind(&finding.author)
        .bind(&finding.author_email)
        .bind(finding.commit_date)
        .bind(&fingerprint)
        .bind(redact(&finding.secret))
        .bind(key.id())
        .bind(&ciphertext)
        .bind(secrets.secret_hash(&finding.secret))
        .bind(finding.confidence.as_deref())
        .fetch_one(&mut *transaction)
        .await?;
        if new {
            inserted += 1;
        }
        sqlx::query(
            "insert into finding_branches (finding_id, branch, task_id) values ($1, $2, $3)
             on conflict (finding_id, branch) do update set task_id = excluded.task_id",
        )
        .bind(id)
        .bind(branch)
        .bind(task)
        .execute(&mut *transaction)
        .await?;
    }
    Ok(inserted)
}

/// After a full scan of `branch` by `task`: the branch keeps only the
/// findings that task reported (a rule switched off, an allowlist added or a
/// review of a rule that changed takes the others away); findings left on no
/// branch are deleted. Returns how many links went.
pub async fn keep_only_task_findings(
    transaction: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    repository: RepoId,
    branch: &str,
    task: i64,
) -> Result<u64> {
    let removed = sqlx::query(
        "delete from finding_branches fb using findings f
         where fb.finding_id = f.id and f.repository_id = $1 and fb.branch = $2
           and fb.task_id is distinct from $3",
    )
    .bind(repository)
    .bind(branch)
    .bind(task)
    .execute(&mut **transaction)
    .await?
    .rows_affected();
    if removed > 0 {
        sqlx::query(
            "delete from findings f where f.repository_id = $1
             and not exists (select 1 from finding_branches fb where fb.finding_id = f.id)",
        )
        .bind(repository)
        .execute(&mut **transaction)
        .await?;
    }
    Ok(removed)
}

/// A stored finding with its secret decrypted (for exports that may show it).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredFinding {
    pub id: i64,
    pub rule_id: String,
    pub commit: String,
    pub path: String,
    pub line: Option<i32>,
    pub fingerprint: String,
    pub redacted: String,
}

/// The findings of a repository on a branch, oldest first.
pub async fn branch_findings(
    pool: &PgPool,
    repository: RepoId,
    branch: &str,
) -> Result<Vec<StoredFinding>> {
    Ok(sqlx::query_as::<_, StoredFinding>(
        "select f.id, f.rule_id, f.commit, f.path, f.line, f.fingerprint, f.redacted
         from findings f join finding_branches b on b.finding_id = f.id
         where f.repository_id = $1 and b.branch = $2
         order by f.commit_date nulls first, f.path, f.line, f.rule_id",
    )
    .bind(repository)
    .bind(branch)
    .fetch_all(pool)
    .await?)
}

/// Decrypts one finding's secret.
pub async fn reveal_secret(pool: &PgPool, secrets: &SecretBox, finding: i64) -> Result<Vec<u8>> {
    let (key_id, ciphertext): (i32, Vec<u8>) =
        sqlx::query_as("select secret_key_id, secret_ciphertext from findings where id = $1")
            .bind(finding)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| crate::StoreError::NotFound(format!("finding {finding}")))?;
    secrets.decrypt(pool, key_id, &ciphertext).await
}

/// A finding as the REST API shows it (DESIGN §4 field names; the secret
/// redacted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ReportedFinding {
    /// What a review names (`findingId`).
    pub id: i64,
    pub rule: String,
    pub rule_name: String,
    pub severity: String,
    pub project: String,
    pub repository: String,
    pub branch: String,
    pub commit: String,
    pub path: String,
    pub line: Option<i32>,
    pub author: String,
    pub author_email: String,
    pub commit_date: Option<DateTime<Utc>>,
    pub scan_date: DateTime<Utc>,
    pub secret: String,
    pub fingerprint: String,
    pub reviewed: bool,
    /// `HIGH`, `MEDIUM` or `LOW` (added after DESIGN §4's fields).
    pub confidence: String,
}

/// Whether any finding of `repository` names `rule` as its rule id or rule
/// name (on any branch, reviewed or not).
pub async fn repository_has_rule(pool: &PgPool, repository: RepoId, rule: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from findings
                        where repository_id = $1 and (rule_id = $2 or rule_name = $2))",
    )
    .bind(repository)
    .bind(rule)
    .fetch_one(pool)
    .await?)
}

/// The findings of `branch` of `repository` as the API reports them,
/// optionally only those of one rule; reviewed ones only when asked for.
pub async fn reported_findings(
    pool: &PgPool,
    repository: RepoId,
    branch: &str,
    rule: Option<&str>,
    include_reviewed: bool,
) -> Result<Vec<ReportedFinding>> {
    use futures::TryStreamExt as _;
    let filter = ExportFilter {
        repository: Some(repository),
        branch: Some(branch.to_string()),
        rule: rule.map(str::to_string),
        include_reviewed,
        ..ExportFilter::default()
    };
    Ok(export_findings(pool, &filter).try_collect().await?)
}

/// One project's scan state, for dashboards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ProjectSummary {
    pub project: String,
    pub repositories: i64,
    pub branches: i64,
    /// Branches whose last scan covered their current head.
    pub branches_scanned: i64,
    pub findings: i64,
}

/// Every project's counts, by key (projects with no repository included).
pub async fn project_summaries(pool: &PgPool) -> Result<Vec<ProjectSummary>> {
    Ok(sqlx::query_as::<_, ProjectSummary>(
        "select p.key as project,
                (select count(*) from repositories r where r.project_id = p.id) as repositories,
                (select count(*) from branches b join repositories r on r.id = b.repository_id
                 where r.project_id = p.id) as branches,
                (select count(*) from branches b join repositories r on r.id = b.repository_id
                 where r.project_id = p.id and b.last_scanned_commit = b.head_commit) as branches_scanned,
                (select count(*) from findings f join repositories r on r.id = f.repository_id
                 where r.project_id = p.id) as findings
         from projects p order by p.key",
    )
    .fetch_all(pool)
    .await?)
}

/// One branch's scan state, for dashboards.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BranchSummary {
    pub repository_id: RepoId,
    pub slug: String,
    pub branch: String,
    pub head_commit: String,
    pub last_scanned_commit: Option<String>,
    pub last_scanned_base: Option<String>,
    /// Findings not hidden by a review.
    pub findings: i64,
    /// The state of the branch's newest task (`None`: never scanned).
    pub task_state: Option<String>,
}

/// Every branch of a project's repositories (or of one repository), by
/// repository slug and branch name.
pub async fn branch_summaries(
    pool: &PgPool,
    project_key: &str,
    repository: Option<RepoId>,
) -> Result<Vec<BranchSummary>> {
    Ok(sqlx::query_as::<_, BranchSummary>(
        "select r.id as repository_id, r.slug, b.name as branch, b.head_commit, b.last_scanned_commit,
                b.last_scanned_base,
                (select count(*) from findings f join finding_branches fb on fb.finding_id = f.id
                 where f.repository_id = r.id and fb.branch = b.name
                   and not exists (select 1 from reviews v where v.secret_hash = f.secret_hash
                                   and (v.repository_id is null or v.repository_id = r.id))) as findings,
                (select t.state from scan_tasks t where t.repository_id = r.id and t.branch = b.name
                 order by t.id desc limit 1) as task_state
         from repositories r join projects p on p.id = r.project_id
         join branches b on b.repository_id = r.id
         where p.key = $1 and ($2::bigint is null or r.id = $2)
         order by r.slug, b.name",
    )
    .bind(project_key)
    .bind(repository)
    .fetch_all(pool)
    .await?)
}

/// SQL: finding `f` is reviewed (its secret is marked a false positive in
/// its repository or everywhere). Every query that hides or flags reviewed
/// findings uses this one condition.
pub(crate) const REVIEWED: &str =
    "exists (select 1 from reviews v where v.secret_hash = f.secret_hash
     and (v.repository_id is null or v.repository_id = f.repository_id))";

/// Which findings an export holds. A finding on several branches is one
/// row per branch (only `branch`'s when given).
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Only this project's repositories (`None`: any project).
    pub project_key: Option<String>,
    pub repository: Option<RepoId>,
    pub branch: Option<String>,
    /// A rule id or name.
    pub rule: Option<String>,
    pub include_reviewed: bool,
    /// Scan date (when the finding was first found) at or after: Soteri's
    /// `startDate` selects the lines scanned in a period.
    pub start: Option<DateTime<Utc>>,
    /// Scan date before.
    pub end: Option<DateTime<Utc>>,
    /// Only repositories this user may read (`None`: all).
    pub viewer: Option<crate::users::UserId>,
}

/// The findings of an export, streamed from the database in (repository,
/// branch, commit date, path, line) order: memory stays constant whatever
/// their number.
pub fn export_findings<'a>(
    pool: &'a PgPool,
    filter: &'a ExportFilter,
) -> futures::stream::BoxStream<'a, Result<ReportedFinding, sqlx::Error>> {
    sqlx::query_as::<_, ReportedFinding>(sqlx::AssertSqlSafe(format!(
        "select * from (
             select f.id, f.rule_id as rule, f.rule_name, f.severity, p.key as project, r.slug as repository,
                    b.branch, f.commit, f.path, f.line, f.author, f.author_email, f.commit_date, f.scan_date,
                    f.redacted as secret, f.fingerprint, {REVIEWED} as reviewed,
                    coalesce(f.confidence, 'MEDIUM') as confidence
             from findings f
             join finding_branches b on b.finding_id = f.id
             join repositories r on r.id = f.repository_id
             join projects p on p.id = r.project_id
             where ($1::text is null or p.key = $1) and ($2::bigint is null or r.id = $2) and ($3::text is null or b.branch = $3)
               and ($4::text is null or f.rule_id = $4 or f.rule_name = $4)
               and ($5::timestamptz is null or f.scan_date >= $5)
               and ($6::timestamptz is null or f.scan_date < $6)
               and {visible}
         ) exported
         where $8 or not reviewed
         order by repository, branch, commit_date nulls first, path, line, rule, id",
        visible = crate::users::readable_by("$7", "p", "r")
    )))
    .bind(&filter.project_key)
    .bind(filter.repository)
    .bind(filter.branch.as_deref())
    .bind(filter.rule.as_deref())
    .bind(filter.start)
    .bind(filter.end)
    .bind(filter.viewer.map(|user| user.0))
    .bind(filter.include_reviewed)
    .fetch(pool)
}
