//! Personal access tokens, as Bitbucket Data Center's
//! `/rest/access-tokens/latest/users/{userSlug}`: a user (or a system
//! administrator for them) makes, lists and deletes tokens; a token then
//! authenticates as `Authorization: Bearer <token>` with at most its own
//! permissions. Managing tokens needs a password, not a token.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use leakscan_store::{tokens, users};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    auth::Caller,
    catalog::Paging,
    error::{ApiError, JsonBody, QueryParams},
    AppState,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[serde(default)]
    permissions: Vec<String>,
    expiry_days: Option<i64>,
}

/// The user a token path names; tokens cannot manage tokens.
async fn owner(state: &AppState, caller: &Caller, name: &str) -> Result<users::User, ApiError> {
    if caller.1.is_some() {
        return Err(ApiError::forbidden(
            "access tokens cannot manage access tokens: authenticate with a password",
        ));
    }
    users::find_user(&state.pool, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("User {name} does not exist.")))
}

fn token_json(token: &tokens::AccessToken, user: &users::User) -> Value {
    let mut body = serde_json::to_value(token).unwrap_or_default();
    body["permissions"] = json!(token.permissions());
    body["user"] = json!({"name": user.name, "displayName": user.display_name});
    body
}

/// `PUT …/users/{user}`: `{name, permissions, expiryDays}` → the token,
/// with its value (`token`) shown this once.
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(user): Path<String>,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<Json<Value>, ApiError> {
    let owner = owner(&state, &caller, &user).await?;
    let (token, value) = tokens::create(
        &state.pool,
        owner.id,
        &body.name,
        &body.permissions,
        body.expiry_days,
    )
    .await?;
    let mut answer = token_json(&token, &owner);
    answer["token"] = json!(value);
    Ok(Json(answer))
}

/// `GET …/users/{user}`: the user's tokens (paged, without their values).
pub async fn list(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(user): Path<String>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<Json<Value>, ApiError> {
    let owner = owner(&state, &caller, &user).await?;
    let page = tokens::list(&state.pool, owner.id, paging.request()).await?;
    let page = page.map(|token| token_json(&token, &owner));
    Ok(Json(
        serde_json::to_value(page).map_err(|_| ApiError::internal())?,
    ))
}

/// `DELETE …/users/{user}/{tokenId}`.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((user, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let owner = owner(&state, &caller, &user).await?;
    let deleted = match id.parse::<i64>() {
        Ok(id) => tokens::delete(&state.pool, owner.id, id).await?,
        Err(_) => false,
    };
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("Token {id} does not exist.")))
    }
}
