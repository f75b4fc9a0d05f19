//! Reviews: a secret marked a false positive, for one repository or for the
//! whole instance. A review matches by the keyed hash of the secret alone,
//! so every finding of that string (any rule, any file, now or in later
//! scans) is hidden unless the caller asks for reviewed findings too.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool};

use crate::{
    audit,
    catalog::RepoId,
    page::{Page, PageRequest},
    Result, StoreError,
};

/// Which finding a review is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewTarget {
    Finding(i64),
    Fingerprint(String),
}

/// A review as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    pub id: i64,
    /// `GLOBAL` or `REPOSITORY`.
    pub scope: String,
    pub project: Option<String>,
    pub repository: Option<String>,
    pub rule: String,
    /// Redacted.
    pub secret: String,
    pub comment: String,
    pub reviewed_by: String,
    pub reviewed_date: DateTime<Utc>,
    #[serde(skip)]
    pub repository_id: Option<RepoId>,
    /// The keyed hash the review matches (what a reviews export carries
    /// so that importing it again makes the same review).
    #[serde(skip)]
    pub secret_hash: String,
}

const REVIEW_SELECT: &str = "select v.id, case when v.repository_id is null then 'GLOBAL' else 'REPOSITORY' end as scope,
        p.key as project, r.slug as repository, v.rule_id as rule, v.redacted as secret, v.comment,
        v.created_by as reviewed_by, v.created_at as reviewed_date, v.repository_id, v.secret_hash
 from reviews v left join repositories r on r.id = v.repository_id left join projects p on p.id = r.project_id ";

/// A review to record: the keyed hash of the secret it hides, for one
/// repository or (`None`) everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReview {
    pub repository: Option<RepoId>,
    pub secret_hash: String,
    pub rule: String,
    /// The secret's redacted form (what lists and exports show).
    pub redacted: String,
    pub comment: String,
}

/// Which reviews a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewFilter<'a> {
    All,
    Global,
    Project(&'a str),
    /// A project's reviews of the repositories this user may read.
    ProjectFor(&'a str, crate::users::UserId),
    Repository(RepoId),
}

/// Marks the secret of a finding reviewed: for `repository` (whose finding
/// it must be), or globally (`None`: any repository's finding).
pub async fn create_review(
    pool: &PgPool,
    actor: &str,
    repository: Option<RepoId>,
    target: &ReviewTarget,
    comment: &str,
) -> Result<Review> {
    let (by_id, by_fingerprint) = match target {
        ReviewTarget::Finding(id) => (Some(*id), None),
        ReviewTarget::Fingerprint(fingerprint) => (None, Some(fingerprint.as_str())),
    };
    let finding: Option<(Option<String>, String, String)> = sqlx::query_as(
        "select secret_hash, rule_id, redacted from findings
         where ($1::bigint is null or id = $1) and ($2::text is null or fingerprint = $2)
           and ($3::bigint is null or repository_id = $3)
         order by id limit 1",
    )
    .bind(by_id)
    .bind(by_fingerprint)
    .bind(repository)
    .fetch_optional(pool)
    .await?;
    let (secret_hash, rule, redacted) = finding.ok_or_else(|| {
        StoreError::NotFound(match target {
            ReviewTarget::Finding(id) => format!("finding {id}"),
            ReviewTarget::Fingerprint(fingerprint) => {
                format!("finding with fingerprint {fingerprint}")
            }
        })
    })?;
    let secret_hash = secret_hash.ok_or_else(|| {
        StoreError::Invalid(
            "this finding was stored before reviews existed; rescan the branch first".into(),
        )
    })?;
    let review = NewReview {
        repository,
        secret_hash,
        rule,
        redacted,
        comment: comment.to_string(),
    };
    insert_reviews(pool, actor, &[review], false)
        .await?
        .pop()
        .ok_or_else(|| StoreError::Conflict("this secret is already reviewed in this scope".into()))
}

/// Inserts reviews in one transaction with their audit entries. With
/// `skip_existing`, a secret already reviewed in the review's scope is
/// skipped; without, it is a conflict.
pub async fn insert_reviews(
    pool: &PgPool,
    actor: &str,
    reviews: &[NewReview],
    skip_existing: bool,
) -> Result<Vec<Review>> {
    let mut transaction = pool.begin().await?;
    let mut created = Vec::with_capacity(reviews.len());
    for review in reviews {
        let id: Option<i64> = sqlx::query_scalar(
            "insert into reviews (repository_id, secret_hash, rule_id, redacted, comment, created_by)
             values ($1, $2, $3, $4, $5, $6) on conflict (repository_id, secret_hash) do nothing returning id",
        )
        .bind(review.repository)
        .bind(&review.secret_hash)
        .bind(&review.rule)
        .bind(&review.redacted)
        .bind(&review.comment)
        .bind(actor)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(id) = id else {
            if skip_existing {
                continue;
            }
            return Err(StoreError::Conflict(
                "this secret is already reviewed in this scope".into(),
            ));
        };
        let stored =
            sqlx::query_as::<_, Review>(AssertSqlSafe(format!("{REVIEW_SELECT} where v.id = $1")))
                .bind(id)
                .fetch_one(&mut *transaction)
                .await?;
        audit::record(
            &mut transaction,
            actor,
            "review.created",
            &review_target(&stored),
            &stored,
        )
        .await?;
        created.push(stored);
    }
    transaction.commit().await?;
    Ok(created)
}

fn review_target(review: &Review) -> String {
    match (&review.project, &review.repository) {
        (Some(project), Some(repository)) => {
            format!("review {} of {project}/{repository}", review.id)
        }
        _ => format!("global review {}", review.id),
    }
}

pub async fn get_review(pool: &PgPool, id: i64) -> Result<Review> {
    sqlx::query_as::<_, Review>(AssertSqlSafe(format!("{REVIEW_SELECT} where v.id = $1")))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("review {id}")))
}

/// Unmarks: the secret's findings show again.
pub async fn delete_review(pool: &PgPool, actor: &str, id: i64) -> Result<()> {
    let mut transaction = pool.begin().await?;
    let review = sqlx::query_as::<_, Review>(AssertSqlSafe(format!(
        "{REVIEW_SELECT} where v.id = $1 for update of v"
    )))
    .bind(id)
    .fetch_optional(&mut *transaction)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("review {id}")))?;
    sqlx::query("delete from reviews where id = $1")
        .bind(id)
        .execute(&mut *transaction)
        .await?;
    audit::record(
        &mut transaction,
        actor,
        "review.deleted",
        &review_target(&review),
        &review,
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// (project key, repository id, global only, viewer) of a filter.
fn filter_binds(filter: ReviewFilter<'_>) -> (Option<&str>, Option<RepoId>, bool, Option<i64>) {
    match filter {
        ReviewFilter::All => (None, None, false, None),
        ReviewFilter::Global => (None, None, true, None),
        ReviewFilter::Project(key) => (Some(key), None, false, None),
        ReviewFilter::ProjectFor(key, viewer) => (Some(key), None, false, Some(viewer.0)),
        ReviewFilter::Repository(repository) => (None, Some(repository), false, None),
    }
}

/// The `where` clause of a filter (parameters $1 to $4).
fn filter_sql() -> String {
    format!(
        "where ($1::text is null or p.key = $1) and ($2::bigint is null or v.repository_id = $2)
           and (not $3 or v.repository_id is null) and {} ",
        crate::users::readable_by("$4", "p", "r")
    )
}

/// Reviews, newest first.
pub async fn list_reviews(
    pool: &PgPool,
    filter: ReviewFilter<'_>,
    page: PageRequest,
) -> Result<Page<Review>> {
    let (key, repository, global, viewer) = filter_binds(filter);
    let rows = sqlx::query_as::<_, Review>(AssertSqlSafe(format!(
        "{REVIEW_SELECT} {} order by v.id desc offset $5 limit $6",
        filter_sql()
    )))
    .bind(key)
    .bind(repository)
    .bind(global)
    .bind(viewer)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

/// Every review of a filter, oldest first (for exports).
pub async fn all_reviews(pool: &PgPool, filter: ReviewFilter<'_>) -> Result<Vec<Review>> {
    let (key, repository, global, viewer) = filter_binds(filter);
    Ok(sqlx::query_as::<_, Review>(AssertSqlSafe(format!(
        "{REVIEW_SELECT} {} order by v.id",
        filter_sql()
    )))
    .bind(key)
    .bind(repository)
    .bind(global)
    .bind(viewer)
    .fetch_all(pool)
    .await?)
}
