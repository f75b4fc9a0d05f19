//! The blob-result cache: what each blob holds under a ruleset, keyed by
//! (ruleset digest, blob id). Workers reach it through the coordinator, so a
//! blob one worker read is never read again by any worker, whatever branch,
//! fork or rescan meets it. A blob with matches keeps them encrypted like
//! findings' secrets; a clean blob is a row without payload.

use std::collections::HashMap;

use sqlx::PgPool;

use crate::{secrets::SecretBox, Result};

/// Most blobs one lookup or store may carry.
pub const MAX_BLOBS_PER_CALL: usize = 20_000;

/// A row: blob id, data key id, sealed payload (both null for a clean blob).
type StoredResult = (Vec<u8>, Option<i32>, Option<Vec<u8>>);

/// For each blob id, its stored result when known: `Some(None)` for a clean
/// blob, `Some(Some(payload))` with the decrypted payload otherwise.
pub async fn lookup(
    pool: &PgPool,
    secrets: &SecretBox,
    ruleset_digest: &str,
    blob_ids: &[Vec<u8>],
) -> Result<Vec<Option<Option<Vec<u8>>>>> {
    let rows: Vec<StoredResult> = sqlx::query_as(
        "select blob_id, secret_key_id, sealed_matches from blob_results
         where ruleset_digest = $1 and blob_id = any($2)",
    )
    .bind(ruleset_digest)
    .bind(blob_ids)
    .fetch_all(pool)
    .await?;
    let mut known: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::with_capacity(rows.len());
    for (blob_id, key_id, sealed) in rows {
        let payload = match (key_id, sealed) {
            (Some(key_id), Some(sealed)) => Some(secrets.decrypt(pool, key_id, &sealed).await?),
            _ => None,
        };
        known.insert(blob_id, payload);
    }
    Ok(blob_ids.iter().map(|id| known.remove(id)).collect())
}

/// Stores results (`None`: a clean blob); a result already stored stays.
pub async fn store(
    pool: &PgPool,
    secrets: &SecretBox,
    ruleset_digest: &str,
    results: &[(Vec<u8>, Option<Vec<u8>>)],
) -> Result<()> {
    let mut transaction = pool.begin().await?;
    let key = secrets.active_key(&mut transaction).await?;
    let mut ids = Vec::with_capacity(results.len());
    let mut key_ids = Vec::with_capacity(results.len());
    let mut sealed = Vec::with_capacity(results.len());
    for (blob_id, payload) in results {
        ids.push(blob_id.clone());
        match payload {
            Some(payload) => {
                key_ids.push(Some(key.id()));
                sealed.push(Some(key.seal(payload)));
            }
            None => {
                key_ids.push(None);
                sealed.push(None);
            }
        }
    }
    // Rows go in blob-id order: two workers storing overlapping sets then
    // take their row locks in the same order and cannot deadlock.
    sqlx::query(
        "insert into blob_results (ruleset_digest, blob_id, secret_key_id, sealed_matches)
         select $1, blob, key_id, sealed
         from unnest($2::bytea[], $3::integer[], $4::bytea[]) as rows (blob, key_id, sealed)
         order by blob
         on conflict (ruleset_digest, blob_id) do nothing",
    )
    .bind(ruleset_digest)
    .bind(&ids)
    .bind(&key_ids)
    .bind(&sealed)
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    Ok(())
}
