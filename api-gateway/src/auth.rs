//! HTTP basic authentication against the users in PostgreSQL (or an
//! access token, or the dashboard page's session cookie), and the
//! permission checks the handlers call.
//!
//! Verifying an argon2 hash costs tens of milliseconds of CPU, far more
//! than a status poll may take, so a successful verification is remembered
//! for [`CREDENTIAL_TTL`] as a salted SHA-256 of the password (the salt is
//! random per process). The user's grants are read on every request, so a
//! revoked permission takes effect at once; a changed password lets the old
//! one work until its entry expires.
//!
//! Guessing is made slow and cheap for the gateway ([`SignInLimits`]): after
//! [`FREE_FAILURES`] failed attempts for a user name, or from a client
//! address, further attempts are refused (401 with `Retry-After`, no
//! hashing) for a delay that
//! doubles with each failure up to [`MAX_BACKOFF`]; at most one hash per
//! core runs at once; and an unknown user name costs one verification as a
//! known one does, so the answer's timing does not tell which names exist.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine as _;
use leakscan_store::{
    catalog::{self, Repository},
    sessions,
    tokens::{self, TokenScope},
    users::{self, Access, User},
};
use sha2::{Digest, Sha256};

use crate::{error::ApiError, AppState};

pub const CREDENTIAL_TTL: Duration = Duration::from_secs(60);
/// Most remembered credentials; the cache is emptied when it is full.
const MAX_CACHED_CREDENTIALS: usize = 10_000;

pub struct CredentialCache {
    salt: [u8; 32],
    entries: Mutex<HashMap<String, ([u8; 32], Instant)>>,
}

impl Default for CredentialCache {
    fn default() -> Self {
        CredentialCache {
            salt: rand::random(),
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl CredentialCache {
    fn digest(&self, password: &str) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.salt);
        hasher.update(password.as_bytes());
        hasher.finalize().into()
    }

    fn remembers(&self, name: &str, password: &str) -> bool {
        let digest = self.digest(password);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        matches!(entries.get(name), Some((known, at)) if *known == digest && at.elapsed() < CREDENTIAL_TTL)
    }

    fn remember(&self, name: &str, password: &str) {
        let digest = self.digest(password);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_CACHED_CREDENTIALS {
            entries.clear();
        }
        entries.insert(name.to_string(), (digest, Instant::now()));
    }
}

/// Failed sign-ins for a user name or a client address that cost nothing.
pub const FREE_FAILURES: u32 = 5;
/// Longest wait a run of failures imposes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Most user names and addresses with failures remembered; the oldest half
/// is forgotten when full.
const MAX_FAILURE_ENTRIES: usize = 100_000;
/// How long a password verification may wait for a free core.
const HASH_QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    /// How long after the last failure the next attempt must wait.
    fn backoff(self) -> Duration {
        match self.count.checked_sub(FREE_FAILURES) {
            None => Duration::ZERO,
            Some(extra) => Duration::from_secs(1u64 << extra.min(20)).min(MAX_BACKOFF),
        }
    }
}

/// Throttling of password sign-ins (see the module's documentation).
pub struct SignInLimits {
    hashing: tokio::sync::Semaphore,
    failures: Mutex<HashMap<String, Failures>>,
    /// Verified against when the user name is unknown.
    decoy_hash: OnceLock<String>,
}

impl Default for SignInLimits {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        SignInLimits {
            hashing: tokio::sync::Semaphore::new(cores),
            failures: Mutex::new(HashMap::new()),
            decoy_hash: OnceLock::new(),
        }
    }
}

impl SignInLimits {
    fn keys(name: &str, address: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{name}")];
        if let Some(address) = address {
            keys.push(format!("addr:{address}"));
        }
        keys
    }

    /// The wait still owed by any of `keys`, if one is.
    fn owed(&self, keys: &[String]) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .filter_map(|key| failures.get(key))
            .filter_map(|entry| entry.backoff().checked_sub(entry.last.elapsed()))
            .filter(|wait| !wait.is_zero())
            .max()
    }

    fn failed(&self, keys: &[String]) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= MAX_FAILURE_ENTRIES {
            let mut ages: Vec<Instant> = failures.values().map(|entry| entry.last).collect();
            ages.sort_unstable();
            let cutoff = ages[ages.len() / 2];
            failures.retain(|_, entry| entry.last > cutoff);
        }
        let now = Instant::now();
        for key in keys {
            let entry = failures.entry(key.clone()).or_insert(Failures {
                count: 0,
                last: now,
            });
            // A quiet spell as long as the longest wait starts afresh.
            if entry.last.elapsed() > MAX_BACKOFF {
                entry.count = 0;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
        }
    }

    fn succeeded(&self, keys: &[String]) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            failures.remove(key);
        }
    }

    /// Whether `password` is `name`'s: `None` when the attempt is refused
    /// unverified (throttled, or no core free in time).
    async fn verify(
        &self,
        state: &AppState,
        name: &str,
        password: &str,
        address: Option<IpAddr>,
    ) -> Result<Option<User>, ApiError> {
        let keys = Self::keys(name, address);
        if let Some(wait) = self.owed(&keys) {
            // 401 as for a wrong password (Bitbucket too answers 401 once
            // it wants a CAPTCHA), with the wait in the message and in
            // Retry-After: the credentials were not accepted, whatever
            // they were.
            let seconds = wait.as_secs().max(1);
            return Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                format!("Too many failed sign-ins: try again in {seconds} s."),
            )
            .retry_after(seconds));
        }
        let found = users::user_with_hash(&state.pool, name).await?;
        let _permit = tokio::time::timeout(HASH_QUEUE_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| {
                ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "Too many sign-ins at once: try again shortly.",
                )
            })?
            .map_err(|_| ApiError::internal())?;
        let decoy = match &found {
            Some(_) => None,
            None => Some(match self.decoy_hash.get() {
                Some(hash) => hash.clone(),
                None => {
                    let hash = tokio::task::spawn_blocking(|| {
                        users::hash_password(&format!("{:032x}", rand::random::<u128>()))
                    })
                    .await
                    .map_err(|_| ApiError::internal())?
                    .map_err(|_| ApiError::internal())?;
                    self.decoy_hash.get_or_init(|| hash).clone()
                }
            }),
        };
        let (user, hash) = match found {
            Some((user, hash)) => (Some(user), hash),
            None => (None, decoy.unwrap_or_default()),
        };
        let attempt = password.to_string();
        let verified = tokio::task::spawn_blocking(move || users::verify_password(&hash, &attempt))
            .await
            .map_err(|_| ApiError::internal())?;
        match user {
            Some(user) if verified => {
                self.succeeded(&keys);
                Ok(Some(user))
            }
            _ => {
                self.failed(&keys);
                Ok(None)
            }
        }
    }
}

/// The authenticated caller of a request (401 without valid credentials):
/// the user, and the scope of the access token used, if one was.
#[derive(Clone)]
pub struct Caller(pub User, pub Option<TokenScope>);

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Caller, ApiError> {
        // Already authenticated by the route's permission check.
        if let Some(crate::routes::Authenticated(caller)) = parts.extensions.get() {
            return Ok(caller.clone());
        }
        if let Some(token) = bearer_token(parts) {
            let (user, scope) = tokens::authenticate(&state.pool, &token)
                .await?
                .ok_or_else(ApiError::unauthorized)?;
            return Ok(Caller(user, Some(scope)));
        }
        // The dashboard page's session (credentials in the request win).
        if parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .is_none()
        {
            if let Some(token) = session_cookie(&parts.headers) {
                let user = sessions::authenticate(&state.pool, &token)
                    .await?
                    .ok_or_else(ApiError::unauthorized)?;
                return Ok(Caller(user, None));
            }
        }
        let (name, password) = basic_credentials(parts).ok_or_else(ApiError::unauthorized)?;
        if state.credentials.remembers(&name, &password) {
            if let Some(user) = users::find_user(&state.pool, &name).await? {
                return Ok(Caller(user, None));
            }
        }
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        let user = state
            .sign_ins
            .verify(state, &name, &password, address)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        state.credentials.remember(&name, &password);
        Ok(Caller(user, None))
    }
}

/// The name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "leakscan_session";

/// The dashboard session token of the request's `Cookie` header, if any.
pub(crate) fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| token.trim().to_string())
}

/// Signs a user in with a password, throttled as basic authentication is
/// (the dashboard's sign-in form).
pub(crate) async fn sign_in(
    state: &AppState,
    name: &str,
    password: &str,
    address: Option<IpAddr>,
) -> Result<User, ApiError> {
    state
        .sign_ins
        .verify(state, name, password, address)
        .await?
        .ok_or_else(ApiError::unauthorized)
}

/// `Authorization: Bearer <token>` (a personal access token).
pub(crate) fn bearer_token(parts: &Parts) -> Option<String> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn basic_credentials(parts: &Parts) -> Option<(String, String)> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (name, password) = text.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

impl Caller {
    /// Whether a token (if one was used) lets its user act globally.
    fn global_scope(&self) -> bool {
        self.1.is_none_or(|scope| scope.allows_global())
    }

    pub fn require_sys_admin(&self) -> Result<(), ApiError> {
        if self.0.sys_admin && self.global_scope() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "You are not permitted to access this resource: it needs system administrator permission.",
            ))
        }
    }

    /// A system administrator, or a user with the explicit security grant.
    pub fn require_security(&self) -> Result<(), ApiError> {
        if (self.0.sys_admin || self.0.security) && self.global_scope() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                "You are not permitted to access this resource: it needs system administrator permission or the security grant.",
            ))
        }
    }

    /// The project, if the caller has at least `needed` on it. A project
    /// the caller may not read answers 404, as one that does not exist.
    pub async fn project(
        &self,
        state: &AppState,
        project_key: &str,
        needed: Access,
    ) -> Result<(), ApiError> {
        catalog::validate_project_key(project_key)?;
        let access = users::project_access(&state.pool, &self.0, project_key).await?;
        let access = access.map(|access| self.1.map_or(access, |scope| access.min(scope.project)));
        check_access(access, needed, || format!("Project {project_key}"))
    }

    /// The project, if the caller has at least `needed` on it or holds the
    /// security grant (Soteri ranks "explicitly granted Security for
    /// Bitbucket permissions" above project administrators). A project
    /// that does not exist, or one a caller without the grant may not read,
    /// answers 404.
    pub async fn project_or_security(
        &self,
        state: &AppState,
        project_key: &str,
        needed: Access,
    ) -> Result<(), ApiError> {
        if self.require_security().is_err() {
            return self.project(state, project_key, needed).await;
        }
        catalog::validate_project_key(project_key)?;
        match catalog::find_project(&state.pool, project_key).await? {
            Some(_) => Ok(()),
            None => Err(ApiError::not_found(format!(
                "Project {project_key} does not exist."
            ))),
        }
    }

    /// What the caller may do with a repository (its token's scope
    /// applied; `Access::None` for one it may not see or that does not
    /// exist).
    pub async fn repository_access(
        &self,
        state: &AppState,
        project_key: &str,
        slug: &str,
    ) -> Result<Access, ApiError> {
        let found = users::repository_access(&state.pool, &self.0, project_key, slug).await?;
        Ok(found.map_or(Access::None, |(_, access)| {
            self.1.map_or(access, |scope| access.min(scope.repository))
        }))
    }

    /// The repository, if the caller has at least `needed` on it (404 for
    /// one it may not read).
    pub async fn repository(
        &self,
        state: &AppState,
        project_key: &str,
        slug: &str,
        needed: Access,
    ) -> Result<Repository, ApiError> {
        catalog::validate_project_key(project_key)?;
        catalog::validate_slug(slug)?;
        let found = users::repository_access(&state.pool, &self.0, project_key, slug).await?;
        let what = || format!("Repository {project_key}/{slug}");
        let (repository, access) = found.unzip();
        let access =
            access.map(|access| self.1.map_or(access, |scope| access.min(scope.repository)));
        check_access(access, needed, what)?;
        repository.ok_or_else(|| ApiError::not_found(format!("{} does not exist.", what())))
    }
}

fn check_access(
    access: Option<Access>,
    needed: Access,
    what: impl Fn() -> String,
) -> Result<(), ApiError> {
    match access {
        None | Some(Access::None) => {
            Err(ApiError::not_found(format!("{} does not exist.", what())))
        }
        Some(access) if access < needed => Err(ApiError::forbidden(format!(
            "You are not permitted to access this resource: {} needs {} permission.",
            what(),
            match needed {
                Access::Admin => "admin",
                Access::Write => "write",
                _ => "read",
            }
        ))),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod sign_in_tests {
    use super::*;

    #[test]
    fn the_wait_doubles_after_the_free_failures_up_to_the_cap() {
        let wait = |count| {
            Failures {
                count,
                last: Instant::now(),
            }
            .backoff()
        };
        assert_eq!(wait(FREE_FAILURES - 1), Duration::ZERO);
        assert_eq!(wait(FREE_FAILURES), Duration::from_secs(1));
        assert_eq!(wait(FREE_FAILURES + 3), Duration::from_secs(8));
        assert_eq!(wait(FREE_FAILURES + 30), MAX_BACKOFF);
        assert_eq!(wait(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn failures_are_forgotten_on_success_and_bounded_in_number() {
        let limits = SignInLimits::default();
        let keys = SignInLimits::keys("alice", Some("192.0.2.1".parse().unwrap()));
        for _ in 0..FREE_FAILURES + 2 {
            limits.failed(&keys);
        }
        assert!(limits.owed(&keys).is_some());
        assert!(limits.owed(&SignInLimits::keys("bob", None)).is_none());
        limits.succeeded(&keys);
        assert!(limits.owed(&keys).is_none());
        for index in 0..MAX_FAILURE_ENTRIES + 10 {
            limits.failed(&[format!("user:{index}")]);
        }
        let remembered = limits.failures.lock().unwrap().len();
        assert!(remembered <= MAX_FAILURE_ENTRIES, "{remembered}");
    }
}
