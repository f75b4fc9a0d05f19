//! The catalog: projects and repositories found under the repository roots
//! or registered through the API, with their branches (read with `git
//! ls-remote`, which works alike for local paths and http(s) URLs).

use std::{path::Path, sync::Arc};

use axum::{extract::State, http::StatusCode, Json};
use leakscan_store::{
    catalog::{self, Project, Repository},
    users::Access,
    Page, PageRequest,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{
    auth::Caller,
    error::{ApiError, JsonBody, PathParams, QueryParams},
    AppState,
};

#[derive(Debug, Deserialize)]
pub struct Paging {
    #[serde(default)]
    pub start: u32,
    pub limit: Option<u32>,
}

impl Paging {
    pub fn request(&self) -> PageRequest {
        PageRequest::new(
            self.start,
            self.limit
                .unwrap_or(leakscan_store::page::DEFAULT_PAGE_LIMIT),
        )
    }
}

/// `GET /rest/api/{latest,1.0}/projects`: Bitbucket's project objects
/// (`key`, `id`, `name`, `public`, `type`), personal projects (`~user`)
/// among them.
pub async fn list_projects(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<serde_json::Value>>, ApiError> {
    let page = catalog::list_visible_projects(&state.pool, &caller.0, paging.request()).await?;
    Ok(Json(page.map(|project| {
        bitbucket_project(&project.key, project.id, &project.name)
    })))
}

/// Bitbucket's project object: leakscan has no anonymous access (`public`
/// false); a key starting with `~` is a user's personal project.
fn bitbucket_project(key: &str, id: i64, name: &str) -> serde_json::Value {
    serde_json::json!({
        "key": key,
        "id": id,
        "name": name,
        "public": false,
        "type": if key.starts_with('~') { "PERSONAL" } else { "NORMAL" },
    })
}

/// Bitbucket's fields of a repository object that leakscan knows
/// truthfully (see [`bitbucket_repository`]); the clone links from what the
/// caller may see of the clone URL.
fn bitbucket_repository_fields(
    body: &mut serde_json::Value,
    project: serde_json::Value,
    clone_url: &str,
) {
    use serde_json::json;
    // A repository its Bitbucket server dropped is kept for its findings
    // only: it is offline, so a client syncing from here skips it.
    let (state, message) = if body["deleted"] == json!(true) {
        ("OFFLINE", "Deleted from its Bitbucket server")
    } else {
        ("AVAILABLE", "Available")
    };
    for (key, value) in [
        ("scmId", json!("git")),
        ("state", json!(state)),
        ("statusMessage", json!(message)),
        ("forkable", json!(false)),
        ("public", json!(false)),
        ("archived", json!(false)),
        ("project", project),
        ("links", json!({"clone": clone_links(clone_url)})),
    ] {
        body[key] = value;
    }
}

#[derive(Debug, Deserialize)]
pub struct NewProject {
    key: String,
    name: Option<String>,
}

/// Longest project name (the OpenAPI document says the same).
pub(crate) const MAX_PROJECT_NAME_CHARS: usize = 255;

pub async fn create_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    JsonBody(body): JsonBody<NewProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    caller.require_sys_admin()?;
    let name = body.name.unwrap_or_else(|| body.key.clone());
    if name.chars().count() > MAX_PROJECT_NAME_CHARS || name.contains('\0') {
        return Err(ApiError::bad_request(format!(
            "a project name has at most {MAX_PROJECT_NAME_CHARS} characters and no NUL"
        )));
    }
    let project = catalog::upsert_project(&state.pool, &body.key, &name).await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// `GET /rest/api/{latest,1.0}/projects/{p}/repos`: Bitbucket's
/// repository objects (`slug`, `name`, `project`, `links.clone`, …) with
/// leakscan's own fields beside them (`projectKey`, `cloneUrl`,
/// `hookEnabled`, `exempt`, `defaultBranch`). The clone URL and links are
/// shown to the repository's administrators only.
pub async fn list_repositories(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Page<serde_json::Value>>, ApiError> {
    let page = visible_repositories(&state, &caller, &project_key, paging).await?;
    let project = catalog::find_project(&state.pool, &project_key)
        .await?
        .map(|project| bitbucket_project(&project.key, project.id, &project.name))
        .unwrap_or_else(|| bitbucket_project(&project_key, 0, &project_key));
    Ok(Json(page.map(|repository| {
        let mut body = serde_json::to_value(&repository).unwrap_or_default();
        bitbucket_repository_fields(&mut body, project.clone(), &repository.clone_url);
        body
    })))
}

/// The repositories of a project the caller may read, clone URLs shown as
/// the caller may see them.
async fn visible_repositories(
    state: &Arc<AppState>,
    caller: &Caller,
    project_key: &str,
    paging: Paging,
) -> Result<Page<Repository>, ApiError> {
    caller.project(state, project_key, Access::Read).await?;
    let mut page =
        catalog::list_visible_repositories(&state.pool, &caller.0, project_key, paging.request())
            .await?;
    // Where a repository is cloned from is its administrators' business. A
    // project administrator (signed in, not through a token whose
    // repository scope may be narrower) administers every repository of
    // it: one check; otherwise each repository's own grant decides.
    if caller.1.is_none()
        && caller
            .project(state, project_key, Access::Admin)
            .await
            .is_ok()
    {
        for repository in &mut page.values {
            repository.clone_url = displayed_clone_url(&repository.clone_url);
        }
        return Ok(page);
    }
    for repository in &mut page.values {
        if caller
            .repository(
                state,
                &repository.project_key,
                &repository.slug,
                Access::Admin,
            )
            .await
            .is_err()
        {
            repository.clone_url.clear();
        } else {
            repository.clone_url = displayed_clone_url(&repository.clone_url);
        }
    }
    Ok(page)
}

/// A clone URL as its administrators see it: a password inside it (kept by
/// repositories registered before credentials were refused there) shows as
/// `***`; a login name alone (`ssh://git@…`) stays.
fn displayed_clone_url(url: &str) -> String {
    let Some((scheme, after)) = url.split_once("://") else {
        return url.to_string();
    };
    match leakscan_store::catalog::split_authority(after) {
        (Some(userinfo), host, path) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewRepository {
    name: String,
    slug: Option<String>,
    /// An http(s) URL, a `file://` URL or an absolute local path.
    clone_url: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredRepository {
    #[serde(flatten)]
    repository: Repository,
    branches: Vec<String>,
}

pub async fn create_repository(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
    JsonBody(body): JsonBody<NewRepository>,
) -> Result<(StatusCode, Json<RegisteredRepository>), ApiError> {
    caller.project(&state, &project_key, Access::Admin).await?;
    state
        .config
        .clone_sources()
        .check(&body.clone_url)
        .map_err(|why| ApiError::bad_request(format!("clone URL refused: {why}")))?;
    let slug = body.slug.unwrap_or_else(|| slug_of(&body.name));
    catalog::validate_slug(&slug)?;
    let listing = list_branches(&body.clone_url, state.config.git_credentials.as_deref())
        .await
        .map_err(|message| {
            // git's own words may quote the URL or the server's answer:
            // the caller gets the gist, the log the rest.
            warn!(url = %safe_url(&body.clone_url), %message, "cannot list a registered repository's branches");
            ApiError::bad_request(format!(
                "cannot read the repository at {}: {}",
                safe_url(&body.clone_url),
                git_failure(&message)
            ))
        })?;
    let repository =
        catalog::upsert_repository(&state.pool, &project_key, &slug, &body.clone_url).await?;
    catalog::replace_branches(&state.pool, repository.id, &listing.branches).await?;
    catalog::set_default_branch(
        &state.pool,
        repository.id,
        listing.default_branch.as_deref(),
    )
    .await?;
    let repository = catalog::find_repository(&state.pool, &project_key, &slug)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("Repository {project_key}/{slug} does not exist."))
        })?;
    Ok((
        StatusCode::CREATED,
        Json(RegisteredRepository {
            repository,
            branches: listing.branches.into_iter().map(|(name, _)| name).collect(),
        }),
    ))
}

/// Bitbucket's slug of a repository name: lowercase, runs of other
/// characters as one `-`.
fn slug_of(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_') {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_string()
}

/// Bitbucket Data Center's repository object (`RestRepository`) of an
/// exempt repository, with what leakscan knows truthfully: leakscan
/// scans git repositories (`scmId` git), which are available once in the
/// catalog; it offers no anonymous access (`public` false), no forks
/// (`forkable` false) and no archiving (`archived` false); the clone link
/// is where leakscan clones from (`http` for an http(s) URL, its user
/// information left out; `file` for a path on the gateway's machine).
/// Bitbucket's `self` links point at its web pages, which leakscan does
/// not have, so there are none. `exempt` (always true here) is leakscan's.
pub fn bitbucket_repository(
    repository: &leakscan_store::policy::ExemptRepository,
) -> serde_json::Value {
    use serde_json::json;
    let mut project = bitbucket_project(
        &repository.project_key,
        repository.project_id,
        &repository.project_name,
    );
    if let (Some(id), Some(name)) = (repository.owner_id, &repository.owner_name) {
        project["owner"] = json!({
            "name": name,
            "id": id,
            "displayName": repository.owner_display_name.as_deref().unwrap_or(name),
            "emailAddress": repository.owner_email.as_deref().unwrap_or_default(),
            "slug": name,
            "active": true,
            "type": "NORMAL",
        });
    }
    let mut body = json!({
        "slug": repository.slug,
        "id": repository.id.0,
        "name": repository.name,
        "exempt": true,
    });
    bitbucket_repository_fields(&mut body, project, &repository.clone_url);
    if let Some(branch) = &repository.default_branch {
        body["defaultBranch"] = json!(branch);
    }
    body
}

/// Bitbucket's `links.clone` of a clone source.
fn clone_links(clone_url: &str) -> serde_json::Value {
    use serde_json::json;
    let lower = clone_url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let (scheme, after) = clone_url.split_once("://").unwrap_or(("https", clone_url));
        let (_, host, path) = leakscan_store::catalog::split_authority(after);
        json!([{"href": format!("{scheme}://{host}{path}"), "name": "http"}])
    } else if lower.starts_with("ssh://") {
        json!([{"href": displayed_clone_url(clone_url), "name": "ssh"}])
    } else if lower.starts_with("file://") {
        json!([{"href": clone_url, "name": "file"}])
    } else if clone_url.starts_with('/') {
        json!([{"href": format!("file://{clone_url}"), "name": "file"}])
    } else {
        json!([])
    }
}

pub struct BranchListing {
    pub branches: Vec<(String, String)>,
    pub default_branch: Option<String>,
}

/// Longest `git ls-remote` may take: it runs inside a request (and the
/// catalog sync), which a server that stops answering would hold for ever.
const LS_REMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// The branches (name, head) of a repository and the branch HEAD names;
/// `credentials`: a git credentials file for remote repositories.
pub async fn list_branches(url: &str, credentials: Option<&Path>) -> Result<BranchListing, String> {
    let files: Vec<&Path> = credentials.into_iter().collect();
    list_branches_within(url, &files, LS_REMOTE_TIMEOUT).await
}

/// [`list_branches`] with git reading credentials from `files`, in order.
pub async fn list_branches_with(url: &str, files: &[&Path]) -> Result<BranchListing, String> {
    list_branches_within(url, files, LS_REMOTE_TIMEOUT).await
}

/// `url` without user information, as it may be shown.
fn safe_url(url: &str) -> String {
    leakscan_store::tasks::safe_error(url)
}

/// A short, safe reason for a failed `git ls-remote`: the kind of failure,
/// not git's text (which may quote the server).
pub(crate) fn git_failure(message: &str) -> &'static str {
    let lower = message.to_ascii_lowercase();
    if lower.contains("did not answer within") {
        "the server did not answer in time"
    } else if lower.contains("authentication failed")
        || lower.contains("could not read username")
        || lower.contains("403")
        || lower.contains("401")
    {
        "access denied (check the git credentials file)"
    } else if lower.contains("not found")
        || lower.contains("does not appear to be a git repository")
    {
        "no git repository there"
    } else if lower.contains("could not resolve host") || lower.contains("failed to connect") {
        "the server cannot be reached"
    } else {
        "git could not read it"
    }
}

/// [`list_branches`] within `timeout`; git is killed when the time is up or
/// the request goes away.
async fn list_branches_within(
    url: &str,
    files: &[&Path],
    timeout: std::time::Duration,
) -> Result<BranchListing, String> {
    let mut command = tokio::process::Command::new("git");
    command.args(["ls-remote", "--symref", "--", url, "HEAD", "refs/heads/*"]);
    leakscan_service::prepare_git(&mut command, files)?;
    let listing = command.output();
    let output = tokio::time::timeout(timeout, listing)
        .await
        .map_err(|_| {
            format!(
                "the repository did not answer within {} s",
                timeout.as_secs()
            )
        })?
        .map_err(|error| format!("cannot run git: {error}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
    }
    Ok(parse_ls_remote(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_ls_remote(text: &str) -> BranchListing {
    let mut branches = Vec::new();
    let mut default_branch = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("ref: ") {
            if let Some((target, "HEAD")) = rest.split_once('\t') {
                default_branch = target.strip_prefix("refs/heads/").map(str::to_string);
            }
            continue;
        }
        if let Some((oid, name)) = line.split_once('\t') {
            if let Some(branch) = name.strip_prefix("refs/heads/") {
                branches.push((branch.to_string(), oid.to_string()));
            }
        }
    }
    branches.sort();
    BranchListing {
        branches,
        default_branch,
    }
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub projects: u32,
    pub repositories: u32,
    pub branches: u32,
    /// Entries under the roots that were skipped, and why.
    pub errors: Vec<String>,
    /// The sync from the configured Bitbucket server, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitbucket: Option<crate::bitbucket::SyncReport>,
}

/// `POST …/admin/catalog/sync`: re-reads the roots and, when one is
/// configured, synchronises from the Bitbucket server (whose failure is
/// the answer's: 502 when the server fails, 409 when a sync runs).
pub async fn sync_handler(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<SyncReport>, ApiError> {
    caller.require_sys_admin()?;
    let mut report = sync_roots(&state).await?;
    if state.config.bitbucket.is_some() {
        // In a task of its own: a caller that gives up (or the request
        // timeout) does not cut the sync short.
        let (state, actor) = (Arc::clone(&state), caller.0.name.clone());
        let sync = tokio::spawn(async move { crate::bitbucket::sync(&state, &actor).await });
        report.bitbucket = Some(sync.await.map_err(|_| ApiError::internal())??);
    }
    Ok(Json(report))
}

/// Re-reads every root: `<root>/<PROJECT>/<slug>[.git]` and
/// `<root>/~<user>/<slug>[.git]`, bare or not.
pub async fn sync_roots(state: &AppState) -> Result<SyncReport, ApiError> {
    let mut report = SyncReport::default();
    for root in &state.config.repos_roots {
        let projects = match read_dir_sorted(root).await {
            Ok(entries) => entries,
            Err(error) => {
                report.errors.push(format!("{}: {error}", root.display()));
                continue;
            }
        };
        for (project_key, project_dir) in projects {
            if catalog::validate_project_key(&project_key).is_err() {
                report.errors.push(format!(
                    "{}: not a valid project key",
                    project_dir.display()
                ));
                continue;
            }
            let repositories = match read_dir_sorted(&project_dir).await {
                Ok(entries) => entries,
                Err(error) => {
                    report
                        .errors
                        .push(format!("{}: {error}", project_dir.display()));
                    continue;
                }
            };
            let mut project_registered = false;
            for (name, repository_dir) in repositories {
                if !is_git_repository(&repository_dir) {
                    continue;
                }
                let slug = name.strip_suffix(".git").unwrap_or(&name).to_string();
                if catalog::validate_slug(&slug).is_err() {
                    report.errors.push(format!(
                        "{}: not a valid repository slug",
                        repository_dir.display()
                    ));
                    continue;
                }
                let Some(url) = repository_dir.to_str().map(str::to_string) else {
                    report
                        .errors
                        .push(format!("{}: path is not UTF-8", repository_dir.display()));
                    continue;
                };
                let listing =
                    match list_branches(&url, state.config.git_credentials.as_deref()).await {
                        Ok(listing) => listing,
                        Err(message) => {
                            warn!(repository = %url, %message, "cannot list branches");
                            report.errors.push(format!("{url}: {message}"));
                            continue;
                        }
                    };
                if !project_registered {
                    catalog::upsert_project(&state.pool, &project_key, &project_key).await?;
                    report.projects += 1;
                    project_registered = true;
                }
                let repository =
                    catalog::upsert_repository(&state.pool, &project_key, &slug, &url).await?;
                catalog::replace_branches(&state.pool, repository.id, &listing.branches).await?;
                catalog::set_default_branch(
                    &state.pool,
                    repository.id,
                    listing.default_branch.as_deref(),
                )
                .await?;
                report.repositories += 1;
                report.branches += listing.branches.len() as u32;
            }
        }
    }
    info!(
        projects = report.projects,
        repositories = report.repositories,
        branches = report.branches,
        skipped = report.errors.len(),
        "catalog synchronised"
    );
    Ok(report)
}

fn is_git_repository(dir: &Path) -> bool {
    dir.join(".git").exists() || (dir.join("HEAD").is_file() && dir.join("objects").is_dir())
}

/// Sub-directories of `dir` by name, sorted; names that are not UTF-8 or
/// start with `.` are left out.
async fn read_dir_sorted(dir: &Path) -> std::io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    let mut found = Vec::new();
    while let Some(entry) = entries.next_entry().await? {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') || !entry.file_type().await?.is_dir() {
            continue;
        }
        found.push((name, entry.path()));
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 13): `ls-remote` had no timeout, so registering a
    /// repository on a server that never answers held the request for ever.
    #[tokio::test]
    async fn a_silent_remote_is_given_up_on() {
        let address = leakscan_testkit::silent_server();
        let error = list_branches_within(
            &format!("http://{address}/r.git"),
            &[],
            std::time::Duration::from_secs(2),
        )
        .await
        .err()
        .unwrap();
        assert!(error.contains("did not answer within 2 s"), "{error}");
    }

    #[test]
    fn ls_remote_output_gives_branches_and_the_default() {
        let listing = parse_ls_remote(
            "ref: refs/heads/main\tHEAD\n1111\tHEAD\n2222\trefs/heads/dev\n1111\trefs/heads/main\n",
        );
        assert_eq!(listing.default_branch.as_deref(), Some("main"));
        assert_eq!(
            listing.branches,
            vec![
                ("dev".into(), "2222".into()),
                ("main".into(), "1111".into())
            ]
        );
    }

    #[test]
    fn passwords_in_clone_urls_are_never_shown() {
        assert_eq!(
            displayed_clone_url("https://bob:hunter2@git.example.com/scm/p/r.git"),
            "https://bob:***@git.example.com/scm/p/r.git"
        );
        assert_eq!(
            displayed_clone_url("ssh://git@git.example.com:7999/p/r.git"),
            "ssh://git@git.example.com:7999/p/r.git"
        );
        assert_eq!(displayed_clone_url("/srv/git/p/r.git"), "/srv/git/p/r.git");
        let links = clone_links("https://bob:hunter2@git.example.com/r.git").to_string();
        assert!(
            !links.contains("hunter2") && !links.contains("bob"),
            "{links}"
        );
        let links = clone_links("ssh://git@git.example.com:7999/p/r.git");
        assert_eq!(links[0]["name"], "ssh");
        assert_eq!(links[0]["href"], "ssh://git@git.example.com:7999/p/r.git");
    }

    #[test]
    fn slugs_and_clone_urls() {
        assert_eq!(slug_of(" My Repo (v2) "), "my-repo-v2");
        use crate::sources::clone_url_shape;
        clone_url_shape("https://bitbucket.example.com/scm/p/r.git").unwrap();
        clone_url_shape("/srv/git/p/r.git").unwrap();
        clone_url_shape("ssh://git@bitbucket.example.com:7999/p/r.git").unwrap();
        for bad in [
            "ext::sh -c touch% /tmp/x",
            "-uupload-pack=x",
            "relative/path",
            "git@h:r",
            "/a b",
        ] {
            assert!(clone_url_shape(bad).is_err(), "{bad}");
        }
    }
}
