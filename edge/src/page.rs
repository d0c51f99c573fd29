//! The web client page: its static files (from `--web-dir`, built from `web/` by npm; nothing is fetched at
//! run time), and the one question the page asks before it connects: which client does this token need?
//! Only the page's own files leave the directory: regular files inside it, none of them hidden.

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use tracing::warn;

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
    // Once, as the node starts: the directory is resolved a single time, and every file checked against it.
    let files = dir.and_then(|dir| match std::fs::canonicalize(dir) {
        Ok(root) => Some(Files { root: root.into() }),
        Err(error) => {
            warn!(dir = %dir.display(), %error, "the web directory cannot be served");
            None
        }
    });
    match files {
        Some(files) => router.fallback(move |request: Request| {
            let files = files.clone();
            async move { files.serve(request).await }
        }),
        None => router.fallback(|| async { (StatusCode::NOT_FOUND, Html(NOT_BUILT)) }),
    }
}

/// The page's files: the canonical web directory.
#[derive(Clone)]
struct Files {
    root: Arc<Path>,
}

impl Files {
    /// The file the request names, served as `ServeFile` serves it (type, `HEAD`, ranges, conditional
    /// requests), or a 404 exactly like a missing file's, so a refusal tells nothing about what is there.
    async fn serve(&self, request: Request) -> Response {
        let (root, path) = (self.root.clone(), request.uri().path().to_owned());
        let file = tokio::task::spawn_blocking(move || resolve(&root, &path)).await;
        let Ok(Some(file)) = file else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let Ok(response) = ServeFile::new(file).oneshot(request).await;
        response.into_response()
    }
}

/// The file a request path names under `root`, if it is one of the page's: a regular file that, with every
/// symlink resolved, is still inside `root`, and reached by no name starting with `.` (`.env`, `.git/`, and
/// `.`/`..` with them) either in the request or after the links. A backslash, a separator on Windows, is in
/// none of the page's names. A path ending in `/` names that directory's `index.html`; any other directory
/// is not a file. `root` is canonical; it may lie under a dot directory itself, as only names below it count.
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let decoded = percent_decode_str(path).decode_utf8().ok()?;
    let mut file = root.to_path_buf();
    for name in decoded.split('/').filter(|name| !name.is_empty()) {
        if name.starts_with('.') || name.contains('\\') {
            return None;
        }
        file.push(name);
    }
    if path.ends_with('/') {
        file.push("index.html");
    }
    let file = std::fs::canonicalize(file).ok()?;
    let visible = |name: &OsStr| !name.as_encoded_bytes().starts_with(b".");
    let inside = file
        .strip_prefix(root)
        .ok()?
        .components()
        .all(|component| matches!(component, Component::Normal(name) if visible(name)));
    (inside && std::fs::metadata(&file).ok()?.is_file()).then_some(file)
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
    /// The session's idle timeout and expiry (Unix ms), so that the page can say which ended it (both
    /// end Guacamole tunnels with 522).
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
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
                idle_timeout_s: session.idle_timeout.map(|idle| idle.as_secs()),
                expires_ms: session.expires.map(deskbroker_shared::time::unix_ms),
            })
            .into_response()
        }
        Err(TunnelError::BadToken | TunnelError::MissingToken) => {
            StatusCode::NOT_FOUND.into_response()
        }
        Err(error) => error.response(),
    }
}
