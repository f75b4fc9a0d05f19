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
pub mod bitbucket;
pub mod catalog;
pub mod dashboard;
pub mod error;
pub mod exports;
pub mod hooks;
pub mod insights;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod policy;
pub mod reviews;
pub mod routes;
pub mod scans;
pub mod sources;
pub mod tokens;
pub mod users;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{extract::State, http::StatusCode, Json, Router};
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
    /// Directories besides the roots that registered local clone URLs may
    /// point into.
    pub allowed_local_paths: Vec<PathBuf>,
    /// Hosts registered http(s) clone URLs may name
    /// ([`sources::CloneSources::remote_hosts`]).
    pub allowed_remotes: Vec<String>,
    /// A git credentials file (`https://user:token@host` lines) git reads
    /// for remote repositories.
    pub git_credentials: Option<PathBuf>,
    /// An export whose client reads nothing this long is stopped
    /// ([`exports::STALLED_CLIENT`] by default).
    pub export_stall_timeout: std::time::Duration,
    /// How push protection is installed into repositories under the roots.
    pub hook_install: hooks::HookInstall,
    /// On SIGTERM, how long to go on accepting requests after readiness
    /// turned 503 (`--shutdown-delay`).
    pub shutdown_delay: std::time::Duration,
    /// The Bitbucket server the catalog is synchronised from, if any.
    pub bitbucket: Option<bitbucket::BitbucketSource>,
}

impl GatewayConfig {
    /// The clone URLs this configuration allows.
    pub fn clone_sources(&self) -> sources::CloneSources {
        sources::CloneSources {
            local_roots: self
                .repos_roots
                .iter()
                .chain(&self.allowed_local_paths)
                .cloned()
                .collect(),
            remote_hosts: self.allowed_remotes.clone(),
        }
    }
}

pub struct AppState {
    pub pool: PgPool,
    pub queue: JobQueue,
    pub config: GatewayConfig,
    pub credentials: auth::CredentialCache,
    pub sign_ins: auth::SignInLimits,
    /// Set once migrations ran (readiness).
    pub migrated: AtomicBool,
    /// Places for exports streaming at once.
    pub exports: Arc<tokio::sync::Semaphore>,
    /// Open event streams per user.
    pub event_streams: Arc<scans::StreamCounts>,
    /// Cancelled once the gateway drains (SIGTERM): `/health/ready`
    /// answers 503 and event streams end.
    pub draining: CancellationToken,
    pub metrics: Arc<metrics::GatewayMetrics>,
    /// What `/metrics` is written from.
    pub metrics_text: leakscan_service::ops::Metrics,
    secrets: tokio::sync::OnceCell<Arc<leakscan_store::secrets::SecretBox>>,
}

impl AppState {
    pub fn new(pool: PgPool, queue: JobQueue, config: GatewayConfig) -> AppState {
        let metrics = Arc::new(metrics::GatewayMetrics::default());
        let metrics_text = leakscan_service::ops::Metrics::new(metrics.registry(), "gateway", None);
        AppState {
            pool,
            queue,
            config,
            credentials: auth::CredentialCache::default(),
            sign_ins: auth::SignInLimits::default(),
            migrated: AtomicBool::new(false),
            exports: Arc::new(tokio::sync::Semaphore::new(exports::MAX_CONCURRENT_EXPORTS)),
            event_streams: Arc::default(),
            draining: CancellationToken::new(),
            metrics,
            metrics_text,
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

/// Every route of the REST API ([`routes::routes`]), each behind its
/// permission check.
pub fn app(state: Arc<AppState>) -> Router {
    let api = routes::router(&state)
        .fallback(not_found)
        .with_state(state.clone());
    let context_path = state.config.context_path.trim_end_matches('/');
    let app = if context_path.is_empty() {
        api
    } else {
        Router::new().nest(context_path, api).fallback(not_found)
    };
    app.layer(axum::middleware::from_fn(xsrf))
        .layer(axum::middleware::from_fn(dashboard::no_browser_prompt))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// The largest request body (JSON, CSV imports): larger answers 413.
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// How long a handler may take to answer (a streamed body may take longer).
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Every request: a handler that does not answer within
/// [`REQUEST_TIMEOUT`] answers 503, and one that panics answers 500 (the
/// panic is logged) instead of taking the connection down. Each answer is
/// counted in `leakscan_http_requests_total` and traced.
async fn guard(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures::FutureExt as _;
    use tracing::Instrument as _;
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    // One span per request (the path, never the query: it may carry
    // values); it continues a caller's trace given in `traceparent`.
    let span = tracing::info_span!("request", %method, %path, status = tracing::field::Empty);
    leakscan_service::telemetry::continue_trace(
        &span,
        request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
    );
    let answer =
        std::panic::AssertUnwindSafe(next.run(request).instrument(span.clone())).catch_unwind();
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => {
            tracing::error!(%method, %path, "a request handler panicked");
            error::ApiError::internal().into_response()
        }
        Err(_) => {
            tracing::warn!(%method, %path, "a request timed out");
            error::ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the request took longer than {} seconds",
                    REQUEST_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
    };
    let status = response.status().as_u16();
    span.record("status", status);
    state.metrics.request(method.as_str(), status);
    response
}

/// XSRF (DESIGN §7): a state-changing request whose `Origin` is another
/// site's answers 403, unless it sends `X-Atlassian-Token: no-check` as
/// Bitbucket's clients do. Requests without `Origin` (scripts, CLIs) pass.
async fn xsrf(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::{http::Method, response::IntoResponse};
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let headers = request.headers();
    let no_check = headers
        .get("x-atlassian-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("no-check"));
    if safe || no_check {
        return next.run(request).await;
    }
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if !same_origin(origin.to_str().ok(), host) {
            return error::ApiError::forbidden(
                "XSRF check failed: a request from another site must send X-Atlassian-Token: no-check",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Whether `origin` (`scheme://host[:port]`) names the host the request
/// was sent to.
fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    let (Some(origin), Some(host)) = (origin, host) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let with_port = |authority: &str| {
        let authority = authority.trim_end_matches('/').to_ascii_lowercase();
        if authority.rsplit_once(':').is_some_and(|(_, port)| {
            port.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
        }) {
            authority
        } else {
            format!("{authority}:{default_port}")
        }
    };
    with_port(authority) == with_port(host)
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("No such resource.")
}

pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(json!({"status": "UP"}))
}

/// Ready once the migrations ran and PostgreSQL and Redis answer, until
/// the gateway drains.
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> axum::response::Response {
    let migrated = state.migrated.load(Ordering::SeqCst);
    let postgres = sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(&state.pool)
        .await
        .is_ok();
    let redis = state.queue.ping().await.is_ok();
    let draining = state.draining.is_cancelled();
    leakscan_service::ops::ready_response(
        migrated && postgres && redis && !draining,
        json!({
            "migrations": migrated,
            "postgres": postgres,
            "redis": redis,
            "draining": draining,
        }),
    )
}

/// Serves the API on `listener` until `shutdown`. The caller has run the
/// migrations (and set `state.migrated`). On `shutdown` the gateway
/// drains: `/health/ready` answers 503 and event streams end at once; it
/// goes on accepting requests for `config.shutdown_delay` (while a load
/// balancer takes it out), then stops accepting and finishes the requests
/// in flight.
pub async fn run(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stop_accepting = CancellationToken::new();
    let syncing = tokio::spawn(bitbucket::sync_periodically(
        Arc::clone(&state),
        state.draining.clone(),
    ));
    let drain = tokio::spawn({
        let (state, stop_accepting) = (Arc::clone(&state), stop_accepting.clone());
        async move {
            shutdown.cancelled().await;
            state.draining.cancel();
            tracing::info!(
                delay_secs = state.config.shutdown_delay.as_secs_f64(),
                "draining: readiness answers 503"
            );
            tokio::time::sleep(state.config.shutdown_delay).await;
            stop_accepting.cancel();
        }
    });
    // The client's address throttles failed sign-ins from it.
    let served = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop_accepting.cancelled().await })
    .await;
    drain.abort();
    syncing.abort();
    served
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
    // Credentials left inside old clone URLs move out of them (the
    // coordinator does the same when it leads), so that no answer shows
    // one (docs/ARCHITECTURE.md, "Clone sources").
    if state.config.master_key.is_some() {
        let secrets = state
            .secrets()
            .await
            .map_err(|error| anyhow::anyhow!("loading the data keys: {}", error.message))?;
        let moved =
            leakscan_store::clone_credentials::move_out_of_urls(&state.pool, &secrets, "gateway")
                .await
                .context("failed to move credentials out of clone URLs")?;
        for entry in moved {
            tracing::warn!(repository = %entry.repository, origin = %entry.origin,
                "moved a credential out of the repository's clone URL into encrypted storage");
        }
    }
    state.migrated.store(true, Ordering::SeqCst);
    if !state.config.repos_roots.is_empty() {
        catalog::sync_roots(&state)
            .await
            .map_err(|error| anyhow::anyhow!("catalog sync: {}", error.message))?;
    }
    Ok(state)
}
