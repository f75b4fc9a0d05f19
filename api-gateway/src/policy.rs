//! Policy endpoints: Soteri's rule list, built-in switches and per-branch
//! rule types; Bitbucket Data Center's secret-scanning rules, allowlist
//! rules and exemptions at global, project and repository scope; and the
//! audit log. Every change is audited by the store in its own transaction.

use crate::routes::PathRepository;
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use axum::{extract::State, http::StatusCode, Json};
use leakscan_engine::{
    rules::{builtin_rules, find_builtin, RuleSpec},
    ruleset::{compile_regex, CUSTOM_REGEX_SIZE_LIMIT},
    Severity,
};
use leakscan_store::{
    audit,
    catalog::{RepoId, Repository},
    policy::{self, NameOrder, RuleInput, RuleKind, Scope, SecretRule},
    users::Access,
    Page,
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::Caller,
    catalog::Paging,
    error::{AnyJsonBody, ApiError, PathParams, QueryParams},
    AppState,
};

/// Longest rule or allowlist name (the OpenAPI document says the same).
pub(crate) const MAX_NAME_CHARS: usize = 255;
/// Longest regex source.
pub(crate) const MAX_REGEX_CHARS: usize = 10_000;

/// Path parameters of the scoped routes (`project`, `repo`, `id`).
type ScopePath = HashMap<String, String>;

/// The scope a route's path names, once the caller is allowed `needed` on
/// it: reading a global list needs only a login, changing it the security
/// grant; project scope needs project read / admin; repository scope
/// repository read / admin.
async fn scope_of(
    state: &AppState,
    caller: &Caller,
    path: &ScopePath,
    change: bool,
) -> Result<Scope, ApiError> {
    let needed = if change { Access::Admin } else { Access::Read };
    match (path.get("project"), path.get("repo")) {
        (Some(project), Some(slug)) => {
            let repository = caller.repository(state, project, slug, needed).await?;
            Ok(Scope::Repository(repository.id))
        }
        (Some(project), None) => {
            caller.project(state, project, needed).await?;
            let found = leakscan_store::catalog::find_project(&state.pool, project).await?;
            let found = found
                .ok_or_else(|| ApiError::not_found(format!("Project {project} does not exist.")))?;
            Ok(Scope::Project(found.id))
        }
        _ => {
            if change {
                caller.require_security()?;
            }
            Ok(Scope::Global)
        }
    }
}

fn rule_id(path: &ScopePath) -> Result<i64, ApiError> {
    let text = path.get("id").map(String::as_str).unwrap_or_default();
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid rule id {text:?}: expected a positive number"
            ))
        })
}

/// A rule or allowlist rule as sent by a client (Bitbucket's
/// `RestSecretScanningRuleSetRequest`, plus our optional `severity`).
/// Unknown fields are refused; the read-only fields of a rule as `GET`
/// shows it (`id`, `scope`) are accepted and ignored, so a client may send
/// back what it read (GET → edit → PUT).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleBody {
    pub name: Option<String>,
    pub line_regex: Option<String>,
    pub path_regex: Option<String>,
    pub severity: Option<String>,
    /// Read-only: the path names the rule.
    pub id: Option<serde::de::IgnoredAny>,
    /// Read-only: the path names the scope.
    pub scope: Option<serde::de::IgnoredAny>,
}

/// Checks a body (on update, over the current rule) and makes the input.
fn rule_input(
    kind: RuleKind,
    body: RuleBody,
    current: Option<&SecretRule>,
) -> Result<RuleInput, ApiError> {
    let name = body
        .name
        .or_else(|| current.map(|rule| rule.name.clone()))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .ok_or_else(|| ApiError::bad_request("a rule needs a name"))?;
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "a rule name has at most {MAX_NAME_CHARS} characters and no control characters"
        )));
    }
    if kind == RuleKind::Rule && find_builtin(&name).is_some() {
        return Err(ApiError::bad_request(format!(
            "{name:?} is the name of a built-in rule; choose another"
        )));
    }
    let keep = |given: Option<String>, current: Option<&Option<String>>| match given {
        // An empty string removes the regex.
        Some(text) if text.is_empty() => None,
        Some(text) => Some(text),
        None => current.cloned().flatten(),
    };
    let line_regex = keep(body.line_regex, current.map(|rule| &rule.line_regex));
    let path_regex = keep(body.path_regex, current.map(|rule| &rule.path_regex));
    if line_regex.is_none() && path_regex.is_none() {
        return Err(ApiError::bad_request(
            "a rule needs lineRegex, pathRegex or both",
        ));
    }
    for (field, pattern) in [("lineRegex", &line_regex), ("pathRegex", &path_regex)] {
        if let Some(pattern) = pattern {
            check_regex(field, pattern)?;
        }
    }
    let severity = match body.severity {
        Some(text) => text.parse::<Severity>().map_err(ApiError::bad_request)?,
        None => current
            .and_then(|rule| rule.severity.as_deref())
            .and_then(|text| text.parse().ok())
            .unwrap_or(Severity::High),
    };
    Ok(RuleInput {
        name,
        line_regex,
        path_regex,
        severity,
    })
}

/// A regex a rule may carry: at most [`MAX_REGEX_CHARS`], compiling within
/// the engine's size limit.
fn check_regex(field: &str, pattern: &str) -> Result<(), ApiError> {
    if pattern.chars().count() > MAX_REGEX_CHARS {
        return Err(ApiError::bad_request(format!(
            "{field} is longer than {MAX_REGEX_CHARS} characters"
        )));
    }
    compile_regex(field, "regex", pattern, CUSTOM_REGEX_SIZE_LIMIT)
        .map(|_| ())
        .map_err(|error| ApiError::bad_request(format!("{field} is not a valid regex: {error}")))
}

#[derive(Debug, Deserialize)]
pub struct RuleListQuery {
    // Not a flattened `Paging`: flattening loses the numbers' types.
    #[serde(default)]
    start: u32,
    limit: Option<u32>,
    filter: Option<String>,
    order: Option<String>,
}

fn name_order(order: Option<&str>) -> Result<NameOrder, ApiError> {
    match order {
        None | Some("NAME_ASC") => Ok(NameOrder::Ascending),
        Some("NAME_DESC") => Ok(NameOrder::Descending),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid order {other:?}: expected NAME_ASC or NAME_DESC"
        ))),
    }
}

fn kind_of(allowlist: bool) -> RuleKind {
    if allowlist {
        RuleKind::Allowlist
    } else {
        RuleKind::Rule
    }
}

/// `GET …/secret-scanning/rules|allowlist`
pub async fn list_rules<const ALLOWLIST: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
    QueryParams(query): QueryParams<RuleListQuery>,
) -> Result<Json<Page<SecretRule>>, ApiError> {
    let scope = scope_of(&state, &caller, &path, false).await?;
    let order = name_order(query.order.as_deref())?;
    let filter = query.filter.as_deref().filter(|f| !f.is_empty());
    Ok(Json(
        policy::list_rules(
            &state.pool,
            kind_of(ALLOWLIST),
            scope,
            filter,
            order,
            Paging {
                start: query.start,
                limit: query.limit,
            }
            .request(),
        )
        .await?,
    ))
}

/// `POST …/secret-scanning/rules|allowlist`
pub async fn create_rule<const ALLOWLIST: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
    AnyJsonBody(body): AnyJsonBody<RuleBody>,
) -> Result<Json<SecretRule>, ApiError> {
    let scope = scope_of(&state, &caller, &path, true).await?;
    let kind = kind_of(ALLOWLIST);
    let input = rule_input(kind, body, None)?;
    Ok(Json(
        policy::create_rule(&state.pool, &caller.0.name, kind, scope, &input).await?,
    ))
}

/// `GET …/secret-scanning/rules|allowlist/{id}`
pub async fn get_rule<const ALLOWLIST: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
) -> Result<Json<SecretRule>, ApiError> {
    let id = rule_id(&path)?;
    let scope = scope_of(&state, &caller, &path, false).await?;
    Ok(Json(
        policy::get_rule(&state.pool, kind_of(ALLOWLIST), scope, id).await?,
    ))
}

/// `PUT …/secret-scanning/rules|allowlist/{id}`: fields left out keep
/// their value; an empty regex removes it.
pub async fn update_rule<const ALLOWLIST: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
    AnyJsonBody(body): AnyJsonBody<RuleBody>,
) -> Result<Json<SecretRule>, ApiError> {
    let id = rule_id(&path)?;
    let scope = scope_of(&state, &caller, &path, true).await?;
    let kind = kind_of(ALLOWLIST);
    let current = policy::get_rule(&state.pool, kind, scope, id).await?;
    let input = rule_input(kind, body, Some(&current))?;
    Ok(Json(
        policy::update_rule(&state.pool, &caller.0.name, kind, scope, id, &input).await?,
    ))
}

/// `DELETE …/secret-scanning/rules|allowlist/{id}`: 204; an id that is not
/// a rule of this scope is 404, except at project scope (204 there).
pub async fn delete_rule<const ALLOWLIST: bool>(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
) -> Result<StatusCode, ApiError> {
    let id = rule_id(&path)?;
    let scope = scope_of(&state, &caller, &path, true).await?;
    match policy::delete_rule(&state.pool, &caller.0.name, kind_of(ALLOWLIST), scope, id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        // Bitbucket Data Center documents the project scope's delete as
        // "Empty response indicating that the rule was deleted, or not
        // found at this location"; its other scopes promise no such thing.
        Err(leakscan_store::StoreError::NotFound(_)) if matches!(scope, Scope::Project(_)) => {
            Ok(StatusCode::NO_CONTENT)
        }
        Err(error) => Err(error.into()),
    }
}

/// A rule as Soteri lists it.
#[derive(Debug, Serialize)]
pub struct SoteriRule {
    /// The built-in rule's id, or the custom rule's number.
    id: String,
    /// The built-in rule's display name, or the custom rule's name.
    name: String,
    /// Custom rules only.
    #[serde(skip_serializing_if = "Option::is_none")]
    regexp: Option<String>,
    hardcoded: bool,
    enabled: bool,
}

fn soteri_builtin(spec: &RuleSpec, disabled: &[String]) -> SoteriRule {
    let id = &spec.id;
    SoteriRule {
        id: id.clone(),
        name: spec.name.clone(),
        regexp: None,
        hardcoded: true,
        enabled: !disabled.iter().any(|off| off == id),
    }
}

/// `GET /rest/security/1.0/rules`: every built-in rule with its switch,
/// then the global custom rules.
pub async fn soteri_rules(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
) -> Result<Json<Vec<SoteriRule>>, ApiError> {
    let disabled = policy::disabled_builtins(&state.pool).await?;
    let mut rules: Vec<SoteriRule> = builtin_rules()
        .iter()
        .map(|spec| soteri_builtin(spec, &disabled))
        .collect();
    let mut request = leakscan_store::PageRequest::new(0, leakscan_store::page::MAX_PAGE_LIMIT);
    loop {
        let page = policy::list_rules(
            &state.pool,
            RuleKind::Rule,
            Scope::Global,
            None,
            NameOrder::Ascending,
            request,
        )
        .await?;
        rules.extend(page.values.into_iter().map(|rule| SoteriRule {
            id: rule.id.to_string(),
            name: rule.name,
            regexp: rule.line_regex.or(rule.path_regex),
            hardcoded: false,
            enabled: true,
        }));
        match page.next_page_start {
            Some(start) => request.start = start,
            None => break,
        }
    }
    Ok(Json(rules))
}

/// `POST /rest/security/1.0/hardcoded/{ruleName}` (on) and `DELETE` (off).
pub async fn enable_builtin(
    state: State<Arc<AppState>>,
    caller: Caller,
    path: PathParams<String>,
) -> Result<Json<SoteriRule>, ApiError> {
    switch_builtin(state, caller, path, true).await
}

pub async fn disable_builtin(
    state: State<Arc<AppState>>,
    caller: Caller,
    path: PathParams<String>,
) -> Result<Json<SoteriRule>, ApiError> {
    switch_builtin(state, caller, path, false).await
}

async fn switch_builtin(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    enabled: bool,
) -> Result<Json<SoteriRule>, ApiError> {
    caller.require_security()?;
    let spec = find_builtin(&name)
        .ok_or_else(|| ApiError::not_found(format!("Built-in rule {name:?} does not exist.")))?;
    policy::set_builtin_enabled(&state.pool, &caller.0.name, &spec.id, enabled).await?;
    let disabled = policy::disabled_builtins(&state.pool).await?;
    Ok(Json(soteri_builtin(spec, &disabled)))
}

#[derive(Debug, Deserialize)]
pub struct BranchQuery {
    branch: Option<String>,
}

/// `GET /rest/security/1.0/scan/{project}/rule_types/{repo}?branch=`:
/// every rule name that applies to the branch: the built-in rules (on or
/// off), the custom rules of its scopes and those its config file adds.
pub async fn rule_types(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    QueryParams(query): QueryParams<BranchQuery>,
) -> Result<Json<Vec<String>>, ApiError> {
    let branch = crate::scans::branch_of(&repository, query.branch.as_deref())?;
    if leakscan_store::jobs::branch_scan(&state.pool, repository.id, &branch)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "Branch {branch:?} does not exist in {}/{}.",
            repository.project_key, repository.slug
        )));
    }
    let spec = policy::base_policy(&state.pool, repository.id).await?;
    let mut names = policy::rule_names(&spec);
    for name in config_rule_names(&repository, &branch, &spec).await? {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Json(names))
}

/// Longest rule name a findings filter may give.
const MAX_RULE_FILTER_CHARS: usize = 255;

/// The rule a findings filter (`?rule=` of a scan status, `?ruleType=` of
/// an export) names, as findings record it. A built-in rule named by its
/// id, any of its aliases (Soteri's `RSA`, `AWS_CLIENT_ID`) or its display
/// name, in any case, is its id; a custom rule of the repository's scopes
/// or of the branch's config file, or a rule name the repository's findings
/// carry, is itself. Any other name is a 400: an unknown rule is a mistake
/// to report, not an empty list. No name (or an empty one): no filter.
pub(crate) async fn findings_rule_filter(
    state: &AppState,
    repository: &Repository,
    branch: Option<&str>,
    name: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let Some(name) = name.filter(|name| !name.is_empty()) else {
        return Ok(None);
    };
    let unknown = || {
        ApiError::bad_request(format!(
            "unknown rule {name:?}: give a rule id, alias or name (GET /rest/security/1.0/rules lists them; GET /rest/security/1.0/scan/{{project}}/rule_types/{{repo}} a branch's)"
        ))
    };
    if name.chars().count() > MAX_RULE_FILTER_CHARS || name.chars().any(char::is_control) {
        return Err(unknown());
    }
    if let Some(spec) = find_builtin(name) {
        return Ok(Some(spec.id.clone()));
    }
    let spec = policy::base_policy(&state.pool, repository.id).await?;
    if spec.custom.iter().any(|rule| rule.name == name) {
        return Ok(Some(name.to_string()));
    }
    if let Some(builtin) = builtin_rules()
        .iter()
        .find(|builtin| builtin.name.eq_ignore_ascii_case(name))
    {
        return Ok(Some(builtin.id.clone()));
    }
    if leakscan_store::findings::repository_has_rule(&state.pool, repository.id, name).await? {
        return Ok(Some(name.to_string()));
    }
    if let Some(branch) = branch {
        let from_config = config_rule_names(repository, branch, &spec).await?;
        if from_config.iter().any(|rule| rule == name) {
            return Ok(Some(name.to_string()));
        }
    }
    Err(unknown())
}

/// The custom rule names a branch's config file adds, read from the
/// repository when its clone source is on this machine. (A remote source
/// is read by the workers, not the gateway: its config file's rules show
/// once they are known here — a documented limit.)
async fn config_rule_names(
    repository: &Repository,
    branch: &str,
    spec: &leakscan_engine::PolicySpec,
) -> Result<Vec<String>, ApiError> {
    let Some(path) = local_source(&repository.clone_url) else {
        return Ok(Vec::new());
    };
    let base = spec.resolve().map_err(|error| {
        ApiError::bad_request(format!("the repository's policy is invalid: {error}"))
    })?;
    let branch = branch.to_string();
    let effective = tokio::task::spawn_blocking(move || {
        leakscan_engine::git::effective_policy(&path, &branch, &base)
    })
    .await
    .map_err(|_| ApiError::internal())?;
    match effective {
        Ok(policy) => Ok(policy.custom.into_iter().map(|rule| rule.name).collect()),
        Err(error) => {
            tracing::warn!(%error, repository = %repository.slug, "cannot read the branch's config file");
            Ok(Vec::new())
        }
    }
}

/// The directory of a clone source on this machine (an absolute path or a
/// `file://` URL).
fn local_source(clone_url: &str) -> Option<PathBuf> {
    let path = clone_url.strip_prefix("file://").unwrap_or(clone_url);
    let path = PathBuf::from(path);
    (path.is_absolute() && path.exists()).then_some(path)
}

/// `GET /projects/{p}/repos/{r}/secret-scanning/exempt`: the body is `true`
/// or `false` itself, as Bitbucket Data Center answers ("True if the
/// repository is exempt from secret scanning, false otherwise").
pub async fn repository_exemption(
    PathRepository(repository): PathRepository,
) -> Result<Json<bool>, ApiError> {
    Ok(Json(repository.exempt))
}

/// `PUT` (exempt) and `DELETE` (scan again) of a repository's exemption.
pub async fn exempt_repository(
    state: State<Arc<AppState>>,
    caller: Caller,
    repository: PathRepository,
) -> Result<StatusCode, ApiError> {
    set_exemption(state, caller, repository, true).await
}

pub async fn unexempt_repository(
    state: State<Arc<AppState>>,
    caller: Caller,
    repository: PathRepository,
) -> Result<StatusCode, ApiError> {
    set_exemption(state, caller, repository, false).await
}

async fn set_exemption(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    exempt: bool,
) -> Result<StatusCode, ApiError> {
    policy::set_exempt(
        &state.pool,
        &caller.0.name,
        repository.id,
        &format!("{}/{}", repository.project_key, repository.slug),
        exempt,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct ExemptListQuery {
    // Not a flattened `Paging`: flattening loses the numbers' types.
    #[serde(default)]
    start: u32,
    limit: Option<u32>,
    order: Option<String>,
}

/// `GET /secret-scanning/exempt` and `GET /projects/{p}/secret-scanning/exempt`:
/// a page of Bitbucket repository objects, ordered by project name, then
/// repository name (`order=NAME_ASC`, the default, or `NAME_DESC`).
pub async fn list_exempt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
    QueryParams(query): QueryParams<ExemptListQuery>,
) -> Result<Json<Page<serde_json::Value>>, ApiError> {
    let project = path.get("project").map(String::as_str);
    match project {
        Some(project) => caller.project(&state, project, Access::Read).await?,
        None => caller.require_security()?,
    }
    let order = name_order(query.order.as_deref())?;
    let paging = Paging {
        start: query.start,
        limit: query.limit,
    };
    // A grant on one repository shows the project, not its other
    // repositories.
    let viewer = (!(caller.0.sys_admin || caller.0.security)).then_some(caller.0.id);
    let page =
        policy::exempt_repositories(&state.pool, project, viewer, order, paging.request()).await?;
    Ok(Json(page.map(|repository| {
        crate::catalog::bitbucket_repository(&repository)
    })))
}

/// A repository as Bitbucket's bulk exemption names it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositorySelector {
    project_key: String,
    slug: String,
}

/// Most selectors one bulk exemption may carry.
const MAX_SELECTORS: usize = 1000;

/// `POST /secret-scanning/exempt` and `POST /projects/{p}/secret-scanning/exempt`:
/// exempts every selected repository, all or none.
pub async fn bulk_exempt(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(path): PathParams<ScopePath>,
    AnyJsonBody(selectors): AnyJsonBody<Vec<RepositorySelector>>,
) -> Result<StatusCode, ApiError> {
    let project = path.get("project");
    match project {
        Some(project) => caller.project(&state, project, Access::Admin).await?,
        None => caller.require_security()?,
    }
    if selectors.len() > MAX_SELECTORS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_SELECTORS} repositories per request"
        )));
    }
    let mut targets: Vec<(RepoId, String)> = Vec::with_capacity(selectors.len());
    for selector in &selectors {
        if let Some(project) = project {
            if &selector.project_key != project {
                return Err(ApiError::bad_request(format!(
                    "{}/{} is not in project {project}",
                    selector.project_key, selector.slug
                )));
            }
        }
        let repository = caller
            .repository(&state, &selector.project_key, &selector.slug, Access::Read)
            .await?;
        targets.push((
            repository.id,
            format!("{}/{}", selector.project_key, selector.slug),
        ));
    }
    policy::exempt_all(&state.pool, &caller.0.name, &targets).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /rest/security/latest/audit` (newest first).
pub async fn audit_log(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<audit::AuditEntry>>, ApiError> {
    caller.require_security()?;
    Ok(Json(audit::list(&state.pool, paging.request()).await?))
}
