//! Idle timeouts as the backend sees them: a tenant without one gives its sessions none; a tenant with a
//! default and a maximum gives the default, caps a longer ask and says so, and refuses garbage; a share
//! keeps its session's idle timeout and may only shorten it. The edge enforcing them is its own story.

use serde_json::{Value, json};

use crate::{ACME, ADMIN, Platform};

/// A tenant made through the API whose sessions idle out after 15m by default, after 1h at most.
async fn idling_tenant(platform: &Platform) -> String {
    let key = "initech-key-0123456789".to_owned();
    let spec = json!({
        "key": key,
        "policy": {"hosts": ["127.0.0.1"], "ports": ["1-65535"], "kinds": ["vnc"]},
        "limits": {"max_tunnels": 5, "max_lifetime": "1h",
                   "idle_timeout": "15m", "max_idle_timeout": "1h"}
    });
    let (status, tenant) = platform
        .api("PUT", "/api/v1/tenants/initech", ADMIN, Some(spec))
        .await;
    assert_eq!(status, 200, "{tenant}");
    assert_eq!(tenant["limits"]["idle_timeout"], "15m", "{tenant}");
    assert_eq!(tenant["limits"]["max_idle_timeout"], "1h", "{tenant}");
    key
}

/// A relay session asking for `idle_timeout` (or none); returns the status and the answer.
async fn ask(platform: &Platform, key: &str, idle_timeout: Option<&str>) -> (u16, Value) {
    let mut body = json!({"target": platform.vnc_target()});
    if let Some(idle_timeout) = idle_timeout {
        body["idle_timeout"] = idle_timeout.into();
    }
    if key == ADMIN {
        body["tenant"] = "initech".into();
    }
    platform
        .api("POST", "/api/v1/sessions", key, Some(body))
        .await
}

#[tokio::test]
async fn a_session_gets_its_tenants_idle_timeout_capped_at_the_max() {
    let platform = Platform::start().await;

    // acme's limits say nothing of idling: its sessions never idle out, and say nothing of it.
    let plain = platform
        .session(ACME, json!({"target": platform.vnc_target()}))
        .await;
    assert!(plain.get("idle_timeout").is_none(), "{plain}");
    let id = plain["id"].as_str().unwrap();
    let (_, seen) = platform
        .api("GET", &format!("/api/v1/sessions/{id}"), ACME, None)
        .await;
    assert!(seen.get("idle_timeout").is_none(), "{seen}");

    // initech's default applies when a session asks for nothing, and shows in the live view.
    let key = idling_tenant(&platform).await;
    let (status, default) = ask(&platform, &key, None).await;
    assert_eq!(status, 201, "{default}");
    assert_eq!(default["idle_timeout"], "15m");
    assert!(default.get("idle_timeout_capped").is_none(), "{default}");
    let (_, listed) = platform.api("GET", "/api/v1/sessions", &key, None).await;
    assert_eq!(listed[0]["idle_timeout"], "15m", "{listed}");

    // An ask within the max is granted; above it, cut to it, and the answer says so.
    let (_, within) = ask(&platform, &key, Some("30m")).await;
    assert_eq!(within["idle_timeout"], "30m");
    assert!(within.get("idle_timeout_capped").is_none(), "{within}");
    let (status, long) = ask(&platform, &key, Some("8h")).await;
    assert_eq!(status, 201, "{long}");
    assert_eq!(
        (&long["idle_timeout"], &long["idle_timeout_capped"]),
        (&"1h".into(), &true.into())
    );

    // The admin naming the tenant is held to the same limits.
    let (status, admins) = ask(&platform, ADMIN, Some("8h")).await;
    assert_eq!(status, 201, "{admins}");
    assert_eq!(admins["tenant"], "initech");
    assert_eq!(admins["idle_timeout"], "1h");
    assert_eq!(admins["idle_timeout_capped"], true);

    // Garbage, and a tunnel that would die at birth, are refused in the API's error form.
    for refused in ["soon", "5s", ""] {
        let (status, error) = ask(&platform, &key, Some(refused)).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (400, Some("bad_request")),
            "{refused:?}: {error}"
        );
    }
    let (status, error) = platform
        .api(
            "PUT",
            "/api/v1/tenants/initech",
            ADMIN,
            Some(json!({"key": key, "limits": {"max_idle_timeout": "1s"}})),
        )
        .await;
    assert_eq!((status, error["code"].as_str()), (400, Some("bad_request")));
}

#[tokio::test]
async fn a_share_keeps_its_sessions_idle_timeout_and_may_only_shorten_it() {
    let platform = Platform::start().await;
    let key = idling_tenant(&platform).await;
    let (status, session) = ask(&platform, &key, Some("30m")).await;
    assert_eq!(status, 201, "{session}");
    let shares = format!(
        "/api/v1/sessions/{}/shares",
        session["id"].as_str().unwrap()
    );
    let share = async |body: Value| {
        let (status, share) = platform.api("POST", &shares, &key, Some(body)).await;
        assert_eq!(status, 201, "{share}");
        share
    };

    let inherited = share(json!({})).await;
    assert_eq!(
        inherited["idle_timeout"], "30m",
        "the session's, not the tenant's default"
    );
    let shorter = share(json!({"idle_timeout": "10m"})).await;
    assert_eq!(shorter["idle_timeout"], "10m");
    assert!(shorter.get("idle_timeout_capped").is_none(), "{shorter}");
    let longer = share(json!({"idle_timeout": "45m"})).await;
    assert_eq!(
        (&longer["idle_timeout"], &longer["idle_timeout_capped"]),
        (&"30m".into(), &true.into()),
        "never longer than the session it joins"
    );
    let (status, error) = platform
        .api(
            "POST",
            &shares,
            &key,
            Some(json!({"idle_timeout": "forever"})),
        )
        .await;
    assert_eq!((status, error["code"].as_str()), (400, Some("bad_request")));
}
