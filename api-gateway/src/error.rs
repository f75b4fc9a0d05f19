//! One mapping from failures to HTTP answers, in Bitbucket's error shape
//! `{"errors":[{"message", "context", "exceptionName"}]}`. Internal errors
//! answer with a generic message; the detail goes to the log only.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use leakscan_store::StoreError;
use serde_json::json;
use tracing::error;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Seconds to wait before trying again (`Retry-After`), when known.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After: seconds` to the answer.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Authentication failed. Please check your credentials and try again.",
        )
    }

    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            StoreError::Invalid(message) => ApiError::bad_request(message),
            StoreError::NotFound(what) => ApiError::not_found(format!("{what} does not exist")),
            StoreError::Conflict(message) => ApiError::conflict(message),
            // PostgreSQL's data exceptions (class 22): text with a NUL
            // character, a number out of range. The input's fault.
            StoreError::Database(sqlx::Error::Database(database))
                if database.code().is_some_and(|code| code.starts_with("22")) =>
            {
                ApiError::bad_request(
                    "a value is not acceptable: text must not contain NUL characters, numbers must be in range",
                )
            }
            other => {
                error!(error = %other, "store error");
                ApiError::internal()
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    /// A body that is not JSON of the expected shape is a 400 with the
    /// parser's message (a missing content type stays 415).
    fn from(rejection: JsonRejection) -> ApiError {
        let status = match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "errors": [{"message": self.message, "context": null, "exceptionName": null}]
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"leakscan\""),
            );
        }
        response
    }
}

/// `axum::Json` whose rejection is an [`ApiError`].
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// A JSON body read whatever its `Content-Type` says, or without one:
/// Bitbucket Data Center's secret-scanning endpoints consume `*/*`, and the
/// curl examples of its documentation send no JSON content type. A body
/// that is not JSON of the expected shape is a 400 with the parser's
/// message; one over the body limit a 413.
pub struct AnyJsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for AnyJsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        Ok(AnyJsonBody(value))
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);
