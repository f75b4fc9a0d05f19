//! Users and grants, with Bitbucket's paths and query parameters.

use crate::routes::PathRepository;
use std::sync::Arc;

use axum::{extract::State, http::StatusCode};
use leakscan_store::users::{self, Access, User};
use serde::Deserialize;
use tracing::info;

use crate::{
    auth::Caller,
    error::{ApiError, PathParams, QueryParams},
    AppState,
};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    name: String,
    password: String,
    display_name: Option<String>,
    email_address: Option<String>,
}

pub async fn create_user(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(query): QueryParams<NewUser>,
) -> Result<StatusCode, ApiError> {
    caller.require_sys_admin()?;
    let display_name = query.display_name.unwrap_or_else(|| query.name.clone());
    let email = query.email_address.unwrap_or_default();
    users::create_user(
        &state.pool,
        &query.name,
        &display_name,
        &email,
        &query.password,
    )
    .await?;
    info!(user = %query.name, by = %caller.0.name, "user created");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct Grant {
    name: String,
    permission: Option<String>,
}

async fn grantee(state: &AppState, name: &str) -> Result<User, ApiError> {
    users::find_user(&state.pool, name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("User {name} does not exist.")))
}

fn permission(grant: &Grant) -> Result<&str, ApiError> {
    grant
        .permission
        .as_deref()
        .ok_or_else(|| ApiError::bad_request("the permission is required: ?permission="))
}

/// Grants or revokes a global permission (system administrators only).
async fn set_global(
    state: &AppState,
    caller: &Caller,
    name: &str,
    permission: &str,
    granted: bool,
) -> Result<StatusCode, ApiError> {
    caller.require_sys_admin()?;
    let user = grantee(state, name).await?;
    if granted {
        users::grant_global(&state.pool, user.id, permission).await?;
    } else {
        users::revoke_global(&state.pool, user.id, permission).await?;
    }
    info!(user = %name, permission, granted, by = %caller.0.name, "global permission changed");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn grant_global(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(grant): QueryParams<Grant>,
) -> Result<StatusCode, ApiError> {
    set_global(&state, &caller, &grant.name, permission(&grant)?, true).await
}

pub async fn revoke_global(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(grant): QueryParams<Grant>,
) -> Result<StatusCode, ApiError> {
    set_global(&state, &caller, &grant.name, permission(&grant)?, false).await
}

/// The explicit security grant (total rescans, global reviews).
pub async fn grant_security(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(grant): QueryParams<Grant>,
) -> Result<StatusCode, ApiError> {
    set_global(&state, &caller, &grant.name, "SECURITY", true).await
}

pub async fn revoke_security(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    QueryParams(grant): QueryParams<Grant>,
) -> Result<StatusCode, ApiError> {
    set_global(&state, &caller, &grant.name, "SECURITY", false).await
}

pub async fn grant_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
    QueryParams(grant): QueryParams<Grant>,
) -> Result<StatusCode, ApiError> {
    caller.project(&state, &project_key, Access::Admin).await?;
    let user = grantee(&state, &grant.name).await?;
    users::grant_project(&state.pool, user.id, &project_key, permission(&grant)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn grant_repository(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    QueryParams(grant): QueryParams<Grant>,
) -> Result<StatusCode, ApiError> {
    let (project_key, slug) = (repository.project_key, repository.slug);
    let user = grantee(&state, &grant.name).await?;
    users::grant_repository(
        &state.pool,
        user.id,
        &project_key,
        &slug,
        permission(&grant)?,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct Revoke {
    name: String,
}

pub async fn revoke_project(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    PathParams(project_key): PathParams<String>,
    QueryParams(revoke): QueryParams<Revoke>,
) -> Result<StatusCode, ApiError> {
    caller.project(&state, &project_key, Access::Admin).await?;
    let user = grantee(&state, &revoke.name).await?;
    users::revoke_project(&state.pool, user.id, &project_key).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_repository(
    State(state): State<Arc<AppState>>,
    PathRepository(repository): PathRepository,
    QueryParams(revoke): QueryParams<Revoke>,
) -> Result<StatusCode, ApiError> {
    let (project_key, slug) = (repository.project_key, repository.slug);
    let user = grantee(&state, &revoke.name).await?;
    users::revoke_repository(&state.pool, user.id, &project_key, &slug).await?;
    Ok(StatusCode::NO_CONTENT)
}
