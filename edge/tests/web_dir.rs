//! What `--web-dir` serves, asked of the public router in-process: the page's files, as `ServeDir` serves
//! them, and nothing else in or beside the directory. A web directory with the page in it and, as a
//! careless deployment might leave them, a `.env`, a `.git/` and symlinks out of it; every way a request
//! can name those (dots, `..`, percent-encoded, backslashes, directories) is a plain 404, the same as a
//! file that is not there.

#![cfg(unix)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use tempfile::TempDir;
use tower::ServiceExt;

use deskbroker_broker::{Membership, MemoryRegistry};
use deskbroker_edge::Node;
use deskbroker_edge::config::Timeouts;
use deskbroker_edge::deny::DenyList;
use deskbroker_edge::http_tunnel::HttpTunnels;
use deskbroker_edge::server::{self, Routes};
use deskbroker_shared::ids::NodeId;

const INDEX: &str = "<!doctype html><title>deskbroker</title>";
const SCRIPT: &str = "console.log('deskbroker');";
const STYLE: &str = "body { margin: 0 }";
const SECRET: &str = "REDIS_PASSWORD=hunter2";

/// The page's directory (`index.html`, `app.js`, `style.css`, `app.js.map`, and a `sub/` directory with a
/// file in it), with secrets the page must never serve: a `.env`, a `.git/config`, a link to `/etc/passwd`,
/// a link to a directory outside, and a link with an innocent name to the `.env`. The second directory is
/// the outside one, kept alive as long as the first.
fn web_dir() -> (TempDir, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    fs::write(at("index.html"), INDEX).unwrap();
    fs::write(at("app.js"), SCRIPT).unwrap();
    fs::write(at("app.js.map"), "{}").unwrap();
    fs::write(at("style.css"), STYLE).unwrap();
    fs::create_dir(at("sub")).unwrap();
    fs::write(at("sub/note.txt"), "a file in a directory").unwrap();
    fs::write(at(".env"), SECRET).unwrap();
    fs::create_dir(at(".git")).unwrap();
    fs::write(at(".git/config"), SECRET).unwrap();
    fs::write(outside.path().join("secret.txt"), SECRET).unwrap();
    fs::write(outside.path().join("index.html"), SECRET).unwrap();
    symlink("/etc/passwd", at("passwd")).unwrap();
    symlink(outside.path(), at("outside")).unwrap();
    symlink(at(".env"), at("env.txt")).unwrap();
    (dir, outside)
}

/// A node alone, with an in-memory registry: the files do not need sessions.
fn public(dir: &Path) -> Router {
    let membership = Membership::new(
        Arc::new(MemoryRegistry::new()),
        NodeId::new("a"),
        String::new(),
        Duration::from_secs(10),
    );
    let routes = Routes {
        node: Node::new(
            membership,
            None,
            Timeouts::default(),
            DenyList::default(),
            None,
        ),
        http_tunnels: HttpTunnels::default(),
    };
    server::public(routes, Some(dir))
}

async fn ask(dir: &Path, request: Request<Body>) -> Response {
    public(dir).oneshot(request).await.unwrap()
}

fn request(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap()
}

fn get(uri: &str) -> Request<Body> {
    request(Method::GET, uri)
}

fn content_type(response: &Response) -> Option<&str> {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
}

async fn body_text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types() {
    let (dir, _outside) = web_dir();
    let dir = dir.path();
    let cases = [
        ("/", "text/html", INDEX),
        ("/?token=abc", "text/html", INDEX),
        ("/index.html", "text/html", INDEX),
        ("/index.html?token=abc", "text/html", INDEX),
        ("/app.js", "text/javascript", SCRIPT),
        ("/style.css", "text/css", STYLE),
        ("//app.js", "text/javascript", SCRIPT),
        ("/%61pp.js", "text/javascript", SCRIPT),
        ("/sub/note.txt", "text/plain", "a file in a directory"),
    ];
    for (uri, kind, body) in cases {
        let response = ask(dir, get(uri)).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        assert!(
            content_type(&response).is_some_and(|got| got.starts_with(kind)),
            "{uri}: {:?}",
            content_type(&response)
        );
        assert_eq!(body_text(response).await, body, "{uri}");
    }
    let map = ask(dir, get("/app.js.map")).await;
    assert_eq!(map.status(), StatusCode::OK, "the source map, for devtools");

    let head = ask(dir, request(Method::HEAD, "/app.js")).await;
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()[header::CONTENT_LENGTH],
        SCRIPT.len().to_string()
    );
    assert_eq!(body_text(head).await, "");

    let range = Request::get("/app.js")
        .header(header::RANGE, "bytes=0-6")
        .body(Body::empty())
        .unwrap();
    let range = ask(dir, range).await;
    assert_eq!(range.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(body_text(range).await, "console");

    let seen = ask(dir, get("/app.js")).await;
    let etag = seen.headers()[header::ETAG].clone();
    let again = Request::get("/app.js")
        .header(header::IF_NONE_MATCH, etag)
        .body(Body::empty())
        .unwrap();
    assert_eq!(ask(dir, again).await.status(), StatusCode::NOT_MODIFIED);

    let post = ask(dir, request(Method::POST, "/app.js")).await;
    assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);

    // The routes still come before the files.
    let health = ask(dir, get("/healthz")).await;
    assert_eq!(body_text(health).await, "ok");
}

#[tokio::test]
async fn nothing_but_the_pages_regular_files_is_served() {
    let (dir, _outside) = web_dir();
    let dir = dir.path();
    let missing = ask(dir, get("/missing.js")).await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing_body = body_text(missing).await;
    let refused = [
        // Dotfiles and dot directories, however they are spelt.
        "/.env",
        "/.git/config",
        "/.git",
        "/.git/",
        "/%2eenv",
        "/%2Egit/config",
        "/.git%2fconfig",
        "/sub/../.env",
        "/./index.html",
        "/.",
        "/%2e",
        // Symlinks out of the directory, and one into a dotfile.
        "/passwd",
        "/outside",
        "/outside/",
        "/outside/secret.txt",
        "/outside/index.html",
        "/env.txt",
        // Traversal, plain and percent-encoded.
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2f..%2f..%2fetc/passwd",
        "/%2e%2e%2f%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/sub/..%2f..%2f..%2f..%2fetc/passwd",
        "/%252e%252e/%252e%252e/etc/passwd",
        // Windows-style separators and absolute paths.
        "/..%5c..%5c..%5c..%5cetc%5cpasswd",
        "/sub%5c..%5c.env",
        "/sub%5cnote.txt",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
        "/C:%5cWindows%5cwin.ini",
        // Directories are not files.
        "/sub",
        "/sub/",
        "/sub%2f",
        // Bytes no file name has.
        "/index.html%00.js",
        "/%ff",
    ];
    for uri in refused {
        for method in [Method::GET, Method::HEAD] {
            let response = ask(dir, request(method.clone(), uri)).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {uri}");
            assert_eq!(
                content_type(&response),
                None,
                "{method} {uri}: like a missing file"
            );
            let body = body_text(response).await;
            assert!(!body.contains(SECRET), "{method} {uri}");
            assert_eq!(body, missing_body, "{method} {uri}: like a missing file");
        }
    }
}
