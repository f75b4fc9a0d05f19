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

/// Records a batch for `branch` of `repository`; returns how many findings
/// were new. Recording the same batch again changes nothing.
pub async fn record_findings(
    pool: &PgPool,
    secrets: &SecretBox,
    repository: RepoId,
    branch: &str,
    findings: &[NewFinding],
) -> Result<u64> {
    let mut transaction = pool.begin().await?;
    let mut inserted = 0;
    for finding in findings {
        let fingerprint = secrets.fingerprint(&finding.rule_id, &finding.secret);
        let (key_id, ciphertext) = secrets.encrypt(&finding.secret);
        let id: Option<i64> = sqlx::query_scalar(
            "insert into findings (repository_id, rule_id, rule_name, severity, commit, path, line, author,
                 author_email, commit_date, fingerprint, redacted, secret_key_id, secret_ciphertext)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             on conflict (repository_id, commit, path, rule_id, fingerprint) do nothing
             returning id",
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
        .bind(key_id)
        .bind(&ciphertext)
        .fetch_optional(&mut *transaction)
        .await?;
        let id = match id {
            Some(id) => {
                inserted += 1;
                id
            }
            None => {
                sqlx::query_scalar(
                    "select id from findings
                     where repository_id = $1 and commit = $2 and path = $3 and rule_id = $4 and fingerprint = $5",
                )
                .bind(repository)
                .bind(&finding.commit)
                .bind(&finding.path)
                .bind(&finding.rule_id)
                .bind(&fingerprint)
                .fetch_one(&mut *transaction)
                .await?
            }
        };
        sqlx::query("insert into finding_branches (finding_id, branch) values ($1, $2) on conflict do nothing")
            .bind(id)
            .bind(branch)
            .execute(&mut *transaction)
            .await?;
    }
    transaction.commit().await?;
    Ok(inserted)
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
