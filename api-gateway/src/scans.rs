//! Scan requests and their progress: Soteri's mass-scanning API
//! (`/rest/security/latest/status/...`), Soteri's per-branch scan API
//! (`/rest/security/1.0/scan/...`) and our jobs API with live events.

use crate::routes::PathRepository;
use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use axum::{
    extract::{RawQuery, State},
    http::StatusCode,
    response::sse::{Event, KeepAlive, Sse},
    Json,
};
use chrono::{DateTime, Utc};
use futures::Stream;
use leakscan_store::{
    catalog::Repository,
    findings::{self, ReportedFinding},
    hooks::PushCounts,
    jobs::{self, Job, JobScope},
    policy, tasks,
    users::Access,
    Page,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    auth::Caller,
    catalog::Paging,
    error::{ApiError, PathParams, QueryParams},
    AppState,
};

/// A job as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    scan_key: String,
    scope: String,
    project: Option<String>,
    repository: Option<String>,
    branch: Option<String>,
    state: String,
    progress: i32,
    running: bool,
    scheduled: bool,
    tasks_total: i32,
    tasks_done: i32,
    /// Blobs the job's tasks read from git (those whose result was already
    /// known are not counted).
    blobs_read: i64,
    requested_by: String,
    emails: Vec<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<Vec<jobs::FailedTask>>,
}

impl From<Job> for JobView {
    fn from(job: Job) -> JobView {
        JobView {
            progress: job.progress(),
            running: job.state == "running",
            scheduled: job.state == "queued",
            scan_key: job.scan_key,
            scope: job.scope,
            project: job.project_key,
            repository: job.repository_slug,
            branch: job.branch,
            state: job.state,
            tasks_total: job.tasks_total,
            tasks_done: job.tasks_done,
            blobs_read: job.blobs_read,
            requested_by: job.requested_by,
            emails: job.emails,
            created_at: job.created_at,
            started_at: job.started_at,
            finished_at: job.finished_at,
            failures: None,
        }
    }
}

/// Query parameters that may repeat (`email=a&email=b`).
pub(crate) fn query_values(query: &Option<String>) -> HashMap<String, Vec<String>> {
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        values
            .entry(key.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    values
}

fn emails(query: &HashMap<String, Vec<String>>) -> Result<Vec<String>, ApiError> {
    let emails = query.get("email").cloned().unwrap_or_default();
    if emails.len() > 50 {
        return Err(ApiError::bad_request("at most 50 email parameters"));
    }
    for email in &emails {
        let valid = email.len() <= 254
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
            && !email
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
        if !valid {
            return Err(ApiError::bad_request(format!(
                "invalid email address {email:?}"
            )));
        }
    }
    Ok(emails)
}

/// Records a queued job and puts it on the stream. PostgreSQL is the
/// source of truth: if Redis does not take the entry, the coordinator's
/// reconciliation still runs the job, so the request succeeds.
pub(crate) async fn start_job(
    state: &AppState,
    requested_by: &str,
    scope: JobScope,
    emails: Vec<String>,
) -> Result<Job, ApiError> {
    let job = jobs::create_job(&state.pool, &scope, requested_by, &emails).await?;
    // The coordinator's expansion and the tasks' leases join this trace.
    let traceparent = leakscan_service::telemetry::current_traceparent();
    if let Some(traceparent) = &traceparent {
        jobs::set_traceparent(&state.pool, job.id, traceparent).await?;
    }
    if let Err(error) = state
        .queue
        .enqueue_traced(job.id, traceparent.as_deref())
        .await
    {
        warn!(%error, scan_key = %job.scan_key, "job not put on the stream; reconciliation will run it");
    }
    info!(scan_key = %job.scan_key, scope = %job.scope, by = %requested_by, "scan requested");
    Ok(job)
}

pub async fn total_rescan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<JobView>, ApiError> {
    caller.require_security()?;
    let emails = emails(&query_values(&query))?;
    Ok(Json(
        start_job(&state, &caller.0.name, JobScope::Total, emails)
            .await?
            .into(),
    ))
}

pub async fn project_rescan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<JobView>, ApiError> {
    caller
        .project_or_security(&state, &project_key, Access::Admin)
        .await?;
    let emails = emails(&query_values(&query))?;
    let scope = JobScope::Project { project_key };
    Ok(Json(
        start_job(&state, &caller.0.name, scope, emails)
            .await?
            .into(),
    ))
}

pub async fn repository_rescan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    RawQuery(query): RawQuery,
) -> Result<Json<JobView>, ApiError> {
    let emails = emails(&query_values(&query))?;
    let scope = JobScope::Repository {
        project_key: repository.project_key,
        slug: repository.slug,
    };
    Ok(Json(
        start_job(&state, &caller.0.name, scope, emails)
            .await?
            .into(),
    ))
}

pub async fn branch_rescan(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    RawQuery(query): RawQuery,
) -> Result<Json<JobView>, ApiError> {
    let query = query_values(&query);
    let branch = match query.get("name").and_then(|names| names.first()) {
        Some(name) => name.clone(),
        None => {
            return Err(ApiError::bad_request(
                "the branch is required: ?name=BRANCH",
            ))
        }
    };
    let job = start_branch_job(&state, &caller, &repository, &branch, emails(&query)?).await?;
    Ok(Json(job.into()))
}

async fn start_branch_job(
    state: &AppState,
    caller: &Caller,
    repository: &Repository,
    branch: &str,
    emails: Vec<String>,
) -> Result<Job, ApiError> {
    leakscan_store::catalog::validate_branch(branch)?;
    let branch = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    if jobs::branch_scan(&state.pool, repository.id, branch)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(format!(
            "Branch {branch:?} does not exist in {}/{}.",
            repository.project_key, repository.slug
        )));
    }
    if repository.exempt {
        return Err(ApiError::conflict(format!(
            "{}/{} is exempt from secret scanning",
            repository.project_key, repository.slug
        )));
    }
    let scope = JobScope::Branch {
        project_key: repository.project_key.clone(),
        slug: repository.slug.clone(),
        branch: branch.to_string(),
    };
    start_job(state, &caller.0.name, scope, emails).await
}

#[derive(Debug, Serialize)]
pub struct Cancelled {
    cancelled: u64,
}

pub async fn cancel_scheduled(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require_sys_admin()?;
    let cancelled = tasks::cancel_jobs(&state.pool, "queued").await?;
    info!(cancelled, by = %caller.0.name, "scheduled scans cancelled");
    Ok(Json(Cancelled { cancelled }))
}

pub async fn cancel_running(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Cancelled>, ApiError> {
    caller.require_sys_admin()?;
    let cancelled = tasks::cancel_jobs(&state.pool, "running").await?;
    info!(cancelled, by = %caller.0.name, "running scans cancelled");
    Ok(Json(Cancelled { cancelled }))
}

/// Soteri's scan status of one branch.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchStatus {
    scan_key: Option<String>,
    scanned: bool,
    actual: bool,
    progress: i32,
    running: bool,
    scheduled: bool,
    /// Why the branch's latest scan failed (leakscan's addition; absent
    /// while it has not failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invalid_lines: Option<Vec<ReportedFinding>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusQuery {
    branch: Option<String>,
    #[serde(default, deserialize_with = "crate::params::flag")]
    include_whitelisted: bool,
    rule: Option<String>,
}

/// The branch a Soteri call means: `?branch=`, else the default branch.
pub(crate) fn branch_of(repository: &Repository, branch: Option<&str>) -> Result<String, ApiError> {
    match branch.or(repository.default_branch.as_deref()) {
        Some(branch) if leakscan_store::catalog::validate_branch(branch).is_err() => Err(
            ApiError::bad_request(format!("invalid branch name {branch:?}")),
        ),
        Some(branch) => Ok(branch
            .strip_prefix("refs/heads/")
            .unwrap_or(branch)
            .to_string()),
        None => Err(ApiError::bad_request(format!(
            "{}/{} has no default branch: give ?branch=",
            repository.project_key, repository.slug
        ))),
    }
}

async fn branch_status(
    state: &AppState,
    repository: &Repository,
    branch: &str,
    rule: Option<&str>,
    include_reviewed: bool,
) -> Result<BranchStatus, ApiError> {
    let scan = jobs::branch_scan(&state.pool, repository.id, branch)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Branch {branch:?} does not exist in {}/{}.",
                repository.project_key, repository.slug
            ))
        })?;
    let scanned = scan.last_scanned_commit.is_some();
    // Outdated also when the rules changed since (a new base policy).
    let current_base = policy::base_digest(&policy::base_policy(&state.pool, repository.id).await?);
    let invalid_lines = if scanned {
        Some(
            findings::reported_findings(&state.pool, repository.id, branch, rule, include_reviewed)
                .await?,
        )
    } else {
        None
    };
    Ok(BranchStatus {
        progress: scan.progress(),
        running: scan.task_state.as_deref() == Some("leased"),
        scheduled: scan.task_state.as_deref() == Some("queued"),
        actual: scan.last_scanned_commit.as_deref() == Some(scan.head_commit.as_str())
            && scan.last_scanned_base.as_deref() == Some(current_base.as_str()),
        scan_key: scan.scan_key,
        last_error: scan.last_error,
        scanned,
        invalid_lines,
    })
}

pub async fn scan_status(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    QueryParams(query): QueryParams<StatusQuery>,
) -> Result<Json<BranchStatus>, ApiError> {
    let branch = branch_of(&repository, query.branch.as_deref())?;
    let rule = crate::policy::findings_rule_filter(
        &state,
        &repository,
        Some(&branch),
        query.rule.as_deref(),
    )
    .await?;
    Ok(Json(
        branch_status(
            &state,
            &repository,
            &branch,
            rule.as_deref(),
            query.include_whitelisted,
        )
        .await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    branch: Option<String>,
}

pub async fn scan_start(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    QueryParams(query): QueryParams<StartQuery>,
) -> Result<Json<BranchStatus>, ApiError> {
    let branch = branch_of(&repository, query.branch.as_deref())?;
    let job = start_branch_job(&state, &caller, &repository, &branch, Vec::new()).await?;
    // The status shows the new job as queued (see `jobs::branch_scan`);
    // its key and state are set here too, whatever else a concurrent
    // request queued meanwhile.
    let mut status = branch_status(&state, &repository, &branch, None, false).await?;
    status.scan_key = Some(job.scan_key);
    status.scheduled = true;
    status.running = false;
    Ok(Json(status))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelQuery {
    scan_key: Option<String>,
}

/// `DELETE /rest/security/1.0/scan/{p}/repos/{r}?scanKey=`: cancels the
/// job of that key if it scans this repository, whatever its scope (the key
/// `GET` shows may be a total, project or repository rescan's).
pub async fn scan_cancel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
    QueryParams(query): QueryParams<CancelQuery>,
) -> Result<StatusCode, ApiError> {
    let scan_key = query
        .scan_key
        .ok_or_else(|| ApiError::bad_request("the scan is required: ?scanKey=KEY"))?;
    let job = jobs::find_job(&state.pool, &scan_key)
        .await?
        .filter(|job| job_covers(job, &repository))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Scan {scan_key} of {}/{} does not exist.",
                repository.project_key, repository.slug
            ))
        })?;
    // The key `GET /scan/…` shows may be a total, project or repository
    // rescan's: cancelling it cancels that whole job, so it takes what
    // starting it took.
    match job.scope.as_str() {
        "total" => caller.require_security()?,
        "project" => {
            caller
                .project_or_security(&state, &repository.project_key, Access::Admin)
                .await?
        }
        _ => {}
    }
    jobs::cancel_job(&state.pool, &job.scan_key).await?;
    info!(%scan_key, by = %caller.0.name, "scan cancelled");
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `job` scans (some branch of) `repository`: a total rescan, a
/// rescan of its project, or one of the repository or of its branch.
fn job_covers(job: &Job, repository: &Repository) -> bool {
    let same_project = job.project_key.as_deref() == Some(repository.project_key.as_str());
    let same_repository =
        same_project && job.repository_slug.as_deref() == Some(repository.slug.as_str());
    match job.scope.as_str() {
        "total" => true,
        "project" => same_project,
        "repository" | "branch" => same_repository,
        _ => false,
    }
}

/// Jobs a caller sees: all of them for administrators and security-granted
/// users (`None`), their own otherwise (their name).
fn jobs_of(caller: &Caller) -> Option<&str> {
    (!(caller.0.sys_admin || caller.0.security)).then_some(caller.0.name.as_str())
}

fn may_see(caller: &Caller, job: &Job) -> bool {
    jobs_of(caller).is_none_or(|name| job.requested_by == name)
}

pub async fn list_jobs(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<JobView>>, ApiError> {
    let page = jobs::list_jobs(&state.pool, paging.request(), jobs_of(&caller)).await?;
    Ok(Json(page.map(JobView::from)))
}

async fn visible_job(state: &AppState, caller: &Caller, scan_key: &str) -> Result<Job, ApiError> {
    jobs::find_job(&state.pool, scan_key)
        .await?
        .filter(|job| may_see(caller, job))
        .ok_or_else(|| ApiError::not_found(format!("Scan {scan_key} does not exist.")))
}

pub async fn get_job(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(scan_key): PathParams<String>,
) -> Result<Json<JobView>, ApiError> {
    let job = visible_job(&state, &caller, &scan_key).await?;
    let failures = jobs::failed_tasks(&state.pool, job.id, 100).await?;
    let mut view = JobView::from(job);
    view.failures = Some(failures);
    Ok(Json(view))
}

/// Server-Sent Events: a `progress` event whenever the job changes, then
/// one `end` event when it has finished.
/// Event streams one user may hold open at once; more answer 429 (each
/// polls the database every half second until its job ends).
pub const MAX_EVENT_STREAMS_PER_USER: usize = 8;

/// Open event streams per user id.
#[derive(Default)]
pub struct StreamCounts(std::sync::Mutex<std::collections::HashMap<i64, usize>>);

/// One open event stream of a user; the place is given back on drop.
pub struct StreamPlace {
    counts: Arc<StreamCounts>,
    user: i64,
}

impl StreamCounts {
    fn open(counts: &Arc<StreamCounts>, user: i64) -> Result<StreamPlace, ApiError> {
        let mut open = counts.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(user).or_default();
        if *count >= MAX_EVENT_STREAMS_PER_USER {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("{MAX_EVENT_STREAMS_PER_USER} event streams are open for this user already; close one first"),
            ));
        }
        *count += 1;
        Ok(StreamPlace {
            counts: Arc::clone(counts),
            user,
        })
    }
}

impl Drop for StreamPlace {
    fn drop(&mut self) {
        let mut open = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

pub async fn job_events(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(scan_key): PathParams<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let job = visible_job(&state, &caller, &scan_key).await?;
    let place = StreamCounts::open(&state.event_streams, caller.0.id.0)?;
    let pool = state.pool.clone();
    let stream = futures::stream::unfold(
        (Some(job), None::<(String, i32, i64)>, false),
        move |(current, last, ended)| {
            let pool = pool.clone();
            // Held while the stream lives: dropped with it.
            let _place = &place;
            async move {
                if ended {
                    return None;
                }
                let mut job = current?;
                loop {
                    let seen = (job.state.clone(), job.tasks_done, job.blobs_read);
                    if last.as_ref() != Some(&seen) || job.is_finished() {
                        let finished = job.is_finished();
                        let event = Event::default()
                            .event(if finished { "end" } else { "progress" })
                            .json_data(JobView::from(job.clone()))
                            .unwrap_or_else(|_| Event::default().comment("unserialisable"));
                        return Some((Ok(event), (Some(job), Some(seen), finished)));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    job = match jobs::find_job(&pool, &job.scan_key).await {
                        Ok(Some(job)) => job,
                        _ => return None,
                    };
                }
            }
        },
    );
    // A draining gateway ends its streams, so its shutdown is not held up
    // by dashboards that never close them (clients reconnect elsewhere).
    let stream = futures::StreamExt::take_until(stream, state.draining.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    projects: Vec<ProjectStatus>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectStatus {
    #[serde(flatten)]
    counts: findings::ProjectSummary,
    /// Secure, Vulnerable, Not scanned or Partially scanned (DESIGN §3).
    status: &'static str,
}

/// Scan state per project, for administrators and security-granted users.
pub async fn dashboard(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Dashboard>, ApiError> {
    caller.require_security()?;
    let projects = findings::project_summaries(&state.pool)
        .await?
        .into_iter()
        .map(|counts| ProjectStatus {
            status: if counts.findings > 0 {
                "Vulnerable"
            } else if counts.branches_scanned == 0 {
                "Not scanned"
            } else if counts.branches_scanned < counts.branches {
                "Partially scanned"
            } else {
                "Secure"
            },
            counts,
        })
        .collect();
    Ok(Json(Dashboard { projects }))
}

/// A branch's status (DESIGN §3): `Not scanned`, `Outdated` (new commits
/// or changed rules since its last scan), `Vulnerable` or `Secure`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchDashboard {
    name: String,
    status: &'static str,
    /// `Scanning` while a task of the branch is queued or leased, `Failed`
    /// when its newest task failed; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    scan: Option<&'static str>,
    head_commit: String,
    last_scanned_commit: Option<String>,
    /// Findings not hidden by a review, as of the last scan.
    findings: i64,
}

impl BranchDashboard {
    /// The dashboard's bar a branch counts in: its scan, else its status.
    fn bar(&self) -> &'static str {
        self.scan.unwrap_or(self.status)
    }
}

/// Branches by the dashboard's bars (a branch being scanned or whose scan
/// failed counts there, not under its status).
#[derive(Debug, Default, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusCounts {
    secure: i64,
    vulnerable: i64,
    not_scanned: i64,
    outdated: i64,
    scanning: i64,
    failed: i64,
}

impl StatusCounts {
    fn of<'a>(branches: impl Iterator<Item = &'a BranchDashboard>) -> StatusCounts {
        let mut counts = StatusCounts::default();
        for branch in branches {
            let slot = match branch.bar() {
                "Scanning" => &mut counts.scanning,
                "Failed" => &mut counts.failed,
                "Vulnerable" => &mut counts.vulnerable,
                "Outdated" => &mut counts.outdated,
                "Secure" => &mut counts.secure,
                _ => &mut counts.not_scanned,
            };
            *slot += 1;
        }
        counts
    }

    fn add(mut self, other: StatusCounts) -> StatusCounts {
        self.secure += other.secure;
        self.vulnerable += other.vulnerable;
        self.not_scanned += other.not_scanned;
        self.outdated += other.outdated;
        self.scanning += other.scanning;
        self.failed += other.failed;
        self
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryDashboard {
    project: String,
    repository: String,
    /// Vulnerable when a branch has findings; otherwise the worst of Not
    /// scanned, Partially scanned, Outdated and Secure.
    status: &'static str,
    exempt: bool,
    counts: StatusCounts,
    /// Pushes the pre-receive hook blocked and let through with a bypass.
    hook: PushCounts,
    /// Whether the caller may rescan it (repository write).
    can_rescan: bool,
    branches: Vec<BranchDashboard>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectDashboard {
    project: String,
    status: &'static str,
    counts: StatusCounts,
    hook: PushCounts,
    /// Whether the caller may rescan the whole project (project admin or
    /// the security grant).
    can_rescan: bool,
    repositories: Vec<RepositoryDashboard>,
}

fn branch_state(summary: &findings::BranchSummary, base: &str) -> &'static str {
    match &summary.last_scanned_commit {
        None => "Not scanned",
        Some(scanned)
            if scanned != &summary.head_commit
                || summary.last_scanned_base.as_deref() != Some(base) =>
        {
            "Outdated"
        }
        Some(_) if summary.findings > 0 => "Vulnerable",
        Some(_) => "Secure",
    }
}

fn branch_scan(summary: &findings::BranchSummary) -> Option<&'static str> {
    match summary.task_state.as_deref() {
        Some("queued" | "leased") => Some("Scanning"),
        Some("failed") => Some("Failed"),
        _ => None,
    }
}

fn roll_up<'a>(statuses: impl Iterator<Item = &'a str> + Clone, vulnerable: bool) -> &'static str {
    let total = statuses.clone().count();
    let not_scanned = statuses.clone().filter(|s| *s == "Not scanned").count();
    let partial = statuses.clone().any(|s| s == "Partially scanned");
    if vulnerable {
        "Vulnerable"
    } else if total == 0 || not_scanned == total {
        "Not scanned"
    } else if not_scanned > 0 || partial {
        "Partially scanned"
    } else if statuses.clone().any(|s| s == "Outdated") {
        "Outdated"
    } else {
        "Secure"
    }
}

async fn repository_dashboards(
    state: &AppState,
    project_key: &str,
    only: Option<&Repository>,
) -> Result<Vec<RepositoryDashboard>, ApiError> {
    let summaries =
        findings::branch_summaries(&state.pool, project_key, only.map(|r| r.id)).await?;
    let pushes = leakscan_store::hooks::push_counts(&state.pool, project_key).await?;
    let mut repositories: Vec<RepositoryDashboard> = Vec::new();
    let mut base_of: HashMap<i64, String> = HashMap::new();
    for summary in summaries {
        let base = match base_of.get(&summary.repository_id.0) {
            Some(base) => base.clone(),
            None => {
                let spec = policy::base_policy(&state.pool, summary.repository_id).await?;
                let base = policy::base_digest(&spec);
                base_of.insert(summary.repository_id.0, base.clone());
                base
            }
        };
        let branch = BranchDashboard {
            status: branch_state(&summary, &base),
            scan: branch_scan(&summary),
            name: summary.branch,
            head_commit: summary.head_commit,
            last_scanned_commit: summary.last_scanned_commit,
            findings: summary.findings,
        };
        match repositories.last_mut() {
            Some(last) if last.repository == summary.slug => last.branches.push(branch),
            _ => repositories.push(RepositoryDashboard {
                project: project_key.to_string(),
                repository: summary.slug,
                status: "",
                exempt: false,
                counts: StatusCounts::default(),
                hook: pushes
                    .get(&summary.repository_id)
                    .copied()
                    .unwrap_or_default(),
                can_rescan: false,
                branches: vec![branch],
            }),
        }
    }
    let exempt: Vec<String> = match only {
        Some(repository) => [repository]
            .into_iter()
            .filter(|r| r.exempt)
            .map(|r| r.slug.clone())
            .collect(),
        None => sqlx::query_scalar(
            "select r.slug from repositories r join projects p on p.id = r.project_id
             where p.key = $1 and r.exempt",
        )
        .bind(project_key)
        .fetch_all(&state.pool)
        .await
        .map_err(leakscan_store::StoreError::from)?,
    };
    for repository in &mut repositories {
        let vulnerable = repository.branches.iter().any(|b| b.findings > 0);
        repository.status = roll_up(repository.branches.iter().map(|b| b.status), vulnerable);
        repository.exempt = exempt.contains(&repository.repository);
        repository.counts = StatusCounts::of(repository.branches.iter());
    }
    Ok(repositories)
}

/// `GET /rest/security/latest/dashboard/projects/{p}`: each repository's
/// status and branches (project read; hidden repositories are left out
/// for callers who may not read them).
pub async fn project_dashboard(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
) -> Result<Json<ProjectDashboard>, ApiError> {
    caller.project(&state, &project_key, Access::Read).await?;
    let repositories = repository_dashboards(&state, &project_key, None).await?;
    let sees_all = caller.require_security().is_ok();
    // A system administrator signed in with a password administers every
    // repository: no query per repository.
    let administers_all = caller.0.sys_admin && caller.1.is_none();
    let mut visible = Vec::with_capacity(repositories.len());
    for mut repository in repositories {
        let access = if administers_all {
            Access::Admin
        } else {
            caller
                .repository_access(&state, &project_key, &repository.repository)
                .await?
        };
        if sees_all || access >= Access::Read {
            repository.can_rescan = access >= Access::Write;
            visible.push(repository);
        }
    }
    let repositories = visible;
    let vulnerable = repositories.iter().any(|r| r.status == "Vulnerable");
    let can_rescan = caller
        .project_or_security(&state, &project_key, Access::Admin)
        .await
        .is_ok();
    Ok(Json(ProjectDashboard {
        status: roll_up(repositories.iter().map(|r| r.status), vulnerable),
        counts: repositories
            .iter()
            .fold(StatusCounts::default(), |sum, r| sum.add(r.counts)),
        hook: repositories
            .iter()
            .fold(PushCounts::default(), |sum, r| sum + r.hook),
        can_rescan,
        project: project_key,
        repositories,
    }))
}

/// `GET /rest/security/latest/dashboard/projects/{p}/repos/{r}`
pub async fn repository_dashboard(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathRepository(repository): PathRepository,
) -> Result<Json<RepositoryDashboard>, ApiError> {
    let (project_key, slug) = (repository.project_key.clone(), repository.slug.clone());
    let can_rescan = caller
        .repository_access(&state, &project_key, &slug)
        .await?
        >= Access::Write;
    let mut dashboards = repository_dashboards(&state, &project_key, Some(&repository)).await?;
    let mut dashboard = dashboards.pop().unwrap_or(RepositoryDashboard {
        project: project_key,
        repository: slug,
        status: "Not scanned",
        exempt: repository.exempt,
        counts: StatusCounts::default(),
        hook: PushCounts::default(),
        can_rescan: false,
        branches: Vec::new(),
    });
    dashboard.can_rescan = can_rescan;
    Ok(Json(dashboard))
}

/// The rescan schedule as the API shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    /// The cron expression (UTC); null when there is no schedule.
    cron: Option<String>,
    timezone: &'static str,
    next_run: Option<DateTime<Utc>>,
    updated_by: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

impl From<Option<leakscan_store::schedules::Schedule>> for ScheduleView {
    fn from(schedule: Option<leakscan_store::schedules::Schedule>) -> Self {
        ScheduleView {
            next_run: schedule
                .as_ref()
                .and_then(|s| leakscan_store::schedules::next_run(&s.cron, Utc::now())),
            updated_by: schedule.as_ref().map(|s| s.updated_by.clone()),
            updated_at: schedule.as_ref().map(|s| s.updated_at),
            cron: schedule.map(|s| s.cron),
            timezone: "UTC",
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    cron: String,
}

pub async fn get_schedule(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ScheduleView>, ApiError> {
    Ok(Json(
        leakscan_store::schedules::get(&state.pool).await?.into(),
    ))
}

/// Sets the total-rescan schedule: a cron expression in UTC (400 with the
/// reason when it is not one).
pub async fn put_schedule(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    crate::error::JsonBody(body): crate::error::JsonBody<NewSchedule>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedule = leakscan_store::schedules::set(&state.pool, &caller.0.name, &body.cron).await?;
    info!(cron = %schedule.cron, by = %caller.0.name, "rescan schedule set");
    Ok(Json(Some(schedule).into()))
}

pub async fn delete_schedule(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<axum::http::StatusCode, ApiError> {
    if leakscan_store::schedules::delete(&state.pool, &caller.0.name).await? {
        info!(by = %caller.0.name, "rescan schedule removed");
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("There is no rescan schedule."))
    }
}

#[cfg(test)]
mod dashboard_tests {
    use super::*;

    fn branch(
        name: &str,
        scanned: Option<&str>,
        findings: i64,
        task: Option<&str>,
    ) -> BranchDashboard {
        let summary = findings::BranchSummary {
            repository_id: leakscan_store::catalog::RepoId(1),
            slug: "repo".into(),
            branch: name.into(),
            head_commit: "head".into(),
            last_scanned_commit: scanned.map(str::to_string),
            last_scanned_base: Some("base".into()),
            findings,
            task_state: task.map(str::to_string),
        };
        BranchDashboard {
            status: branch_state(&summary, "base"),
            scan: branch_scan(&summary),
            name: summary.branch,
            head_commit: summary.head_commit,
            last_scanned_commit: summary.last_scanned_commit,
            findings,
        }
    }

    #[test]
    fn a_branch_counts_in_its_scans_bar_else_in_its_statuss() {
        let branches = [
            branch("secure", Some("head"), 0, Some("done")),
            branch("vulnerable", Some("head"), 2, None),
            branch("outdated", Some("older"), 0, Some("done")),
            branch("new", None, 0, None),
            branch("queued", None, 0, Some("queued")),
            branch("leased", Some("head"), 1, Some("leased")),
            branch("failed", Some("older"), 0, Some("failed")),
            branch("cancelled", Some("head"), 0, Some("cancelled")),
        ];
        let bars: Vec<&str> = branches.iter().map(BranchDashboard::bar).collect();
        assert_eq!(
            bars,
            [
                "Secure",
                "Vulnerable",
                "Outdated",
                "Not scanned",
                "Scanning",
                "Scanning",
                "Failed",
                "Secure"
            ]
        );
        let counts = StatusCounts::of(branches.iter());
        assert_eq!(
            (
                counts.secure,
                counts.vulnerable,
                counts.not_scanned,
                counts.outdated,
                counts.scanning,
                counts.failed
            ),
            (2, 1, 1, 1, 2, 1)
        );
        let doubled = counts.add(counts);
        assert_eq!((doubled.secure, doubled.failed), (4, 2));
    }
}
