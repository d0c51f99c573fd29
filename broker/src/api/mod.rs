//! The control plane's HTTP API, under `/api/v1`: what the platform's backend calls to create, list, share
//! and kill sessions, and what an administrator calls to manage tenants and see nodes. JSON in and out;
//! errors as `{"code", "message"}`; the OpenAPI document is `broker/openapi.json`, served at
//! `/api/v1/openapi.json`.
//!
//! Callers authenticate with `Authorization: Bearer <key>`: the admin key, or a tenant's API key. A tenant
//! sees and touches only its own sessions; another tenant's session is "not found", never "forbidden".

mod admin;
mod error;
mod extract;
mod sessions;
mod state;
pub mod traffic;

use axum::Router;
use axum::http::Method;
use axum::routing::{MethodRouter, any, get, post, put};

pub use error::ApiError;
pub use state::{Api, ApiConfig};

/// The OpenAPI document, kept in the repository beside the code it describes.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every path of the API, each answering the methods it does not take with [`ApiError::MethodNotAllowed`],
/// and every other path under `/api/v1` with `not_found`: JSON like every other refusal. The second is a
/// catch-all route rather than the router's fallback, because the edge merges this router into its own,
/// whose fallback serves the web page, and a router has one fallback.
pub fn router(api: Api) -> Router {
    Router::new()
        .route(
            "/api/v1/openapi.json",
            only(get(|| async {
                ([("content-type", "application/json")], OPENAPI)
            })),
        )
        .route(
            "/api/v1/sessions",
            only(get(sessions::list).post(sessions::create)),
        )
        .route(
            "/api/v1/sessions/{id}",
            only(get(sessions::get).delete(sessions::delete)),
        )
        .route("/api/v1/sessions/{id}/shares", only(post(sessions::share)))
        .route("/api/v1/tenants", only(get(admin::tenants)))
        .route(
            "/api/v1/tenants/{id}",
            only(put(admin::put_tenant).delete(admin::delete_tenant)),
        )
        .route("/api/v1/nodes", only(get(admin::nodes)))
        .route("/api/v1", any(no_such_route))
        .route("/api/v1/", any(no_such_route))
        .route("/api/v1/{*rest}", any(no_such_route))
        .with_state(api)
}

/// A path's methods, and a JSON refusal for any other; axum adds the `Allow` header, as for its own 405.
fn only(methods: MethodRouter<Api>) -> MethodRouter<Api> {
    methods.fallback(|method: Method| async move { ApiError::MethodNotAllowed(method) })
}

async fn no_such_route() -> ApiError {
    ApiError::NotFound("route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for path in [
            "/api/v1/openapi.json",
            "/api/v1/sessions",
            "/api/v1/sessions/{id}",
            "/api/v1/sessions/{id}/shares",
            "/api/v1/tenants",
            "/api/v1/tenants/{id}",
            "/api/v1/nodes",
        ] {
            assert!(paths.contains_key(path), "{path} is undocumented");
        }
        assert_eq!(
            paths.len(),
            7,
            "a documented path the router does not serve"
        );
    }

    #[test]
    fn the_openapi_document_lists_every_error_code() {
        let every_error = [
            ApiError::Unauthorized,
            ApiError::Forbidden,
            ApiError::NotFound("session"),
            ApiError::BadRequest(String::new()),
            ApiError::MethodNotAllowed(axum::http::Method::TRACE),
            ApiError::Lifetime(crate::tenants::BadLifetime::PastTheClock),
            ApiError::IdleTimeout(crate::tenants::idle_timeout::BadIdleTimeout::TooShort(
                String::new(),
            )),
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge,
            ApiError::SessionTooLarge { size: 0 },
            ApiError::Policy(crate::tenants::PolicyViolation::MissingRemote),
            ApiError::Registry(crate::registry::RegistryError::Unavailable(String::new())),
        ];
        for error in &every_error {
            // No wildcard: a new variant fails to compile here until it is in the list above.
            match error {
                ApiError::Unauthorized
                | ApiError::Forbidden
                | ApiError::NotFound(_)
                | ApiError::BadRequest(_)
                | ApiError::MethodNotAllowed(_)
                | ApiError::Lifetime(_)
                | ApiError::IdleTimeout(_)
                | ApiError::UnsupportedMediaType
                | ApiError::PayloadTooLarge
                | ApiError::SessionTooLarge { .. }
                | ApiError::Policy(_)
                | ApiError::Registry(_) => {}
            }
        }
        let codes: std::collections::BTreeSet<&str> =
            every_error.iter().map(ApiError::code).collect();
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        let documented = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
            .as_array()
            .expect("the error codes")
            .iter()
            .map(|code| code.as_str().expect("a code"))
            .collect();
        assert_eq!(codes, documented);
        let description = doc["info"]["description"].as_str().expect("a description");
        for code in codes {
            assert!(description.contains(code), "{code} is not described");
        }
        let limit = format!("{} KiB", crate::defaults::MAX_BODY / 1024);
        assert!(description.contains(&limit), "the body limit is {limit}");
    }
}
