//! Projects, repositories and branches.

use serde::Serialize;
use sqlx::{FromRow, PgPool};

use crate::{Page, PageRequest, Result, StoreError};

/// Database id of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, sqlx::Type)]
#[sqlx(transparent)]
pub struct RepoId(pub i64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub id: i64,
    pub key: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    pub id: RepoId,
    pub project_key: String,
    pub slug: String,
    pub name: String,
    /// Left out of answers to callers who do not administer the repository
    /// (the gateway empties it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub clone_url: String,
    /// The pre-receive hook's effective setting (its own, its project's or
    /// the global one).
    pub hook_enabled: bool,
    pub exempt: bool,
    pub default_branch: Option<String>,
    /// The Bitbucket server this repository is synchronised from no longer
    /// lists it (docs/ARCHITECTURE.md, "Catalog sync"): it keeps its
    /// findings and is no longer scanned.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Branch {
    pub name: String,
    pub head_commit: String,
    pub last_scanned_commit: Option<String>,
}

/// `PROJECT_1`, or `~user` for a personal project: letters, digits, `_`,
/// `-`; no path separators, no leading dash.
pub fn validate_project_key(key: &str) -> Result<()> {
    let body = key.strip_prefix('~').unwrap_or(key);
    let valid = !body.is_empty()
        && body.len() <= 128
        && !body.starts_with('-')
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && body != "."
        && body != "..";
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!("invalid project key {key:?}")))
    }
}

/// A branch name as `git check-ref-format --branch` allows it (an optional
/// `refs/heads/` prefix aside): no control characters, spaces, `~^:?*[\`,
/// `..`, `@{`, `//`, leading `-` or `/`, trailing `/`, `.` or `.lock`;
/// at most 255 bytes. Branch names reach git only from its own ref lists,
/// but a bad one is a clear 400 rather than a miss.
pub fn validate_branch(branch: &str) -> Result<()> {
    let name = branch.strip_prefix("refs/heads/").unwrap_or(branch);
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && !name.starts_with('/')
        && !name.ends_with('/')
        && !name.ends_with('.')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("@{")
        && !name.contains("//")
        && name != "@"
        && !name
            .chars()
            .any(|c| c.is_control() || c == ' ' || "~^:?*[\\".contains(c))
        && name.split('/').all(|part| !part.starts_with('.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid branch name {branch:?}"
        )))
    }
}

/// A repository slug: letters, digits, `.`, `_`, `-`; not `.`/`..`, no
/// leading dash.
pub fn validate_slug(slug: &str) -> Result<()> {
    let valid = !slug.is_empty()
        && slug.len() <= 128
        && !slug.starts_with('-')
        && slug != "."
        && slug != ".."
        && slug
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid repository slug {slug:?}"
        )))
    }
}

/// What follows a URL's `scheme://`, split: the user information (before
/// the authority's last `@`) if any, the host with its port, and the rest.
/// The authority ends at the first of `/ ? #` or whitespace, so this also
/// reads URLs quoted inside a longer text (git's error messages).
pub fn split_authority(after_scheme: &str) -> (Option<&str>, &str, &str) {
    let end = after_scheme
        .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
        .unwrap_or(after_scheme.len());
    let (authority, rest) = after_scheme.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host, rest),
        None => (None, authority, rest),
    }
}

/// The project with this key.
pub async fn find_project(pool: &PgPool, key: &str) -> Result<Option<Project>> {
    Ok(
        sqlx::query_as::<_, Project>("select id, key, name from projects where key = $1")
            .bind(key)
            .fetch_optional(pool)
            .await?,
    )
}

/// Creates the project if it is new; returns it either way.
pub async fn upsert_project(pool: &PgPool, key: &str, name: &str) -> Result<Project> {
    validate_project_key(key)?;
    Ok(sqlx::query_as::<_, Project>(
        "insert into projects (key, name, owner_user_id)
         values ($1, $2, (select id from users where '~' || name = $1))
         on conflict (key) do update set name = projects.name
         returning id, key, name",
    )
    .bind(key)
    .bind(name)
    .fetch_one(pool)
    .await?)
}

/// Creates or updates a repository of an existing project.
pub async fn upsert_repository(
    pool: &PgPool,
    project_key: &str,
    slug: &str,
    clone_url: &str,
) -> Result<Repository> {
    validate_slug(slug)?;
    let row = sqlx::query_as::<_, Repository>(
        "with upserted as (
             insert into repositories (project_id, slug, name, clone_url)
             select id, $2, $2, $3 from projects where key = $1
             on conflict (project_id, slug) do update
             -- a repository synchronised from Bitbucket keeps the server's URL
             set clone_url = case when repositories.source_id is null
                 then excluded.clone_url else repositories.clone_url end
             returning *
         )
         select upserted.id, $1 as project_key, slug, upserted.name, clone_url,
             coalesce((select enabled from hook_setting_of(upserted.id, upserted.project_id)), false) as hook_enabled,
             exempt, default_branch, deleted_at is not null as deleted from upserted",
    )
    .bind(project_key)
    .bind(slug)
    .bind(clone_url)
    .fetch_optional(pool)
    .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("project {project_key}")))
}

/// Replaces a repository's branches with `branches` (name, head commit),
/// keeping what earlier scans covered of branches that remain.
pub async fn replace_branches(
    pool: &PgPool,
    repository: RepoId,
    branches: &[(String, String)],
) -> Result<()> {
    let mut transaction = pool.begin().await?;
    let names: Vec<&str> = branches.iter().map(|(name, _)| name.as_str()).collect();
    sqlx::query("delete from branches where repository_id = $1 and not (name = any($2))")
        .bind(repository)
        .bind(&names)
        .execute(&mut *transaction)
        .await?;
    for (name, head) in branches {
        sqlx::query(
            "insert into branches (repository_id, name, head_commit) values ($1, $2, $3)
             on conflict (repository_id, name) do update set head_commit = excluded.head_commit",
        )
        .bind(repository)
        .bind(name)
        .bind(head)
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(())
}

pub async fn list_projects(pool: &PgPool, page: PageRequest) -> Result<Page<Project>> {
    let rows = sqlx::query_as::<_, Project>(
        "select id, key, name from projects order by key offset $1 limit $2",
    )
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

/// The columns of [`Repository`] over `repositories r join projects p`.
macro_rules! repository_columns {
    () => {
        "r.id, p.key as project_key, r.slug, r.name, r.clone_url, \
         coalesce((select enabled from hook_setting_of(r.id, r.project_id)), false) as hook_enabled, \
         r.exempt, r.default_branch, r.deleted_at is not null as deleted"
    };
}

/// Selects [`Repository`] rows of project `$1`; callers append conditions.
macro_rules! select_repositories {
    () => {
        concat!(
            "select ",
            repository_columns!(),
            " from repositories r join projects p on p.id = r.project_id where p.key = $1 "
        )
    };
}

pub async fn list_repositories(
    pool: &PgPool,
    project_key: &str,
    page: PageRequest,
) -> Result<Page<Repository>> {
    let rows = sqlx::query_as::<_, Repository>(concat!(
        select_repositories!(),
        "order by r.slug offset $2 limit $3"
    ))
    .bind(project_key)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

pub async fn find_repository(
    pool: &PgPool,
    project_key: &str,
    slug: &str,
) -> Result<Option<Repository>> {
    Ok(
        sqlx::query_as::<_, Repository>(concat!(select_repositories!(), "and r.slug = $2"))
            .bind(project_key)
            .bind(slug)
            .fetch_optional(pool)
            .await?,
    )
}

/// Every repository, or a project's (`Some(key)`), by project and slug.
pub async fn repositories_in(pool: &PgPool, project_key: Option<&str>) -> Result<Vec<Repository>> {
    Ok(sqlx::query_as::<_, Repository>(concat!(
        "select ",
        repository_columns!(),
        " from repositories r join projects p on p.id = r.project_id
          where $1::text is null or p.key = $1 order by p.key, r.slug"
    ))
    .bind(project_key)
    .fetch_all(pool)
    .await?)
}

pub async fn branches(pool: &PgPool, repository: RepoId) -> Result<Vec<Branch>> {
    Ok(sqlx::query_as::<_, Branch>(
        "select name, head_commit, last_scanned_commit from branches where repository_id = $1 order by name",
    )
    .bind(repository)
    .fetch_all(pool)
    .await?)
}

/// Records the branch HEAD points at.
pub async fn set_default_branch(
    pool: &PgPool,
    repository: RepoId,
    branch: Option<&str>,
) -> Result<()> {
    sqlx::query("update repositories set default_branch = $2 where id = $1")
        .bind(repository)
        .bind(branch)
        .execute(pool)
        .await?;
    Ok(())
}

/// Whether `user` (by id; `sys_admin` sees everything) may read something
/// of project `p`: owner, a project grant, or a grant on one of its
/// repositories. A SQL condition over `p` and `$1`/`$2`, for visible lists.
macro_rules! project_visible {
    () => {
        "($2 or p.owner_user_id = $1
          or exists (select 1 from project_permissions pp where pp.user_id = $1 and pp.project_id = p.id)
          or exists (select 1 from repository_permissions rp join repositories vr on vr.id = rp.repository_id
                     where rp.user_id = $1 and vr.project_id = p.id))"
    };
}

/// The projects `user` may see, by key.
pub async fn list_visible_projects(
    pool: &PgPool,
    user: &crate::users::User,
    page: PageRequest,
) -> Result<Page<Project>> {
    let rows = sqlx::query_as::<_, Project>(concat!(
        "select p.id, p.key, p.name from projects p where ",
        project_visible!(),
        " order by p.key offset $3 limit $4"
    ))
    .bind(user.id)
    .bind(user.sys_admin)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

/// The repositories of a project `user` may see, by slug.
pub async fn list_visible_repositories(
    pool: &PgPool,
    user: &crate::users::User,
    project_key: &str,
    page: PageRequest,
) -> Result<Page<Repository>> {
    let rows = sqlx::query_as::<_, Repository>(concat!(
        select_repositories!(),
        "and ($3 or p.owner_user_id = $2
             or exists (select 1 from project_permissions pp where pp.user_id = $2 and pp.project_id = p.id)
             or exists (select 1 from repository_permissions rp where rp.user_id = $2 and rp.repository_id = r.id))
         order by r.slug offset $4 limit $5"
    ))
    .bind(project_key)
    .bind(user.id)
    .bind(user.sys_admin)
    .bind(i64::from(page.start))
    .bind(i64::from(page.limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.page(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_at_the_last_at_sign() {
        assert_eq!(
            split_authority("u:p@ss@host.example:8443/scm/r.git"),
            (Some("u:p@ss"), "host.example:8443", "/scm/r.git")
        );
        assert_eq!(
            split_authority("host.example?x=1"),
            (None, "host.example", "?x=1")
        );
        assert_eq!(
            split_authority("git@host rest"),
            (Some("git"), "host", " rest")
        );
        assert_eq!(split_authority(""), (None, "", ""));
    }

    #[test]
    fn branch_names_follow_git_ref_rules() {
        for good in [
            "main",
            "feature/login-v2",
            "refs/heads/release/1.2",
            "user@host",
            "a.b",
        ] {
            assert!(validate_branch(good).is_ok(), "{good}");
        }
        let long = "b".repeat(256);
        for bad in [
            "",
            "-x",
            "--upload-pack=touch x",
            "a..b",
            "a b",
            "a\nb",
            "a\0b",
            "x.lock",
            "/x",
            "x/",
            "a//b",
            ".hidden",
            "a/.b",
            "x.",
            "a@{1}",
            "@",
            "a~1",
            "a^",
            "a:b",
            "a?",
            "a*",
            "a[",
            "a\\b",
            long.as_str(),
        ] {
            assert!(validate_branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keys_and_slugs_refuse_traversal_and_options() {
        for bad in ["..", ".", "../x", "-oProxyCommand", "a/b", "a\0", ""] {
            assert!(validate_project_key(bad).is_err(), "{bad:?}");
            assert!(validate_slug(bad).is_err(), "{bad:?}");
        }
        assert!(validate_project_key("~alice").is_ok());
        assert!(validate_slug("my.repo-1").is_ok());
    }
}
