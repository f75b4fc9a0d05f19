//! Secret encryption keys (`/rest/secrets/1.0`): rotate the data key,
//! list and delete the inactive ones. System administrators only; every
//! change is in the audit log.

use std::sync::Arc;

use axum::{extract::State, Json};
use leakscan_store::keys;
use serde_json::{json, Value};

use crate::{auth::Caller, error::ApiError, AppState};

/// Secrets re-encrypted per transaction.
const ROTATION_BATCH: i64 = 1000;

/// `POST /rest/secrets/1.0/keys/rotate`: a new active key; every stored
/// secret is re-encrypted under it before this answers. 409 while another
/// rotation runs.
pub async fn rotate(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_sys_admin()?;
    let secrets = state.secrets().await?;
    // On a task of its own: a client that stops waiting does not stop it.
    let pool = state.pool.clone();
    let actor = caller.0.name.clone();
    let rotation = tokio::spawn(async move {
        let mut batches = 0u64;
        keys::rotate(&pool, &secrets, &actor, ROTATION_BATCH, |progress| {
            batches += 1;
            if batches % 100 == 0 {
                tracing::info!(
                    findings = progress.findings,
                    blob_results = progress.blob_results,
                    "re-encrypting stored secrets"
                );
            }
        })
        .await
    })
    .await
    .map_err(|_| ApiError::internal())??;
    let reencrypted = rotation.findings + rotation.blob_results + rotation.clone_credentials;
    Ok(Json(json!({
        "status": "SUCCESS",
        "message": format!(
            "{} is the active key; {reencrypted} stored secrets were re-encrypted under it",
            keys::key_name(rotation.key_id)
        ),
        "activeKey": keys::key_name(rotation.key_id),
        "inactiveKeys": rotation.retired.iter().map(|id| keys::key_name(*id)).collect::<Vec<_>>(),
        "reencrypted": {
            "findings": rotation.findings,
            "blobResults": rotation.blob_results,
            "cloneCredentials": rotation.clone_credentials,
        },
    })))
}

/// `GET /rest/secrets/1.0/keys/inactive`: `{inactiveKeys: [name], keys:
/// [{name, createdAt, rotatedAt, ciphertexts}]}`.
pub async fn inactive(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_sys_admin()?;
    let inactive = keys::inactive(&state.pool).await?;
    Ok(Json(json!({
        "inactiveKeys": inactive.iter().map(keys::InactiveKey::name).collect::<Vec<_>>(),
        "keys": inactive.iter().map(|key| json!({
            "name": key.name(),
            "createdAt": key.created_at,
            "rotatedAt": key.rotated_at,
            "ciphertexts": key.ciphertexts,
        })).collect::<Vec<_>>(),
    })))
}

/// `DELETE /rest/secrets/1.0/keys/inactive`: deletes the inactive keys no
/// ciphertext uses; `{deletedKeys, keptKeys}`.
pub async fn delete_inactive(
    State(state): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<keys::Deletion>, ApiError> {
    caller.require_sys_admin()?;
    Ok(Json(
        keys::delete_inactive(&state.pool, &caller.0.name).await?,
    ))
}
