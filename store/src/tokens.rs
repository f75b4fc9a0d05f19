//! Personal access tokens: `Authorization: Bearer <token>` acts as the
//! token's user, with at most the token's project and repository
//! permission. Only a SHA-256 of each token is stored (a token is 264
//! random bits, so a fast hash is enough); the token is shown once, when it
//! is made.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::{
    page::{Page, PageRequest},
    users::{Access, User, UserId},
    Result, StoreError,
};

/// Most tokens one user may hold.
pub const MAX_TOKENS_PER_USER: i64 = 100;
/// Longest lifetime a token may be given, in days.
pub const MAX_EXPIRY_DAYS: i64 = 3650;

/// A token as listed (never with its secret value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct AccessToken {
    #[serde(serialize_with = "as_string")]
    pub id: i64,
    pub name: String,
    #[serde(skip)]
    pub project_permission: String,
    #[serde(skip)]
    pub repository_permission: String,
    pub created_date: DateTime<Utc>,
    pub expiry_date: Option<DateTime<Utc>>,
    pub last_authenticated: Option<DateTime<Utc>>,
}

fn as_string<S: serde::Serializer>(id: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&id.to_string())
}

impl AccessToken {
    /// `["PROJECT_READ", "REPO_WRITE"]`, as Bitbucket lists them.
    pub fn permissions(&self) -> Vec<String> {
        vec![
            self.project_permission.clone(),
            self.repository_permission.clone(),
        ]
    }
}

/// What a token lets its user do at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenScope {
    /// On projects.
    pub project: Access,
    /// On repositories: the higher of the token's repository and project
    /// permission.
    pub repository: Access,
}

impl TokenScope {
    /// System administration and the security grant need a token with
    /// project admin permission.
    pub fn allows_global(&self) -> bool {
        self.project == Access::Admin
    }
}

fn level(permission: &str) -> Access {
    match permission {
        "PROJECT_ADMIN" | "REPO_ADMIN" => Access::Admin,
        "PROJECT_WRITE" | "REPO_WRITE" => Access::Write,
        _ => Access::Read,
    }
}

pub(crate) fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

const COLUMNS: &str =
    "id, name, project_permission, repository_permission, created_at as created_date,
     expires_at as expiry_date, last_used_at as last_authenticated";

/// Makes a token for `user`: its permissions are one `PROJECT_*` and/or one
/// `REPO_*` (the missing one is READ). Returns it and the secret value.
pub async fn create(
    pool: &PgPool,
    user: UserId,
    name: &str,
    permissions: &[String],
    expiry_days: Option<i64>,
) -> Result<(AccessToken, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid(
            "a token needs a name of 1 to 255 printable characters".into(),
        ));
    }
    let mut project = None;
    let mut repository = None;
    for permission in permissions {
        let slot = match permission.as_str() {
            "PROJECT_READ" | "PROJECT_WRITE" | "PROJECT_ADMIN" => &mut project,
            "REPO_READ" | "REPO_WRITE" | "REPO_ADMIN" => &mut repository,
            other => {
                return Err(StoreError::Invalid(format!(
                    "unknown token permission {other:?}: expected PROJECT_READ, PROJECT_WRITE, PROJECT_ADMIN, REPO_READ, REPO_WRITE or REPO_ADMIN"
                )))
            }
        };
        if slot.replace(permission.clone()).is_some() {
            return Err(StoreError::Invalid(
                "a token has one project and one repository permission".into(),
            ));
        }
    }
    if let Some(days) = expiry_days {
        if !(1..=MAX_EXPIRY_DAYS).contains(&days) {
            return Err(StoreError::Invalid(format!(
                "expiryDays must be from 1 to {MAX_EXPIRY_DAYS}"
            )));
        }
    }
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 33]>());
    let mut transaction = pool.begin().await?;
    // One user's creations one after the other, for the count.
    sqlx::query("select 1 from users where id = $1 for update")
        .bind(user)
        .execute(&mut *transaction)
        .await?;
    let held: i64 = sqlx::query_scalar("select count(*) from access_tokens where user_id = $1")
        .bind(user)
        .fetch_one(&mut *transaction)
        .await?;
    if held >= MAX_TOKENS_PER_USER {
        return Err(StoreError::Invalid(format!(
            "a user holds at most {MAX_TOKENS_PER_USER} tokens; delete one first"
        )));
    }
    let stored = sqlx::query_as::<_, AccessToken>(sqlx::AssertSqlSafe(format!(
        "insert into access_tokens (user_id, name, token_hash, project_permission, repository_permission, expires_at)
         values ($1, $2, $3, $4, $5, now() + make_interval(days => $6::integer))
         returning {COLUMNS}"
    )))
    .bind(user)
    .bind(name)
    .bind(hash(&token))
    .bind(project.as_deref().unwrap_or("PROJECT_READ"))
    .bind(repository.as_deref().unwrap_or("REPO_READ"))
    .bind(expiry_days.map(|days| days as i32))
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok((stored, token))
}

/// A user's tokens, newest first.
pub async fn list(pool: &PgPool, user: UserId, page: PageRequest) -> Result<Page<AccessToken>> {
    let rows = sqlx::query_as::<_, AccessToken>(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from access_tokens where user_id = $1 order by id desc offset $2 limit $3"
    )))
    .bind(user)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

/// Deletes one of the user's tokens; false when it has no such token.
pub async fn delete(pool: &PgPool, user: UserId, id: i64) -> Result<bool> {
    Ok(
        sqlx::query("delete from access_tokens where user_id = $1 and id = $2")
            .bind(user)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
            > 0,
    )
}

/// The user and scope of a valid, unexpired token.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<(User, TokenScope)>> {
    if token.is_empty() || token.len() > 200 {
        return Ok(None);
    }
    let row: Option<(i64, i64, String, String, bool)> = sqlx::query_as(
        "select id, user_id, project_permission, repository_permission,
             last_used_at is null or last_used_at < now() - interval '1 minute'
         from access_tokens where token_hash = $1 and (expires_at is null or expires_at > now())",
    )
    .bind(hash(token))
    .fetch_optional(pool)
    .await?;
    let Some((id, user_id, project, repository, stale)) = row else {
        return Ok(None);
    };
    // `lastAuthenticated` to the minute: not a write per request.
    if stale {
        sqlx::query("update access_tokens set last_used_at = now() where id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    }
    let Some(user) = crate::users::find_user_by_id(pool, UserId(user_id)).await? else {
        return Ok(None);
    };
    let project = level(&project);
    Ok(Some((
        user,
        TokenScope {
            project,
            repository: level(&repository).max(project),
        },
    )))
}
