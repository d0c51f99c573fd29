//! What handlers take from a request, each refusal an [`ApiError`] (so JSON with a stable code, never
//! axum's plain-text rejections): the caller, the admin, a path parameter, a JSON body.
//!
//! Authentication comes first by construction: [`Caller`] and [`Admin`] read only the headers, and axum
//! runs every header extractor of a handler before its one body extractor, so an unknown caller's body is
//! never read, let alone parsed. A body is read only up to [`MAX_BODY`], and only when it says it is JSON.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::{Api, Caller};
use crate::defaults::MAX_BODY;

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        api.caller(&parts.headers).await
    }
}

/// A caller with the admin key; a tenant's key is `Forbidden`.
pub struct Admin;

impl FromRequestParts<Api> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, ApiError> {
        match api.caller(&parts.headers).await? {
            Caller::Admin => Ok(Admin),
            Caller::Tenant(_) => Err(ApiError::Forbidden),
        }
    }
}

/// A path parameter, as [`Path`] reads it.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::BadRequest(path_problem(rejection))),
        }
    }
}

fn path_problem(rejection: PathRejection) -> String {
    format!("path: {}", rejection.body_text())
}

/// A JSON body: `application/json` (or `application/*+json`), at most [`MAX_BODY`] bytes, parsed into `T`
/// (whose unknown fields are refused where `T` says `deny_unknown_fields`).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &S) -> Result<Self, ApiError> {
        if !says_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(ApiError::PayloadTooLarge);
            }
            Err(error) => return Err(ApiError::BadRequest(format!("reading the body: {error}"))),
        };
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|error| ApiError::BadRequest(format!("body: {error}")))
    }
}

/// Whether the content type is JSON, parameters (`; charset=utf-8`) aside; the type is case-insensitive.
fn says_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split_once(';').map_or(value, |(essence, _)| essence);
    let essence = essence.trim().to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    subtype == "json" || subtype.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn typed(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn json_is_known_by_its_media_type_alone() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(says_json(&typed(json)), "{json}");
        }
        for other in [
            "text/plain",
            "text/json",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "",
        ] {
            assert!(!says_json(&typed(other)), "{other}");
        }
        assert!(!says_json(&HeaderMap::new()), "no content type");
    }
}
