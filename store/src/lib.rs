//! `leakscan-store`: the one owner of leakscan's schema.
//!
//! - [`migrate`] applies `store/migrations/*.sql` (embedded); the migrator's
//!   advisory lock makes concurrent start-up of several processes safe.
//! - [`catalog`]: projects, repositories and their branches.
//! - [`findings`] and [`secrets`]: findings, written idempotently, with
//!   their secret encrypted (AES-256-GCM data keys wrapped by a master key)
//!   and a keyed fingerprint.
//! - [`jobs`]: scan jobs, the source of truth for what was requested.
//! - [`tasks`]: leasing branch tasks to workers, heartbeats, completion,
//!   failure with bounded attempts, expiry of leases of dead workers.
//! - [`queue`]: the Redis stream `…jobs` that carries job ids from the
//!   gateway to the coordinators; an entry is acknowledged only once the
//!   job's tasks are in PostgreSQL.
//! - [`users`]: users (argon2id password hashes) and their permissions.
//! - [`blobs`]: the blob-result cache every worker shares.
//! - [`policy`]: custom and allowlist rules per scope, built-in switches,
//!   exemptions, and the base policy a repository is scanned under;
//!   [`reviews`]: secrets marked false positives; [`audit`]: who changed
//!   what, written in the same transaction as the change.
//! - [`testing`]: a fresh database per test.
//!
//! Queries are checked at run time (no database is needed to build).

pub mod audit;
pub mod blobs;
// Its column macros are used by later modules.
#[macro_use]
pub mod catalog;
pub mod catalog_sync;
pub mod clone_credentials;
pub mod email;
pub mod findings;
pub mod hooks;
pub mod insights;
pub mod jobs;
pub mod keys;
pub mod page;
pub mod policy;
pub mod queue;
pub mod reviews;
pub mod schedules;
pub mod secrets;
pub mod sessions;
pub mod tasks;
pub mod testing;
pub mod tokens;
pub mod users;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use page::{Page, PageRequest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the current state (a taken name, a job
    /// that already ended).
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Connects a pool to `url`.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await?)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}
