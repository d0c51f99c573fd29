//! The web client page: its static files (from `--web-dir`, built from `web/` by npm; nothing is fetched at
//! run time), and the one question the page asks before it connects: which client does this token need?

use std::path::Path;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tower_http::services::ServeDir;

use deskbroker_shared::ids::SessionToken;
use deskbroker_shared::session::Target;

use crate::error::TunnelError;
use crate::node::Node;

/// Served at `/` when the node has no built page.
const NOT_BUILT: &str = "<!doctype html><title>deskbroker</title><p>This node serves no web client page. \
    Build it with <code>npm ci && npm run build</code> in <code>web/</code> and start the node with \
    <code>--web-dir web/dist</code> (<code>scripts/demo</code> does both).</p>";

/// Serves the page's files for every path no route claims, or a note on how to build them.
pub fn with_files<S>(router: Router<S>, dir: Option<&Path>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    match dir {
        Some(dir) => router.fallback_service(ServeDir::new(dir)),
        None => router.fallback(|| async { (StatusCode::NOT_FOUND, Html(NOT_BUILT)) }),
    }
}

#[derive(Deserialize)]
pub struct TokenQuery {
    token: String,
}

#[derive(Serialize)]
pub struct SessionKind {
    /// `vnc` (open with noVNC on `/websockify`) or `guacd` (guacamole-common-js on the Guacamole tunnels).
    kind: &'static str,
    read_only: bool,
}

/// `GET /client/session?token=T`: the kind of session a token grants, and nothing else about it.
pub async fn session(State(node): State<Node>, Query(query): Query<TokenQuery>) -> Response {
    let token = SessionToken::new(query.token);
    match node.session(Some(&token)).await {
        Ok(session) => {
            let kind = match session.target {
                Target::Vnc { .. } => "vnc",
                Target::Guacd { .. } => "guacd",
            };
            Json(SessionKind {
                kind,
                read_only: session.read_only,
            })
            .into_response()
        }
        Err(TunnelError::BadToken | TunnelError::MissingToken) => {
            StatusCode::NOT_FOUND.into_response()
        }
        Err(error) => error.response(),
    }
}
