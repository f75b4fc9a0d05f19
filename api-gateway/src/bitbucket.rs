//! Catalog sync from a Bitbucket Server or Data Center (docs/ARCHITECTURE.md,
//! "Catalog sync"). The gateway reads the server's projects and their
//! repositories through its REST API (`/rest/api/1.0/projects`,
//! `/projects/{key}/repos`, and `/repos` for personal repositories), page
//! by page, with the operator's token; the store reconciles the listing
//! with the catalog; each repository's branches are then read from the
//! server with `git ls-remote`. The token never goes in a URL or a log:
//! REST calls carry it as a Bearer header, git reads it from a private
//! credentials file, and workers get it from the coordinator for the
//! server's own origin only.
//!
//! A listing read only in part (the server went away, refused the token,
//! answered something that is not a page) changes nothing: a repository is
//! marked deleted only when a complete listing no longer holds it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{extract::State, http::StatusCode, Json};
use futures::StreamExt as _;
use leakscan_store::{
    catalog,
    catalog_sync::{self, RemoteRepository},
};
use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::{auth::Caller, error::ApiError, AppState};

/// The operator's Bitbucket flags, shared by `leakscan-gateway` and
/// `leakscan up`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BitbucketArgs {
    /// A Bitbucket Server / Data Center to take the catalog from, e.g.
    /// `https://bitbucket.example.com` (with its context path, if any).
    #[arg(long = "bitbucket-url", env = "LEAKSCAN_BITBUCKET_URL")]
    pub url: Option<String>,
    /// A file holding the HTTP access token leakscan reads the server's
    /// projects and clones its repositories with (a mounted secret).
    #[arg(long = "bitbucket-token-file", env = "LEAKSCAN_BITBUCKET_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The user name git sends with the token when it clones.
    #[arg(
        long = "bitbucket-user",
        env = "LEAKSCAN_BITBUCKET_USER",
        default_value = "x-token-auth"
    )]
    pub user: String,
    /// Seconds between syncs (0: only on demand, through
    /// `POST /rest/security/latest/admin/catalog/sync`).
    #[arg(
        long = "bitbucket-sync-interval",
        env = "LEAKSCAN_BITBUCKET_SYNC_INTERVAL",
        default_value_t = 3600
    )]
    pub sync_interval: u64,
    /// Entries asked for per listing page (the server may give fewer; it
    /// says where the next page starts).
    #[arg(
        long = "bitbucket-page-size",
        env = "LEAKSCAN_BITBUCKET_PAGE_SIZE",
        default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub page_size: u32,
}

impl BitbucketArgs {
    /// The configured server, if one is; an unusable setting is an error
    /// naming the flag.
    pub fn source(&self) -> Result<Option<BitbucketSource>, String> {
        let Some(url) = self.url.as_deref().filter(|url| !url.trim().is_empty()) else {
            return Ok(None);
        };
        let base_url = url.trim().trim_end_matches('/').to_string();
        let lower = base_url.to_ascii_lowercase();
        if !(lower.starts_with("https://") || lower.starts_with("http://")) {
            return Err(format!(
                "LEAKSCAN_BITBUCKET_URL must be an http(s) URL, not {base_url:?}"
            ));
        }
        if leakscan_store::clone_credentials::split_url(&base_url).is_some() {
            return Err(
                "LEAKSCAN_BITBUCKET_URL holds no credentials: put the token in LEAKSCAN_BITBUCKET_TOKEN_FILE"
                    .into(),
            );
        }
        let origin = leakscan_store::clone_credentials::origin_of(&base_url)
            .ok_or_else(|| format!("LEAKSCAN_BITBUCKET_URL {base_url:?} names no host"))?;
        let token_file = self.token_file.clone().ok_or_else(|| {
            "LEAKSCAN_BITBUCKET_URL needs LEAKSCAN_BITBUCKET_TOKEN_FILE (a file holding the token)"
                .to_string()
        })?;
        let user = if self.user.is_empty() {
            "x-token-auth".to_string()
        } else {
            self.user.clone()
        };
        Ok(Some(BitbucketSource {
            base_url,
            origin,
            token_file,
            user,
            interval: (self.sync_interval > 0).then(|| Duration::from_secs(self.sync_interval)),
            page_size: self.page_size.clamp(1, 1000),
        }))
    }
}

/// A Bitbucket server the catalog is synchronised from.
#[derive(Debug, Clone)]
pub struct BitbucketSource {
    /// The REST base URL, without a trailing slash.
    pub base_url: String,
    /// `scheme://host[:port]` of the base URL, lower case: the only origin
    /// git gets the token for.
    pub origin: String,
    /// Read at each sync, so a rotated token needs no restart.
    pub token_file: PathBuf,
    pub user: String,
    /// Time between scheduled syncs; `None`: on demand only.
    pub interval: Option<Duration>,
    /// Entries asked for per listing page.
    pub page_size: u32,
}

/// Pages of one listing at most: a server whose paging never ends is cut
/// off with an error instead of being followed for ever.
const MAX_PAGES: u32 = 100_000;
/// Tries of one request when the server is busy or the connection fails.
const TRIES: u32 = 4;
/// `git ls-remote` runs at once during a sync.
const BRANCH_READERS: usize = 8;

/// A listing read to its end.
#[derive(Debug, Default)]
pub struct Listing {
    pub repositories: Vec<RemoteRepository>,
    pub projects: u32,
    pub requests: u32,
}

/// Reads the whole catalog of `source` (blocking: run it off the async
/// threads). `allowed`: whether a clone URL on another host than the
/// server's may be cloned (the operator's clone-source rules).
pub fn fetch(
    source: &BitbucketSource,
    token: &str,
    allowed: &dyn Fn(&str) -> Result<(), String>,
) -> Result<Listing, String> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .redirects(0)
        .build();
    let client = Client {
        agent,
        page_size: source.page_size,
        base_url: &source.base_url,
        authorization: format!("Bearer {token}"),
    };
    let mut listing = Listing::default();
    let mut projects: Vec<(String, String)> = Vec::new();
    client.pages("/rest/api/1.0/projects", &mut listing.requests, |project| {
        let key = text(project, "key")?;
        let name = project["name"].as_str().unwrap_or(&key).to_string();
        projects.push((key, name));
        Ok(())
    })?;
    listing.projects = projects.len() as u32;
    let mut seen_projects: std::collections::HashSet<String> =
        projects.iter().map(|(key, _)| key.clone()).collect();
    for (key, _) in &projects {
        let path = format!("/rest/api/1.0/projects/{}/repos", percent_encode(key));
        client.pages(&path, &mut listing.requests, |repository| {
            listing
                .repositories
                .push(remote_repository(repository, source, allowed)?);
            Ok(())
        })?;
    }
    // Personal projects are not among `/projects`: their repositories come
    // from the list of every repository. A server without it (404) has
    // listed its personal projects with the others, as leakscan does.
    let mut personal = Vec::new();
    let everything = client.pages("/rest/api/1.0/repos", &mut listing.requests, |repository| {
        let key = repository["project"]["key"].as_str().unwrap_or_default();
        let kind = repository["project"]["type"].as_str().unwrap_or_default();
        if (kind == "PERSONAL" || key.starts_with('~')) && !seen_projects.contains(key) {
            personal.push(remote_repository(repository, source, allowed)?);
        }
        Ok(())
    });
    match everything {
        Ok(()) => {}
        Err(error) if error.starts_with("404 ") => {}
        Err(error) => return Err(error),
    }
    for repository in personal {
        if seen_projects.insert(repository.project_key.clone()) {
            listing.projects += 1;
        }
        listing.repositories.push(repository);
    }
    Ok(listing)
}

struct Client<'a> {
    agent: ureq::Agent,
    page_size: u32,
    base_url: &'a str,
    authorization: String,
}

impl Client<'_> {
    /// Every value of the paged resource `path`, in order, given to `each`.
    fn pages(
        &self,
        path: &str,
        requests: &mut u32,
        mut each: impl FnMut(&Value) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut start: u64 = 0;
        for _ in 0..MAX_PAGES {
            let url = format!(
                "{}{path}?start={start}&limit={}",
                self.base_url, self.page_size
            );
            let page = match self.get(&url, path, requests) {
                // Only a list that is missing altogether may be skipped:
                // a later page that goes away ends the listing in error.
                Err(error) if start > 0 && error.starts_with("404 ") => {
                    return Err(format!("{error} (page starting at {start})"))
                }
                other => other?,
            };
            let values = page["values"]
                .as_array()
                .ok_or_else(|| format!("{path}: the answer is not a page (no values)"))?;
            for value in values {
                each(value).map_err(|error| format!("{path}: {error}"))?;
            }
            let last = page["isLastPage"]
                .as_bool()
                .ok_or_else(|| format!("{path}: a page without isLastPage"))?;
            if last {
                return Ok(());
            }
            let next = page["nextPageStart"].as_u64().ok_or_else(|| {
                format!("{path}: a page that is not the last has no nextPageStart")
            })?;
            if next <= start {
                return Err(format!(
                    "{path}: paging does not advance (nextPageStart {next} after start {start})"
                ));
            }
            start = next;
        }
        Err(format!("{path}: more than {MAX_PAGES} pages"))
    }

    /// One GET, tried again on 429, 5xx and connection failures with
    /// backoff (honouring `Retry-After`); `path` names it in errors, which
    /// start with the status code when the server answered.
    fn get(&self, url: &str, path: &str, requests: &mut u32) -> Result<Value, String> {
        let mut wait = Duration::from_millis(250);
        let mut tries = 0;
        loop {
            tries += 1;
            *requests += 1;
            let result = self
                .agent
                .get(url)
                .set("Authorization", &self.authorization)
                .set("Accept", "application/json")
                .call();
            let retry_after = match result {
                Ok(response) => {
                    return response
                        .into_json::<Value>()
                        .map_err(|error| format!("{path}: the answer is not JSON ({error})"))
                }
                Err(ureq::Error::Status(code, response)) if code == 429 || code >= 500 => {
                    if tries >= TRIES {
                        return Err(format!("{code} from {path} after {tries} tries"));
                    }
                    response
                        .header("Retry-After")
                        .and_then(|value| value.trim().parse::<u64>().ok())
                        .map(|secs| Duration::from_secs(secs.min(30)))
                }
                Err(ureq::Error::Status(code, _)) if code == 401 || code == 403 => {
                    return Err(format!(
                        "{code} from {path}: the server refused the token (LEAKSCAN_BITBUCKET_TOKEN_FILE)"
                    ))
                }
                Err(ureq::Error::Status(code, _)) => {
                    return Err(format!("{code} from {path}"));
                }
                Err(ureq::Error::Transport(error)) => {
                    if tries >= TRIES {
                        return Err(format!(
                            "the server cannot be reached ({}) after {tries} tries",
                            error.kind()
                        ));
                    }
                    None
                }
            };
            std::thread::sleep(retry_after.unwrap_or(wait));
            wait *= 2;
        }
    }
}

fn text(value: &Value, field: &str) -> Result<String, String> {
    value[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("an entry without {field}"))
}

/// `text` with every byte but RFC 3986's unreserved ones percent-encoded:
/// fit for a path segment and for a URL's user information.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A repository object of the listing. One that cannot be cloned (no
/// http(s) clone link, a link to a host the operator does not allow, not
/// available yet) still counts as listed, so it is not marked deleted.
fn remote_repository(
    value: &Value,
    source: &BitbucketSource,
    allowed: &dyn Fn(&str) -> Result<(), String>,
) -> Result<RemoteRepository, String> {
    let external_id = value["id"]
        .as_i64()
        .ok_or_else(|| "a repository without a numeric id".to_string())?;
    let slug = text(value, "slug")?;
    let project_key = value["project"]["key"]
        .as_str()
        .ok_or_else(|| format!("repository {slug} without project.key"))?
        .to_string();
    let project_name = value["project"]["name"]
        .as_str()
        .unwrap_or(&project_key)
        .to_string();
    let name = value["name"].as_str().unwrap_or(&slug).to_string();
    let link = value["links"]["clone"].as_array().and_then(|links| {
        links
            .iter()
            .filter(|link| matches!(link["name"].as_str(), Some("http" | "https")))
            .find_map(|link| link["href"].as_str())
    });
    let mut problem = None;
    let mut clone_url = String::new();
    match link {
        None => problem = Some("no http(s) clone link".to_string()),
        Some(href) => {
            // Bitbucket writes the caller's user name into the link.
            clone_url = leakscan_store::clone_credentials::split_url(href)
                .map_or_else(|| href.to_string(), |split| split.url);
            let same_server = leakscan_store::clone_credentials::origin_of(&clone_url).as_deref()
                == Some(source.origin.as_str());
            if !same_server {
                if let Err(why) = allowed(&clone_url) {
                    problem = Some(format!("clone link refused: {why}"));
                }
            }
        }
    }
    if let Some(state) = value["state"].as_str() {
        if state != "AVAILABLE" && problem.is_none() {
            problem = Some(format!("state {state}"));
        }
    }
    Ok(RemoteRepository {
        external_id,
        project_key,
        project_name,
        slug,
        name,
        clone_url,
        problem,
    })
}

/// What one sync did, as `POST …/admin/catalog/sync` answers it (under
/// `bitbucket`) and `GET` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    pub server: String,
    pub requests: u32,
    pub projects: u32,
    pub repositories: u32,
    pub branches: u32,
    #[serde(flatten)]
    pub reconciled: catalog_sync::Reconciled,
    /// Repositories whose branches could not be read (they keep the
    /// branches they had).
    pub errors: Vec<String>,
    /// Reading the listing through the REST API.
    pub listing_ms: u64,
    /// The whole sync: listing, reconciliation and branches.
    pub duration_ms: u64,
}

/// Synchronises the catalog with the configured server now; `actor` signs
/// the audit entries. 409 when another sync of it runs.
pub async fn sync(state: &AppState, actor: &str) -> Result<SyncReport, ApiError> {
    let Some(source) = state.config.bitbucket.clone() else {
        return Err(ApiError::bad_request(
            "no Bitbucket server is configured (LEAKSCAN_BITBUCKET_URL)",
        ));
    };
    let secrets = state.secrets().await?;
    let pool = state.pool.clone();
    let locked = catalog_sync::with_sync_lock(&pool, &source.base_url, async {
        let token = read_token(&source)
            .map_err(|error| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error))?;
        let userinfo = format!(
            "{}:{}",
            percent_encode(&source.user),
            percent_encode(&token)
        );
        let id = catalog_sync::register_source(
            &pool,
            &secrets,
            &source.base_url,
            &source.origin,
            &userinfo,
        )
        .await?;
        catalog_sync::sync_started(&pool, id).await?;
        let outcome = run_sync(state, &source, id, &token, &userinfo, actor).await;
        match &outcome {
            Ok(report) => {
                let value = serde_json::to_value(report).unwrap_or(Value::Null);
                catalog_sync::sync_finished(&pool, id, Ok(&value)).await?;
            }
            Err(error) => {
                warn!(server = %source.base_url, error = %error.message, "catalog sync failed");
                catalog_sync::sync_finished(&pool, id, Err(&error.message)).await?;
            }
        }
        outcome
    })
    .await?;
    locked.unwrap_or_else(|| {
        Err(ApiError::conflict(
            "a sync of this Bitbucket server is already running",
        ))
    })
}

fn read_token(source: &BitbucketSource) -> Result<String, String> {
    let token = std::fs::read_to_string(&source.token_file).map_err(|error| {
        format!(
            "cannot read the Bitbucket token file {}: {error}",
            source.token_file.display()
        )
    })?;
    let token = token.trim().to_string();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!(
            "the Bitbucket token file {} holds no token (one line, no spaces)",
            source.token_file.display()
        ));
    }
    Ok(token)
}

async fn run_sync(
    state: &AppState,
    source: &BitbucketSource,
    id: i32,
    token: &str,
    userinfo: &str,
    actor: &str,
) -> Result<SyncReport, ApiError> {
    let started = std::time::Instant::now();
    let clone_sources = state.config.clone_sources();
    let listing = {
        let (source, token) = (source.clone(), token.to_string());
        tokio::task::spawn_blocking(move || fetch(&source, &token, &|url| clone_sources.check(url)))
            .await
            .map_err(|_| ApiError::internal())?
            .map_err(|error| {
                ApiError::new(StatusCode::BAD_GATEWAY, format!("Bitbucket: {error}"))
            })?
    };
    let listing_ms = started.elapsed().as_millis() as u64;
    let mut reconciled =
        catalog_sync::reconcile(&state.pool, id, &listing.repositories, actor).await?;
    // Branches, from the server, with the token in a private file.
    let (scheme, host) = source.origin.split_once("://").unwrap_or(("https", ""));
    let credentials = leakscan_service::task_credentials_file(&format!(
        "{scheme}://{userinfo}@{host}"
    ))
    .map_err(|error| {
        warn!(%error, "cannot write a credentials file");
        ApiError::internal()
    })?;
    let mut files: Vec<&std::path::Path> = vec![credentials.path()];
    if let Some(operator) = state.config.git_credentials.as_deref() {
        files.push(operator);
    }
    let files = &files;
    let mut reads = futures::stream::iter(std::mem::take(&mut reconciled.live))
        .map(|(repository, url)| async move {
            let listing = crate::catalog::list_branches_with(&url, files).await;
            (repository, url, listing)
        })
        .buffer_unordered(BRANCH_READERS);
    let mut errors = Vec::new();
    let mut branches = 0u32;
    while let Some((repository, url, listing)) = reads.next().await {
        match listing {
            Ok(listing) => {
                catalog::replace_branches(&state.pool, repository, &listing.branches).await?;
                catalog::set_default_branch(
                    &state.pool,
                    repository,
                    listing.default_branch.as_deref(),
                )
                .await?;
                branches += listing.branches.len() as u32;
            }
            Err(message) => errors.push(format!(
                "{}: {}",
                leakscan_store::tasks::safe_error(&url),
                crate::catalog::git_failure(&message)
            )),
        }
    }
    errors.sort();
    let report = SyncReport {
        server: source.base_url.clone(),
        requests: listing.requests,
        projects: listing.projects,
        repositories: listing.repositories.len() as u32,
        branches,
        reconciled,
        errors,
        listing_ms,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    info!(
        server = %report.server,
        repositories = report.repositories,
        added = report.reconciled.added,
        renamed = report.reconciled.renamed,
        moved = report.reconciled.moved,
        deleted = report.reconciled.deleted,
        requests = report.requests,
        "catalog synchronised from Bitbucket"
    );
    Ok(report)
}

/// `GET /rest/security/latest/admin/catalog/sync`: the configured server
/// and each source's last sync.
pub async fn last_sync_handler(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_sys_admin()?;
    let syncs = catalog_sync::last_syncs(&state.pool).await?;
    Ok(Json(serde_json::json!({
        "bitbucket": state.config.bitbucket.as_ref().map(|source| serde_json::json!({
            "url": source.base_url,
            "intervalSeconds": source.interval.map(|interval| interval.as_secs()),
        })),
        "sources": syncs,
    })))
}

/// Syncs every `interval` while the gateway runs; with several gateways,
/// whichever finds the last sync older than the interval takes it (the
/// others find the lock taken or the sync fresh).
pub async fn sync_periodically(state: Arc<AppState>, stop: tokio_util::sync::CancellationToken) {
    let Some(interval) = state
        .config
        .bitbucket
        .as_ref()
        .and_then(|source| source.interval)
    else {
        return;
    };
    let base_url = state
        .config
        .bitbucket
        .as_ref()
        .map(|source| source.base_url.clone())
        .unwrap_or_default();
    loop {
        let due = match catalog_sync::last_finished(&state.pool, &base_url).await {
            Ok(Some((finished, succeeded))) => {
                // A failed sync is tried again within five minutes.
                let wait = if succeeded {
                    interval
                } else {
                    interval.min(Duration::from_secs(300))
                };
                let age = chrono::Utc::now() - finished;
                age.to_std().unwrap_or_default() >= wait
            }
            Ok(None) => true,
            Err(error) => {
                warn!(%error, "cannot read the last catalog sync");
                false
            }
        };
        if due {
            match sync(&state, "scheduler").await {
                Ok(_) => {}
                Err(error) if error.status == StatusCode::CONFLICT => {}
                Err(error) => warn!(error = %error.message, "scheduled catalog sync failed"),
            }
        }
        // Check again a tenth of the interval later (at least a second, at
        // most a minute), so a gateway that takes over finds it due soon.
        let pause = (interval / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};

    /// A server answering each GET with the first route whose path and
    /// query start as the request's do; it records the requests.
    fn stub(
        routes: Vec<(&'static str, u16, String)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                let mut reader = BufReader::new(socket.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut authorization = String::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() == 0 || header.trim().is_empty() {
                        break;
                    }
                    if header.to_ascii_lowercase().starts_with("authorization:") {
                        authorization = header[14..].trim().to_string();
                    }
                }
                let target = line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                log.lock()
                    .unwrap()
                    .push(format!("{target} {authorization}"));
                let (status, body) = routes
                    .iter()
                    .find(|(prefix, _, _)| target.starts_with(prefix))
                    .map_or((404, String::new()), |(_, status, body)| {
                        (*status, body.clone())
                    });
                let mut socket = socket;
                let _ = write!(
                    socket,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("http://{address}"), seen)
    }

    fn source(base_url: &str) -> BitbucketSource {
        BitbucketSource {
            base_url: base_url.into(),
            origin: leakscan_store::clone_credentials::origin_of(base_url).unwrap(),
            token_file: PathBuf::from("/nonexistent"),
            user: "x-token-auth".into(),
            interval: None,
            page_size: 2,
        }
    }

    fn repository(id: i64, project: &str, slug: &str, clone: Value) -> Value {
        serde_json::json!({
            "id": id, "slug": slug, "name": slug, "state": "AVAILABLE",
            "project": {"key": project, "name": project, "type": "NORMAL"},
            "links": {"clone": clone},
        })
    }

    #[test]
    fn a_paged_listing_is_read_to_its_end_and_clone_links_are_judged() {
        let pages = |values: Vec<Value>, last: bool, next: u64| {
            serde_json::json!({"values": values, "isLastPage": last, "nextPageStart": next, "start": 0, "size": 2, "limit": 2})
                .to_string()
        };
        let (base, seen) = stub(vec![
            (
                "/rest/api/1.0/projects?start=0",
                200,
                pages(
                    vec![
                        serde_json::json!({"key": "A", "name": "Alpha"}),
                        serde_json::json!({"key": "B"}),
                    ],
                    false,
                    2,
                ),
            ),
            (
                "/rest/api/1.0/projects?start=2",
                200,
                pages(vec![], true, 0),
            ),
            (
                "/rest/api/1.0/projects/A/repos?start=0",
                200,
                pages(
                    vec![
                        repository(
                            1,
                            "A",
                            "one",
                            serde_json::json!([{"href": "http://admin@bitbucket.invalid/scm/a/one.git", "name": "http"}]),
                        ),
                        repository(
                            2,
                            "A",
                            "two",
                            serde_json::json!([{"href": "ssh://git@bitbucket.invalid/a/two.git", "name": "ssh"}]),
                        ),
                    ],
                    false,
                    2,
                ),
            ),
            (
                "/rest/api/1.0/projects/A/repos?start=2",
                200,
                pages(
                    vec![repository(
                        3,
                        "A",
                        "three",
                        serde_json::json!([{"href": "https://mirror.example.net/a/three.git", "name": "http"}]),
                    )],
                    true,
                    0,
                ),
            ),
            (
                "/rest/api/1.0/projects/B/repos?start=0",
                200,
                pages(vec![], true, 0),
            ),
            (
                "/rest/api/1.0/repos?start=0",
                200,
                pages(
                    vec![repository(1, "A", "one", serde_json::json!([])), {
                        let mut personal = repository(
                            4,
                            "~bob",
                            "notes",
                            serde_json::json!([{"href": "http://bitbucket.invalid/scm/~bob/notes.git", "name": "http"}]),
                        );
                        personal["project"]["type"] = "PERSONAL".into();
                        personal
                    }],
                    true,
                    0,
                ),
            ),
        ]);
        let mut source = source(&base);
        // Clone links name the server's public host.
        source.origin = "http://bitbucket.invalid".into();
        let listing = fetch(&source, "t0ken", &|url| {
            if url.contains("mirror.example.net") {
                Err("not allowed".into())
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(listing.requests, 6);
        assert_eq!(listing.projects, 3, "A, B and ~bob");
        let summary: Vec<(i64, String, String, Option<String>)> = listing
            .repositories
            .iter()
            .map(|r| {
                (
                    r.external_id,
                    format!("{}/{}", r.project_key, r.slug),
                    r.clone_url.clone(),
                    r.problem.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    1,
                    "A/one".into(),
                    "http://bitbucket.invalid/scm/a/one.git".into(),
                    None
                ),
                (
                    2,
                    "A/two".into(),
                    String::new(),
                    Some("no http(s) clone link".into())
                ),
                (
                    3,
                    "A/three".into(),
                    "https://mirror.example.net/a/three.git".into(),
                    Some("clone link refused: not allowed".into())
                ),
                (
                    4,
                    "~bob/notes".into(),
                    "http://bitbucket.invalid/scm/~bob/notes.git".into(),
                    None
                ),
            ]
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|request| request.ends_with("Bearer t0ken")),
            "{seen:?}"
        );
        assert!(
            seen[0].starts_with("/rest/api/1.0/projects?start=0&limit=2 "),
            "{seen:?}"
        );
    }

    #[test]
    fn a_listing_read_in_part_is_an_error() {
        let (base, _) = stub(vec![(
            "/rest/api/1.0/projects",
            200,
            serde_json::json!({"values": [], "isLastPage": false, "nextPageStart": 0}).to_string(),
        )]);
        let error = fetch(&source(&base), "t", &|_| Ok(())).unwrap_err();
        assert!(error.contains("paging does not advance"), "{error}");

        let (base, _) = stub(vec![("/rest/api/1.0/projects", 401, String::new())]);
        let error = fetch(&source(&base), "t", &|_| Ok(())).unwrap_err();
        assert!(error.contains("refused the token"), "{error}");

        let (base, _) = stub(vec![("/rest/api/1.0/projects", 200, "<html>".into())]);
        let error = fetch(&source(&base), "t", &|_| Ok(())).unwrap_err();
        assert!(error.contains("not JSON"), "{error}");

        // Nobody listens on a port just released.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = fetch(&source(&format!("http://{address}")), "t", &|_| Ok(())).unwrap_err();
        assert!(error.contains("cannot be reached"), "{error}");
    }

    #[test]
    fn the_url_and_token_file_are_checked_and_the_token_is_encoded() {
        let args = |url: &str, file: Option<&str>| BitbucketArgs {
            url: Some(url.into()),
            token_file: file.map(PathBuf::from),
            user: String::new(),
            sync_interval: 0,
            page_size: 500,
        };
        assert!(args("ftp://x", Some("/t"))
            .source()
            .unwrap_err()
            .contains("http(s)"));
        assert!(args("https://u:p@x", Some("/t"))
            .source()
            .unwrap_err()
            .contains("no credentials"));
        assert!(args("https://x", None)
            .source()
            .unwrap_err()
            .contains("TOKEN_FILE"));
        let source = args("https://Bitbucket.Example.com:8443/ctx/", Some("/t"))
            .source()
            .unwrap()
            .unwrap();
        assert_eq!(source.base_url, "https://Bitbucket.Example.com:8443/ctx");
        assert_eq!(source.origin, "https://bitbucket.example.com:8443");
        assert_eq!(source.user, "x-token-auth");
        assert_eq!(source.interval, None);
        assert_eq!(percent_encode("a+b/c=d:e@f~g"), "a%2Bb%2Fc%3Dd%3Ae%40f~g");
    }
}
