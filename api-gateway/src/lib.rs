//! `leakscan-gateway`: the REST API. It authenticates callers (HTTP basic
//! auth against PostgreSQL), checks permissions, answers everything a
//! dashboard polls from PostgreSQL, and hands scan requests to the
//! coordinators by recording a job and appending it to the Redis stream.
//!
//! - [`app`] builds the router over an [`AppState`]; tests drive it in
//!   memory or serve it on port 0.
//! - [`run`] serves it until shutdown.
//! - [`catalog::sync_roots`] re-reads the repository roots.

pub mod auth;
pub mod catalog;
pub mod error;
pub mod exports;
pub mod insights;
pub mod keys;
pub mod policy;
pub mod reviews;
pub mod scans;
pub mod users;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post, put},
    Json, Router,
};
use leakscan_store::queue::JobQueue;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// Directories holding `<PROJECT>/<slug>[.git]` repositories.
    pub repos_roots: Vec<PathBuf>,
    /// A prefix for every path, e.g. `/bitbucket` (empty: none).
    pub context_path: String,
    /// The master key of stored secrets (needed to import reviews).
    pub master_key: Option<leakscan_store::secrets::MasterKey>,
}

pub struct AppState {
    pub pool: PgPool,
    pub queue: JobQueue,
    pub config: GatewayConfig,
    pub credentials: auth::CredentialCache,
    /// Set once migrations ran (readiness).
    pub migrated: AtomicBool,
    secrets: tokio::sync::OnceCell<Arc<leakscan_store::secrets::SecretBox>>,
}

impl AppState {
    pub fn new(pool: PgPool, queue: JobQueue, config: GatewayConfig) -> AppState {
        AppState {
            pool,
            queue,
            config,
            credentials: auth::CredentialCache::default(),
            migrated: AtomicBool::new(false),
            secrets: tokio::sync::OnceCell::new(),
        }
    }

    /// The data keys, loaded on first use; without a master key, calls
    /// that need one answer 503.
    pub async fn secrets(
        &self,
    ) -> Result<Arc<leakscan_store::secrets::SecretBox>, error::ApiError> {
        let master = self.config.master_key.clone().ok_or_else(|| {
            error::ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this gateway has no master key (--master-key or --master-key-file)",
            )
        })?;
        self.secrets
            .get_or_try_init(|| async {
                leakscan_store::secrets::SecretBox::load(&self.pool, master)
                    .await
                    .map(Arc::new)
            })
            .await
            .cloned()
            .map_err(error::ApiError::from)
    }
}

/// Every route of the REST API.
pub fn app(state: Arc<AppState>) -> Router {
    let security = "/rest/security/latest";
    let api = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route(
            "/rest/api/latest/projects",
            get(catalog::list_projects).post(catalog::create_project),
        )
        .route(
            "/rest/api/latest/projects/{project}/repos",
            get(catalog::list_repositories).post(catalog::create_repository),
        )
        .route(
            &format!("{security}/admin/catalog/sync"),
            post(catalog::sync_handler),
        )
        .route("/rest/api/latest/admin/users", post(users::create_user))
        .route(
            "/rest/api/latest/admin/permissions/users",
            put(users::grant_global).delete(users::revoke_global),
        )
        .route(
            "/rest/api/latest/projects/{project}/permissions/users",
            put(users::grant_project),
        )
        .route(
            "/rest/api/latest/projects/{project}/repos/{repo}/permissions/users",
            put(users::grant_repository),
        )
        .route(
            &format!("{security}/permissions/users"),
            put(users::grant_security).delete(users::revoke_security),
        )
        .route(
            &format!("{security}/status/total_rescan"),
            put(scans::total_rescan),
        )
        .route(
            &format!("{security}/status/projects/{{project}}"),
            put(scans::project_rescan),
        )
        .route(
            &format!("{security}/status/projects/{{project}}/repos/{{repo}}"),
            put(scans::repository_rescan),
        )
        .route(
            &format!("{security}/status/projects/{{project}}/repos/{{repo}}/branches"),
            put(scans::branch_rescan),
        )
        .route(
            &format!("{security}/status/scheduled"),
            axum::routing::delete(scans::cancel_scheduled),
        )
        .route(
            &format!("{security}/status/running"),
            axum::routing::delete(scans::cancel_running),
        )
        .route(
            "/rest/security/1.0/scan/{project}/repos/{repo}",
            get(scans::scan_status)
                .post(scans::scan_start)
                .delete(scans::scan_cancel),
        )
        .route(&format!("{security}/dashboard"), get(scans::dashboard))
        .route(
            &format!("{security}/dashboard/projects/{{project}}"),
            get(scans::project_dashboard),
        )
        .route(
            &format!("{security}/dashboard/projects/{{project}}/repos/{{repo}}"),
            get(scans::repository_dashboard),
        )
        .route("/rest/security/1.0/rules", get(policy::soteri_rules))
        .route(
            "/rest/security/1.0/export-report/{project}/repos/{repo}",
            get(exports::repository_report),
        )
        .route(
            &format!("{security}/export-report"),
            get(exports::instance_report),
        )
        .route(
            &format!("{security}/export-report/projects/{{project}}"),
            get(exports::project_report),
        )
        .route(
            &format!("{security}/export-report/projects/{{project}}/repos/{{repo}}"),
            get(exports::project_report),
        )
        .route(
            "/rest/security/1.0/hardcoded/{rule}",
            post(policy::enable_builtin).delete(policy::disable_builtin),
        )
        .route(
            "/rest/security/1.0/scan/{project}/rule_types/{repo}",
            get(policy::rule_types),
        )
        .route(
            "/rest/api/latest/projects/{project}/repos/{repo}/secret-scanning/exempt",
            get(policy::repository_exemption)
                .put(policy::exempt_repository)
                .delete(policy::unexempt_repository),
        )
        .route(
            "/rest/api/latest/projects/{project}/secret-scanning/exempt",
            get(policy::list_exempt).post(policy::bulk_exempt),
        )
        .route(
            "/rest/api/latest/secret-scanning/exempt",
            get(policy::list_exempt).post(policy::bulk_exempt),
        )
        .route(&format!("{security}/audit"), get(policy::audit_log))
        .merge(secret_scanning_routes::<false>("rules"))
        .merge(secret_scanning_routes::<true>("allowlist"))
        .merge(insights::routes())
        .route("/rest/secrets/1.0/keys/rotate", post(keys::rotate))
        .route(
            "/rest/secrets/1.0/keys/inactive",
            get(keys::inactive).delete(keys::delete_inactive),
        )
        .route(
            &format!("{security}/reviewed"),
            get(reviews::list_all).post(reviews::create_global),
        )
        .route(
            &format!("{security}/reviewed/import"),
            post(reviews::import),
        )
        .route(
            &format!("{security}/reviewed/{{id}}"),
            axum::routing::delete(reviews::delete),
        )
        .route(
            &format!("{security}/reviewed/projects/{{project}}"),
            get(reviews::list_project),
        )
        .route(
            &format!("{security}/reviewed/projects/{{project}}/repos/{{repo}}"),
            get(reviews::list_repository).post(reviews::create_repository),
        )
        .route(&format!("{security}/export/reviewed"), get(reviews::export))
        .route(
            &format!("{security}/export/reviewed/projects/{{project}}"),
            get(reviews::export),
        )
        .route(
            &format!("{security}/export/reviewed/projects/{{project}}/repos/{{repo}}"),
            get(reviews::export),
        )
        .route(&format!("{security}/jobs"), get(scans::list_jobs))
        .route(
            &format!("{security}/jobs/{{scan_key}}"),
            get(scans::get_job),
        )
        .route(
            &format!("{security}/jobs/{{scan_key}}/events"),
            get(scans::job_events),
        )
        .fallback(not_found)
        .with_state(state.clone());
    let context_path = state.config.context_path.trim_end_matches('/');
    if context_path.is_empty() {
        api
    } else {
        Router::new().nest(context_path, api).fallback(not_found)
    }
}

/// Bitbucket Data Center's rule or allowlist routes at global, project and
/// repository scope.
fn secret_scanning_routes<const ALLOWLIST: bool>(noun: &str) -> Router<Arc<AppState>> {
    let mut router = Router::new();
    for scope in [
        "/rest/api/latest",
        "/rest/api/latest/projects/{project}",
        "/rest/api/latest/projects/{project}/repos/{repo}",
    ] {
        router = router
            .route(
                &format!("{scope}/secret-scanning/{noun}"),
                get(policy::list_rules::<ALLOWLIST>).post(policy::create_rule::<ALLOWLIST>),
            )
            .route(
                &format!("{scope}/secret-scanning/{noun}/{{id}}"),
                get(policy::get_rule::<ALLOWLIST>)
                    .put(policy::update_rule::<ALLOWLIST>)
                    .delete(policy::delete_rule::<ALLOWLIST>),
            );
    }
    router
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("No such resource.")
}

async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "UP"}))
}

/// Ready once the migrations ran and PostgreSQL and Redis answer.
async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let migrated = state.migrated.load(Ordering::SeqCst);
    let postgres = sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(&state.pool)
        .await
        .is_ok();
    let redis = state.queue.ping().await.is_ok();
    let up = migrated && postgres && redis;
    (
        if up {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(json!({
            "status": if up { "UP" } else { "DOWN" },
            "migrations": migrated,
            "postgres": postgres,
            "redis": redis,
        })),
    )
}

/// Serves the API on `listener` until `shutdown`. The caller has run the
/// migrations (and set `state.migrated`).
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Everything the gateway does before it serves: migrations, the bootstrap
/// administrator, the first catalog sync.
pub async fn prepare(
    pool: PgPool,
    queue: JobQueue,
    config: GatewayConfig,
    admin: Option<(String, String)>,
) -> anyhow::Result<Arc<AppState>> {
    use anyhow::Context as _;
    leakscan_store::migrate(&pool)
        .await
        .context("failed to run the database migrations")?;
    if let Some((name, password)) = admin {
        leakscan_store::users::ensure_admin(&pool, &name, &password)
            .await
            .context("failed to create the bootstrap administrator")?;
    }
    let state = Arc::new(AppState::new(pool, queue, config));
    state.migrated.store(true, Ordering::SeqCst);
    if !state.config.repos_roots.is_empty() {
        catalog::sync_roots(&state)
            .await
            .map_err(|error| anyhow::anyhow!("catalog sync: {}", error.message))?;
    }
    Ok(state)
}
