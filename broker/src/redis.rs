//! The registry on Redis or Redis Cluster, shared by every node of a cluster.
//!
//! One multiplexed connection carries every command; it reconnects in the background, and each command
//! has a short deadline so that a lookup fails fast while Redis is away (the data path never waits on
//! Redis). Key names come from `deskbroker_shared::keys`. Costs per tunnel are fixed: three commands to
//! open, three to close (two round trips each), none while it lives; leases cost one command per node per renewal.

use std::time::{Duration, SystemTime};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisError, RedisFuture, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use deskbroker_shared::cluster::{NodeId, NodeRecord, TunnelRecord};
use deskbroker_shared::ids::{SessionToken, TokenDigest};
use deskbroker_shared::keys;
use deskbroker_shared::session::Session;

use crate::{BoxFuture, Registry, RegistryError, Renewal, Result, session_ttl};

/// Deadline for one command: long enough for a loaded Redis, short enough that a browser waiting on a
/// lookup gets its 503 before its own timeouts fire.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Deadline for (re)connecting to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest pause between reconnection attempts.
pub const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// A single Redis or a Redis Cluster, behind one connection type.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct RedisRegistry {
    connection: Connection,
}

impl RedisRegistry {
    /// Connects to `redis://…` (one server) or `redis+cluster://host:port[,host:port…]` (a cluster, from
    /// any of its nodes). Fails if Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self> {
        let connection = match url.strip_prefix("redis+cluster://") {
            Some(nodes) => {
                let nodes: Vec<String> = nodes
                    .split(',')
                    .map(|node| format!("redis://{node}"))
                    .collect();
                let client = ClusterClient::builder(nodes)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()
                    .map_err(unavailable)?;
                Connection::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
            None => {
                let client = redis::Client::open(url).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_max_delay(MAX_RECONNECT_DELAY)
                    .set_number_of_retries(1);
                Connection::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?,
                )
            }
        };
        Ok(Self { connection })
    }

    fn conn(&self) -> Connection {
        self.connection.clone()
    }

    async fn get_json<T: DeserializeOwned>(&self, key: String) -> Result<Option<T>> {
        let text: Option<String> = self.conn().get(key).await.map_err(unavailable)?;
        text.map(|text| parse(&text)).transpose()
    }
}

fn unavailable(error: RedisError) -> RegistryError {
    RegistryError::Unavailable(error.to_string())
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|error| RegistryError::Corrupt(error.to_string()))
}

fn json<T: Serialize>(value: &T) -> String {
    // Records are plain structs of strings and numbers: serialising them cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

impl Registry for RedisRegistry {
    fn session<'a>(&'a self, token: &'a SessionToken) -> BoxFuture<'a, Result<Option<Session>>> {
        Box::pin(async move {
            let session: Option<Session> = self.get_json(keys::session(&token.digest())).await?;
            Ok(session.filter(|session| !session.is_expired(SystemTime::now())))
        })
    }

    fn put_session<'a>(
        &'a self,
        token: &'a SessionToken,
        session: &'a Session,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = keys::session(&token.digest());
            let mut conn = self.conn();
            match session_ttl(session, SystemTime::now()) {
                Some(ttl) if ttl.is_zero() => conn.del::<_, ()>(key).await,
                Some(ttl) => {
                    conn.pset_ex::<_, _, ()>(key, json(session), ttl.as_millis() as u64)
                        .await
                }
                None => conn.set::<_, _, ()>(key, json(session)).await,
            }
            .map_err(unavailable)
        })
    }

    fn renew<'a>(&'a self, node: &'a NodeRecord) -> BoxFuture<'a, Result<Renewal>> {
        Box::pin(async move {
            let added: i64 = self
                .conn()
                .hset(keys::NODES, node.id.as_str(), json(node))
                .await
                .map_err(unavailable)?;
            Ok(if added == 1 {
                Renewal::Fresh
            } else {
                Renewal::Renewed
            })
        })
    }

    fn nodes(&self) -> BoxFuture<'_, Result<Vec<NodeRecord>>> {
        Box::pin(async move {
            let all: Vec<(String, String)> = self
                .conn()
                .hgetall(keys::NODES)
                .await
                .map_err(unavailable)?;
            // One node's unreadable record must not hide the others.
            Ok(all
                .iter()
                .filter_map(|(_, record)| parse(record).ok())
                .collect())
        })
    }

    fn remove_node<'a>(&'a self, id: &'a NodeId) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for tunnel in self.tunnels_of(id).await? {
                self.remove_tunnel(&tunnel).await?;
            }
            let mut conn = self.conn();
            conn.del::<_, ()>(keys::node_tunnels(id))
                .await
                .map_err(unavailable)?;
            conn.hdel::<_, _, ()>(keys::NODES, id.as_str())
                .await
                .map_err(unavailable)
        })
    }

    fn add_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let record = json(tunnel);
            let (mut a, mut b, mut c) = (self.conn(), self.conn(), self.conn());
            // The owner's set first: whatever is written after it is found again by the node's cleanup.
            a.sadd::<_, _, ()>(keys::node_tunnels(&tunnel.owner), tunnel.id.to_string())
                .await
                .map_err(unavailable)?;
            // The two records live in different slots (on different masters of a cluster): send both
            // at once on the multiplexed connection.
            let by_id = b.set::<_, _, ()>(keys::tunnel(&tunnel.id), &record);
            let by_token = async {
                match &tunnel.http_token {
                    Some(token) => c.set::<_, _, ()>(keys::http_tunnel(token), &record).await,
                    None => Ok(()),
                }
            };
            tokio::try_join!(by_id, by_token)
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn remove_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (mut a, mut b, mut c) = (self.conn(), self.conn(), self.conn());
            let by_token = async {
                match &tunnel.http_token {
                    Some(token) => a.del::<_, ()>(keys::http_tunnel(token)).await,
                    None => Ok(()),
                }
            };
            let by_id = b.del::<_, ()>(keys::tunnel(&tunnel.id));
            tokio::try_join!(by_token, by_id).map_err(unavailable)?;
            // The owner's set last, so that a failure above leaves the tunnel where cleanup finds it.
            c.srem::<_, _, ()>(keys::node_tunnels(&tunnel.owner), tunnel.id.to_string())
                .await
                .map_err(unavailable)
        })
    }

    fn http_tunnel<'a>(
        &'a self,
        token: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<Option<TunnelRecord>>> {
        Box::pin(self.get_json(keys::http_tunnel(token)))
    }

    fn tunnels_of<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, Result<Vec<TunnelRecord>>> {
        Box::pin(async move {
            let ids: Vec<String> = self
                .conn()
                .smembers(keys::node_tunnels(node))
                .await
                .map_err(unavailable)?;
            let mut tunnels = Vec::with_capacity(ids.len());
            for id in ids {
                let Some(id) = deskbroker_shared::ids::TunnelId::parse(&id) else {
                    continue;
                };
                if let Some(tunnel) = self.get_json::<TunnelRecord>(keys::tunnel(&id)).await? {
                    tunnels.push(tunnel);
                } else {
                    // Written into the set but not (or no longer) recorded: drop the stray member.
                    let _: std::result::Result<(), _> = self
                        .conn()
                        .srem(keys::node_tunnels(node), id.to_string())
                        .await;
                }
            }
            Ok(tunnels)
        })
    }
}
