//! Callers who should get nothing: another tenant's key, targets outside the policy, forged and revoked
//! tokens, the keys and tokens of a removed tenant; and requests the API refuses, answered over the wire
//! in JSON like every other error.

use serde_json::json;

use deskbroker_tests::Edge;
use deskbroker_tests::clients::{GuacWs, close_frame, connect_data, ws_connect};

use crate::{ACME, ADMIN, GLOBEX, Platform, SECRET};

#[tokio::test]
async fn tenants_see_only_their_own_and_policy_holds() {
    let platform = Platform::start().await;
    let session = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let path = format!("/api/v1/sessions/{}", session["id"].as_str().unwrap());

    for method in ["GET", "DELETE"] {
        let (status, body) = platform.api(method, &path, GLOBEX, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("not_found")),
            "{method}: nothing leaks"
        );
    }
    let (_, listed) = platform.api("GET", "/api/v1/sessions", GLOBEX, None).await;
    assert_eq!(listed, json!([]));
    assert_eq!(
        platform
            .api("GET", "/api/v1/sessions", "wrong-key", None)
            .await
            .0,
        401
    );
    assert_eq!(
        platform.api("GET", "/api/v1/sessions", "", None).await.0,
        401
    );
    assert_eq!(
        platform.api("GET", "/api/v1/nodes", ACME, None).await.0,
        403,
        "nodes are the admin's"
    );

    for target in [
        json!({"kind": "vnc", "host": "10.0.0.1", "port": 5900}),
        json!({"kind": "vnc", "host": "evil-acme.test", "port": 5900}),
        json!({"kind": "guacd", "protocol": "rdp", "guacd": "default", "params": {"hostname": "127.0.0.1", "port": "3389"}}),
        json!({"kind": "guacd", "protocol": "vnc", "guacd": "10.9.9.9:4822", "params": {"hostname": "127.0.0.1", "port": "5900"}}),
    ] {
        let (status, body) = platform
            .api(
                "POST",
                "/api/v1/sessions",
                ACME,
                Some(json!({"target": target})),
            )
            .await;
        assert!(matches!(status, 400 | 403), "{target} -> {status} {body}");
        assert!(body["code"].is_string() && body["message"].is_string());
    }
    let (status, body) = platform
        .api(
            "POST",
            "/api/v1/sessions",
            ACME,
            Some(json!({"target": platform.vnc_target(), "tenant": "globex"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        platform
            .echo
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // The admin adds a tenant at run time; its key works at once, and only the admin may do this.
    let spec = json!({"key": "initech-key-0123456789",
                      "policy": {"hosts": ["127.0.0.1"], "ports": ["1-65535"], "kinds": ["vnc"]}});
    let by_tenant = platform
        .api("PUT", "/api/v1/tenants/initech", ACME, Some(spec.clone()))
        .await;
    assert_eq!(by_tenant.0, 403);
    let (status, tenant) = platform
        .api("PUT", "/api/v1/tenants/initech", ADMIN, Some(spec))
        .await;
    assert_eq!(status, 200);
    assert!(
        !tenant.to_string().contains("initech-key"),
        "keys are never shown"
    );
    platform
        .session(
            "initech-key-0123456789",
            json!({"target": platform.vnc_target()}),
        )
        .await;
    let (_, tenants) = platform.api("GET", "/api/v1/tenants", ADMIN, None).await;
    assert_eq!(tenants.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn forged_revoked_and_orphaned_tokens_are_refused() {
    let platform = Platform::start().await;
    let forged = format!(
        "{}/websockify?token=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        platform.ws(0)
    );
    let (mut socket, _) = ws_connect(&forged, &[]).await.unwrap();
    assert_eq!(close_frame(&mut socket).await.unwrap().0, 4403);

    let session = platform
        .session(ACME, json!({"target": platform.guacd_target()}))
        .await;
    let token = session["token"].as_str().unwrap();
    let mut tunnel =
        deskbroker_tests::clients::GuacWs::connect(&platform.ws(2), &connect_data(token))
            .await
            .unwrap();

    // The tenant is removed: its key stops working, its tunnels close, its tokens are refused.
    assert_eq!(
        platform
            .api("DELETE", "/api/v1/tenants/acme", ADMIN, None)
            .await
            .0,
        204
    );
    assert_eq!(
        close_frame(&mut tunnel.socket).await.unwrap(),
        (1002, "523".into())
    );
    assert_eq!(
        platform.api("GET", "/api/v1/sessions", ACME, None).await.0,
        401
    );
    let url = format!(
        "{}/websocket-tunnel?{}",
        platform.ws(1),
        connect_data(token)
    );
    let (mut socket, _) = ws_connect(&url, &["guacamole"]).await.unwrap();
    assert_eq!(
        close_frame(&mut socket).await.unwrap(),
        (1008, "769".into())
    );
}

#[tokio::test]
async fn a_desktop_name_that_resolves_to_a_denied_address_opens_nothing() {
    let platform = Platform::start().await;
    // A node with the default deny list: loopback, link-local and its own addresses.
    let strict = Edge::start_node("edge-strict", &platform.redis.url(), SECRET, &[], &[])
        .await
        .unwrap();
    // A tenant whose policy names `localhost`: a name, which resolves to loopback.
    let tenant = json!({
        "key": "locals-key-0123456789",
        "policy": {"hosts": ["localhost", "127.0.0.1"], "ports": ["1-65535"], "kinds": ["vnc", "guacd-vnc"]},
    });
    let (status, _) = platform
        .api("PUT", "/api/v1/tenants/locals", ADMIN, Some(tenant))
        .await;
    assert_eq!(status, 200);
    let port = platform.echo.addr.port();
    for host in ["localhost", "127.0.0.1"] {
        let target = json!({"kind": "vnc", "host": host, "port": port});
        let vnc = platform
            .session("locals-key-0123456789", json!({"target": target}))
            .await;
        let path = format!("/websockify?token={}", vnc["token"].as_str().unwrap());
        let (mut relay, _) = ws_connect(&strict.ws_url(&path), &[]).await.unwrap();
        assert_eq!(
            close_frame(&mut relay).await.unwrap(),
            (4403, "target not allowed".into()),
            "{host}"
        );
        let guacd = json!({"kind": "guacd", "protocol": "vnc", "guacd": "default",
                           "params": {"hostname": host, "port": port.to_string()}});
        let tunnel = platform
            .session("locals-key-0123456789", json!({"target": guacd}))
            .await;
        let data = connect_data(tunnel["token"].as_str().unwrap());
        let refused = GuacWs::connect(&strict.ws_url(""), &data).await.err();
        assert!(
            refused.is_some_and(|e| e.to_string().contains("771")),
            "{host}: the Guacamole tunnel is refused with 771"
        );
    }
    assert_eq!(
        platform
            .echo
            .accepted
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no socket was opened to the desktop"
    );
}

#[tokio::test]
async fn an_absurd_lifetime_is_answered_and_the_broker_keeps_serving() {
    let platform = Platform::start().await;
    let session = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    let shares = format!(
        "/api/v1/sessions/{}/shares",
        session["id"].as_str().unwrap()
    );

    // A lifetime past what the clock holds: the tenant gets an answer, a share no longer than its session.
    let absurd = Some(json!({"lifetime": "300000000000y"}));
    let (status, share) = platform.api("POST", &shares, ACME, absurd).await;
    assert_eq!(status, 201, "{share}");
    assert!(share["expires_at"].as_str() <= session["expires_at"].as_str());
    let (status, body) = platform
        .api("POST", &shares, ACME, Some(json!({"lifetime": "0s"})))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("bad_request")),
        "a share born dead is refused"
    );

    // The broker is still there, answering, and never panicked.
    let (status, listed) = platform.api("GET", "/api/v1/sessions", ACME, None).await;
    assert_eq!(status, 200);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let logs = platform.broker.process.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn refusals_over_the_wire_are_json_and_the_key_is_checked_first() {
    let platform = Platform::start().await;
    let url = platform.broker.url("/api/v1/sessions");
    let post = |authorization: String, content_type: &'static str, body: &'static str| {
        let request = platform
            .http
            .post(&url)
            .header("authorization", authorization)
            .header("content-type", content_type)
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            let body: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{status} answered {text:?}: {e}"));
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    assert_eq!(
        post(format!("bearer {ACME}"), "application/json", "{not json").await,
        (400, "bad_request".into()),
        "a lower-case scheme is the same scheme"
    );
    assert_eq!(
        post(format!("BEARER {ACME}"), "text/plain", "{}").await,
        (415, "unsupported_media_type".into())
    );
    assert_eq!(
        post("Bearer wrong-key".into(), "application/json", "{not json").await,
        (401, "unauthorized".into()),
        "an unknown caller learns nothing about its body"
    );
}
