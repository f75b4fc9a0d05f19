//! Credentials that clone URLs used to carry (docs/ARCHITECTURE.md,
//! "Clone sources"). A clone URL registered today may not hold user
//! information; rows registered before that rule may. They are moved out:
//! the URL loses its user information and the credential is kept
//! encrypted (like findings' secrets, under the active data key) beside
//! the repository, with the origin it was given for. The coordinator hands
//! it to the worker that clones the repository, as a line of a git
//! credentials file, and only while the URL still names that origin.

use serde::Serialize;
use sqlx::PgPool;

use crate::{audit, catalog::RepoId, secrets::SecretBox, Result};

/// A clone URL split at its user information.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlCredential {
    /// The URL without user information.
    pub url: String,
    /// `scheme://host[:port]`, lower case.
    pub origin: String,
    /// `user:password` (or a token as the user), as the URL wrote it.
    pub userinfo: String,
}

/// The credential inside `url`, if it carries one: any user information of
/// an http(s) URL, and a user with a password in an ssh URL (`ssh://git@`
/// names the account to log in as, and is no credential).
pub fn split_url(url: &str) -> Option<UrlCredential> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "ssh") {
        return None;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    if userinfo.is_empty() || (scheme == "ssh" && !userinfo.contains(':')) {
        return None;
    }
    Some(UrlCredential {
        url: format!("{scheme}://{host}{path}"),
        origin: format!("{scheme}://{}", host.to_ascii_lowercase()),
        userinfo: userinfo.to_string(),
    })
}

/// `scheme://host[:port]` of a URL without user information.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host.to_ascii_lowercase()
    ))
}

/// A repository whose clone URL lost its credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Moved {
    pub repository: String,
    pub origin: String,
}

/// Moves every credential still inside a clone URL into
/// `clone_credentials`, in one transaction; each move is audited (the
/// repository and the origin, never the credential). Running it again
/// finds nothing to move.
pub async fn move_out_of_urls(
    pool: &PgPool,
    secrets: &SecretBox,
    actor: &str,
) -> Result<Vec<Moved>> {
    let mut transaction = pool.begin().await?;
    let rows: Vec<(RepoId, String, String)> = sqlx::query_as(
        "select r.id, p.key || '/' || r.slug, r.clone_url
         from repositories r join projects p on p.id = r.project_id
         where r.clone_url ~* '^(https?|ssh)://[^/?#]*@'
         order by r.id
         for update of r",
    )
    .fetch_all(&mut *transaction)
    .await?;
    let mut moved = Vec::new();
    for (id, name, url) in rows {
        let Some(credential) = split_url(&url) else {
            continue;
        };
        let key = secrets.active_key(&mut transaction).await?;
        sqlx::query(
            "insert into clone_credentials (repository_id, origin, secret_key_id, secret_ciphertext)
             values ($1, $2, $3, $4)
             on conflict (repository_id) do update
             set origin = excluded.origin, secret_key_id = excluded.secret_key_id,
                 secret_ciphertext = excluded.secret_ciphertext, moved_at = now()",
        )
        .bind(id)
        .bind(&credential.origin)
        .bind(key.id())
        .bind(key.seal(credential.userinfo.as_bytes()))
        .execute(&mut *transaction)
        .await?;
        sqlx::query("update repositories set clone_url = $2 where id = $1")
            .bind(id)
            .bind(&credential.url)
            .execute(&mut *transaction)
            .await?;
        let entry = Moved {
            repository: name,
            origin: credential.origin,
        };
        audit::record(
            &mut transaction,
            actor,
            "repository.credential_moved",
            &entry.repository,
            &serde_json::json!({ "origin": entry.origin }),
        )
        .await?;
        moved.push(entry);
    }
    transaction.commit().await?;
    Ok(moved)
}

/// The stored credential of `repository` as a git credentials file line
/// (`scheme://user:password@host`), when there is one for the origin
/// `clone_url` names: its own, or its Bitbucket server's; a URL moved to
/// another host gets none.
pub async fn git_line(
    pool: &PgPool,
    secrets: &SecretBox,
    repository: RepoId,
    clone_url: &str,
) -> Result<Option<String>> {
    let Some(origin) = origin_of(clone_url) else {
        return Ok(None);
    };
    // The repository's own credential first, else that of the Bitbucket
    // server it was synchronised from (docs/ARCHITECTURE.md, "Catalog
    // sync"), each for its own origin only.
    let row: Option<(i32, Vec<u8>)> = sqlx::query_as(
        "select secret_key_id, secret_ciphertext from (
             select 0 as rank, secret_key_id, secret_ciphertext from clone_credentials
             where repository_id = $1 and origin = $2
             union all
             select 1, s.secret_key_id, s.secret_ciphertext
             from catalog_sources s join repositories r on r.source_id = s.id
             where r.id = $1 and s.origin = $2
         ) credentials order by rank limit 1",
    )
    .bind(repository)
    .bind(&origin)
    .fetch_optional(pool)
    .await?;
    let Some((key_id, sealed)) = row else {
        return Ok(None);
    };
    let userinfo = secrets.decrypt(pool, key_id, &sealed).await?;
    let userinfo = String::from_utf8(userinfo)
        .map_err(|_| crate::StoreError::Invalid("a stored clone credential is not UTF-8".into()))?;
    let (scheme, host) = origin.split_once("://").unwrap_or(("https", &origin));
    Ok(Some(format!("{scheme}://{userinfo}@{host}")))
}

/// Re-encrypts every stored clone credential not under `key_id` (a key
/// rotation), a repository's and a catalog source's: how many.
pub(crate) async fn reencrypt(pool: &PgPool, secrets: &SecretBox, key_id: i32) -> Result<u64> {
    let mut changed = 0;
    // Each table's statements: what to re-encrypt, and how.
    for (select, update) in [
        (
            "select repository_id, secret_key_id, secret_ciphertext from clone_credentials
             where secret_key_id <> $1 for update skip locked",
            "update clone_credentials set secret_key_id = $2, secret_ciphertext = $3
             where repository_id = $1",
        ),
        (
            "select id::bigint, secret_key_id, secret_ciphertext from catalog_sources
             where secret_key_id <> $1 for update skip locked",
            "update catalog_sources set secret_key_id = $2, secret_ciphertext = $3
             where id = $1::integer",
        ),
    ] {
        let mut transaction = pool.begin().await?;
        let rows: Vec<(i64, i32, Vec<u8>)> = sqlx::query_as(select)
            .bind(key_id)
            .fetch_all(&mut *transaction)
            .await?;
        let key = secrets.key(pool, key_id).await?;
        for (row, old_key, sealed) in &rows {
            let plain = secrets.decrypt(pool, *old_key, sealed).await?;
            sqlx::query(update)
                .bind(row)
                .bind(key_id)
                .bind(key.seal(&plain))
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        changed += rows.len() as u64;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_is_a_credential_except_an_ssh_login_name() {
        let split = split_url("https://ci-bot:s3cr%40t@Git.Example.com:8443/team/app.git").unwrap();
        assert_eq!(split.url, "https://Git.Example.com:8443/team/app.git");
        assert_eq!(split.origin, "https://git.example.com:8443");
        assert_eq!(split.userinfo, "ci-bot:s3cr%40t");
        // A token alone, as the user.
        assert_eq!(split_url("http://tok3n@host/r").unwrap().userinfo, "tok3n");
        assert_eq!(
            split_url("ssh://git:pw@host/r.git").unwrap().url,
            "ssh://host/r.git"
        );
        assert_eq!(split_url("ssh://git@host/r.git"), None);
        assert_eq!(split_url("https://host/r@v1"), None, "an @ in the path");
        assert_eq!(split_url("https://host/r.git"), None);
        assert_eq!(split_url("/srv/git/r.git"), None);
        assert_eq!(split_url("file:///srv/git/r.git"), None);
        assert_eq!(
            origin_of("HTTPS://Host:1/x").as_deref(),
            Some("https://host:1")
        );
    }
}
