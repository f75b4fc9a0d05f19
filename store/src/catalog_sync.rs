//! The catalog kept equal to a Bitbucket server's (docs/ARCHITECTURE.md,
//! "Catalog sync"). The gateway reads the server's projects and
//! repositories; this module reconciles them with the stored catalog in one
//! transaction. A repository is known by Bitbucket's own id, which stays
//! across renames and moves; one the server no longer lists is marked
//! deleted and keeps its findings, and comes back if the server lists it
//! again. Repositories found under the roots or registered through the API
//! are left alone, unless the server lists one at the same place: it is
//! then adopted.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::PgPool;

use crate::{audit, catalog, secrets::SecretBox, Result};

/// A repository as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRepository {
    /// Bitbucket's repository id.
    pub external_id: i64,
    pub project_key: String,
    pub project_name: String,
    pub slug: String,
    pub name: String,
    /// The http(s) clone URL, without user information.
    pub clone_url: String,
    /// Why it cannot be taken (no usable clone link, not available yet):
    /// it is skipped, yet still counts as listed, so it is not deleted.
    pub problem: Option<String>,
}

/// A repository the sync changed, by its place after the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `added`, `adopted`, `renamed`, `moved`, `restored` or `deleted`.
    pub change: &'static str,
    /// `PROJECT/slug`.
    pub repository: String,
    /// Where a renamed or moved repository was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub was: Option<String>,
}

/// What one reconciliation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconciled {
    pub added: u32,
    pub adopted: u32,
    pub renamed: u32,
    pub moved: u32,
    pub restored: u32,
    pub deleted: u32,
    pub unchanged: u32,
    /// Repositories the server lists that could not be taken, and why.
    pub skipped: Vec<String>,
    pub changes: Vec<Change>,
    /// The live repositories of the source after the sync, whose branches
    /// are to be read: (id, clone URL).
    #[serde(skip)]
    pub live: Vec<(catalog::RepoId, String)>,
}

/// Records (or updates) the server at `base_url` and the clone credential
/// (`user:token`, percent-encoded) git gets for `origin`, encrypted under
/// the active data key; returns the source's id.
pub async fn register_source(
    pool: &PgPool,
    secrets: &SecretBox,
    base_url: &str,
    origin: &str,
    userinfo: &str,
) -> Result<i32> {
    let mut transaction = pool.begin().await?;
    let key = secrets.active_key(&mut transaction).await?;
    let id = sqlx::query_scalar(
        "insert into catalog_sources (base_url, origin, secret_key_id, secret_ciphertext)
         values ($1, $2, $3, $4)
         on conflict (base_url) do update
         set origin = excluded.origin, secret_key_id = excluded.secret_key_id,
             secret_ciphertext = excluded.secret_ciphertext
         returning id",
    )
    .bind(base_url)
    .bind(origin)
    .bind(key.id())
    .bind(key.seal(userinfo.as_bytes()))
    .fetch_one(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(id)
}

/// Marks a sync of `source` started.
pub async fn sync_started(pool: &PgPool, source: i32) -> Result<()> {
    sqlx::query("update catalog_sources set last_started_at = now() where id = $1")
        .bind(source)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records how a sync of `source` ended: its result, or why it failed.
pub async fn sync_finished(
    pool: &PgPool,
    source: i32,
    outcome: std::result::Result<&serde_json::Value, &str>,
) -> Result<()> {
    let (status, result, error) = match outcome {
        Ok(result) => ("ok", Some(result), None),
        Err(error) => ("failed", None, Some(error)),
    };
    sqlx::query(
        "update catalog_sources set last_finished_at = now(), last_status = $2,
             last_result = coalesce($3, last_result), last_error = $4
         where id = $1",
    )
    .bind(source)
    .bind(status)
    .bind(result)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// The last sync of a source, as `GET …/admin/catalog/sync` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct LastSync {
    pub base_url: String,
    pub last_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    /// The last successful sync's result.
    pub last_result: Option<serde_json::Value>,
}

/// Every source's last sync.
pub async fn last_syncs(pool: &PgPool) -> Result<Vec<LastSync>> {
    Ok(sqlx::query_as(
        "select base_url, last_started_at, last_finished_at, last_status, last_error, last_result
         from catalog_sources order by base_url",
    )
    .fetch_all(pool)
    .await?)
}

/// When the last sync of the source at `base_url` finished, and whether it
/// succeeded, if one did.
pub async fn last_finished(
    pool: &PgPool,
    base_url: &str,
) -> Result<Option<(chrono::DateTime<chrono::Utc>, bool)>> {
    let row: Option<(Option<chrono::DateTime<chrono::Utc>>, Option<String>)> = sqlx::query_as(
        "select last_finished_at, last_status from catalog_sources where base_url = $1",
    )
    .bind(base_url)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(finished, status)| Some((finished?, status.as_deref() == Some("ok")))))
}

/// A stored repository, as reconciliation sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Stored {
    id: i64,
    project_id: i64,
    project_key: String,
    slug: String,
    source_id: Option<i32>,
    external_id: Option<i64>,
    deleted: bool,
}

/// Makes the catalog hold what `remote` (everything the server lists) says
/// of `source`; `actor` signs the audit entries. The whole listing or
/// nothing: call it only with a listing read to its end.
pub async fn reconcile(
    pool: &PgPool,
    source: i32,
    remote: &[RemoteRepository],
    actor: &str,
) -> Result<Reconciled> {
    let mut transaction = pool.begin().await?;
    // One reconciliation of a source at a time.
    sqlx::query("select pg_advisory_xact_lock(7461293, $1)")
        .bind(source)
        .execute(&mut *transaction)
        .await?;
    let mut result = Reconciled::default();

    // The projects the server lists, created or renamed to its names.
    let mut project_ids: HashMap<String, i64> = HashMap::new();
    let mut remote_ok: Vec<&RemoteRepository> = Vec::new();
    for repository in remote {
        if let Some(problem) = &repository.problem {
            result.skipped.push(format!(
                "{}/{}: {problem}",
                repository.project_key, repository.slug
            ));
            continue;
        }
        if let Err(error) = catalog::validate_project_key(&repository.project_key)
            .and_then(|()| catalog::validate_slug(&repository.slug))
        {
            result.skipped.push(format!(
                "{}/{}: {error}",
                repository.project_key, repository.slug
            ));
            continue;
        }
        if !project_ids.contains_key(&repository.project_key) {
            let id: i64 = sqlx::query_scalar(
                "insert into projects (key, name, owner_user_id)
                 values ($1, $2, (select id from users where '~' || name = $1))
                 on conflict (key) do update set name = excluded.name
                 returning id",
            )
            .bind(&repository.project_key)
            .bind(&repository.project_name)
            .fetch_one(&mut *transaction)
            .await?;
            project_ids.insert(repository.project_key.clone(), id);
        }
        remote_ok.push(repository);
    }

    // What is stored: the source's repositories and any at the places the
    // server lists.
    let ids: Vec<i64> = project_ids.values().copied().collect();
    let stored: Vec<Stored> = sqlx::query_as(
        "select r.id, r.project_id, p.key as project_key, r.slug, r.source_id, r.external_id,
             r.deleted_at is not null as deleted
         from repositories r join projects p on p.id = r.project_id
         where r.source_id = $1 or r.project_id = any($2)
         for update of r",
    )
    .bind(source)
    .bind(&ids)
    .fetch_all(&mut *transaction)
    .await?;
    let by_external: HashMap<i64, &Stored> = stored
        .iter()
        .filter(|row| row.source_id == Some(source))
        .filter_map(|row| Some((row.external_id?, row)))
        .collect();
    let listed: HashSet<i64> = remote.iter().map(|r| r.external_id).collect();

    // Plan. Every stored row holds its place unless it moves (a listed
    // repository whose place changed) or may give it up: a row of this
    // source the listing does not keep live (dropped, or deleted and not
    // taken again) moves aside to `slug.deleted-ID` when its place is
    // claimed. A move to a place held by a row that stays is skipped, and
    // the mover then holds its own place too: repeat until nothing changes.
    let mut claimed: HashSet<(i64, &str)> = HashSet::new();
    let mut wanted: Vec<&RemoteRepository> = Vec::new();
    for repository in &remote_ok {
        let place = (
            project_ids[&repository.project_key],
            repository.slug.as_str(),
        );
        if claimed.insert(place) {
            wanted.push(repository);
        } else {
            result.skipped.push(format!(
                "{}/{}: listed twice",
                repository.project_key, repository.slug
            ));
        }
    }
    let target = |repository: &RemoteRepository| {
        (
            project_ids[&repository.project_key],
            repository.slug.clone(),
        )
    };
    let place_of = |row: &Stored| (row.project_id, row.slug.clone());
    let at: HashMap<(i64, String), &Stored> =
        stored.iter().map(|row| (place_of(row), row)).collect();
    let by_id: HashMap<i64, &Stored> = stored.iter().map(|row| (row.id, row)).collect();
    // Rows the listing keeps live, by row id, with their listing entry.
    let mut updating: HashMap<i64, &RemoteRepository> = wanted
        .iter()
        .filter_map(|repository| {
            by_external
                .get(&repository.external_id)
                .map(|row| (row.id, *repository))
        })
        .collect();
    let mut moving: HashSet<i64> = updating
        .iter()
        .filter(|(id, repository)| place_of(by_id[*id]) != target(repository))
        .map(|(id, _)| *id)
        .collect();
    // Moves skipped because their place is held: such a repository stays
    // where it is, live, and never gives its place up.
    let mut held_back: HashSet<i64> = HashSet::new();
    let may_give_up =
        |row: &Stored, updating: &HashMap<i64, &RemoteRepository>, held_back: &HashSet<i64>| {
            row.source_id == Some(source)
                && !updating.contains_key(&row.id)
                && !held_back.contains(&row.id)
                && (row.external_id.is_some_and(|id| !listed.contains(&id)) || row.deleted)
        };
    loop {
        let blocked: Vec<i64> = moving
            .iter()
            .copied()
            .filter(|id| {
                at.get(&target(updating[id])).is_some_and(|holder| {
                    holder.id != *id
                        && !moving.contains(&holder.id)
                        && !may_give_up(holder, &updating, &held_back)
                })
            })
            .collect();
        if blocked.is_empty() {
            break;
        }
        for id in blocked {
            let repository = updating.remove(&id).expect("a mover is updated");
            moving.remove(&id);
            held_back.insert(id);
            result.skipped.push(format!(
                "{}/{}: the place is taken by another repository",
                repository.project_key, repository.slug
            ));
        }
    }
    let vacatable = |row: &Stored| may_give_up(row, &updating, &held_back);
    enum Step<'a> {
        Insert,
        Adopt(&'a Stored),
        Update(&'a Stored),
    }
    let mut steps: Vec<(&RemoteRepository, i64, Step)> = Vec::new();
    for repository in &wanted {
        let project_id = project_ids[&repository.project_key];
        if let Some(row) = by_external.get(&repository.external_id) {
            if updating.contains_key(&row.id) {
                steps.push((repository, project_id, Step::Update(row)));
            }
            continue;
        }
        let holder = at
            .get(&target(repository))
            .copied()
            .filter(|holder| !moving.contains(&holder.id));
        match holder {
            None => steps.push((repository, project_id, Step::Insert)),
            Some(holder) if vacatable(holder) => steps.push((repository, project_id, Step::Insert)),
            Some(holder) if holder.source_id.is_none() => {
                steps.push((repository, project_id, Step::Adopt(holder)))
            }
            Some(_) => result.skipped.push(format!(
                "{}/{}: the place is taken by another repository",
                repository.project_key, repository.slug
            )),
        }
    }
    // A row giving up a place the plan gives to another moves aside;
    // moving rows go to a parking place first, so that swaps and chains of
    // renames never collide.
    let targets: HashSet<(i64, String)> = steps
        .iter()
        .map(|(repository, _, _)| target(repository))
        .collect();
    let mut vacate: Vec<&Stored> = stored
        .iter()
        .filter(|row| vacatable(row) && targets.contains(&place_of(row)))
        .collect();
    vacate.sort_by_key(|row| row.id);
    for row in &vacate {
        sqlx::query("update repositories set slug = $2 where id = $1")
            .bind(row.id)
            .bind(format!("{}.deleted-{}", row.slug, row.id))
            .execute(&mut *transaction)
            .await?;
    }
    for (repository, project_id, step) in &steps {
        if let Step::Update(row) = step {
            if row.project_id != *project_id || row.slug != repository.slug {
                sqlx::query("update repositories set slug = $2 where id = $1")
                    .bind(row.id)
                    .bind(format!(".sync-{}", row.id))
                    .execute(&mut *transaction)
                    .await?;
            }
        }
    }

    for (repository, project_id, step) in &steps {
        let place = format!("{}/{}", repository.project_key, repository.slug);
        let id = match step {
            Step::Insert => {
                let id: i64 = sqlx::query_scalar(
                    "insert into repositories (project_id, slug, name, clone_url, source_id, external_id)
                     values ($1, $2, $3, $4, $5, $6) returning id",
                )
                .bind(project_id)
                .bind(&repository.slug)
                .bind(&repository.name)
                .bind(&repository.clone_url)
                .bind(source)
                .bind(repository.external_id)
                .fetch_one(&mut *transaction)
                .await?;
                note(&mut result, "added", place, None);
                id
            }
            Step::Adopt(row) => {
                sqlx::query(
                    "update repositories set name = $2, clone_url = $3, source_id = $4,
                         external_id = $5, deleted_at = null
                     where id = $1",
                )
                .bind(row.id)
                .bind(&repository.name)
                .bind(&repository.clone_url)
                .bind(source)
                .bind(repository.external_id)
                .execute(&mut *transaction)
                .await?;
                note(&mut result, "adopted", place, None);
                row.id
            }
            Step::Update(row) => {
                sqlx::query(
                    "update repositories set project_id = $2, slug = $3, name = $4, clone_url = $5,
                         deleted_at = null
                     where id = $1",
                )
                .bind(row.id)
                .bind(project_id)
                .bind(&repository.slug)
                .bind(&repository.name)
                .bind(&repository.clone_url)
                .execute(&mut *transaction)
                .await?;
                let was = format!("{}/{}", row.project_key, row.slug);
                if row.project_id != *project_id {
                    note(&mut result, "moved", place, Some(was));
                } else if row.slug != repository.slug {
                    note(&mut result, "renamed", place, Some(was));
                } else if row.deleted {
                    note(&mut result, "restored", place, None);
                } else {
                    result.unchanged += 1;
                }
                row.id
            }
        };
        result
            .live
            .push((catalog::RepoId(id), repository.clone_url.clone()));
    }

    // What the server no longer lists.
    let mut dropped: Vec<&&Stored> = by_external
        .values()
        .filter(|row| !row.deleted && row.external_id.is_some_and(|id| !listed.contains(&id)))
        .collect();
    dropped.sort_by_key(|row| row.id);
    for row in dropped {
        sqlx::query("update repositories set deleted_at = now() where id = $1")
            .bind(row.id)
            .execute(&mut *transaction)
            .await?;
        note(
            &mut result,
            "deleted",
            format!("{}/{}", row.project_key, row.slug),
            None,
        );
    }
    for change in &result.changes {
        audit::record(
            &mut transaction,
            actor,
            &format!("repository.sync_{}", change.change),
            &change.repository,
            &serde_json::json!({ "was": change.was }),
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(result)
}

fn note(result: &mut Reconciled, change: &'static str, repository: String, was: Option<String>) {
    match change {
        "added" => result.added += 1,
        "adopted" => result.adopted += 1,
        "renamed" => result.renamed += 1,
        "moved" => result.moved += 1,
        "restored" => result.restored += 1,
        _ => result.deleted += 1,
    }
    result.changes.push(Change {
        change,
        repository,
        was,
    });
}

/// Runs `work` while holding the sync lock of `base_url`'s source, so that
/// two gateways never sync one server at once; `None` when another holds
/// it. The lock is a session lock on a connection of its own, closed when
/// `work` ends (or is dropped) or when its process dies.
pub async fn with_sync_lock<T, F>(pool: &PgPool, base_url: &str, work: F) -> Result<Option<T>>
where
    F: std::future::Future<Output = T>,
{
    let mut connection = pool.acquire().await?;
    // The lock lives as long as this connection, which is closed, not
    // returned to the pool, when this ends, however it ends (an error, a
    // panic, the future dropped): no pooled connection keeps the lock.
    connection.close_on_drop();
    let taken: bool = sqlx::query_scalar("select pg_try_advisory_lock(7461294, hashtext($1))")
        .bind(base_url)
        .fetch_one(&mut *connection)
        .await?;
    if !taken {
        return Ok(None);
    }
    let value = work.await;
    drop(connection);
    Ok(Some(value))
}
