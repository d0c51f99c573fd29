//! The control plane's one error type: a stable machine-readable `code`, a message for people, an HTTP
//! status. Every failure of the API is one of these, as JSON: `{"code": "...", "message": "..."}`.

use axum::Json;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::registry::RegistryError;
use crate::tenants::idle_timeout::BadIdleTimeout;
use crate::tenants::{BadLifetime, PolicyViolation};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this key may not do that")]
    Forbidden,
    /// Also what a tenant gets for another tenant's session: nothing is leaked about its existence.
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("invalid request: {0}")]
    Lifetime(#[from] BadLifetime),
    #[error("invalid request: {0}")]
    IdleTimeout(#[from] BadIdleTimeout),
    /// A path of the API that does not take this method; the `Allow` header says which it takes.
    #[error("this path does not take {0}: the Allow header lists the methods it does")]
    MethodNotAllowed(Method),
    /// The request has a body the API cannot read: not said to be JSON.
    #[error("the body must be JSON, sent as `content-type: application/json`")]
    UnsupportedMediaType,
    #[error(
        "the body is larger than the {} bytes the API reads",
        crate::defaults::MAX_BODY
    )]
    PayloadTooLarge,
    /// A session whose record would be larger than the registry stores: a refusal of the same kind as
    /// [`ApiError::PayloadTooLarge`], under its code, so that clients handle it as they already do.
    #[error(
        "the session would be stored as {size} bytes, over the {limit} a session may hold: its target \
         and connection parameters (the request's, and the tenant's own laid over them) are too long",
        limit = crate::defaults::MAX_SESSION_RECORD
    )]
    SessionTooLarge { size: usize },
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    #[error("registry unavailable")]
    Registry(#[from] RegistryError),
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadRequest(_) | ApiError::Lifetime(_) | ApiError::IdleTimeout(_) => {
                "bad_request"
            }
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge | ApiError::SessionTooLarge { .. } => "payload_too_large",
            ApiError::Policy(_) => "policy_violation",
            ApiError::Registry(_) => "registry_unavailable",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Policy(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) | ApiError::Lifetime(_) | ApiError::IdleTimeout(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge | ApiError::SessionTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Registry(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Registry(error) = &self {
            tracing::warn!(side = "registry", %error, "API request failed");
        }
        let body = Body {
            code: self.code(),
            message: self.to_string(),
        };
        (self.status(), Json(body)).into_response()
    }
}
