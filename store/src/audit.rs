//! The audit log: every change to policy (rules, allowlists, built-in
//! switches, exemptions, reviews), written in the transaction of the change.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::{
    page::{Page, PageRequest},
    Result,
};

/// Records one change. `details` is stored as JSON and must hold no secret.
pub async fn record(
    transaction: &mut Transaction<'_, Postgres>,
    actor: &str,
    action: &str,
    target: &str,
    details: &impl Serialize,
) -> Result<()> {
    let details = serde_json::to_string(details)
        .map_err(|error| crate::StoreError::Invalid(format!("audit details: {error}")))?;
    sqlx::query(
        "insert into audit_log (actor, action, target, details) values ($1, $2, $3, $4::jsonb)",
    )
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(details)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// One entry as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    /// When, ISO 8601.
    pub timestamp: DateTime<Utc>,
    /// Who (user name).
    pub user: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
}

/// Newest first.
pub async fn list(pool: &PgPool, page: PageRequest) -> Result<Page<AuditEntry>> {
    let rows = sqlx::query_as::<_, AuditEntry>(
        "select id, at as timestamp, actor as user, action, target, details from audit_log
         order by id desc offset $1 limit $2",
    )
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}
