//! Users, their password hashes (argon2id) and permissions.
//!
//! Access to a repository is the highest of: system administrator (admin
//! everywhere), owner of the personal project `~name`, the user's project
//! grant and the user's repository grant. Higher grants imply lower ones.

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use serde::Serialize;
use sqlx::{FromRow, PgPool};

use crate::{catalog::Repository, Result, StoreError};

/// Database id of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct UserId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
pub struct User {
    pub id: UserId,
    pub name: String,
    pub display_name: String,
    pub email: String,
    pub sys_admin: bool,
    /// The explicit security grant (total rescans, global reviews).
    pub security: bool,
}

/// What a user may do with a project or repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Access {
    None,
    Read,
    Write,
    Admin,
}

impl Access {
    fn from_level(level: i32) -> Access {
        match level {
            i32::MIN..=0 => Access::None,
            1 => Access::Read,
            2 => Access::Write,
            _ => Access::Admin,
        }
    }
}

/// The user columns plus the two global grants, for `select … from users u`.
macro_rules! user_columns {
    () => {
        "u.id, u.name, u.display_name, u.email,
         exists (select 1 from global_permissions g where g.user_id = u.id and g.permission = 'SYS_ADMIN') as sys_admin,
         exists (select 1 from global_permissions g where g.user_id = u.id and g.permission = 'SECURITY') as security"
    };
}

/// A user name as Bitbucket allows it: 1–255 characters, no control
/// characters, no `/`, `\` or `:` (the basic-auth separator).
pub fn validate_user_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && name.trim() == name
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | ':' | '~'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("invalid user name {name:?}")))
    }
}

/// A SQL condition: the user whose id is the parameter `user` (e.g. `$4`)
/// may read repository `repository` of project `project` (table aliases),
/// as its owner or through a project or repository grant; a null `user`
/// sees everything (administrators and the security grant).
pub(crate) fn readable_by(user: &str, project: &str, repository: &str) -> String {
    format!(
        "({user}::bigint is null or {project}.owner_user_id = {user}
          or exists (select 1 from project_permissions pp where pp.user_id = {user} and pp.project_id = {project}.id)
          or exists (select 1 from repository_permissions rp where rp.user_id = {user} and rp.repository_id = {repository}.id))"
    )
}

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|error| StoreError::Invalid(format!("salt: {error}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| StoreError::Invalid(format!("cannot hash the password: {error}")))
}

/// Whether `password` matches the PHC string `hash` (CPU-heavy: call it off
/// the async executor).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Creates a user; a taken name is a [`StoreError::Conflict`].
pub async fn create_user(
    pool: &PgPool,
    name: &str,
    display_name: &str,
    email: &str,
    password: &str,
) -> Result<User> {
    validate_user_name(name)?;
    if password.is_empty() {
        return Err(StoreError::Invalid("a password is required".into()));
    }
    let hash = hash_password(password)?;
    let mut transaction = pool.begin().await?;
    let id: Option<UserId> = sqlx::query_scalar(
        "insert into users (name, display_name, email, password_hash) values ($1, $2, $3, $4)
         on conflict (name) do nothing returning id",
    )
    .bind(name)
    .bind(display_name)
    .bind(email)
    .bind(&hash)
    .fetch_optional(&mut *transaction)
    .await?;
    let id = id.ok_or_else(|| StoreError::Conflict(format!("user {name:?} already exists")))?;
    // A personal project found before its owner was created.
    sqlx::query("update projects set owner_user_id = $1 where key = '~' || $2")
        .bind(id)
        .bind(name)
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    find_user(pool, name)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("user {name}")))
}

/// Makes `name` a system administrator with `password`, creating the user
/// if needed (the bootstrap administrator of `LEAKSCAN_ADMIN_USER`).
pub async fn ensure_admin(pool: &PgPool, name: &str, password: &str) -> Result<User> {
    let user = match create_user(pool, name, name, "", password).await {
        Ok(user) => user,
        Err(StoreError::Conflict(_)) => {
            sqlx::query("update users set password_hash = $2 where name = $1")
                .bind(name)
                .bind(hash_password(password)?)
                .execute(pool)
                .await?;
            find_user(pool, name)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("user {name}")))?
        }
        Err(other) => return Err(other),
    };
    grant_global(pool, user.id, "SYS_ADMIN").await?;
    Ok(User {
        sys_admin: true,
        ..user
    })
}

pub async fn find_user(pool: &PgPool, name: &str) -> Result<Option<User>> {
    Ok(sqlx::query_as::<_, User>(concat!(
        "select ",
        user_columns!(),
        " from users u where u.name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?)
}

/// The user with id `id`.
pub async fn find_user_by_id(pool: &PgPool, id: UserId) -> Result<Option<User>> {
    Ok(sqlx::query_as::<_, User>(concat!(
        "select ",
        user_columns!(),
        " from users u where u.id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// A user row with the password hash.
#[derive(FromRow)]
struct UserWithHash {
    #[sqlx(flatten)]
    user: User,
    password_hash: String,
}

/// The user and their password hash, for authentication.
pub async fn user_with_hash(pool: &PgPool, name: &str) -> Result<Option<(User, String)>> {
    let row: Option<UserWithHash> = sqlx::query_as(concat!(
        "select ",
        user_columns!(),
        ", u.password_hash from users u where u.name = $1"
    ))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| (row.user, row.password_hash)))
}

/// Grants `SYS_ADMIN` or `SECURITY`.
pub async fn grant_global(pool: &PgPool, user: UserId, permission: &str) -> Result<()> {
    check_permission_name(permission, &["SYS_ADMIN", "SECURITY"])?;
    sqlx::query(
        "insert into global_permissions (user_id, permission) values ($1, $2) on conflict do nothing",
    )
    .bind(user)
    .bind(permission)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn revoke_global(pool: &PgPool, user: UserId, permission: &str) -> Result<()> {
    check_permission_name(permission, &["SYS_ADMIN", "SECURITY"])?;
    sqlx::query("delete from global_permissions where user_id = $1 and permission = $2")
        .bind(user)
        .bind(permission)
        .execute(pool)
        .await?;
    Ok(())
}

/// Sets the user's grant on a project (replacing an earlier one).
pub async fn grant_project(
    pool: &PgPool,
    user: UserId,
    project_key: &str,
    permission: &str,
) -> Result<()> {
    check_permission_name(
        permission,
        &["PROJECT_ADMIN", "PROJECT_WRITE", "PROJECT_READ"],
    )?;
    let updated = sqlx::query(
        "insert into project_permissions (user_id, project_id, permission)
         select $1, id, $3 from projects where key = $2
         on conflict (user_id, project_id) do update set permission = excluded.permission",
    )
    .bind(user)
    .bind(project_key)
    .bind(permission)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("project {project_key}")));
    }
    Ok(())
}

/// Sets the user's grant on a repository (replacing an earlier one).
pub async fn grant_repository(
    pool: &PgPool,
    user: UserId,
    project_key: &str,
    slug: &str,
    permission: &str,
) -> Result<()> {
    check_permission_name(permission, &["REPO_ADMIN", "REPO_WRITE", "REPO_READ"])?;
    let updated = sqlx::query(
        "insert into repository_permissions (user_id, repository_id, permission)
         select $1, r.id, $4 from repositories r join projects p on p.id = r.project_id
         where p.key = $2 and r.slug = $3
         on conflict (user_id, repository_id) do update set permission = excluded.permission",
    )
    .bind(user)
    .bind(project_key)
    .bind(slug)
    .bind(permission)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "repository {project_key}/{slug}"
        )));
    }
    Ok(())
}

/// Takes away the user's grant on a project (none: nothing changes).
pub async fn revoke_project(pool: &PgPool, user: UserId, project_key: &str) -> Result<()> {
    sqlx::query(
        "delete from project_permissions pp using projects p
         where pp.project_id = p.id and p.key = $2 and pp.user_id = $1",
    )
    .bind(user)
    .bind(project_key)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes away the user's grant on a repository (none: nothing changes).
pub async fn revoke_repository(
    pool: &PgPool,
    user: UserId,
    project_key: &str,
    slug: &str,
) -> Result<()> {
    sqlx::query(
        "delete from repository_permissions rp using repositories r, projects p
         where rp.repository_id = r.id and r.project_id = p.id
           and p.key = $2 and r.slug = $3 and rp.user_id = $1",
    )
    .bind(user)
    .bind(project_key)
    .bind(slug)
    .execute(pool)
    .await?;
    Ok(())
}

fn check_permission_name(permission: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&permission) {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "unknown permission {permission:?}; expected one of {}",
            allowed.join(", ")
        )))
    }
}

/// The user's access to a project: `None` when the project does not exist.
/// A grant on any of its repositories gives read access to the project.
pub async fn project_access(
    pool: &PgPool,
    user: &User,
    project_key: &str,
) -> Result<Option<Access>> {
    if user.sys_admin {
        let exists: bool =
            sqlx::query_scalar("select exists (select 1 from projects where key = $1)")
                .bind(project_key)
                .fetch_one(pool)
                .await?;
        return Ok(exists.then_some(Access::Admin));
    }
    let level: Option<i32> = sqlx::query_scalar(
        "select greatest(
             case when p.owner_user_id = $1 then 3 else 0 end,
             coalesce((select case pp.permission when 'PROJECT_ADMIN' then 3 when 'PROJECT_WRITE' then 2 else 1 end
                       from project_permissions pp where pp.user_id = $1 and pp.project_id = p.id), 0),
             case when exists (select 1 from repository_permissions rp join repositories r on r.id = rp.repository_id
                               where rp.user_id = $1 and r.project_id = p.id) then 1 else 0 end)
         from projects p where p.key = $2",
    )
    .bind(user.id)
    .bind(project_key)
    .fetch_optional(pool)
    .await?;
    Ok(level.map(Access::from_level))
}

/// A repository and the user's access to it.
#[derive(FromRow)]
struct RepositoryAccess {
    #[sqlx(flatten)]
    repository: Repository,
    level: i32,
}

/// The repository and the user's access to it, in one query: `None` when
/// it does not exist.
pub async fn repository_access(
    pool: &PgPool,
    user: &User,
    project_key: &str,
    slug: &str,
) -> Result<Option<(Repository, Access)>> {
    let row: Option<RepositoryAccess> = sqlx::query_as(concat!(
        "select ",
        repository_columns!(),
        ", greatest(
             case when $4 then 3 else 0 end,
             case when p.owner_user_id = $1 then 3 else 0 end,
             coalesce((select case pp.permission when 'PROJECT_ADMIN' then 3 when 'PROJECT_WRITE' then 2 else 1 end
                       from project_permissions pp where pp.user_id = $1 and pp.project_id = p.id), 0),
             coalesce((select case rp.permission when 'REPO_ADMIN' then 3 when 'REPO_WRITE' then 2 else 1 end
                       from repository_permissions rp where rp.user_id = $1 and rp.repository_id = r.id), 0)) as level
         from repositories r join projects p on p.id = r.project_id
         where p.key = $2 and r.slug = $3"
    ))
    .bind(user.id)
    .bind(project_key)
    .bind(slug)
    .bind(user.sys_admin)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| (row.repository, Access::from_level(row.level))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn user_names_reject_separators_and_control_characters() {
        validate_user_name("alice.smith@example.com").unwrap();
        for bad in ["", " alice", "a:b", "a/b", "a\nb", "~alice"] {
            assert!(validate_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
