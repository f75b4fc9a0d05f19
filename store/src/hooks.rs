//! Push protection's stored state: whether the pre-receive hook is on (and
//! blocks or warns) globally, per project and per repository, and the
//! tokens installed hooks authenticate with (docs/ARCHITECTURE.md, "Push
//! protection").

use serde::Serialize;
use sqlx::PgPool;

use crate::{audit, catalog::RepoId, Result, StoreError};

/// Block a push that brings a secret, or let it through with a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookMode {
    Block,
    Warn,
}

impl HookMode {
    pub fn as_str(self) -> &'static str {
        match self {
            HookMode::Block => "block",
            HookMode::Warn => "warn",
        }
    }

    pub fn parse(text: &str) -> Result<HookMode> {
        match text.to_ascii_lowercase().as_str() {
            "block" => Ok(HookMode::Block),
            "warn" => Ok(HookMode::Warn),
            other => Err(StoreError::Invalid(format!(
                "hook mode {other:?}: expected block or warn"
            ))),
        }
    }
}

/// Where a setting is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookScope {
    Global,
    Project(i64),
    Repository(RepoId),
}

/// A repository's effective setting and the scope it comes from
/// (`REPOSITORY`, `PROJECT` or `GLOBAL`; `None` when nothing is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSetting {
    pub enabled: bool,
    pub mode: HookMode,
    pub scope: Option<&'static str>,
}

impl HookSetting {
    const UNSET: HookSetting = HookSetting {
        enabled: false,
        mode: HookMode::Block,
        scope: None,
    };
}

fn scope_name(scope: &str) -> &'static str {
    match scope {
        "REPOSITORY" => "REPOSITORY",
        "PROJECT" => "PROJECT",
        _ => "GLOBAL",
    }
}

/// The setting `repository` is under.
pub async fn effective(pool: &PgPool, repository: RepoId) -> Result<HookSetting> {
    let row: Option<(bool, String, String)> = sqlx::query_as(
        "select h.enabled, h.mode, h.scope
         from repositories r, hook_setting_of(r.id, r.project_id) h where r.id = $1",
    )
    .bind(repository)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((enabled, mode, scope)) => HookSetting {
            enabled,
            mode: HookMode::parse(&mode)?,
            scope: Some(scope_name(&scope)),
        },
        None => HookSetting::UNSET,
    })
}

/// The setting made at `scope` itself (not inherited), if any.
pub async fn own(pool: &PgPool, scope: HookScope) -> Result<Option<(bool, HookMode)>> {
    let (project, repository) = columns(scope);
    let row: Option<(bool, String)> = sqlx::query_as(
        "select enabled, mode from hook_settings
         where project_id is not distinct from $1 and repository_id is not distinct from $2",
    )
    .bind(project)
    .bind(repository)
    .fetch_optional(pool)
    .await?;
    row.map(|(enabled, mode)| Ok((enabled, HookMode::parse(&mode)?)))
        .transpose()
}

fn columns(scope: HookScope) -> (Option<i64>, Option<i64>) {
    match scope {
        HookScope::Global => (None, None),
        HookScope::Project(id) => (Some(id), None),
        HookScope::Repository(id) => (None, Some(id.0)),
    }
}

/// Turns the hook on or off at `scope` (`target` names it in the audit
/// log), in one transaction with its audit entry.
pub async fn set(
    pool: &PgPool,
    actor: &str,
    scope: HookScope,
    target: &str,
    enabled: bool,
    mode: HookMode,
) -> Result<()> {
    let (project, repository) = columns(scope);
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "insert into hook_settings (project_id, repository_id, enabled, mode, updated_by)
         values ($1, $2, $3, $4, $5)
         on conflict (project_id, repository_id) do update
         set enabled = excluded.enabled, mode = excluded.mode,
             updated_by = excluded.updated_by, updated_at = now()",
    )
    .bind(project)
    .bind(repository)
    .bind(enabled)
    .bind(mode.as_str())
    .bind(actor)
    .execute(&mut *transaction)
    .await?;
    audit::record(
        &mut transaction,
        actor,
        if enabled {
            "hook.enable"
        } else {
            "hook.disable"
        },
        target,
        &serde_json::json!({ "mode": mode.as_str() }),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Makes a hook token (for one repository, or every one when `None`) and
/// returns its value, which is not stored.
pub async fn create_token(
    pool: &PgPool,
    actor: &str,
    repository: Option<RepoId>,
) -> Result<String> {
    use rand::Rng as _;
    let bytes: [u8; 32] = rand::rng().random();
    let token = format!("lsh_{}", hex::encode(bytes));
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "insert into hook_tokens (repository_id, token_hash, created_by) values ($1, $2, $3)",
    )
    .bind(repository)
    .bind(crate::tokens::hash(&token))
    .bind(actor)
    .execute(&mut *transaction)
    .await?;
    audit::record(
        &mut transaction,
        actor,
        "hook.token.create",
        &repository.map_or("global".to_string(), |id| format!("repository {}", id.0)),
        &serde_json::json!({}),
    )
    .await?;
    transaction.commit().await?;
    Ok(token)
}

/// Whether `token` is a hook token valid for `repository`.
pub async fn token_allows(pool: &PgPool, token: &str, repository: RepoId) -> Result<bool> {
    if !token.starts_with("lsh_") || token.len() > 200 {
        return Ok(false);
    }
    let row: Option<(i64,)> = sqlx::query_as(
        "select id from hook_tokens
         where token_hash = $1 and (repository_id is null or repository_id = $2)",
    )
    .bind(crate::tokens::hash(token))
    .bind(repository)
    .fetch_optional(pool)
    .await?;
    Ok(row.is_some())
}

/// Which of `hashes` (keyed secret hashes) are reviewed for `repository`
/// or globally.
pub async fn reviewed(pool: &PgPool, repository: RepoId, hashes: &[String]) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select distinct secret_hash from reviews
         where secret_hash = any($2) and (repository_id is null or repository_id = $1)",
    )
    .bind(repository)
    .bind(hashes)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(hash,)| hash).collect())
}

/// Forgets the tokens made for `repository` (its hook was removed).
pub async fn delete_repository_tokens(pool: &PgPool, repository: RepoId) -> Result<()> {
    sqlx::query("delete from hook_tokens where repository_id = $1")
        .bind(repository)
        .execute(pool)
        .await?;
    Ok(())
}

/// What the hook did with a push it reported (the dashboard counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Unreviewed secrets in block mode: the push was refused.
    Blocked,
    /// Unreviewed secrets in warn mode: let through with a warning.
    Warned,
    /// Unreviewed secrets let through with a bypass reason.
    Bypassed,
    /// Every secret found was reviewed already.
    Reviewed,
    /// The scan ran past its budget: let through, a branch scan queued.
    OverBudget,
}

impl PushResult {
    fn as_str(self) -> &'static str {
        match self {
            PushResult::Blocked => "blocked",
            PushResult::Warned => "warned",
            PushResult::Bypassed => "bypassed",
            PushResult::Reviewed => "reviewed",
            PushResult::OverBudget => "over_budget",
        }
    }
}

/// Records one push report's result.
pub async fn record_push(pool: &PgPool, repository: RepoId, result: PushResult) -> Result<()> {
    sqlx::query("insert into hook_reports (repository_id, result) values ($1, $2)")
        .bind(repository)
        .bind(result.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

/// Pushes the hook blocked and let through with a bypass, of one repository.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PushCounts {
    pub blocked: i64,
    pub bypassed: i64,
}

impl std::ops::Add for PushCounts {
    type Output = PushCounts;

    fn add(self, other: PushCounts) -> PushCounts {
        PushCounts {
            blocked: self.blocked + other.blocked,
            bypassed: self.bypassed + other.bypassed,
        }
    }
}

/// [`PushCounts`] of each repository of a project that has any, by id.
pub async fn push_counts(
    pool: &PgPool,
    project_key: &str,
) -> Result<std::collections::HashMap<RepoId, PushCounts>> {
    let rows: Vec<(RepoId, i64, i64)> = sqlx::query_as(
        "select h.repository_id,
                count(*) filter (where h.result = 'blocked'),
                count(*) filter (where h.result = 'bypassed')
         from hook_reports h join repositories r on r.id = h.repository_id
         join projects p on p.id = r.project_id
         where p.key = $1 group by h.repository_id",
    )
    .bind(project_key)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, blocked, bypassed)| (id, PushCounts { blocked, bypassed }))
        .collect())
}
