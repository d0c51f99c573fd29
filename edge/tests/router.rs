//! The edge's rules, asked of its routers in-process: one request at a time through
//! `tower::ServiceExt::oneshot`, on a node with an in-memory registry (or one that is away). What the
//! black-box suites check end to end with real processes, checked here without a socket. (WebSocket
//! upgrades need a real connection to upgrade, so the WebSocket endpoints are the black-box suites' only.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;
use tower::ServiceExt;

use deskbroker_broker::api::{self, Api, ApiConfig};
use deskbroker_broker::tenants::Tenant;
use deskbroker_broker::{BoxFuture, EventStream, Membership, MemoryRegistry, Registry};
use deskbroker_broker::{Heartbeat, RegistryError, Result as RegistryResult};
use deskbroker_edge::Node;
use deskbroker_edge::config::Timeouts;
use deskbroker_edge::deny::DenyList;
use deskbroker_edge::http_tunnel::HttpTunnels;
use deskbroker_edge::server::{self, Routes};
use deskbroker_shared::cluster::{ControlEvent, NodeRecord, SlotHolder, TunnelRecord};
use deskbroker_shared::ids::{
    ClusterSecret, NodeId, SessionId, SessionToken, TenantId, TokenDigest, TunnelId,
};
use deskbroker_shared::session::{Session, Target};

const SECRET: &str = "peer-secret";

/// A node alone, with the sessions `vnc` (a VNC server) and `g` (through guacd; neither listens).
async fn routes_on(registry: Arc<dyn Registry>) -> Routes {
    let membership = Membership::new(
        registry.clone(),
        NodeId::new("a"),
        String::new(),
        Duration::from_secs(10),
    );
    for (token, target) in [("vnc", "127.0.0.1:1"), ("g", "guacd://127.0.0.1:1/vnc")] {
        let session = Session::new(
            SessionId::new(token),
            TenantId::new("t"),
            Target::parse(target).unwrap(),
        );
        // A registry that is away stores nothing; its tests do not need the sessions.
        let _ = registry
            .put_session(&SessionToken::new(token), &session)
            .await;
    }
    let secret = Some(ClusterSecret::new(SECRET));
    Routes {
        node: Node::new(
            membership,
            secret,
            Timeouts::default(),
            DenyList::default(),
            None,
        ),
        http_tunnels: HttpTunnels::default(),
    }
}

async fn routes() -> Routes {
    routes_on(Arc::new(MemoryRegistry::new())).await
}

async fn ask(router: Router, request: Request<Body>) -> Response {
    router.oneshot(request).await.unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri).body(body.into()).unwrap()
}

/// The HTTP status, the `Guacamole-Status-Code` and the `Guacamole-Error-Message` of a response.
fn servlet_error(response: &Response) -> (u16, Option<&str>, Option<&str>) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
    };
    (
        response.status().as_u16(),
        header("guacamole-status-code"),
        header("guacamole-error-message"),
    )
}

async fn body_text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn malformed_http_tunnel_requests_get_the_servlets_errors() {
    let routes = routes().await;
    let public = || server::public(routes.clone(), None);
    let cases = [
        (get("/tunnel"), (400, "768", "No query string provided.")),
        (
            get("/tunnel?banana"),
            (400, "768", "Invalid tunnel operation: banana"),
        ),
        (
            get("/tunnel?read:0f7c"),
            (
                400,
                "768",
                "The HTTP tunnel session token is required for all requests after connecting.",
            ),
        ),
    ];
    for (request, (http, code, message)) in cases {
        let response = ask(public(), request).await;
        assert_eq!(servlet_error(&response), (http, Some(code), Some(message)));
    }
    let unknown = Request::post("/tunnel?write:0f7c")
        .header("guacamole-tunnel-token", "nope")
        .body(Body::from("3.nop;"))
        .unwrap();
    let response = ask(public(), unknown).await;
    assert_eq!(
        servlet_error(&response),
        (404, Some("516"), Some("No such tunnel.")),
        "alone, a tunnel it does not hold is gone"
    );
}

#[tokio::test]
async fn http_tunnel_connects_are_refused_with_the_status_of_the_reason() {
    let routes = routes().await;
    let connect = |body: String| {
        ask(
            server::public(routes.clone(), None),
            post("/tunnel?connect", body),
        )
    };
    let cases = [
        (String::from("GUAC_WIDTH=1"), (403, "769")),
        (String::from("token=nope"), (403, "769")),
        (String::from("token=vnc"), (400, "768")),
        ("token=".to_owned() + &"x".repeat(20_000), (413, "781")),
    ];
    for (body, (http, code)) in cases {
        let response = connect(body).await;
        let (got_http, got_code, _) = servlet_error(&response);
        assert_eq!((got_http, got_code), (http, Some(code)));
    }
}

#[tokio::test]
async fn a_registry_that_is_away_answers_503_with_a_status_to_retry() {
    let routes = routes_on(Arc::new(Away)).await;
    let connect = post("/tunnel?connect", "token=g");
    let response = ask(server::public(routes.clone(), None), connect).await;
    assert_eq!(
        servlet_error(&response),
        (503, Some("520"), Some("Session registry unavailable."))
    );
    let page = ask(server::public(routes, None), get("/client/session?token=g")).await;
    assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_page_learns_a_sessions_kind_and_nothing_else() {
    let routes = routes().await;
    let public = || server::public(routes.clone(), None);
    let vnc = ask(public(), get("/client/session?token=vnc")).await;
    assert_eq!(vnc.status(), StatusCode::OK);
    assert_eq!(body_text(vnc).await, r#"{"kind":"vnc","read_only":false}"#);
    let guacd = ask(public(), get("/client/session?token=g")).await;
    assert_eq!(
        body_text(guacd).await,
        r#"{"kind":"guacd","read_only":false}"#
    );
    let unknown = ask(public(), get("/client/session?token=nope")).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let unbuilt = ask(public(), get("/")).await;
    assert_eq!(unbuilt.status(), StatusCode::NOT_FOUND);
    assert!(body_text(unbuilt).await.contains("npm run build"));
    let health = ask(public(), get("/healthz")).await;
    assert_eq!(body_text(health).await, "ok");
}

#[tokio::test]
async fn the_peer_listener_serves_only_requests_with_the_cluster_secret() {
    let routes = routes().await;
    let peers = || server::peers(routes.clone());
    let traffic = |secret: Option<&str>, body: &'static str| {
        let mut request = Request::post("/traffic");
        if let Some(secret) = secret {
            request = request.header("deskbroker-cluster-secret", secret);
        }
        request.body(Body::from(body)).unwrap()
    };
    let query = r#"{"sessions": ["s"]}"#;
    assert_eq!(
        ask(peers(), traffic(None, query)).await.status(),
        StatusCode::FORBIDDEN
    );
    let wrong = ask(peers(), traffic(Some("guess"), query)).await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let none = ask(peers(), traffic(Some(SECRET), query)).await;
    assert_eq!(none.status(), StatusCode::OK);
    assert_eq!(
        body_text(none).await,
        r#"{"tunnels":{}}"#,
        "no tunnel of that session here"
    );
    let malformed = ask(peers(), traffic(Some(SECRET), "{")).await;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    let read = Request::get("/tunnel?read:0f7c:0")
        .header("guacamole-tunnel-token", "nope")
        .body(Body::empty())
        .unwrap();
    let refused = ask(peers(), read).await;
    assert_eq!(
        servlet_error(&refused).1,
        Some("769"),
        "no secret, no tunnel"
    );
    let connect = Request::post("/tunnel?connect")
        .header("deskbroker-cluster-secret", SECRET)
        .body(Body::from("token=g"))
        .unwrap();
    let connect = ask(peers(), connect).await;
    assert_eq!(
        servlet_error(&connect),
        (400, Some("768"), Some("Invalid tunnel operation: connect")),
        "peers never open tunnels"
    );
}

/// The browser listener of a node without Redis, as `lifecycle` builds it: the control-plane API merged in.
#[tokio::test]
async fn under_the_api_the_node_answers_in_json_and_elsewhere_with_the_page() {
    let routes = routes().await;
    let plane = api::router(Api::new(
        Arc::new(MemoryRegistry::new()),
        ApiConfig::default(),
    ));
    let public = || server::public(routes.clone(), None).merge(plane.clone());
    for (request, status, code) in [
        (get("/api/v1/nothing"), StatusCode::NOT_FOUND, "not_found"),
        (
            get("/api/v1/sessions/x/y"),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Request::delete("/api/v1/nodes")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ] {
        let uri = request.uri().clone();
        let answer = ask(public(), request).await;
        assert_eq!(answer.status(), status, "{uri}");
        let content_type = answer.headers().get("content-type").cloned();
        assert_eq!(content_type.unwrap(), "application/json", "{uri}");
        let body: serde_json::Value = serde_json::from_str(&body_text(answer).await).unwrap();
        assert_eq!(body["code"], code, "{uri}");
    }
    let page = ask(public(), get("/nothing")).await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    let content_type = page.headers().get("content-type").cloned();
    assert!(
        content_type
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "the page's note, not the API's error"
    );
}

/// A registry that never answers: what a node sees while Redis is away.
struct Away;

fn away<'a, T: Send + 'a>() -> BoxFuture<'a, RegistryResult<T>> {
    Box::pin(async { Err(RegistryError::Unavailable("away".into())) })
}

impl Registry for Away {
    fn session<'a>(
        &'a self,
        _: &'a SessionToken,
    ) -> BoxFuture<'a, RegistryResult<Option<Session>>> {
        away()
    }
    fn put_session<'a>(
        &'a self,
        _: &'a SessionToken,
        _: &'a Session,
    ) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn renew<'a>(&'a self, _: &'a NodeRecord) -> BoxFuture<'a, RegistryResult<Heartbeat>> {
        away()
    }
    fn nodes(&self) -> BoxFuture<'_, RegistryResult<Vec<NodeRecord>>> {
        away()
    }
    fn node_records<'a>(
        &'a self,
        _: &'a [NodeId],
    ) -> BoxFuture<'a, RegistryResult<Vec<Option<NodeRecord>>>> {
        away()
    }
    fn remove_node<'a>(&'a self, _: &'a NodeId) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn remove_lapsed_node<'a>(&'a self, _: &'a NodeId) -> BoxFuture<'a, RegistryResult<bool>> {
        away()
    }
    fn put_revocation<'a>(
        &'a self,
        _: &'a SessionId,
        _: std::time::SystemTime,
    ) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn marked<'a>(&'a self, _: &'a str) -> BoxFuture<'a, RegistryResult<bool>> {
        away()
    }
    fn mark<'a>(&'a self, _: &'a str) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn removed_tenants<'a>(
        &'a self,
        _: &'a [TenantId],
    ) -> BoxFuture<'a, RegistryResult<Vec<TenantId>>> {
        away()
    }
    fn reserve_slot<'a>(
        &'a self,
        _: &'a TenantId,
        _: &'a SlotHolder,
        _: u32,
    ) -> BoxFuture<'a, RegistryResult<bool>> {
        away()
    }

    fn hand_over_slot<'a>(
        &'a self,
        _: &'a TenantId,
        _: &'a SlotHolder,
        _: &'a SlotHolder,
    ) -> BoxFuture<'a, RegistryResult<bool>> {
        away()
    }
    fn slot_holders<'a>(
        &'a self,
        _: &'a TenantId,
    ) -> BoxFuture<'a, RegistryResult<Vec<SlotHolder>>> {
        away()
    }
    fn tunnel<'a>(
        &'a self,
        _: &'a TunnelId,
    ) -> BoxFuture<'a, RegistryResult<Option<TunnelRecord>>> {
        away()
    }
    fn add_tunnel<'a>(&'a self, _: &'a TunnelRecord) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn remove_tunnel<'a>(&'a self, _: &'a TunnelRecord) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn http_tunnel<'a>(
        &'a self,
        _: &'a TokenDigest,
    ) -> BoxFuture<'a, RegistryResult<Option<TunnelRecord>>> {
        away()
    }
    fn tunnels_of<'a>(&'a self, _: &'a NodeId) -> BoxFuture<'a, RegistryResult<Vec<TunnelRecord>>> {
        away()
    }
    fn session_tunnels<'a>(
        &'a self,
        _: &'a SessionId,
    ) -> BoxFuture<'a, RegistryResult<Vec<TunnelRecord>>> {
        away()
    }
    fn session_by_id<'a>(
        &'a self,
        _: &'a SessionId,
    ) -> BoxFuture<'a, RegistryResult<Option<(TokenDigest, Session)>>> {
        away()
    }
    fn sessions_of<'a>(&'a self, _: &'a TenantId) -> BoxFuture<'a, RegistryResult<Vec<Session>>> {
        away()
    }
    fn revoke<'a>(&'a self, _: &'a SessionId) -> BoxFuture<'a, RegistryResult<bool>> {
        away()
    }
    fn purge_expired(&self, _: usize) -> BoxFuture<'_, RegistryResult<usize>> {
        away()
    }
    fn revoked<'a>(&'a self, _: &'a [SessionId]) -> BoxFuture<'a, RegistryResult<Vec<SessionId>>> {
        away()
    }
    fn put_tenant<'a>(&'a self, _: &'a Tenant) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn tenant<'a>(&'a self, _: &'a TenantId) -> BoxFuture<'a, RegistryResult<Option<Tenant>>> {
        away()
    }
    fn tenant_by_key<'a>(
        &'a self,
        _: &'a TokenDigest,
    ) -> BoxFuture<'a, RegistryResult<Option<Tenant>>> {
        away()
    }
    fn tenants(&self) -> BoxFuture<'_, RegistryResult<Vec<Tenant>>> {
        away()
    }
    fn remove_tenant<'a>(&'a self, _: &'a TenantId) -> BoxFuture<'a, RegistryResult<bool>> {
        away()
    }
    fn publish<'a>(&'a self, _: &'a ControlEvent) -> BoxFuture<'a, RegistryResult<()>> {
        away()
    }
    fn subscribe(&self) -> BoxFuture<'_, RegistryResult<EventStream>> {
        away()
    }
}
