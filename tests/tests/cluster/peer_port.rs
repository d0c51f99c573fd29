//! The peer port is no way into a tunnel without the cluster secret, and no way into another node's tunnel
//! with it.

use deskbroker_tests::clients::{HttpTunnel, connect_data};
use deskbroker_tests::redis::Redis;

use crate::{Cluster, SECRET};

#[tokio::test]
async fn peer_requests_need_the_secret_and_reach_only_local_tunnels() {
    let redis = Redis::start().await.unwrap();
    let cluster = Cluster::start(&redis.url(), 2).await;
    let on_first = HttpTunnel::connect(&cluster.http(0), &connect_data("g"))
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let write = |peer: String, secret: Option<&'static str>| {
        let mut request = http
            .post(format!("{peer}/tunnel?write:{}", on_first.uuid))
            .header("guacamole-tunnel-token", &on_first.token)
            .body("3.nop;");
        if let Some(secret) = secret {
            request = request.header("deskbroker-cluster-secret", secret);
        }
        async move {
            let response = request.send().await.unwrap();
            let code = response
                .headers()
                .get("guacamole-status-code")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), code)
        }
    };
    assert_eq!(
        write(cluster.peer(0), None).await,
        (403, Some("769".into())),
        "no secret"
    );
    assert_eq!(
        write(cluster.peer(0), Some("guess")).await,
        (403, Some("769".into())),
        "wrong secret"
    );
    assert_eq!(
        write(cluster.peer(1), Some(SECRET)).await,
        (404, Some("516".into())),
        "another node's tunnel"
    );
    assert_eq!(
        write(cluster.peer(0), Some(SECRET)).await,
        (200, None),
        "the owner serves its own tunnel"
    );
    let connect = http
        .post(format!("{}/tunnel?connect", cluster.peer(0)))
        .header("deskbroker-cluster-secret", SECRET)
        .body(connect_data("g"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        connect.status().as_u16(),
        400,
        "tunnels are not opened through the peer port"
    );
}
