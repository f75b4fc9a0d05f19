//! A fresh PostgreSQL database per test, and a fresh Redis key prefix.
//!
//! The server comes from `LEAKSCAN_TEST_DATABASE_URL` (set by
//! `scripts/test.sh` from `deploy/local/services.sh`), default
//! `postgres://postgres:postgres@127.0.0.1:5432/postgres`.

use rand::Rng;
use sqlx::{postgres::PgPool, Connection, PgConnection};

use crate::Result;

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/postgres";
pub const DEFAULT_TEST_REDIS_URL: &str = "redis://127.0.0.1:6379";

fn admin_url() -> String {
    std::env::var("LEAKSCAN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_string())
}

pub fn redis_url() -> String {
    std::env::var("LEAKSCAN_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_TEST_REDIS_URL.to_string())
}

/// A unique name for this test's database or key prefix.
pub fn unique_name(prefix: &str) -> String {
    let suffix: u64 = rand::rng().random();
    format!("{prefix}_{}_{suffix:016x}", std::process::id())
}

/// A migrated database of its own; [`TestDatabase::drop_database`] removes it.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    admin: String,
}

impl TestDatabase {
    pub async fn create() -> Result<TestDatabase> {
        TestDatabase::create_on(&admin_url()).await
    }

    /// A database on the server `admin` (a URL to any of its databases),
    /// e.g. a test's own server that it crashes and restarts.
    pub async fn create_on(admin: &str) -> Result<TestDatabase> {
        let admin = admin.to_string();
        let name = unique_name("leakscan_test");
        let mut connection = PgConnection::connect(&admin).await?;
        // The name is ours: a fixed prefix, a pid and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        let url = database_url(&admin, &name);
        let pool = crate::connect(&url, 16).await?;
        crate::migrate(&pool).await?;
        Ok(TestDatabase {
            name,
            url,
            pool,
            admin,
        })
    }

    pub async fn drop_database(self) -> Result<()> {
        self.pool.close().await;
        let mut connection = PgConnection::connect(&self.admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "drop database if exists {} with (force)",
            self.name
        )))
        .execute(&mut connection)
        .await?;
        Ok(())
    }
}

/// `url` with its database name replaced.
fn database_url(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_url_replaces_the_database() {
        assert_eq!(
            super::database_url("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            super::database_url("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
        assert_eq!(super::database_url("postgres://h", "x"), "postgres://h/x");
    }
}
