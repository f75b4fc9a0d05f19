//! Every route of the REST API in one table: method, path, the permission it
//! needs, what it does, its query parameters and body. The router is built
//! from this table only (a route cannot exist without its entry), the
//! permission is checked by one layer from the entry before the handler
//! runs, and the OpenAPI document (`/rest/openapi.json`) is generated from
//! the same entries, so none of the three can drift from the others.
//!
//! Handlers still narrow what a caller sees (the projects listed, a job
//! that is someone else's), and fetch the repository they work on.

use std::sync::Arc;

use axum::{
    extract::{RawPathParams, Request, State},
    handler::Handler,
    http::{request::Parts, Method},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{self, MethodRouter},
    Router,
};
use leakscan_store::{catalog::Repository, users::Access};

use crate::{
    auth::Caller, bitbucket, catalog, dashboard, error::ApiError, exports, hooks, insights, keys,
    openapi, policy, reviews, scans, users, AppState,
};

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anyone, without credentials.
    Public,
    /// Any authenticated user; the handler shows only what they may see.
    User,
    /// A system administrator.
    SysAdmin,
    /// A system administrator or a user with the security grant.
    Security,
    /// At least this access to the path's `{project}` (404 without read).
    Project(Access),
    /// The security grant (or a system administrator), or at least this
    /// access to the path's `{project}` (404 without either).
    ProjectOrSecurity(Access),
    /// At least this access to the path's `{project}`/`{repo}` (404 without read).
    Repository(Access),
    /// The user the path's `{user}` names, or a system administrator.
    OwnUser,
    /// An installed pre-receive hook's token for the path's
    /// `{project}`/`{repo}` (or a global one), or repository admin.
    Hook,
}

impl Permission {
    /// How the OpenAPI document and the README name it.
    pub fn describe(self) -> &'static str {
        match self {
            Permission::Public => "anyone",
            Permission::User => "any authenticated user",
            Permission::SysAdmin => "system administrator",
            Permission::Security => "system administrator or security grant",
            Permission::Project(Access::Admin) => "project admin",
            Permission::Project(Access::Write) => "project write",
            Permission::Project(_) => "project read",
            Permission::ProjectOrSecurity(Access::Admin) => "project admin or security grant",
            Permission::ProjectOrSecurity(Access::Write) => "project write or security grant",
            Permission::ProjectOrSecurity(_) => "project read or security grant",
            Permission::Repository(Access::Admin) => "repository admin",
            Permission::Repository(Access::Write) => "repository write",
            Permission::Repository(_) => "repository read",
            Permission::OwnUser => "the path's user or system administrator",
            Permission::Hook => "repository admin or hook token",
        }
    }
}

/// What a route's request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// JSON of the named schema in the OpenAPI document's components.
    Json(&'static str),
    /// The same, read as JSON whatever the `Content-Type` says or without
    /// one (Bitbucket Data Center's secret-scanning endpoints consume `*/*`).
    AnyJson(&'static str),
    Csv,
}

/// One row of the table.
pub struct Route {
    pub method: Method,
    pub path: String,
    pub permission: Permission,
    pub summary: &'static str,
    /// Query parameter names; a trailing `!` marks a required one.
    pub query: &'static [&'static str],
    pub body: Body,
    handler: MethodRouter<Arc<AppState>>,
}

impl Route {
    fn new(
        method: Method,
        path: impl Into<String>,
        permission: Permission,
        summary: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Route {
        Route {
            method,
            path: path.into(),
            permission,
            summary,
            query: &[],
            body: Body::None,
            handler,
        }
    }

    fn query(mut self, query: &'static [&'static str]) -> Route {
        self.query = query;
        self
    }

    /// A JSON body of the named schema (`openapi::body_schemas`).
    fn json(mut self, schema: &'static str) -> Route {
        self.body = Body::Json(schema);
        self
    }

    /// A JSON body of the named schema, whatever its content type says.
    fn any_json(mut self, schema: &'static str) -> Route {
        self.body = Body::AnyJson(schema);
        self
    }

    fn csv(mut self) -> Route {
        self.body = Body::Csv;
        self
    }
}

/// A route for `method` (GET, POST, PUT or DELETE).
fn on<H: Handler<T, Arc<AppState>>, T: 'static>(
    method: Method,
    path: impl Into<String>,
    permission: Permission,
    summary: &'static str,
    handler: H,
) -> Route {
    let filter = routing::MethodFilter::try_from(method.clone()).expect("a standard method");
    Route::new(
        method,
        path,
        permission,
        summary,
        routing::on(filter, handler),
    )
}

fn get<H: Handler<T, Arc<AppState>>, T: 'static>(
    path: impl Into<String>,
    permission: Permission,
    summary: &'static str,
    handler: H,
) -> Route {
    on(Method::GET, path, permission, summary, handler)
}

fn post<H: Handler<T, Arc<AppState>>, T: 'static>(
    path: impl Into<String>,
    permission: Permission,
    summary: &'static str,
    handler: H,
) -> Route {
    on(Method::POST, path, permission, summary, handler)
}

fn put<H: Handler<T, Arc<AppState>>, T: 'static>(
    path: impl Into<String>,
    permission: Permission,
    summary: &'static str,
    handler: H,
) -> Route {
    on(Method::PUT, path, permission, summary, handler)
}

fn delete<H: Handler<T, Arc<AppState>>, T: 'static>(
    path: impl Into<String>,
    permission: Permission,
    summary: &'static str,
    handler: H,
) -> Route {
    on(Method::DELETE, path, permission, summary, handler)
}

const PAGE: &[&str] = &["start", "limit"];
const EMAIL: &[&str] = &["email"];

/// The table.
pub fn routes() -> Vec<Route> {
    use Access::{Admin, Read, Write};
    use Permission::{Project, ProjectOrSecurity, Public, Repository, Security, SysAdmin, User};
    let security = "/rest/security/latest";
    let mut routes = vec![
        get("/health/live", Public, "Liveness", crate::live),
        get("/health/ready", Public, "Readiness: migrations ran, PostgreSQL and Redis answer", crate::ready),
        get("/metrics", Public, "Metrics in Prometheus (OpenMetrics) text", crate::metrics::metrics),
        get("/rest/openapi.json", Public, "This API's OpenAPI 3 document", openapi::document),
        // The dashboard page and its sign-in (docs/ARCHITECTURE.md, "The dashboard page")
        get("/dashboard", Public, "The dashboard page (HTML)", dashboard::page),
        get("/dashboard/app.js", Public, "The dashboard page's script", dashboard::script),
        get("/dashboard/app.css", Public, "The dashboard page's style sheet", dashboard::style),
        post("/rest/dashboard/latest/session", Public, "Sign in to the dashboard page: sets its session cookie", dashboard::sign_in).json("SignIn"),
        get("/rest/dashboard/latest/session", User, "The signed-in user", dashboard::current),
        delete("/rest/dashboard/latest/session", Public, "Sign out of the dashboard page", dashboard::sign_out),
        // Catalog
        get("/rest/api/latest/projects", User, "Projects the caller may read", catalog::list_projects).query(PAGE),
        post("/rest/api/latest/projects", SysAdmin, "Create a project", catalog::create_project).json("NewProject"),
        get("/rest/api/latest/projects/{project}/repos", Project(Read), "Repositories of a project the caller may read", catalog::list_repositories).query(PAGE),
        post("/rest/api/latest/projects/{project}/repos", Project(Admin), "Register a repository (clone URL or path)", catalog::create_repository).json("NewRepository"),
        post(format!("{security}/admin/catalog/sync"), SysAdmin, "Re-read the repository roots and sync from the configured Bitbucket server", catalog::sync_handler),
        get(format!("{security}/admin/catalog/sync"), SysAdmin, "The configured Bitbucket server and each source's last sync", bitbucket::last_sync_handler),
        // Users and permissions
        post("/rest/api/latest/admin/users", SysAdmin, "Create a user", users::create_user)
            .query(&["name!", "password!", "displayName", "emailAddress"]),
        put("/rest/api/latest/admin/permissions/users", SysAdmin, "Grant a global permission", users::grant_global).query(&["name!", "permission!"]),
        delete("/rest/api/latest/admin/permissions/users", SysAdmin, "Revoke a global permission", users::revoke_global).query(&["name!", "permission!"]),
        put("/rest/api/latest/projects/{project}/permissions/users", Project(Admin), "Grant a project permission", users::grant_project).query(&["name!", "permission!"]),
        delete("/rest/api/latest/projects/{project}/permissions/users", Project(Admin), "Revoke a user's project permission", users::revoke_project).query(&["name!"]),
        put("/rest/api/latest/projects/{project}/repos/{repo}/permissions/users", Repository(Admin), "Grant a repository permission", users::grant_repository).query(&["name!", "permission!"]),
        delete("/rest/api/latest/projects/{project}/repos/{repo}/permissions/users", Repository(Admin), "Revoke a user's repository permission", users::revoke_repository).query(&["name!"]),
        put(format!("{security}/permissions/users"), SysAdmin, "Give a user the security grant", users::grant_security).query(&["name!"]),
        delete(format!("{security}/permissions/users"), SysAdmin, "Take the security grant from a user", users::revoke_security).query(&["name!"]),
        // Scans
        put(format!("{security}/status/total_rescan"), Security, "Rescan every repository", scans::total_rescan).query(EMAIL),
        put(format!("{security}/status/projects/{{project}}"), ProjectOrSecurity(Admin), "Rescan a project", scans::project_rescan).query(EMAIL),
        put(format!("{security}/status/projects/{{project}}/repos/{{repo}}"), Repository(Write), "Rescan a repository", scans::repository_rescan).query(EMAIL),
        put(format!("{security}/status/projects/{{project}}/repos/{{repo}}/branches"), Repository(Write), "Rescan a branch", scans::branch_rescan).query(&["name!", "email"]),
        delete(format!("{security}/status/scheduled"), SysAdmin, "Cancel queued jobs", scans::cancel_scheduled),
        delete(format!("{security}/status/running"), SysAdmin, "Cancel running jobs", scans::cancel_running),
        get(format!("{security}/schedule"), SysAdmin, "The total-rescan schedule (cron, UTC) and its next run", scans::get_schedule),
        put(format!("{security}/schedule"), SysAdmin, "Set the total-rescan schedule: {\"cron\": \"0 2 * * *\"} (UTC)", scans::put_schedule).json("NewSchedule"),
        delete(format!("{security}/schedule"), SysAdmin, "Remove the total-rescan schedule", scans::delete_schedule),
        get("/rest/security/1.0/scan/{project}/repos/{repo}", Repository(Read), "A branch's scan status and findings", scans::scan_status)
            .query(&["branch", "includeWhitelisted", "rule"]),
        post("/rest/security/1.0/scan/{project}/repos/{repo}", Repository(Write), "Start a branch scan", scans::scan_start).query(&["branch"]),
        delete("/rest/security/1.0/scan/{project}/repos/{repo}", Repository(Write), "Cancel a scan", scans::scan_cancel).query(&["scanKey"]),
        get(format!("{security}/dashboard"), Security, "Every project's status", scans::dashboard),
        get(format!("{security}/dashboard/projects/{{project}}"), Project(Read), "A project's repositories and their status", scans::project_dashboard),
        get(format!("{security}/dashboard/projects/{{project}}/repos/{{repo}}"), Repository(Read), "A repository's branches and their status", scans::repository_dashboard),
        get(format!("{security}/jobs"), User, "Jobs (the caller's own; all for administrators)", scans::list_jobs).query(PAGE),
        get(format!("{security}/jobs/{{scan_key}}"), User, "A job's state and progress", scans::get_job),
        get(format!("{security}/jobs/{{scan_key}}/events"), User, "A job's progress as Server-Sent Events", scans::job_events),
        // Policy
        get("/rest/security/1.0/rules", User, "Built-in and custom rules", policy::soteri_rules),
        post("/rest/security/1.0/hardcoded/{rule}", Security, "Switch a built-in rule on", policy::enable_builtin),
        delete("/rest/security/1.0/hardcoded/{rule}", Security, "Switch a built-in rule off", policy::disable_builtin),
        get("/rest/security/1.0/scan/{project}/rule_types/{repo}", Repository(Read), "Rule names that apply to a branch", policy::rule_types).query(&["branch"]),
        get("/rest/api/latest/projects/{project}/repos/{repo}/secret-scanning/exempt", Repository(Read), "Whether a repository is exempt: the body is true or false", policy::repository_exemption),
        put("/rest/api/latest/projects/{project}/repos/{repo}/secret-scanning/exempt", Repository(Admin), "Exempt a repository", policy::exempt_repository),
        delete("/rest/api/latest/projects/{project}/repos/{repo}/secret-scanning/exempt", Repository(Admin), "Scan a repository again", policy::unexempt_repository),
        get("/rest/api/latest/projects/{project}/secret-scanning/exempt", Project(Read), "A project's exempt repositories: Bitbucket repository objects by project name, then repository name", policy::list_exempt).query(&["start", "limit", "order"]),
        post("/rest/api/latest/projects/{project}/secret-scanning/exempt", Project(Admin), "Exempt repositories of a project", policy::bulk_exempt).any_json("RepositorySelectors"),
        get("/rest/api/latest/secret-scanning/exempt", Security, "Every exempt repository: Bitbucket repository objects by project name, then repository name", policy::list_exempt).query(&["start", "limit", "order"]),
        post("/rest/api/latest/secret-scanning/exempt", Security, "Exempt repositories", policy::bulk_exempt).any_json("RepositorySelectors"),
        get(format!("{security}/audit"), Security, "The audit log", policy::audit_log).query(PAGE),
        // Reviews
        get(format!("{security}/reviewed"), Security, "Every review", reviews::list_all).query(PAGE),
        post(format!("{security}/reviewed"), Security, "Mark a secret reviewed everywhere", reviews::create_global).json("NewReview"),
        post(format!("{security}/reviewed/import"), Security, "Import reviews from CSV: a reviews export as it is (its secretHash column), or plain secrets", reviews::import).csv(),
        delete(format!("{security}/reviewed/{{id}}"), User, "Unmark a review (security grant for a global one, repository write for a repository's)", reviews::delete),
        get(format!("{security}/reviewed/projects/{{project}}"), Project(Read), "A project's reviews", reviews::list_project).query(PAGE),
        get(format!("{security}/reviewed/projects/{{project}}/repos/{{repo}}"), Repository(Read), "A repository's reviews", reviews::list_repository).query(PAGE),
        post(format!("{security}/reviewed/projects/{{project}}/repos/{{repo}}"), Repository(Write), "Mark a secret reviewed in a repository", reviews::create_repository).json("NewReview"),
        get(format!("{security}/export/reviewed"), Security, "Every review as CSV", reviews::export),
        get(format!("{security}/export/reviewed/projects/{{project}}"), Project(Read), "A project's reviews as CSV", reviews::export),
        get(format!("{security}/export/reviewed/projects/{{project}}/repos/{{repo}}"), Repository(Read), "A repository's reviews as CSV", reviews::export),
        // Exports
        get("/rest/security/1.0/export-report/{project}/repos/{repo}", Repository(Read), "A repository's findings as CSV", exports::repository_report)
            .query(&["branch", "includeWhitelisted", "ruleType"]),
        get(format!("{security}/export-report"), Security, "Every repository's findings: a zip of CSVs", exports::instance_report)
            .query(&["confirmExpensiveOperation!", "startDate", "endDate", "includeWhitelisted"]),
        get(format!("{security}/export-report/projects/{{project}}"), Project(Read), "A project's findings as CSV", exports::project_report)
            .query(&["branch", "startDate", "endDate", "includeWhitelisted"]),
        get(format!("{security}/export-report/projects/{{project}}/repos/{{repo}}"), Repository(Read), "A repository's findings as CSV", exports::project_report)
            .query(&["branch", "startDate", "endDate", "includeWhitelisted"]),
        // Personal access tokens
        put("/rest/access-tokens/latest/users/{user}", Permission::OwnUser, "Make an access token (its value is in this answer only)", crate::tokens::create).json("NewToken"),
        get("/rest/access-tokens/latest/users/{user}", Permission::OwnUser, "A user's access tokens", crate::tokens::list).query(PAGE),
        delete("/rest/access-tokens/latest/users/{user}/{token}", Permission::OwnUser, "Delete an access token", crate::tokens::delete),
        // Push protection (Bitbucket's hook settings paths, Soteri's hook key)
        get("/rest/api/latest/projects/{project}/repos/{repo}/settings/hooks/{hook}", Repository(Read), "The push-protection hook of a repository", hooks::repository_hook),
        get("/rest/api/latest/projects/{project}/repos/{repo}/settings/hooks/{hook}/enabled", Repository(Read), "Whether push protection is on for a repository (own, project or global setting)", hooks::repository_hook),
        put("/rest/api/latest/projects/{project}/repos/{repo}/settings/hooks/{hook}/enabled", Repository(Admin), "Turn push protection on for a repository (optional body: {\"mode\": \"block\"|\"warn\"})", hooks::enable_repository).any_json("HookSettings"),
        delete("/rest/api/latest/projects/{project}/repos/{repo}/settings/hooks/{hook}/enabled", Repository(Admin), "Turn push protection off for a repository", hooks::disable_repository),
        get("/rest/api/latest/projects/{project}/settings/hooks/{hook}", Project(Read), "A project's push-protection default", hooks::project_hook),
        get("/rest/api/latest/projects/{project}/settings/hooks/{hook}/enabled", Project(Read), "A project's push-protection default", hooks::project_hook),
        put("/rest/api/latest/projects/{project}/settings/hooks/{hook}/enabled", Project(Admin), "Turn push protection on for a project's repositories that set nothing themselves", hooks::enable_project).any_json("HookSettings"),
        delete("/rest/api/latest/projects/{project}/settings/hooks/{hook}/enabled", Project(Admin), "Turn push protection off for a project's repositories that set nothing themselves", hooks::disable_project),
        get("/rest/api/latest/settings/hooks/{hook}", User, "The instance's push-protection default", hooks::global_hook),
        get("/rest/api/latest/settings/hooks/{hook}/enabled", User, "The instance's push-protection default", hooks::global_hook),
        put("/rest/api/latest/settings/hooks/{hook}/enabled", SysAdmin, "Turn push protection on for repositories whose project and themselves set nothing", hooks::enable_global).any_json("HookSettings"),
        delete("/rest/api/latest/settings/hooks/{hook}/enabled", SysAdmin, "Turn push protection off for repositories whose project and themselves set nothing", hooks::disable_global),
        get(format!("{security}/hook/projects/{{project}}/repos/{{repo}}"), Permission::Hook, "An installed hook's setting and base policy", hooks::hook_settings),
        post(format!("{security}/hook/projects/{{project}}/repos/{{repo}}/push"), Permission::Hook, "An installed hook's report of a push: which findings are not reviewed; bypasses and pushes over budget are audited", hooks::hook_push).json("HookPush"),
        post(format!("{security}/hook/tokens"), SysAdmin, "A hook token for every repository (for hooks a host administrator installs; shown once)", hooks::create_token),
        // Secret keys
        post("/rest/secrets/1.0/keys/rotate", SysAdmin, "Rotate the data key, re-encrypting every stored secret", keys::rotate),
        get("/rest/secrets/1.0/keys/inactive", SysAdmin, "Inactive data keys", keys::inactive),
        delete("/rest/secrets/1.0/keys/inactive", SysAdmin, "Delete inactive keys no secret uses", keys::delete_inactive),
    ];
    routes.extend(secret_scanning_routes::<false>("rules"));
    routes.extend(secret_scanning_routes::<true>("allowlist"));
    routes.extend(insight_routes::<false>(
        "/2.0/repositories/{project}/{repo}/commit/{commit}/reports",
    ));
    for version in ["latest", "1.0"] {
        routes.extend(insight_routes::<true>(&format!(
            "/rest/insights/{version}/projects/{{project}}/repos/{{repo}}/commits/{{commit}}/reports"
        )));
    }
    routes
}

/// Bitbucket Data Center's rule or allowlist routes at global, project and
/// repository scope.
fn secret_scanning_routes<const ALLOWLIST: bool>(noun: &'static str) -> Vec<Route> {
    use Access::{Admin, Read};
    // Bitbucket documents the project scope's delete alone as answering
    // 204 also for an id "not found at this location".
    let delete_rule = "Delete a rule";
    let scopes = [
        (
            "/rest/api/latest",
            Permission::User,
            Permission::Security,
            delete_rule,
        ),
        (
            "/rest/api/latest/projects/{project}",
            Permission::Project(Read),
            Permission::Project(Admin),
            "Delete a rule (204 also when this project has no rule of that id)",
        ),
        (
            "/rest/api/latest/projects/{project}/repos/{repo}",
            Permission::Repository(Read),
            Permission::Repository(Admin),
            delete_rule,
        ),
    ];
    let mut routes = Vec::new();
    for (scope, read, change, delete_summary) in scopes {
        let list = format!("{scope}/secret-scanning/{noun}");
        let one = format!("{list}/{{id}}");
        routes.extend([
            get(
                &list,
                read,
                "List rules of this scope",
                policy::list_rules::<ALLOWLIST>,
            )
            .query(&["start", "limit", "filter", "order"]),
            post(
                &list,
                change,
                "Create a rule in this scope",
                policy::create_rule::<ALLOWLIST>,
            )
            .any_json("NewRule"),
            get(&one, read, "A rule", policy::get_rule::<ALLOWLIST>),
            put(
                &one,
                change,
                "Update a rule",
                policy::update_rule::<ALLOWLIST>,
            )
            .any_json("Rule"),
            delete(
                &one,
                change,
                delete_summary,
                policy::delete_rule::<ALLOWLIST>,
            ),
        ]);
    }
    routes
}

/// Code Insights routes in one shape (`DC`: Data Center's).
fn insight_routes<const DC: bool>(base: &str) -> Vec<Route> {
    use Access::{Read, Write};
    use Permission::Repository;
    let paging: &'static [&'static str] = if DC { PAGE } else { &["page", "pagelen"] };
    let report = format!("{base}/{{report}}");
    let annotations = format!("{report}/annotations");
    let annotation = format!("{annotations}/{{annotation}}");
    vec![
        get(
            base,
            Repository(Read),
            "Reports on a commit",
            insights::list_reports::<DC>,
        )
        .query(paging),
        get(
            &report,
            Repository(Read),
            "A report",
            insights::get_report::<DC>,
        ),
        put(
            &report,
            Repository(Write),
            "Create or replace a report",
            insights::put_report::<DC>,
        )
        .json(if DC { "DcReport" } else { "CloudReport" }),
        delete(
            &report,
            Repository(Write),
            "Delete a report and its annotations",
            insights::delete_report::<DC>,
        ),
        get(
            &annotations,
            Repository(Read),
            "A report's annotations",
            insights::list_annotations::<DC>,
        )
        .query(paging),
        post(
            &annotations,
            Repository(Write),
            "Create or update up to 100 annotations",
            insights::post_annotations::<DC>,
        )
        .json(if DC {
            "DcAnnotations"
        } else {
            "CloudAnnotations"
        }),
        delete(
            &annotations,
            Repository(Write),
            "Delete a report's annotations",
            insights::delete_annotations::<DC>,
        )
        .query(if DC { &["externalId"] } else { &[] }),
        get(
            &annotation,
            Repository(Read),
            "An annotation",
            insights::get_annotation::<DC>,
        ),
        put(
            &annotation,
            Repository(Write),
            "Create or update an annotation",
            insights::put_annotation::<DC>,
        )
        .json(if DC {
            "DcAnnotation"
        } else {
            "CloudAnnotation"
        }),
        delete(
            &annotation,
            Repository(Write),
            "Delete an annotation",
            insights::delete_annotation::<DC>,
        ),
    ]
}

/// The router of the table, each route behind its permission check.
pub fn router(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    let routes = routes();
    let taken: std::collections::HashSet<(Method, String)> = routes
        .iter()
        .map(|route| (route.method.clone(), route.path.clone()))
        .collect();
    let mut router = Router::new();
    for route in routes {
        let handler = if route.permission == Permission::Public {
            route.handler
        } else {
            route.handler.route_layer(middleware::from_fn_with_state(
                (state.clone(), route.permission),
                enforce,
            ))
        };
        // Bitbucket serves every REST path under `latest` and under its
        // version number, and Soteri's document mixes `1.0` and `latest`:
        // each route answers under the other one too, unless the table has
        // a route of its own there.
        if let Some(alias) = version_alias(&route.path) {
            if !taken.contains(&(route.method.clone(), alias.clone())) {
                router = router.route(&alias, handler.clone());
            }
        }
        router = router.route(&route.path, handler);
    }
    router
}

/// The same path under the other version segment (`latest` ↔ `1.0`) of
/// `/rest/api/`, `/rest/security/` and `/rest/access-tokens/`.
fn version_alias(path: &str) -> Option<String> {
    for base in ["/rest/api/", "/rest/security/", "/rest/access-tokens/"] {
        if let Some(rest) = path.strip_prefix(base) {
            let (version, tail) = rest.split_once('/')?;
            let other = match version {
                "latest" => "1.0",
                "1.0" => "latest",
                _ => return None,
            };
            return Some(format!("{base}{other}/{tail}"));
        }
    }
    None
}

/// The user a request was authenticated as, for the handler's `Caller`.
#[derive(Clone)]
pub(crate) struct Authenticated(pub Caller);

/// The path's `{project}`/`{repo}` as the permission layer resolved it on a
/// route with [`Permission::Repository`]: the caller has at least the
/// route's access to it. Handlers take it instead of asking the store again
/// (one access query per request, not two).
#[derive(Clone)]
pub struct PathRepository(pub Repository);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathRepository {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        // Only a route whose entry says `Permission::Repository` has one: a
        // handler asking for it elsewhere is a programming error, not the
        // caller's.
        parts
            .extensions
            .get::<PathRepository>()
            .cloned()
            .ok_or_else(ApiError::internal)
    }
}

/// Authenticates the caller and checks the route's permission.
async fn enforce(
    State((state, permission)): State<(Arc<AppState>, Permission)>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let params = match params {
        Ok(params) => params,
        Err(rejection) => return ApiError::bad_request(rejection.body_text()).into_response(),
    };
    let (mut parts, body) = request.into_parts();
    if permission == Permission::Hook {
        match hook_token_repository(&state, &params, &parts).await {
            Ok(Some(repository)) => {
                parts.extensions.insert(PathRepository(repository));
                return next.run(Request::from_parts(parts, body)).await;
            }
            Ok(None) => {}
            Err(error) => return error.into_response(),
        }
    }
    match check(&state, permission, &params, &mut parts).await {
        Ok(caller) => {
            parts.extensions.insert(Authenticated(caller));
            next.run(Request::from_parts(parts, body)).await
        }
        Err(error) => error.into_response(),
    }
}

async fn check(
    state: &Arc<AppState>,
    permission: Permission,
    params: &RawPathParams,
    parts: &mut Parts,
) -> Result<Caller, ApiError> {
    use axum::extract::FromRequestParts as _;
    let caller = Caller::from_request_parts(parts, state).await?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
            .ok_or_else(ApiError::internal)
    };
    match permission {
        Permission::Public | Permission::User => {}
        Permission::SysAdmin => caller.require_sys_admin()?,
        Permission::Security => caller.require_security()?,
        Permission::Project(access) => caller.project(state, &param("project")?, access).await?,
        Permission::ProjectOrSecurity(access) => {
            caller
                .project_or_security(state, &param("project")?, access)
                .await?
        }
        Permission::OwnUser => {
            if caller.0.name != param("user")? {
                caller.require_sys_admin()?;
            }
        }
        Permission::Repository(access) => {
            let repository = caller
                .repository(state, &param("project")?, &param("repo")?, access)
                .await?;
            parts.extensions.insert(PathRepository(repository));
        }
        Permission::Hook => {
            let repository = caller
                .repository(state, &param("project")?, &param("repo")?, Access::Admin)
                .await?;
            parts.extensions.insert(PathRepository(repository));
        }
    }
    Ok(caller)
}

/// The path's repository when the request carries a hook token valid for
/// it (`None`: no hook token; the caller is then checked as a user).
async fn hook_token_repository(
    state: &Arc<AppState>,
    params: &RawPathParams,
    parts: &Parts,
) -> Result<Option<Repository>, ApiError> {
    let Some(token) = crate::auth::bearer_token(parts).filter(|token| token.starts_with("lsh_"))
    else {
        return Ok(None);
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
            .unwrap_or_default()
    };
    let repository =
        leakscan_store::catalog::find_repository(&state.pool, &param("project"), &param("repo"))
            .await?
            .ok_or_else(ApiError::unauthorized)?;
    if leakscan_store::hooks::token_allows(&state.pool, &token, repository.id).await? {
        Ok(Some(repository))
    } else {
        Err(ApiError::unauthorized())
    }
}
