//! Rotating the data keys that encrypt stored secrets (`/rest/secrets/1.0`).
//!
//! A rotation makes a new active key, then re-encrypts every ciphertext
//! under any other key in batches, each its own short transaction, while
//! scans keep writing:
//! - writers take the active key share-locked in their own transaction
//!   ([`SecretBox::active_key`]), so the switch waits for writes in flight
//!   and every later write already uses the new key;
//! - a batch locks its rows `skip locked`, so it never waits on a writer
//!   (nor deadlocks with one), and a later pass takes the rows it skipped.
//!
//! A rotation that stops halfway (a crash) loses nothing: the old key is
//! inactive but stays until no ciphertext uses it, and the next rotation
//! re-encrypts whatever is not under the newest key.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};

use crate::{audit, secrets::SecretBox, Result, StoreError};

/// Advisory-lock key that keeps rotations one at a time across processes.
pub const ROTATION_LOCK: i64 = 0x6c65_616b_6b65_7973; // "leakkeys"

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    /// The new active key.
    pub key_id: i32,
    /// Keys made inactive by this rotation.
    pub retired: Vec<i32>,
    /// Findings' secrets re-encrypted so far.
    pub findings: u64,
    /// Blob-cache entries re-encrypted so far.
    pub blob_results: u64,
    /// Credentials moved out of clone URLs re-encrypted so far.
    pub clone_credentials: u64,
}

/// An inactive key and how many ciphertexts still use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct InactiveKey {
    pub id: i32,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    /// Findings and blob-cache entries still encrypted under it: the key
    /// can be deleted once this is 0.
    pub ciphertexts: i64,
}

impl InactiveKey {
    /// The name the API lists (`inactiveKeys`).
    pub fn name(&self) -> String {
        key_name(self.id)
    }
}

/// The name of key `id` in API answers and the audit log.
pub fn key_name(id: i32) -> String {
    format!("leakscan-data-key-{id}")
}

/// Rotates: a new active key, every stored secret re-encrypted under it in
/// batches of `batch_size`. `progress` sees the counts after every
/// committed batch. Another rotation running anywhere → `Conflict`.
pub async fn rotate(
    pool: &PgPool,
    secrets: &SecretBox,
    actor: &str,
    batch_size: i64,
    mut progress: impl FnMut(&Rotation) + Send,
) -> Result<Rotation> {
    let batch_size = batch_size.max(1);
    // A session lock on a connection of its own, closed (and so unlocked)
    // when this ends however it ends: dropped halfway, or with its process.
    let mut lock = pool.acquire().await?;
    lock.close_on_drop();
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(ROTATION_LOCK)
        .fetch_one(&mut *lock)
        .await?;
    if !locked {
        return Err(StoreError::Conflict(
            "a key rotation is already running".into(),
        ));
    }
    rotate_locked(pool, secrets, actor, batch_size, &mut progress).await
}

async fn rotate_locked(
    pool: &PgPool,
    secrets: &SecretBox,
    actor: &str,
    batch_size: i64,
    progress: &mut (impl FnMut(&Rotation) + Send),
) -> Result<Rotation> {
    let mut transaction = pool.begin().await?;
    // Waits for writers holding the active key (share-locked) to commit.
    let retired: Vec<i32> = sqlx::query_scalar(
        "update secret_keys set state = 'inactive', rotated_at = now()
         where state = 'active' returning id",
    )
    .fetch_all(&mut *transaction)
    .await?;
    let key_id = secrets.add_active_key(&mut transaction).await?;
    let names: Vec<String> = retired.iter().map(|id| key_name(*id)).collect();
    audit::record(
        &mut transaction,
        actor,
        "key.rotated",
        &key_name(key_id),
        &serde_json::json!({ "retired": names }),
    )
    .await?;
    transaction.commit().await?;
    tracing::info!(key_id, ?retired, "secret key rotated; re-encrypting");

    let mut rotation = Rotation {
        key_id,
        retired,
        ..Rotation::default()
    };
    loop {
        let mut changed = 0;
        let mut after = 0i64;
        while let Some((count, last)) =
            reencrypt_findings(pool, secrets, key_id, after, batch_size).await?
        {
            rotation.findings += count;
            changed += count;
            after = last;
            progress(&rotation);
        }
        let mut after: Option<(String, Vec<u8>)> = None;
        while let Some((count, last)) =
            reencrypt_blob_results(pool, secrets, key_id, after.as_ref(), batch_size).await?
        {
            rotation.blob_results += count;
            changed += count;
            after = Some(last);
            progress(&rotation);
        }
        let credentials = crate::clone_credentials::reencrypt(pool, secrets, key_id).await?;
        if credentials > 0 {
            rotation.clone_credentials += credentials;
            changed += credentials;
            progress(&rotation);
        }
        // Rows a writer held during the pass were skipped: go again until
        // nothing uses another key.
        let left: bool = sqlx::query_scalar(
            "select exists (select 1 from findings where secret_key_id <> $1)
                 or exists (select 1 from blob_results where secret_key_id <> $1)
                 or exists (select 1 from clone_credentials where secret_key_id <> $1)
                 or exists (select 1 from catalog_sources where secret_key_id <> $1)",
        )
        .bind(key_id)
        .fetch_one(pool)
        .await?;
        if !left {
            break;
        }
        if changed == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    tracing::info!(
        key_id,
        findings = rotation.findings,
        blob_results = rotation.blob_results,
        clone_credentials = rotation.clone_credentials,
        "secret key rotation finished"
    );
    Ok(rotation)
}

/// One batch of findings after id `after`: `(re-encrypted, last id seen)`,
/// or `None` at the end of the table.
async fn reencrypt_findings(
    pool: &PgPool,
    secrets: &SecretBox,
    key_id: i32,
    after: i64,
    batch_size: i64,
) -> Result<Option<(u64, i64)>> {
    let mut transaction = pool.begin().await?;
    let rows: Vec<(i64, i32, Vec<u8>)> = sqlx::query_as(
        "select id, secret_key_id, secret_ciphertext from findings
         where id > $1 and secret_key_id <> $2
         order by id limit $3
         for update skip locked",
    )
    .bind(after)
    .bind(key_id)
    .bind(batch_size)
    .fetch_all(&mut *transaction)
    .await?;
    let Some(last) = rows.last().map(|row| row.0) else {
        return Ok(None);
    };
    let key = secrets.key(pool, key_id).await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut sealed = Vec::with_capacity(rows.len());
    for (id, old_key, ciphertext) in rows {
        let secret = secrets.decrypt(pool, old_key, &ciphertext).await?;
        ids.push(id);
        sealed.push(key.seal(&secret));
    }
    sqlx::query(
        "update findings f set secret_key_id = $1, secret_ciphertext = rows.sealed
         from unnest($2::bigint[], $3::bytea[]) as rows (id, sealed)
         where f.id = rows.id",
    )
    .bind(key_id)
    .bind(&ids)
    .bind(&sealed)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(Some((ids.len() as u64, last)))
}

type BlobKey = (String, Vec<u8>);

/// One batch of blob-cache entries after `after` (digest, blob id).
async fn reencrypt_blob_results(
    pool: &PgPool,
    secrets: &SecretBox,
    key_id: i32,
    after: Option<&BlobKey>,
    batch_size: i64,
) -> Result<Option<(u64, BlobKey)>> {
    let (after_digest, after_blob) = after.cloned().unwrap_or_default();
    let mut transaction = pool.begin().await?;
    let rows: Vec<(String, Vec<u8>, i32, Vec<u8>)> = sqlx::query_as(
        "select ruleset_digest, blob_id, secret_key_id, sealed_matches from blob_results
         where (ruleset_digest, blob_id) > ($1, $2) and secret_key_id <> $3
         order by ruleset_digest, blob_id limit $4
         for update skip locked",
    )
    .bind(&after_digest)
    .bind(&after_blob)
    .bind(key_id)
    .bind(batch_size)
    .fetch_all(&mut *transaction)
    .await?;
    let Some(last) = rows.last().map(|row| (row.0.clone(), row.1.clone())) else {
        return Ok(None);
    };
    let key = secrets.key(pool, key_id).await?;
    let count = rows.len() as u64;
    let mut digests = Vec::with_capacity(rows.len());
    let mut blobs = Vec::with_capacity(rows.len());
    let mut sealed = Vec::with_capacity(rows.len());
    for (digest, blob, old_key, ciphertext) in rows {
        let payload = secrets.decrypt(pool, old_key, &ciphertext).await?;
        digests.push(digest);
        blobs.push(blob);
        sealed.push(key.seal(&payload));
    }
    sqlx::query(
        "update blob_results b set secret_key_id = $1, sealed_matches = rows.sealed
         from unnest($2::text[], $3::bytea[], $4::bytea[]) as rows (digest, blob, sealed)
         where b.ruleset_digest = rows.digest and b.blob_id = rows.blob",
    )
    .bind(key_id)
    .bind(&digests)
    .bind(&blobs)
    .bind(&sealed)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(Some((count, last)))
}

/// The inactive keys, oldest first, with the ciphertexts still using them.
pub async fn inactive(pool: &PgPool) -> Result<Vec<InactiveKey>> {
    Ok(sqlx::query_as::<_, InactiveKey>(
        "select k.id, k.created_at, k.rotated_at,
             coalesce(f.n, 0) + coalesce(b.n, 0) + coalesce(c.n, 0) + coalesce(s.n, 0) as ciphertexts
         from secret_keys k
         left join (select secret_key_id, count(*) as n from findings group by secret_key_id) f
             on f.secret_key_id = k.id
         left join (select secret_key_id, count(*) as n from blob_results
                    where secret_key_id is not null group by secret_key_id) b
             on b.secret_key_id = k.id
         left join (select secret_key_id, count(*) as n from clone_credentials
                    group by secret_key_id) c
             on c.secret_key_id = k.id
         left join (select secret_key_id, count(*) as n from catalog_sources
                    group by secret_key_id) s
             on s.secret_key_id = k.id
         where k.state = 'inactive'
         order by k.id",
    )
    .fetch_all(pool)
    .await?)
}

/// What deleting the inactive keys did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deletion {
    /// Names of the keys deleted.
    pub deleted_keys: Vec<String>,
    /// Inactive keys kept because ciphertexts still use them (a rotation
    /// still running, or one that stopped: rotate again).
    pub kept_keys: Vec<String>,
}

/// Deletes every inactive key no ciphertext uses any more.
pub async fn delete_inactive(pool: &PgPool, actor: &str) -> Result<Deletion> {
    let mut transaction: Transaction<'_, Postgres> = pool.begin().await?;
    // The foreign keys of findings and blob_results would refuse a key in
    // use anyway; this only tries the ones that are free.
    let mut deleted: Vec<i32> = sqlx::query_scalar(
        "delete from secret_keys k where k.state = 'inactive'
             and not exists (select 1 from findings f where f.secret_key_id = k.id)
             and not exists (select 1 from blob_results b where b.secret_key_id = k.id)
             and not exists (select 1 from clone_credentials c where c.secret_key_id = k.id)
             and not exists (select 1 from catalog_sources s where s.secret_key_id = k.id)
         returning id",
    )
    .fetch_all(&mut *transaction)
    .await?;
    let kept: Vec<i32> =
        sqlx::query_scalar("select id from secret_keys where state = 'inactive' order by id")
            .fetch_all(&mut *transaction)
            .await?;
    deleted.sort_unstable();
    let deletion = Deletion {
        deleted_keys: deleted.iter().map(|id| key_name(*id)).collect(),
        kept_keys: kept.iter().map(|id| key_name(*id)).collect(),
    };
    if !deletion.deleted_keys.is_empty() {
        audit::record(
            &mut transaction,
            actor,
            "keys.deleted",
            "secret keys",
            &deletion,
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(deletion)
}
