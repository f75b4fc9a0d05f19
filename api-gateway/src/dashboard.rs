//! The dashboard page (docs/ARCHITECTURE.md, "The dashboard page"): one
//! HTML page, its script and its style sheet, compiled into the binary and
//! served at `/dashboard` under a strict Content-Security-Policy (no inline
//! script or style, nothing from another origin). The page reads the same
//! REST API every client uses; a browser signs in once with a user's
//! password and then carries a session cookie (an `EventSource` cannot
//! send an `Authorization` header).

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use leakscan_store::{sessions, users::User};
use serde::{Deserialize, Serialize};

use crate::{
    auth::{self, Caller, SESSION_COOKIE},
    error::{ApiError, JsonBody},
    AppState,
};

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/app.css");

/// What the page may load: its own script, style and API, nothing inline,
/// nothing from elsewhere, and it may not be framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small, and new with each release: always asked again.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /dashboard`
pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/app.css`
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    name: String,
    password: String,
}

/// Who is signed in, and what the page may offer them globally.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionUser {
    name: String,
    display_name: String,
    sys_admin: bool,
    /// The security grant (or system administrator): the instance-wide
    /// dashboard and total rescans.
    security: bool,
}

impl From<&User> for SessionUser {
    fn from(user: &User) -> SessionUser {
        SessionUser {
            name: user.name.clone(),
            display_name: user.display_name.clone(),
            sys_admin: user.sys_admin,
            security: user.sys_admin || user.security,
        }
    }
}

/// The session cookie: only the gateway reads it (`HttpOnly`), only this
/// site sends it (`SameSite=Strict`), and only over HTTPS when the request
/// came over HTTPS (a TLS-terminating proxy says so in
/// `X-Forwarded-Proto`).
fn session_cookie(state: &AppState, headers: &HeaderMap, value: &str, max_age: i64) -> HeaderValue {
    let path = format!("{}/", state.config.context_path.trim_end_matches('/'));
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /rest/dashboard/latest/session`: signs in with a user's password
/// (throttled as basic authentication is) and sets the session cookie.
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    JsonBody(form): JsonBody<SignIn>,
) -> Result<Response, ApiError> {
    if form.name.is_empty() || form.password.is_empty() {
        return Err(ApiError::bad_request("name and password are required"));
    }
    let address = connect.map(|Extension(ConnectInfo(address))| address.ip());
    let user = auth::sign_in(&state, &form.name, &form.password, address).await?;
    let (token, _expires) = sessions::create(&state.pool, user.id).await?;
    let max_age = i64::from(sessions::SESSION_HOURS) * 3600;
    let mut response = Json(SessionUser::from(&user)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session_cookie(&state, &headers, &token, max_age),
    );
    Ok(response)
}

/// `GET /rest/dashboard/latest/session`: the signed-in user.
pub async fn current(caller: Caller) -> Json<SessionUser> {
    Json(SessionUser::from(&caller.0))
}

/// `DELETE /rest/dashboard/latest/session`: signs out (ends the session
/// and clears the cookie).
pub async fn sign_out(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(token) = auth::session_cookie(&headers) {
        sessions::delete(&state.pool, &token).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, &headers, "", 0));
    Ok(response)
}

/// A 401 answer to the page's own requests (`X-Requested-With`) carries no
/// `WWW-Authenticate` challenge, so the browser shows the page's sign-in
/// form instead of its own password dialog.
pub async fn no_browser_prompt(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let from_page = request.headers().contains_key("x-requested-with");
    let mut response = next.run(request).await;
    if from_page && response.status() == StatusCode::UNAUTHORIZED {
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    response
}
