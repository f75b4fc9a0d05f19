//! Push protection (docs/ARCHITECTURE.md, "Push protection"): the
//! pre-receive hook's switch at Bitbucket's hook-settings paths (repository,
//! project and global scope; a repository inherits the nearest scope set),
//! the hook's installation into repositories served from a repos root, and
//! the two calls an installed hook makes: its repository's setting and
//! policy, and the report of a push (reviewed secrets, bypasses, pushes over
//! budget).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::{body::Bytes, extract::State, Json};
use leakscan_store::{
    audit,
    catalog::{self, Repository},
    hooks::{self, HookMode, HookScope, HookSetting},
    jobs::JobScope,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::metrics::HookResult;
use crate::{
    auth::Caller,
    error::{ApiError, JsonBody, PathParams as UrlPath},
    routes::PathRepository,
    AppState,
};

/// Soteri's hook key: the path segment its document's first call uses.
pub const HOOK_KEY: &str =
    "com.mohami.bitbucket.security-for-bitbucket:credentials-validation-hook";

/// The marker of a hook script leakscan wrote (and may therefore replace or
/// remove); any other `pre-receive` is the host's own and left alone.
const SCRIPT_MARKER: &str = "# leakscan push protection";
/// The installed hook's settings file, beside the script.
pub const HOOK_CONFIG_FILE: &str = "leakscan-hook.conf";

/// How the gateway installs hooks into repositories under its repos roots.
#[derive(Debug, Clone, Default)]
pub struct HookInstall {
    /// The `leakscan` executable the script runs (none: hooks are not
    /// installed, the setting is only stored).
    pub command: Option<PathBuf>,
    /// The gateway's URL as the hook reaches it.
    pub gateway_url: Option<String>,
}

impl HookInstall {
    /// Hooks run `command` (default: the `leakscan` beside this executable,
    /// when there is one) and reach the gateway at `public_url` (default:
    /// the address it listens on, over loopback when that is a wildcard).
    pub fn new(
        command: Option<PathBuf>,
        public_url: Option<String>,
        listen: std::net::SocketAddr,
        context_path: &str,
    ) -> HookInstall {
        let command = command.or_else(|| {
            let exe = std::env::current_exe().ok()?;
            let name = exe.file_name()?.to_str()?;
            if name == "leakscan" {
                return Some(exe);
            }
            let sibling = exe.parent()?.join("leakscan");
            sibling.is_file().then_some(sibling)
        });
        let gateway_url = public_url.unwrap_or_else(|| {
            let mut address = listen;
            if address.ip().is_unspecified() {
                address.set_ip(match address {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{address}{context_path}")
        });
        HookInstall {
            command,
            gateway_url: Some(gateway_url),
        }
    }
}

/// Bitbucket's repository hook object, for the one hook leakscan has.
fn hook_view(setting: &HookSetting, scope_type: &str, resource_id: Option<i64>) -> Value {
    let mut scope = json!({ "type": setting.scope.unwrap_or(scope_type) });
    if let Some(id) = resource_id.filter(|_| setting.scope != Some("GLOBAL")) {
        scope["resourceId"] = json!(id);
    }
    json!({
        "details": {
            "key": HOOK_KEY,
            "name": "Secret scanning push protection (leakscan)",
            "type": "PRE_RECEIVE",
            "description": "Rejects pushes whose new commits bring secrets, or warns about them",
            "version": env!("CARGO_PKG_VERSION"),
            "configFormKey": null,
            "supportedScopes": ["GLOBAL", "PROJECT", "REPOSITORY"],
        },
        "enabled": setting.enabled,
        "configured": setting.scope.is_some(),
        "scope": scope,
        "settings": { "mode": setting.mode.as_str() },
    })
}

/// The optional body of a PUT: Bitbucket's hook settings object, of which
/// leakscan reads `mode` (block or warn). An empty body keeps the mode.
fn requested_mode(body: &Bytes) -> Result<Option<HookMode>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!("the hook settings are not JSON: {error}"))
    })?;
    match value.get("mode") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(mode)) => Ok(Some(HookMode::parse(mode)?)),
        Some(_) => Err(ApiError::bad_request("mode is block or warn")),
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    if key == HOOK_KEY {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "No hook {key:?} is installed."
        )))
    }
}

// ---- repository scope ----

pub async fn repository_hook(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    check_key(&path_key(&params))?;
    let setting = hooks::effective(&state.pool, repository.id).await?;
    Ok(Json(hook_view(
        &setting,
        "REPOSITORY",
        Some(repository.id.0),
    )))
}

pub async fn enable_repository(
    state: State<Arc<AppState>>,
    caller: Caller,
    repository: PathRepository,
    params: UrlPath<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    set_repository(state, caller, repository, params, true, body).await
}

pub async fn disable_repository(
    state: State<Arc<AppState>>,
    caller: Caller,
    repository: PathRepository,
    params: UrlPath<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    set_repository(state, caller, repository, params, false, Bytes::new()).await
}

async fn set_repository(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
    enabled: bool,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    check_key(&path_key(&params))?;
    let scope = HookScope::Repository(repository.id);
    let mode = mode_for(&state, scope, &body).await?;
    // Installed first: a repository whose hook cannot be written keeps its
    // old setting, and the caller learns why.
    reconcile_one(&state, &repository, enabled, &caller.0.name).await?;
    let target = format!("{}/{}", repository.project_key, repository.slug);
    hooks::set(&state.pool, &caller.0.name, scope, &target, enabled, mode).await?;
    info!(repository = %target, enabled, mode = mode.as_str(), by = %caller.0.name, "push protection switched");
    let setting = hooks::effective(&state.pool, repository.id).await?;
    Ok(Json(hook_view(
        &setting,
        "REPOSITORY",
        Some(repository.id.0),
    )))
}

async fn mode_for(state: &AppState, scope: HookScope, body: &Bytes) -> Result<HookMode, ApiError> {
    Ok(match requested_mode(body)? {
        Some(mode) => mode,
        None => hooks::own(&state.pool, scope)
            .await?
            .map_or(HookMode::Block, |(_, mode)| mode),
    })
}

fn path_key(params: &[(String, String)]) -> String {
    params
        .iter()
        .find(|(name, _)| name == "hook")
        .map(|(_, value)| value.clone())
        .unwrap_or_default()
}

// ---- project and global scope ----

/// A project's or the instance's default as Bitbucket shows a hook: its own
/// setting, else the one it inherits.
async fn default_view(
    state: &AppState,
    project: Option<&catalog::Project>,
) -> Result<Value, ApiError> {
    let own = match project {
        Some(project) => hooks::own(&state.pool, HookScope::Project(project.id)).await?,
        None => None,
    };
    let (setting, scope) = match own {
        Some((enabled, mode)) => (
            HookSetting {
                enabled,
                mode,
                scope: Some("PROJECT"),
            },
            "PROJECT",
        ),
        None => match hooks::own(&state.pool, HookScope::Global).await? {
            Some((enabled, mode)) => (
                HookSetting {
                    enabled,
                    mode,
                    scope: Some("GLOBAL"),
                },
                "GLOBAL",
            ),
            None => (
                HookSetting {
                    enabled: false,
                    mode: HookMode::Block,
                    scope: None,
                },
                if project.is_some() {
                    "PROJECT"
                } else {
                    "GLOBAL"
                },
            ),
        },
    };
    Ok(hook_view(&setting, scope, project.map(|p| p.id)))
}

async fn path_project(
    state: &AppState,
    params: &[(String, String)],
) -> Result<catalog::Project, ApiError> {
    let key = params
        .iter()
        .find(|(name, _)| name == "project")
        .map(|(_, value)| value.as_str())
        .unwrap_or_default();
    catalog::find_project(&state.pool, key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Project {key} does not exist.")))
}

pub async fn project_hook(
    State(state): State<Arc<AppState>>,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    check_key(&path_key(&params))?;
    let project = path_project(&state, &params).await?;
    Ok(Json(default_view(&state, Some(&project)).await?))
}

pub async fn enable_project(
    state: State<Arc<AppState>>,
    caller: Caller,
    params: UrlPath<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    set_default(state, caller, params, true, body, true).await
}

pub async fn disable_project(
    state: State<Arc<AppState>>,
    caller: Caller,
    params: UrlPath<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    set_default(state, caller, params, false, Bytes::new(), true).await
}

pub async fn global_hook(
    State(state): State<Arc<AppState>>,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    check_key(&path_key(&params))?;
    Ok(Json(default_view(&state, None).await?))
}

pub async fn enable_global(
    state: State<Arc<AppState>>,
    caller: Caller,
    params: UrlPath<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    set_default(state, caller, params, true, body, false).await
}

pub async fn disable_global(
    state: State<Arc<AppState>>,
    caller: Caller,
    params: UrlPath<Vec<(String, String)>>,
) -> Result<Json<Value>, ApiError> {
    set_default(state, caller, params, false, Bytes::new(), false).await
}

async fn set_default(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    UrlPath(params): UrlPath<Vec<(String, String)>>,
    enabled: bool,
    body: Bytes,
    project_scope: bool,
) -> Result<Json<Value>, ApiError> {
    check_key(&path_key(&params))?;
    let project = match project_scope {
        true => Some(path_project(&state, &params).await?),
        false => None,
    };
    let (scope, target) = match &project {
        Some(project) => (
            HookScope::Project(project.id),
            format!("project {}", project.key),
        ),
        None => (HookScope::Global, "global".to_string()),
    };
    let mode = mode_for(&state, scope, &body).await?;
    hooks::set(&state.pool, &caller.0.name, scope, &target, enabled, mode).await?;
    info!(%target, enabled, mode = mode.as_str(), by = %caller.0.name, "push protection default switched");
    // The repositories that inherit it get their hook installed or removed.
    let repositories =
        catalog::repositories_in(&state.pool, project.as_ref().map(|p| p.key.as_str())).await?;
    for repository in &repositories {
        let setting = hooks::effective(&state.pool, repository.id).await?;
        if let Err(error) = reconcile_one(&state, repository, setting.enabled, &caller.0.name).await
        {
            warn!(repository = %format!("{}/{}", repository.project_key, repository.slug), error = %error.message,
                "hook not installed or removed");
        }
    }
    Ok(Json(default_view(&state, project.as_ref()).await?))
}

// ---- installation into repositories under the repos roots ----

/// The git directory of `repository` when the gateway serves it from one of
/// its repos roots (hooks of other repositories are their host's).
fn served_git_dir(state: &AppState, repository: &Repository) -> Option<PathBuf> {
    let path = Path::new(&repository.clone_url);
    if !path.is_absolute()
        || !state
            .config
            .repos_roots
            .iter()
            .any(|root| path.starts_with(root))
    {
        return None;
    }
    let dot_git = path.join(".git");
    Some(if dot_git.is_dir() {
        dot_git
    } else {
        path.to_path_buf()
    })
}

/// Installs the hook into (or removes it from) `repository` when the gateway
/// serves it and can install hooks.
async fn reconcile_one(
    state: &AppState,
    repository: &Repository,
    enabled: bool,
    actor: &str,
) -> Result<(), ApiError> {
    let Some(git_dir) = served_git_dir(state, repository) else {
        return Ok(());
    };
    let install = &state.config.hook_install;
    let (Some(command), Some(gateway_url)) = (&install.command, &install.gateway_url) else {
        return Ok(());
    };
    if enabled {
        let token = hooks::create_token(&state.pool, actor, Some(repository.id)).await?;
        let settings = format!(
            "# leakscan push protection: written when the hook was enabled, removed with it.\n\
             gateway = {gateway_url}\nproject = {}\nrepository = {}\ntoken = {token}\n",
            repository.project_key, repository.slug
        );
        let command = command.clone();
        let dir = git_dir.clone();
        tokio::task::spawn_blocking(move || install_hook(&dir, &command, &settings))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(|message| ApiError::conflict(format!("cannot install the hook: {message}")))?;
    } else {
        let dir = git_dir.clone();
        tokio::task::spawn_blocking(move || remove_hook(&dir))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(|message| ApiError::conflict(format!("cannot remove the hook: {message}")))?;
        hooks::delete_repository_tokens(&state.pool, repository.id).await?;
    }
    Ok(())
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Writes `hooks/pre-receive` (refusing to replace a script that is not
/// ours) and its settings file (readable by its owner only), and lets
/// pushes carry `-o` options.
fn install_hook(git_dir: &Path, command: &Path, settings: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let hooks_dir = git_dir.join("hooks");
    std::fs::create_dir_all(&hooks_dir).map_err(|e| format!("{}: {e}", hooks_dir.display()))?;
    let script = hooks_dir.join("pre-receive");
    if let Ok(existing) = std::fs::read_to_string(&script) {
        if !existing.contains(SCRIPT_MARKER) {
            return Err(format!("{} exists and is not leakscan's", script.display()));
        }
    }
    let write = |path: &Path, text: &str, mode: u32| -> Result<(), String> {
        let staging = path.with_extension("leakscan-new");
        std::fs::write(&staging, text).map_err(|e| format!("{}: {e}", staging.display()))?;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", staging.display()))?;
        std::fs::rename(&staging, path).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&hooks_dir.join(HOOK_CONFIG_FILE), settings, 0o600)?;
    let text = format!(
        "#!/bin/sh\n{SCRIPT_MARKER}: installed when the hook was enabled, removed when it is disabled.\n\
         exec {} hook pre-receive --config \"$(dirname \"$0\")/{HOOK_CONFIG_FILE}\"\n",
        shell_quote(&command.to_string_lossy())
    );
    write(&script, &text, 0o755)?;
    let status = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["config", "receive.advertisePushOptions", "true"])
        .status()
        .map_err(|e| format!("git config: {e}"))?;
    if !status.success() {
        return Err(format!(
            "git config receive.advertisePushOptions failed: {status}"
        ));
    }
    Ok(())
}

fn remove_hook(git_dir: &Path) -> Result<(), String> {
    let hooks_dir = git_dir.join("hooks");
    let script = hooks_dir.join("pre-receive");
    match std::fs::read_to_string(&script) {
        Ok(existing) if existing.contains(SCRIPT_MARKER) => {
            std::fs::remove_file(&script).map_err(|e| format!("{}: {e}", script.display()))?
        }
        _ => {}
    }
    match std::fs::remove_file(hooks_dir.join(HOOK_CONFIG_FILE)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("{}: {error}", hooks_dir.display()))
        }
        _ => Ok(()),
    }
}

// ---- the installed hook's calls ----

/// What an installed hook needs to decide: whether it is on, block or warn,
/// and the repository's base policy (the pushed branch's config file is
/// applied by the hook, as a scan applies it).
pub async fn hook_settings(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
) -> Result<Json<Value>, ApiError> {
    let setting = hooks::effective(&state.pool, repository.id).await?;
    let policy = leakscan_store::policy::base_policy(&state.pool, repository.id).await?;
    Ok(Json(json!({
        "enabled": setting.enabled && !repository.exempt,
        "mode": setting.mode.as_str(),
        "policy": policy,
    })))
}

/// One finding of a push, as the hook reports it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushedFinding {
    pub commit: String,
    pub path: String,
    #[serde(default)]
    pub line: Option<u32>,
    pub rule_id: String,
    /// The secret itself: only its keyed hash is kept (to match reviews).
    pub secret: String,
}

/// A push's report.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushReport {
    #[serde(rename = "ref")]
    pub ref_name: String,
    pub pusher: String,
    /// `false-positive`, `used-in-tests`, `fix-later`, or
    /// `commit-message` (a commit carried `skip-soteri-security-check`).
    #[serde(default)]
    pub bypass: Option<String>,
    /// The scan ran past its time or blob budget and was cut short.
    #[serde(default)]
    pub over_budget: bool,
    #[serde(default)]
    pub findings: Vec<PushedFinding>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushDecision {
    /// Indices (into the report's findings) of those not reviewed.
    pub unreviewed: Vec<usize>,
    /// Key of the branch scan queued, if one was.
    pub scan_key: Option<String>,
}

const BYPASS_REASONS: &[&str] = &[
    "false-positive",
    "used-in-tests",
    "fix-later",
    "commit-message",
];

/// Answers which of a push's findings are not reviewed; records bypasses
/// (an audit entry each, never the secret; the first two reasons mark the
/// secrets reviewed for the repository) and queues a branch scan for pushes
/// over budget or let through with open findings.
pub async fn hook_push(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    JsonBody(report): JsonBody<PushReport>,
) -> Result<Json<PushDecision>, ApiError> {
    if report.findings.len() > 10_000 {
        return Err(ApiError::bad_request("at most 10000 findings a report"));
    }
    if let Some(reason) = &report.bypass {
        if !BYPASS_REASONS.contains(&reason.as_str()) {
            return Err(ApiError::bad_request(format!(
                "bypass {reason:?}: expected one of {}",
                BYPASS_REASONS.join(", ")
            )));
        }
    }
    let branch = report
        .ref_name
        .strip_prefix("refs/heads/")
        .unwrap_or(&report.ref_name)
        .to_string();
    let secrets = state.secrets().await?;
    let hashes: Vec<String> = report
        .findings
        .iter()
        .map(|f| secrets.secret_hash(f.secret.as_bytes()))
        .collect();
    let reviewed: std::collections::HashSet<String> =
        hooks::reviewed(&state.pool, repository.id, &hashes)
            .await?
            .into_iter()
            .collect();
    let unreviewed: Vec<usize> = (0..hashes.len())
        .filter(|&i| !reviewed.contains(&hashes[i]))
        .collect();
    let actor = format!("hook:{}", report.pusher);
    let target = format!("{}/{}", repository.project_key, repository.slug);
    if let Some(reason) = report.bypass.as_deref().filter(|_| !unreviewed.is_empty()) {
        let mut transaction = state
            .pool
            .begin()
            .await
            .map_err(leakscan_store::StoreError::from)?;
        for &index in &unreviewed {
            let finding = &report.findings[index];
            let fingerprint = secrets.fingerprint(&finding.rule_id, finding.secret.as_bytes());
            audit::record(&mut transaction, &actor, "hook.bypass", &target, &json!({
                "ref": report.ref_name, "commit": finding.commit, "path": finding.path,
                "line": finding.line, "rule": finding.rule_id, "fingerprint": fingerprint, "reason": reason,
            }))
            .await?;
        }
        transaction
            .commit()
            .await
            .map_err(leakscan_store::StoreError::from)?;
        if matches!(reason, "false-positive" | "used-in-tests") {
            let reviews: Vec<_> = unreviewed
                .iter()
                .map(|&index| {
                    let finding = &report.findings[index];
                    leakscan_store::reviews::NewReview {
                        repository: Some(repository.id),
                        secret_hash: hashes[index].clone(),
                        rule: finding.rule_id.clone(),
                        redacted: leakscan_engine::secret::redact(finding.secret.as_bytes()),
                        comment: format!("bypassed at push by {}: {reason}", report.pusher),
                    }
                })
                .collect();
            leakscan_store::reviews::insert_reviews(&state.pool, &actor, &reviews, true).await?;
        }
    }
    if report.over_budget {
        let mut transaction = state
            .pool
            .begin()
            .await
            .map_err(leakscan_store::StoreError::from)?;
        audit::record(
            &mut transaction,
            &actor,
            "hook.over_budget",
            &target,
            &json!({ "ref": report.ref_name }),
        )
        .await?;
        transaction
            .commit()
            .await
            .map_err(leakscan_store::StoreError::from)?;
    }
    // What was let through is scanned as any branch is: its findings are
    // recorded, open or (reviewed above) reviewed.
    let let_through = report.over_budget || (report.bypass.is_some() && !unreviewed.is_empty());
    // Tags and other refs are in no branch scan.
    let is_branch = report.ref_name.starts_with("refs/heads/");
    let scan_key = if let_through && is_branch && !repository.exempt {
        let scope = JobScope::Branch {
            project_key: repository.project_key.clone(),
            slug: repository.slug.clone(),
            branch,
        };
        Some(
            crate::scans::start_job(&state, &actor, scope, Vec::new())
                .await?
                .scan_key,
        )
    } else {
        None
    };
    let result = if report.over_budget {
        HookResult::OverBudget
    } else if unreviewed.is_empty() {
        HookResult::Reviewed
    } else if report.bypass.is_some() {
        HookResult::Bypassed
    } else {
        HookResult::Open
    };
    state.metrics.hook_report(result);
    let recorded = match result {
        HookResult::OverBudget => hooks::PushResult::OverBudget,
        HookResult::Reviewed => hooks::PushResult::Reviewed,
        HookResult::Bypassed => hooks::PushResult::Bypassed,
        HookResult::Open => match hooks::effective(&state.pool, repository.id).await?.mode {
            HookMode::Block => hooks::PushResult::Blocked,
            HookMode::Warn => hooks::PushResult::Warned,
        },
    };
    hooks::record_push(&state.pool, repository.id, recorded).await?;
    Ok(Json(PushDecision {
        unreviewed,
        scan_key,
    }))
}

/// A hook token valid for every repository, for hooks a host administrator
/// installs (shown once).
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let token = hooks::create_token(&state.pool, &caller.0.name, None).await?;
    Ok(Json(json!({ "token": token })))
}
