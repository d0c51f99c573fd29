//! The control channel on a Redis Cluster: a publication reaches every server of it, so a node subscribes
//! on whichever answers, and is not deaf while the first one its URL names is away.

use futures_util::StreamExt;

use deskbroker_broker::{RedisRegistry, Registry};
use deskbroker_shared::cluster::ControlEvent;
use deskbroker_shared::ids::SessionId;
use deskbroker_tests::clients::STEP;
use deskbroker_tests::process::free_port;
use deskbroker_tests::redis::RedisCluster;

#[tokio::test]
async fn the_control_channel_is_heard_with_the_first_cluster_server_away() {
    let cluster = RedisCluster::start().await.unwrap();
    let away = format!("redis+cluster://127.0.0.1:{},", free_port().unwrap());
    let url = cluster.url().replacen("redis+cluster://", &away, 1);
    let registry = RedisRegistry::connect(&url).await.unwrap();
    let subscribed = tokio::time::timeout(STEP, registry.subscribe()).await;
    let mut events = subscribed
        .unwrap()
        .expect("subscribed on a server that answers");
    let event = ControlEvent::SessionClosed {
        session: SessionId::new("s"),
        until_ms: None,
    };
    registry.publish(&event).await.unwrap();
    let heard = tokio::time::timeout(STEP, events.next()).await.unwrap();
    assert_eq!(heard, Some(event));
}
