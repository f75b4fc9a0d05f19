//! HTTP basic authentication against the users in PostgreSQL, and the
//! permission checks the handlers call.
//!
//! Verifying an argon2 hash costs tens of milliseconds of CPU, far more
//! than a status poll may take, so a successful verification is remembered
//! for [`CREDENTIAL_TTL`] as a salted SHA-256 of the password (the salt is
//! random per process). The user's grants are read on every request, so a
//! revoked permission takes effect at once; a changed password lets the old
//! one work until its entry expires.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{extract::FromRequestParts, http::request::Parts};
use base64::Engine as _;
use leakscan_store::{
    catalog::{self, Repository},
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
        let (name, password) = basic_credentials(parts).ok_or_else(ApiError::unauthorized)?;
        if state.credentials.remembers(&name, &password) {
            if let Some(user) = users::find_user(&state.pool, &name).await? {
                return Ok(Caller(user, None));
            }
        }
        let (user, hash) = users::user_with_hash(&state.pool, &name)
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        let verify_password = password.clone();
        let verified =
            tokio::task::spawn_blocking(move || users::verify_password(&hash, &verify_password))
                .await
                .map_err(|_| ApiError::internal())?;
        if !verified {
            return Err(ApiError::unauthorized());
        }
        state.credentials.remember(&name, &password);
        Ok(Caller(user, None))
    }
}

/// `Authorization: Bearer <token>` (a personal access token).
fn bearer_token(parts: &Parts) -> Option<String> {
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
