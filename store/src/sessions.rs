//! Dashboard sessions (docs/ARCHITECTURE.md, "The dashboard page"): a
//! browser signs in with a user's password once and then sends a session
//! cookie. Only a SHA-256 of each session token is stored; a session ends
//! at its expiry, when its user signs out, or when the user is deleted.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::{
    users::{User, UserId},
    Result,
};

/// How long a dashboard session lasts.
pub const SESSION_HOURS: i32 = 12;

/// Starts a session for `user`: its token (for the cookie, never stored)
/// and when it ends. Expired sessions are removed on the way.
pub async fn create(pool: &PgPool, user: UserId) -> Result<(String, DateTime<Utc>)> {
    sqlx::query("delete from web_sessions where expires_at <= now()")
        .execute(pool)
        .await?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let expires: DateTime<Utc> = sqlx::query_scalar(
        "insert into web_sessions (token_hash, user_id, expires_at)
         values ($1, $2, now() + make_interval(hours => $3)) returning expires_at",
    )
    .bind(crate::tokens::hash(&token))
    .bind(user)
    .bind(SESSION_HOURS)
    .fetch_one(pool)
    .await?;
    Ok((token, expires))
}

/// The user of a live session.
pub async fn authenticate(pool: &PgPool, token: &str) -> Result<Option<User>> {
    if token.is_empty() || token.len() > 100 {
        return Ok(None);
    }
    let user: Option<i64> = sqlx::query_scalar(
        "select user_id from web_sessions where token_hash = $1 and expires_at > now()",
    )
    .bind(crate::tokens::hash(token))
    .fetch_optional(pool)
    .await?;
    match user {
        Some(id) => crate::users::find_user_by_id(pool, UserId(id)).await,
        None => Ok(None),
    }
}

/// Ends a session (signing out); false when there was none.
pub async fn delete(pool: &PgPool, token: &str) -> Result<bool> {
    Ok(
        sqlx::query("delete from web_sessions where token_hash = $1")
            .bind(crate::tokens::hash(token))
            .execute(pool)
            .await?
            .rows_affected()
            > 0,
    )
}
