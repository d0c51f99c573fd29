//! The control plane's API, asked in-process: one request at a time through `tower::ServiceExt::oneshot`,
//! on an in-memory registry holding one tenant, `acme` (sessions of at most an hour), and an admin key.
//! Every answer, refusals included (a wrong method, a path that names nothing), is JSON `{"code",
//! "message"}`; the caller is known before its body is read; no lifetime, however long or short, leaves a
//! caller without an answer or with a dead token; a guacd session carries no parameter past the policy,
//! only the operator's own on top; and a session too large to store is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a failed expectation is a failed test"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use deskbroker_broker::api::{self, Api, ApiConfig};
use deskbroker_broker::defaults::MAX_BODY;
use deskbroker_broker::tenants::{Limits, Policy, Tenant};
use deskbroker_broker::{MemoryRegistry, Registry};
use deskbroker_shared::ids::{SessionId, SessionToken, TenantId, TokenDigest};
use deskbroker_shared::session::{HostPort, Session, Target};

const ADMIN: &str = "admin-key-0123456789";
const ACME: &str = "acme-key-0123456789";
const HOUR: Duration = Duration::from_secs(3600);

/// The control plane of a registry holding the tenant `acme`, whose sessions live an hour at most.
async fn control_plane() -> (Router, Arc<MemoryRegistry>) {
    let registry = Arc::new(MemoryRegistry::new());
    let acme = Tenant {
        id: TenantId::new("acme"),
        key_sha256: TokenDigest::of(ACME),
        policy: Policy {
            hosts: vec!["127.0.0.1".into()],
            ports: vec!["1-65535".into()],
            kinds: vec!["vnc".into()],
        },
        limits: Limits {
            max_tunnels: 5,
            max_lifetime: HOUR,
            ..Limits::default()
        },
        guacd_params: Default::default(),
    };
    registry.put_tenant(&acme).await.unwrap();
    let config = ApiConfig {
        admin_key: Some(TokenDigest::of(ADMIN)),
        ..ApiConfig::default()
    };
    (api::router(Api::new(registry.clone(), config)), registry)
}

/// What came back: the status, the content type, the `Allow` header, and the body as text.
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    allow: Option<String>,
    body: String,
}

impl Answer {
    /// The body as JSON; fails the test, showing the body, when it is not.
    fn json(&self) -> Value {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "{} answered {:?}",
            self.status,
            self.body
        );
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} answered {:?}: {e}", self.status, self.body))
    }

    /// The status and the error's code, checking that the error is the documented JSON.
    fn error(&self) -> (StatusCode, String) {
        let body = self.json();
        assert!(
            body["message"].is_string(),
            "{} answered {body}, not an error",
            self.status
        );
        (
            self.status,
            body["code"].as_str().expect("a code").to_owned(),
        )
    }
}

/// One request: `authorization` is the whole header (`None` sends none), `body` is sent as it is.
async fn send(
    app: &Router,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    if let Some(value) = content_type {
        request = request.header(header::CONTENT_TYPE, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let text = |name| {
        let value = response.headers().get(name);
        value.map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned())
    };
    let (content_type, allow) = (text(header::CONTENT_TYPE), text(header::ALLOW));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        allow,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A well-formed call with a key and, when there is one, a JSON body.
async fn call(app: &Router, method: &str, path: &str, key: &str, body: Option<Value>) -> Answer {
    let bearer = format!("Bearer {key}");
    match body {
        Some(body) => {
            let json = Some("application/json");
            send(app, method, path, Some(&bearer), json, body.to_string()).await
        }
        None => send(app, method, path, Some(&bearer), None, Body::empty()).await,
    }
}

fn vnc() -> Value {
    json!({"kind": "vnc", "host": "127.0.0.1", "port": 5901})
}

/// Creates a session for acme, asking for `lifetime` when given; fails the test unless it is created.
async fn acme_session(app: &Router, lifetime: Option<&str>) -> Value {
    let mut body = json!({"target": vnc()});
    if let Some(lifetime) = lifetime {
        body["lifetime"] = json!(lifetime);
    }
    let answer = call(app, "POST", "/api/v1/sessions", ACME, Some(body)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.json()
}

fn expires_at(session: &Value) -> SystemTime {
    humantime::parse_rfc3339(session["expires_at"].as_str().expect("an expiry")).unwrap()
}

fn shares_of(session: &Value) -> String {
    format!(
        "/api/v1/sessions/{}/shares",
        session["id"].as_str().unwrap()
    )
}

#[tokio::test]
async fn a_share_asking_for_an_absurd_lifetime_is_answered_and_capped() {
    let (app, _) = control_plane().await;
    let session = acme_session(&app, Some("10m")).await;

    // Three hundred billion years is past anything a clock can hold: the share still gets its answer,
    // and lives no longer than the session it joins.
    let absurd = json!({"lifetime": "300000000000y"});
    let answer = call(&app, "POST", &shares_of(&session), ACME, Some(absurd)).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert!(expires_at(&answer.json()) <= expires_at(&session));

    // The same request for a session is capped at the tenant's hour.
    let before = SystemTime::now();
    let long = acme_session(&app, Some("300000000000y")).await;
    assert!(expires_at(&long) <= before + HOUR + Duration::from_secs(1));
}

#[tokio::test]
async fn a_tenant_whose_sessions_would_outlive_every_clock_is_refused() {
    let (app, _) = control_plane().await;
    let path = "/api/v1/tenants/initech";
    let tenant = |max_lifetime: &str| {
        json!({"key": "initech-key-0123456789",
               "policy": {"hosts": ["127.0.0.1"], "ports": ["1-65535"], "kinds": ["vnc"]},
               "limits": {"max_lifetime": max_lifetime}})
    };

    // An admin's typo would otherwise make every session of the tenant overflow the clock.
    let answer = call(&app, "PUT", path, ADMIN, Some(tenant("300000000000y"))).await;
    assert_eq!(
        answer.error(),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let answer = call(&app, "PUT", path, ADMIN, Some(tenant("0s"))).await;
    assert_eq!(
        answer.error(),
        (StatusCode::BAD_REQUEST, "bad_request".into()),
        "a tenant whose sessions are born dead"
    );

    // A sane limit is taken, and its sessions get their answer.
    let answer = call(&app, "PUT", path, ADMIN, Some(tenant("30d"))).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let body = json!({"target": vnc()});
    let answer = call(
        &app,
        "POST",
        "/api/v1/sessions",
        "initech-key-0123456789",
        Some(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

#[tokio::test]
async fn a_lifetime_too_short_to_connect_with_is_refused() {
    let (app, _) = control_plane().await;
    let session = acme_session(&app, None).await;
    for lifetime in ["0s", "0ms", "500ms"] {
        let body = json!({"target": vnc(), "lifetime": lifetime});
        let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(body)).await;
        assert_eq!(
            answer.error(),
            (StatusCode::BAD_REQUEST, "bad_request".into()),
            "a session of {lifetime}"
        );
        let body = json!({"lifetime": lifetime});
        let answer = call(&app, "POST", &shares_of(&session), ACME, Some(body)).await;
        assert_eq!(
            answer.error(),
            (StatusCode::BAD_REQUEST, "bad_request".into()),
            "a share of {lifetime}"
        );
    }
    let body = json!({"target": vnc(), "lifetime": "soon"});
    let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(body)).await;
    assert_eq!(
        answer.error(),
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    // The shortest lifetime there is still makes a session.
    acme_session(&app, Some("1s")).await;
}

#[tokio::test]
async fn lifetimes_over_the_tenants_maximum_are_capped_for_sessions_and_shares() {
    let (app, registry) = control_plane().await;
    let before = SystemTime::now();
    let session = acme_session(&app, Some("100h")).await;
    assert!(expires_at(&session) <= before + HOUR + Duration::from_secs(1));
    assert!(expires_at(&session) >= before + HOUR - Duration::from_secs(1));
    assert_eq!(session["lifetime_capped"], true, "the answer says so");
    let asked = acme_session(&app, Some("30m")).await;
    assert!(asked.get("lifetime_capped").is_none(), "{asked}");

    // A session that never expires (as a session file writes them) still gives shares of at most the
    // tenant's maximum, asked for or not.
    let forever = Session::new(
        SessionId::new("forever"),
        TenantId::new("acme"),
        Target::parse("127.0.0.1:5901").unwrap(),
    );
    registry
        .put_session(&SessionToken::new("forever-token"), &forever)
        .await
        .unwrap();
    let path = "/api/v1/sessions/forever/shares";
    for body in [json!({}), json!({"lifetime": "100h"})] {
        let answer = call(&app, "POST", path, ACME, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        let expires = expires_at(&answer.json());
        assert!(
            expires <= SystemTime::now() + HOUR + Duration::from_secs(1),
            "{body}"
        );
    }
    // A shorter one is taken as asked.
    let answer = call(&app, "POST", path, ACME, Some(json!({"lifetime": "5m"}))).await;
    assert!(expires_at(&answer.json()) <= SystemTime::now() + Duration::from_secs(301));
    assert!(answer.json().get("lifetime_capped").is_none());
    let answer = call(&app, "POST", path, ACME, Some(json!({"lifetime": "100h"}))).await;
    assert_eq!(answer.json()["lifetime_capped"], true);
}

/// Every endpoint that takes a body, with a key allowed to call it and a good body.
fn endpoints_with_bodies(session: &Value) -> Vec<(&'static str, String, &'static str, Value)> {
    vec![
        (
            "POST",
            "/api/v1/sessions".into(),
            ACME,
            json!({"target": vnc()}),
        ),
        ("POST", shares_of(session), ACME, json!({})),
        (
            "PUT",
            "/api/v1/tenants/initech".into(),
            ADMIN,
            json!({"key": "initech-key-0123456789"}),
        ),
    ]
}

#[tokio::test]
async fn a_body_the_api_cannot_take_is_refused_in_json_with_a_stable_code() {
    let (app, _) = control_plane().await;
    let session = acme_session(&app, None).await;
    let oversize = format!(r#"{{"key": "{}"}}"#, "k".repeat(MAX_BODY));
    for (method, path, key, good) in endpoints_with_bodies(&session) {
        let bearer = format!("Bearer {key}");
        let auth = Some(bearer.as_str());
        let mut unknown = good.clone();
        unknown["colour"] = json!("blue");
        let cases: [(Option<&str>, String, StatusCode, &str); 7] = [
            (
                Some("application/json"),
                "{not json".into(),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("application/json"),
                unknown.to_string(),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("application/json"),
                "[]".into(),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("application/json"),
                String::new(),
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("text/plain"),
                good.to_string(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            (
                None,
                good.to_string(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            (
                Some("application/json"),
                oversize.clone(),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
        ];
        for (content_type, body, status, code) in cases {
            let answer = send(&app, method, &path, auth, content_type, body.clone()).await;
            let shown = &body[..body.len().min(40)];
            assert_eq!(
                answer.error(),
                (status, code.into()),
                "{method} {path} with {content_type:?} {shown:?}"
            );
        }
        // The same good body, with a content type that carries a charset, is taken.
        let json_utf8 = Some("application/json; charset=utf-8");
        let answer = send(&app, method, &path, auth, json_utf8, good.to_string()).await;
        assert!(
            answer.status.is_success(),
            "{method} {path}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn the_caller_is_known_before_its_body_is_read() {
    let (app, _) = control_plane().await;
    let session = acme_session(&app, None).await;
    for (method, path, _, good) in endpoints_with_bodies(&session) {
        for authorization in [None, Some("Bearer wrong-key-0123456789"), Some("Bearer ")] {
            for (content_type, body) in [
                (Some("application/json"), "{not json".to_owned()),
                (Some("text/plain"), good.to_string()),
                (Some("application/json"), "x".repeat(MAX_BODY + 1)),
            ] {
                let answer = send(&app, method, &path, authorization, content_type, body).await;
                assert_eq!(
                    answer.error(),
                    (StatusCode::UNAUTHORIZED, "unauthorized".into()),
                    "{method} {path} as {authorization:?} with {content_type:?}"
                );
            }
        }
    }
    // A tenant may not manage tenants, whatever it sends.
    let answer = send(
        &app,
        "PUT",
        "/api/v1/tenants/initech",
        Some(&format!("Bearer {ACME}")),
        Some("application/json"),
        "{not json",
    )
    .await;
    assert_eq!(answer.error(), (StatusCode::FORBIDDEN, "forbidden".into()));
}

#[tokio::test]
async fn the_bearer_scheme_is_read_in_any_case() {
    let (app, _) = control_plane().await;
    for authorization in [
        format!("Bearer {ACME}"),
        format!("bearer {ACME}"),
        format!("BEARER {ACME}"),
        format!("bEaReR {ACME}"),
        format!("Bearer   {ACME}"),
    ] {
        let answer = send(
            &app,
            "GET",
            "/api/v1/sessions",
            Some(&authorization),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{authorization:?}");
        assert_eq!(answer.json(), json!([]));
    }
    for authorization in [
        format!("Basic {ACME}"),
        format!("Bearer{ACME}"),
        format!("Bearer {ACME}x"),
        ACME.to_owned(),
        "Bearer".to_owned(),
    ] {
        let answer = send(
            &app,
            "GET",
            "/api/v1/sessions",
            Some(&authorization),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(
            answer.error(),
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{authorization:?}"
        );
    }
}

#[tokio::test]
async fn a_path_the_api_cannot_read_is_refused_in_json() {
    let (app, _) = control_plane().await;
    for (method, path, key) in [
        ("GET", "/api/v1/sessions/%FF", ACME),
        ("DELETE", "/api/v1/sessions/%FF", ACME),
        ("DELETE", "/api/v1/tenants/%FF", ADMIN),
    ] {
        let answer = call(&app, method, path, key, None).await;
        assert_eq!(
            answer.error(),
            (StatusCode::BAD_REQUEST, "bad_request".into()),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_method_a_path_does_not_take_is_refused_in_json_with_those_it_does() {
    let (app, _) = control_plane().await;
    for (method, path, allowed) in [
        ("PATCH", "/api/v1/sessions", "GET,HEAD,POST"),
        ("PUT", "/api/v1/sessions/some-id", "DELETE,GET,HEAD"),
        ("GET", "/api/v1/sessions/some-id/shares", "POST"),
        ("DELETE", "/api/v1/tenants", "GET,HEAD"),
        ("GET", "/api/v1/tenants/acme", "DELETE,PUT"),
        ("TRACE", "/api/v1/nodes", "GET,HEAD"),
        ("POST", "/api/v1/openapi.json", "GET,HEAD"),
    ] {
        // With a key and without: the method is wrong whoever asks, as the public document says.
        for key in [Some(format!("Bearer {ADMIN}")), None] {
            let answer = send(&app, method, path, key.as_deref(), None, Body::empty()).await;
            assert_eq!(
                answer.error(),
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into()),
                "{method} {path}"
            );
            let mut allow: Vec<&str> = answer.allow.as_deref().unwrap_or("").split(',').collect();
            allow.sort_unstable();
            assert_eq!(allow.join(","), allowed, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn a_path_under_the_api_that_names_nothing_is_refused_in_json() {
    let (app, _) = control_plane().await;
    for (method, path) in [
        ("GET", "/api/v1/session"),
        ("GET", "/api/v1/sessions/"),
        ("GET", "/api/v1/sessions/some-id/"),
        ("DELETE", "/api/v1/sessions/some-id/shares/other"),
        ("PUT", "/api/v1/tenants/"),
        ("GET", "/api/v1/"),
        ("GET", "/api/v1"),
    ] {
        for key in [Some(format!("Bearer {ADMIN}")), None] {
            let answer = send(&app, method, path, key.as_deref(), None, Body::empty()).await;
            assert_eq!(
                answer.error(),
                (StatusCode::NOT_FOUND, "not_found".into()),
                "{method} {path}"
            );
        }
    }
}

/// A registry holding the tenant `acme` for guacd desktops on 10.0.0.0/8, whose sessions the operator
/// records.
async fn recorded_tenant() -> (Router, Arc<MemoryRegistry>) {
    let registry = Arc::new(MemoryRegistry::new());
    let recorded = Tenant {
        id: TenantId::new("acme"),
        key_sha256: TokenDigest::of(ACME),
        policy: Policy {
            hosts: vec!["10.0.0.0/8".into()],
            ports: vec!["22".into(), "3389".into()],
            kinds: vec!["guacd-rdp".into()],
        },
        limits: Limits::default(),
        guacd_params: [("recording-path".into(), "/recordings/acme".into())].into(),
    };
    registry.put_tenant(&recorded).await.unwrap();
    let config = ApiConfig {
        guacd_pools: [(
            "default".into(),
            vec![HostPort::parse("127.0.0.1:4822").unwrap()],
        )]
        .into(),
        ..ApiConfig::default()
    };
    (api::router(Api::new(registry.clone(), config)), registry)
}

fn rdp(params: Value) -> Value {
    json!({"target": {"kind": "guacd", "protocol": "rdp", "guacd": "default", "params": params}})
}

#[tokio::test]
async fn guacd_parameters_past_the_policy_are_refused() {
    let (app, _) = recorded_tenant().await;
    let desktop = json!({"hostname": "10.1.2.3", "port": "3389", "password": "x"});
    let sneaky = [
        ("sftp-hostname", "127.0.0.1"),
        ("gateway-hostname", "169.254.169.254"),
        ("recording-path", "/etc"),
        ("create-recording-path", "true"),
        ("drive-path", "/"),
        ("wol-broadcast-addr", "10.255.255.255"),
        ("typescript-path", "/tmp"),
        ("not-a-parameter", "x"),
    ];
    for (name, value) in sneaky {
        let mut params = desktop.clone();
        params[name] = json!(value);
        let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(rdp(params))).await;
        assert_eq!(
            answer.error(),
            (StatusCode::FORBIDDEN, "policy_violation".into()),
            "{name}={value}: {}",
            answer.body
        );
    }
    let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(rdp(desktop))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

#[tokio::test]
async fn the_operators_guacd_parameters_are_laid_over_the_request() {
    let (app, registry) = recorded_tenant().await;
    let desktop = json!({"hostname": "10.1.2.3", "port": "3389"});
    let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(rdp(desktop))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let token = SessionToken::new(answer.json()["token"].as_str().unwrap());
    let stored = registry.session(&token).await.unwrap().unwrap();
    let Target::Guacd { params, .. } = stored.target else {
        panic!("a guacd session");
    };
    assert_eq!(params["recording-path"], "/recordings/acme");
    assert_eq!(params["hostname"], "10.1.2.3");
}

#[tokio::test]
async fn a_session_too_large_to_store_is_refused_and_nothing_is_stored() {
    let (app, registry) = recorded_tenant().await;
    let desktop = json!({"hostname": "10.1.2.3", "port": "3389"});
    let refused = |answer: &Answer| {
        assert_eq!(
            answer.error(),
            (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into()),
            "{}",
            answer.body
        );
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .contains("session")
        );
    };

    // A body within the API's limit whose record is not: stored in its URL form, every `<` of the
    // password is three bytes.
    let mut params = desktop.clone();
    params["password"] = json!("<".repeat(40 * 1024));
    let body = rdp(params);
    assert!(body.to_string().len() < MAX_BODY);
    let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(body)).await;
    refused(&answer);

    // What the operator lays over every session counts too: a tenant configured with a megabyte and a
    // half of parameters gets no session, however small its request.
    let mut bloated = registry
        .tenant(&TenantId::new("acme"))
        .await
        .unwrap()
        .unwrap();
    let huge = "x".repeat(1_900_000);
    bloated.guacd_params.insert("recording-name".into(), huge);
    registry.put_tenant(&bloated).await.unwrap();
    let answer = call(
        &app,
        "POST",
        "/api/v1/sessions",
        ACME,
        Some(rdp(desktop.clone())),
    )
    .await;
    refused(&answer);
    let stored = registry.sessions_of(&TenantId::new("acme")).await.unwrap();
    assert!(stored.is_empty(), "nothing was stored");

    // A real session, with an SSH-sized private key among its parameters, is far from the limit.
    bloated.guacd_params.remove("recording-name");
    registry.put_tenant(&bloated).await.unwrap();
    let mut params = desktop;
    params["password"] = json!("p4ss/w+rd=".repeat(400));
    let answer = call(&app, "POST", "/api/v1/sessions", ACME, Some(rdp(params))).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}
