//! Policy: custom rules and allowlist rules at global, project and
//! repository scope, built-in rule switches, exemptions, and the base
//! policy a repository is scanned under. Every change is written with its
//! audit entry in one transaction.

use std::collections::HashMap;

use leakscan_engine::{rules::builtin_rules, AllowRule, CustomRule, PolicySpec, Severity};
use serde::Serialize;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::{
    audit,
    catalog::RepoId,
    page::{Page, PageRequest},
    Result, StoreError,
};

/// Custom rules or allowlist rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    Rule,
    Allowlist,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Rule => "rule",
            RuleKind::Allowlist => "allowlist",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            RuleKind::Rule => "secret scanning rule",
            RuleKind::Allowlist => "allowlist rule",
        }
    }
}

/// Where a rule applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Project(i64),
    Repository(RepoId),
}

impl Scope {
    fn columns(self) -> (Option<i64>, Option<i64>) {
        match self {
            Scope::Global => (None, None),
            Scope::Project(project) => (Some(project), None),
            Scope::Repository(repository) => (None, Some(repository.0)),
        }
    }
}

/// A rule as Bitbucket Data Center shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRule {
    pub id: i64,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    pub scope: RuleScope,
    /// Custom rules only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleScope {
    /// `GLOBAL`, `PROJECT` or `REPOSITORY`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The project or repository id (absent for global rules).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<i64>,
}

/// What a caller sends to create or replace a rule (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInput {
    pub name: String,
    pub line_regex: Option<String>,
    pub path_regex: Option<String>,
    pub severity: Severity,
}

/// Sort order of rule lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameOrder {
    #[default]
    Ascending,
    Descending,
}

type RuleRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<i64>,
    Option<i64>,
);

const RULE_COLUMNS: &str = "id, name, line_regex, path_regex, severity, project_id, repository_id";

fn rule_from_row(kind: RuleKind, row: RuleRow) -> SecretRule {
    let (id, name, line_regex, path_regex, severity, project_id, repository_id) = row;
    let scope = match (project_id, repository_id) {
        (_, Some(repository)) => RuleScope {
            kind: "REPOSITORY",
            resource_id: Some(repository),
        },
        (Some(project), None) => RuleScope {
            kind: "PROJECT",
            resource_id: Some(project),
        },
        (None, None) => RuleScope {
            kind: "GLOBAL",
            resource_id: None,
        },
    };
    SecretRule {
        id,
        name,
        line_regex,
        path_regex,
        scope,
        severity: (kind == RuleKind::Rule).then_some(severity),
    }
}

/// Rules of one kind in one scope whose name contains `filter`
/// (case-insensitive), by name.
pub async fn list_rules(
    pool: &PgPool,
    kind: RuleKind,
    scope: Scope,
    filter: Option<&str>,
    order: NameOrder,
    page: PageRequest,
) -> Result<Page<SecretRule>> {
    let (project, repository) = scope.columns();
    let direction = match order {
        NameOrder::Ascending => "asc",
        NameOrder::Descending => "desc",
    };
    let rows: Vec<RuleRow> = sqlx::query_as(AssertSqlSafe(format!(
        "select {RULE_COLUMNS} from secret_rules
         where kind = $1 and project_id is not distinct from $2 and repository_id is not distinct from $3
           and ($4::text is null or strpos(lower(name), lower($4)) > 0)
         order by lower(name) {direction}, id {direction} offset $5 limit $6"
    )))
    .bind(kind.as_str())
    .bind(project)
    .bind(repository)
    .bind(filter)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(
        rows.into_iter()
            .map(|row| rule_from_row(kind, row))
            .collect(),
    ))
}

/// One rule of `scope`; a rule of another scope is not found.
pub async fn get_rule(pool: &PgPool, kind: RuleKind, scope: Scope, id: i64) -> Result<SecretRule> {
    let (project, repository) = scope.columns();
    let row: Option<RuleRow> = sqlx::query_as(AssertSqlSafe(format!(
        "select {RULE_COLUMNS} from secret_rules
         where id = $1 and kind = $2 and project_id is not distinct from $3 and repository_id is not distinct from $4"
    )))
    .bind(id)
    .bind(kind.as_str())
    .bind(project)
    .bind(repository)
    .fetch_optional(pool)
    .await?;
    row.map(|row| rule_from_row(kind, row))
        .ok_or_else(|| StoreError::NotFound(format!("{} {id}", kind.noun())))
}

fn name_taken(kind: RuleKind, name: &str) -> StoreError {
    StoreError::Conflict(format!(
        "a {} named {name:?} already exists in this scope",
        kind.noun()
    ))
}

/// A unique violation is a name taken in the scope; anything else stays a
/// database error.
fn conflict_on_name(error: sqlx::Error, kind: RuleKind, name: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            name_taken(kind, name)
        }
        _ => error.into(),
    }
}

/// Ends a change of one rule: not found when no row changed, otherwise
/// audited as `action` and committed.
async fn finish_change(
    mut transaction: Transaction<'_, Postgres>,
    actor: &str,
    kind: RuleKind,
    action: &str,
    id: i64,
    row: Option<RuleRow>,
) -> Result<SecretRule> {
    let rule = rule_from_row(
        kind,
        row.ok_or_else(|| StoreError::NotFound(format!("{} {id}", kind.noun())))?,
    );
    audit::record(
        &mut transaction,
        actor,
        &format!("{}.{action}", kind.as_str()),
        &scope_target(&rule),
        &rule,
    )
    .await?;
    transaction.commit().await?;
    Ok(rule)
}

/// Creates a rule; a name taken in the same scope is a conflict.
/// Most custom rules (and, apart, allowlist rules) one scope may hold:
/// every one is compiled into each scan's detector.
pub const MAX_RULES_PER_SCOPE: i64 = 200;

/// Creates a rule; a scope already at [`MAX_RULES_PER_SCOPE`] refuses it.
pub async fn create_rule(
    pool: &PgPool,
    actor: &str,
    kind: RuleKind,
    scope: Scope,
    input: &RuleInput,
) -> Result<SecretRule> {
    let (project, repository) = scope.columns();
    let mut transaction = pool.begin().await?;
    // Rules of a scope one after the other, so two creations cannot both
    // pass the limit.
    sqlx::query("select pg_advisory_xact_lock(hashtext('leakscan rules ' || $1 || ' ' || coalesce($2, 0) || ' ' || coalesce($3, 0)))")
        .bind(kind.as_str())
        .bind(project)
        .bind(repository)
        .execute(&mut *transaction)
        .await?;
    let existing: i64 = sqlx::query_scalar(
        "select count(*) from secret_rules where kind = $1
             and project_id is not distinct from $2 and repository_id is not distinct from $3",
    )
    .bind(kind.as_str())
    .bind(project)
    .bind(repository)
    .fetch_one(&mut *transaction)
    .await?;
    if existing >= MAX_RULES_PER_SCOPE {
        return Err(StoreError::Invalid(format!(
            "a scope holds at most {MAX_RULES_PER_SCOPE} rules of a kind; delete one first"
        )));
    }
    let row: RuleRow = sqlx::query_as(AssertSqlSafe(format!(
        "insert into secret_rules (kind, project_id, repository_id, name, line_regex, path_regex, severity)
         values ($1, $2, $3, $4, $5, $6, $7) returning {RULE_COLUMNS}"
    )))
    .bind(kind.as_str())
    .bind(project)
    .bind(repository)
    .bind(&input.name)
    .bind(&input.line_regex)
    .bind(&input.path_regex)
    .bind(input.severity.as_str())
    .fetch_one(&mut *transaction)
    .await
    .map_err(|error| conflict_on_name(error, kind, &input.name))?;
    let id = row.0;
    finish_change(transaction, actor, kind, "created", id, Some(row)).await
}

/// Replaces a rule's name and regexes.
pub async fn update_rule(
    pool: &PgPool,
    actor: &str,
    kind: RuleKind,
    scope: Scope,
    id: i64,
    input: &RuleInput,
) -> Result<SecretRule> {
    let (project, repository) = scope.columns();
    let mut transaction = pool.begin().await?;
    let row: Option<RuleRow> = sqlx::query_as(AssertSqlSafe(format!(
        "update secret_rules set name = $5, line_regex = $6, path_regex = $7, severity = $8, updated_at = now()
         where id = $1 and kind = $2 and project_id is not distinct from $3 and repository_id is not distinct from $4
         returning {RULE_COLUMNS}"
    )))
    .bind(id)
    .bind(kind.as_str())
    .bind(project)
    .bind(repository)
    .bind(&input.name)
    .bind(&input.line_regex)
    .bind(&input.path_regex)
    .bind(input.severity.as_str())
    .fetch_optional(&mut *transaction)
    .await
    .map_err(|error| conflict_on_name(error, kind, &input.name))?;
    finish_change(transaction, actor, kind, "updated", id, row).await
}

pub async fn delete_rule(
    pool: &PgPool,
    actor: &str,
    kind: RuleKind,
    scope: Scope,
    id: i64,
) -> Result<()> {
    let (project, repository) = scope.columns();
    let mut transaction = pool.begin().await?;
    let row: Option<RuleRow> = sqlx::query_as(AssertSqlSafe(format!(
        "delete from secret_rules
         where id = $1 and kind = $2 and project_id is not distinct from $3 and repository_id is not distinct from $4
         returning {RULE_COLUMNS}"
    )))
    .bind(id)
    .bind(kind.as_str())
    .bind(project)
    .bind(repository)
    .fetch_optional(&mut *transaction)
    .await?;
    finish_change(transaction, actor, kind, "deleted", id, row).await?;
    Ok(())
}

fn scope_target(rule: &SecretRule) -> String {
    match rule.scope.resource_id {
        Some(id) => format!("{} {id}: {}", rule.scope.kind, rule.name),
        None => format!("GLOBAL: {}", rule.name),
    }
}

/// The ids of built-in rules switched off instance-wide.
pub async fn disabled_builtins(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "select rule_id from builtin_rule_settings where not enabled order by rule_id",
    )
    .fetch_all(pool)
    .await?)
}

/// Switches a built-in rule (by its id) on or off for the whole instance.
/// Returns whether anything changed.
pub async fn set_builtin_enabled(
    pool: &PgPool,
    actor: &str,
    rule_id: &str,
    enabled: bool,
) -> Result<bool> {
    let mut transaction = pool.begin().await?;
    let before: Option<bool> = sqlx::query_scalar(
        "select enabled from builtin_rule_settings where rule_id = $1 for update",
    )
    .bind(rule_id)
    .fetch_optional(&mut *transaction)
    .await?;
    let changed = before.unwrap_or(true) != enabled;
    sqlx::query(
        "insert into builtin_rule_settings (rule_id, enabled, updated_by) values ($1, $2, $3)
         on conflict (rule_id) do update set enabled = $2, updated_by = $3, updated_at = now()",
    )
    .bind(rule_id)
    .bind(enabled)
    .bind(actor)
    .execute(&mut *transaction)
    .await?;
    let action = if enabled {
        "builtin.enabled"
    } else {
        "builtin.disabled"
    };
    audit::record(
        &mut transaction,
        actor,
        action,
        rule_id,
        &serde_json::json!({ "rule": rule_id, "changed": changed }),
    )
    .await?;
    transaction.commit().await?;
    Ok(changed)
}

/// The base policy of a repository (before any branch's config file): the
/// built-in switches, then the custom and allowlist rules of the global,
/// project and repository scopes, broadest first.
pub async fn base_policy(pool: &PgPool, repository: RepoId) -> Result<PolicySpec> {
    let disabled_builtins = disabled_builtins(pool).await?;
    // kind, name, line regex, path regex, severity
    type PolicyRow = (String, String, Option<String>, Option<String>, String);
    let rows: Vec<PolicyRow> = sqlx::query_as(
        "select s.kind, s.name, s.line_regex, s.path_regex, s.severity
         from secret_rules s, repositories r
         where r.id = $1
           and ((s.project_id is null and s.repository_id is null)
                or s.project_id = r.project_id or s.repository_id = r.id)
         order by case when s.repository_id is not null then 2 when s.project_id is not null then 1 else 0 end,
                  s.id",
    )
    .bind(repository)
    .fetch_all(pool)
    .await?;
    let mut spec = PolicySpec {
        disabled_builtins,
        ..PolicySpec::default()
    };
    for (kind, name, line_regex, path_regex, severity) in rows {
        if kind == RuleKind::Rule.as_str() {
            spec.custom.push(CustomRule {
                name,
                line_regex,
                path_regex,
                severity: severity.parse().unwrap_or(Severity::High),
            });
        } else {
            spec.allowlist.push(AllowRule {
                name,
                line_regex,
                path_regex,
            });
        }
    }
    Ok(spec)
}

/// The digest of a base policy: equal digests, equal findings. An
/// unresolvable spec (which validation keeps out) still gets a digest.
pub fn base_digest(spec: &PolicySpec) -> String {
    // A pure function of the spec, but computing it resolves and hashes
    // every built-in rule (most of a status request's CPU time, measured
    // with perf): each spec's digest is remembered, keyed by its JSON. A
    // full memo starts again empty; it never holds a stale answer.
    const MEMO_ENTRIES: usize = 4096;
    static MEMO: std::sync::OnceLock<std::sync::Mutex<HashMap<String, String>>> =
        std::sync::OnceLock::new();
    let compute = || match spec.resolve() {
        Ok(policy) => policy.digest(),
        Err(error) => format!("invalid:{error}"),
    };
    let Ok(key) = serde_json::to_string(spec) else {
        return compute();
    };
    let memo = MEMO.get_or_init(Default::default);
    let lock = || memo.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(digest) = lock().get(&key) {
        return digest.clone();
    }
    let digest = compute();
    let mut memo = lock();
    if memo.len() >= MEMO_ENTRIES {
        memo.clear();
    }
    memo.insert(key, digest.clone());
    digest
}

/// The names of the rules that apply to a repository before any config
/// file: every built-in rule (switched off or not), then the custom rules
/// of its scopes.
pub fn rule_names(spec: &PolicySpec) -> Vec<String> {
    let mut names: Vec<String> = builtin_rules().iter().map(|rule| rule.id.clone()).collect();
    for rule in &spec.custom {
        if !names.contains(&rule.name) {
            names.push(rule.name.clone());
        }
    }
    names
}

/// Marks a repository exempt from scanning (or not). Returns whether it
/// changed.
pub async fn set_exempt(
    pool: &PgPool,
    actor: &str,
    repository: RepoId,
    target: &str,
    exempt: bool,
) -> Result<bool> {
    let mut transaction = pool.begin().await?;
    let changed = set_exempt_in(&mut transaction, actor, repository, target, exempt).await?;
    transaction.commit().await?;
    Ok(changed)
}

async fn set_exempt_in(
    transaction: &mut Transaction<'_, Postgres>,
    actor: &str,
    repository: RepoId,
    target: &str,
    exempt: bool,
) -> Result<bool> {
    let changed = sqlx::query("update repositories set exempt = $2 where id = $1 and exempt <> $2")
        .bind(repository)
        .bind(exempt)
        .execute(&mut **transaction)
        .await?
        .rows_affected()
        > 0;
    let action = if exempt {
        "exemption.added"
    } else {
        "exemption.removed"
    };
    audit::record(
        transaction,
        actor,
        action,
        target,
        &serde_json::json!({ "changed": changed }),
    )
    .await?;
    Ok(changed)
}

/// Exempts every repository of `repositories` (with their audit targets) in
/// one transaction.
pub async fn exempt_all(
    pool: &PgPool,
    actor: &str,
    repositories: &[(RepoId, String)],
) -> Result<u64> {
    let mut transaction = pool.begin().await?;
    let mut changed = 0;
    for (repository, target) in repositories {
        if set_exempt_in(&mut transaction, actor, *repository, target, true).await? {
            changed += 1;
        }
    }
    transaction.commit().await?;
    Ok(changed)
}

/// An exempt repository with what Bitbucket's repository object shows of
/// it and of its project.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExemptRepository {
    pub id: RepoId,
    pub slug: String,
    pub name: String,
    pub clone_url: String,
    pub default_branch: Option<String>,
    pub project_id: i64,
    pub project_key: String,
    pub project_name: String,
    /// The owner of a personal project (`~user`): id, name, display name
    /// and e-mail address.
    pub owner_id: Option<i64>,
    pub owner_name: Option<String>,
    pub owner_display_name: Option<String>,
    pub owner_email: Option<String>,
}

/// Exempt repositories, of one project or of the whole instance, ordered
/// as Bitbucket documents it: by project name, then repository name
/// (ascending or descending; keys and slugs break ties).
/// Exempt repositories (of one project, when given) that `viewer` may read
/// (`None`: all of them).
pub async fn exempt_repositories(
    pool: &PgPool,
    project_key: Option<&str>,
    viewer: Option<crate::users::UserId>,
    order: NameOrder,
    page: PageRequest,
) -> Result<Page<ExemptRepository>> {
    let direction = match order {
        NameOrder::Ascending => "asc",
        NameOrder::Descending => "desc",
    };
    let rows = sqlx::query_as::<_, ExemptRepository>(AssertSqlSafe(format!(
        "select r.id, r.slug, r.name, r.clone_url, r.default_branch,
                p.id as project_id, p.key as project_key, p.name as project_name,
                u.id as owner_id, u.name as owner_name, u.display_name as owner_display_name,
                u.email as owner_email
         from repositories r join projects p on p.id = r.project_id
         left join users u on u.id = p.owner_user_id
         where r.exempt and ($1::text is null or p.key = $1) and {visible}
         order by lower(p.name) {direction}, p.key {direction}, lower(r.name) {direction}, r.slug {direction}
         offset $2 limit $3",
        visible = crate::users::readable_by("$4", "p", "r")
    )))
    .bind(project_key)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .bind(viewer.map(|user| user.0))
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    #[test]
    fn the_remembered_digest_is_the_computed_one() {
        let plain = PolicySpec::default();
        let mut switched_off = PolicySpec::default();
        switched_off
            .disabled_builtins
            .push(builtin_rules()[0].id.clone());
        for spec in [&plain, &switched_off, &plain, &switched_off] {
            assert_eq!(base_digest(spec), spec.resolve().unwrap().digest());
        }
        assert_ne!(base_digest(&plain), base_digest(&switched_off));
    }
}
