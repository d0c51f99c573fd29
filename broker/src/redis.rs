//! The registry on Redis or Redis Cluster, shared by every node of a cluster.
//!
//! One multiplexed connection carries every command; it reconnects in the background, and each command
//! has a short deadline so that a lookup fails fast while Redis is away (the data path never waits on
//! Redis). Key names come from `deskbroker_shared::keys`. Costs per tunnel are fixed: five commands to
//! open and five to close (two round trips each), none while it lives; leases cost one command per node per renewal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Cmd, Pipeline, RedisError, RedisFuture, Value};
use serde::Serialize;
use serde::de::DeserializeOwned;

use futures_util::StreamExt;

use deskbroker_shared::cluster::{ControlEvent, Incarnation, NodeRecord, SlotHolder, TunnelRecord};
use deskbroker_shared::ids::{NodeId, SessionId, SessionToken, TenantId, TokenDigest, TunnelId};
use deskbroker_shared::keys;
use deskbroker_shared::session::Session;
use deskbroker_shared::time::unix_ms;

use crate::defaults::{
    LAPSED_CLEANUP_TIMEOUT, LAPSED_PER_RENEWAL, REDIS_CONNECT_TIMEOUT, REDIS_MAX_RECONNECT_DELAY,
    REDIS_RESPONSE_TIMEOUT, REVOCATION_MEMORY,
};
use crate::metrics::metrics;
use crate::registry::{
    BoxFuture, EventStream, Heartbeat, Registry, RegistryError, Renewal, Result, session_ttl,
};
use crate::sentinel::{SentinelLink, master_moved};
use crate::tenants::Tenant;

/// Commands about different tunnels in flight at once when many are read or removed together (a node's
/// cleanup): over the one multiplexed connection they share round trips.
const CLEANUP_AT_ONCE: usize = 32;

/// Takes a slot if fewer than ARGV[1] are taken (or this tunnel already holds one).
static RESERVE_SLOT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then return 1 end \
         if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[1]) then redis.call('SADD', KEYS[1], ARGV[2]) return 1 end \
         return 0",
    )
});

/// Moves a tenant's slot from the tunnel ARGV[1] to the tunnel ARGV[2], if ARGV[1] holds one.
static HAND_OVER_SLOT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then redis.call('SADD', KEYS[1], ARGV[2]) return 1 end \
         return 0",
    )
});

/// Renews a node's lease (KEYS[1] the node table, KEYS[2] its expiry index; ARGV: node id, record, now and
/// the new expiry in Unix ms, how many lapsed nodes to name) and reports the leases: `{status, live,
/// lapsed ids}`, the status 1 when the table did not hold the node (or held an expired fence), 0 when it
/// did, and 2, writing nothing, while another node holds a fence on it to remove its records. The index
/// is read by score, so the cost is the same for ten nodes as for a thousand.
static RENEW: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local current = redis.call('HGET', KEYS[1], ARGV[1]) \
         local status = 1 \
         if current then \
           status = 0 \
           local ok, record = pcall(cjson.decode, current) \
           if ok and type(record) == 'table' and record.cleaning_until_ms then \
             if tonumber(record.cleaning_until_ms) > tonumber(ARGV[3]) then return {2, 0, {}} end \
             status = 1 \
           end \
         end \
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
         redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1]) \
         local live = redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[3], '+inf') \
         local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3], 'LIMIT', 0, ARGV[5]) \
         return {status, live, lapsed}",
    )
});

/// Fences a lapsed node (KEYS[1] the node table, KEYS[2] its expiry index; ARGV: node id, now in Unix
/// ms, the fence): replaces its record by the fence if its lease, or an earlier fence, has run out; 1 if
/// it did. A node the table no longer holds leaves the index.
static FENCE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "local current = redis.call('HGET', KEYS[1], ARGV[1]) \
         local ok, record = pcall(cjson.decode, current or '') \
         if not ok or type(record) ~= 'table' then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end \
         local until_ms = tonumber(record.cleaning_until_ms or record.expires_ms) \
         if until_ms == nil or until_ms > tonumber(ARGV[2]) then return 0 end \
         redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) \
         return 1",
    )
});

/// Removes a node (KEYS[1] the node table, KEYS[2] its expiry index; ARGV: node id, and the fence to
/// expect, if any) if its entry is still that fence, or whatever it is without one.
static UNFENCE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if ARGV[2] == nil or redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
           redis.call('HDEL', KEYS[1], ARGV[1]) \
           redis.call('ZREM', KEYS[2], ARGV[1]) \
         end \
         return 0",
    )
});

/// What a node's entry in the node table holds while another node removes its records.
#[derive(serde::Deserialize)]
struct Fence {
    #[allow(dead_code)]
    cleaning_until_ms: u64,
}

/// A single Redis, a Redis Cluster or a Redis behind Sentinel, behind one connection type.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelLink>),
}

impl Connection {
    async fn send(&mut self, cmd: &Cmd) -> redis::RedisResult<Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd).await,
            Connection::Cluster(c) => c.req_packed_command(cmd).await,
            Connection::Sentinel(link) => {
                let answer = link.connection().await?.req_packed_command(cmd).await;
                if answer.as_ref().is_err_and(master_moved) {
                    link.forget_master().await;
                }
                answer
            }
        }
    }

    async fn send_all(
        &mut self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count).await,
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
            Connection::Sentinel(link) => {
                let mut master = link.connection().await?;
                let answer = master.req_packed_commands(pipeline, offset, count).await;
                if answer.as_ref().is_err_and(master_moved) {
                    link.forget_master().await;
                }
                answer
            }
        }
    }
}

/// A command that failed because the connection it went out on was gone (Redis restarted, or the link
/// dropped) is sent once more, on the connection the manager makes in its place: otherwise the first
/// command after every reconnect fails. A command that timed out is not: it may have run, and waiting
/// twice would double its deadline. Every command deskbroker sends may run twice.
fn lost_connection(error: &RedisError) -> bool {
    !error.is_timeout()
        && (error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
            || error.code() == Some("READONLY"))
}

/// The commands deskbroker sends, as metric labels: a fixed set, so that no label is made from data.
const COMMANDS: &[&str] = &[
    "DEL", "EVAL", "EVALSHA", "EXISTS", "GET", "HDEL", "HGET", "HGETALL", "HMGET", "HSET", "INFO",
    "MGET", "PEXPIRE", "PSETEX", "PUBLISH", "SADD", "SCAN", "SCRIPT", "SET", "SMEMBERS", "SREM",
    "UNLINK",
];

fn command_name(cmd: &Cmd) -> &'static str {
    let Some(redis::Arg::Simple(name)) = cmd.args_iter().next() else {
        return "other";
    };
    COMMANDS
        .iter()
        .find(|known| known.as_bytes().eq_ignore_ascii_case(name))
        .copied()
        .unwrap_or("other")
}

/// Counts a command's answer: `ok`, `error` (Redis answered with an error) or `unavailable` (no answer
/// in time, or no connection).
fn count<T>(command: &'static str, answer: &redis::RedisResult<T>, sent: Instant) {
    let result = match answer {
        Ok(_) => "ok",
        Err(error)
            if error.is_timeout() || error.is_io_error() || error.is_connection_dropped() =>
        {
            "unavailable"
        }
        Err(_) => "error",
    };
    metrics().registry_command(command, result, sent.elapsed());
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let sent = Instant::now();
            let answer = match self.send(cmd).await {
                Err(error) if lost_connection(&error) => self.send(cmd).await,
                answer => answer,
            };
            count(command_name(cmd), &answer, sent);
            answer
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let sent = Instant::now();
            let answer = match self.send_all(pipeline, offset, count).await {
                Err(error) if lost_connection(&error) => {
                    self.send_all(pipeline, offset, count).await
                }
                answer => answer,
            };
            self::count("pipeline", &answer, sent);
            answer
        })
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Sentinel(_) => 0,
        }
    }
}

#[derive(Clone)]
pub struct RedisRegistry {
    connection: Connection,
    /// The servers to subscribe on, tried in turn: a Redis Cluster delivers every publication to every
    /// node, so any one that answers will do, and a subscription lost with its server moves to the next.
    subscribers: Arc<[redis::Client]>,
    /// The subscriber that answered last, tried first.
    subscribed: Arc<AtomicUsize>,
}

impl RedisRegistry {
    /// Connects to `redis://…` (one server), `redis+cluster://host:port[,host:port…]` (a cluster, from
    /// any of its nodes) or `redis+sentinel://host:port[,host:port…]/<master name>` (the master that
    /// Sentinel names, followed through failovers). Fails if Redis cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self> {
        if let Some(spec) = url.strip_prefix("redis+sentinel://") {
            let link = SentinelLink::connect(spec).await.map_err(unavailable)?;
            return Ok(Self {
                connection: Connection::Sentinel(Arc::new(link)),
                subscribers: Arc::new([]),
                subscribed: Arc::default(),
            });
        }
        let nodes: Vec<String> = match url.strip_prefix("redis+cluster://") {
            Some(nodes) => nodes
                .split(',')
                .map(|node| format!("redis://{node}"))
                .collect(),
            None => vec![url.to_owned()],
        };
        let subscribers = nodes
            .iter()
            .map(|node| redis::Client::open(node.as_str()))
            .collect::<std::result::Result<Arc<[_]>, _>>()
            .map_err(unavailable)?;
        let connection = match url.strip_prefix("redis+cluster://") {
            Some(_) => {
                let client = ClusterClient::builder(nodes)
                    .connection_timeout(REDIS_CONNECT_TIMEOUT)
                    .response_timeout(REDIS_RESPONSE_TIMEOUT)
                    .build()
                    .map_err(unavailable)?;
                Connection::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
            None => {
                let client = redis::Client::open(url).map_err(unavailable)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
                    .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
                    .set_max_delay(REDIS_MAX_RECONNECT_DELAY)
                    .set_number_of_retries(1);
                Connection::Single(
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)?,
                )
            }
        };
        Ok(Self {
            connection,
            subscribers,
            subscribed: Arc::default(),
        })
    }

    fn conn(&self) -> Connection {
        self.connection.clone()
    }

    async fn get_json<T: DeserializeOwned>(&self, key: String) -> Result<Option<T>> {
        let text: Option<String> = self.conn().get(key).await.map_err(unavailable)?;
        text.map(|text| parse(&text)).transpose()
    }
}

/// A Redis failure as the logs show it. A reply that did not parse is named, not quoted: the client's
/// message carries the reply itself, which may be a session record with guacd passwords in it.
/// A node's entry in the node table as a record. One node's unreadable record must not hide the others. A
/// fenced node shows as lapsed, so that the cleanup is taken up again if the node that fenced it stops
/// half-way.
fn node_record(id: &str, record: &str) -> Option<NodeRecord> {
    match parse::<NodeRecord>(record) {
        Ok(record) => Some(record),
        Err(_) => parse::<Fence>(record).ok().map(|_| NodeRecord {
            id: NodeId::new(id),
            incarnation: Incarnation(uuid::Uuid::nil()),
            peer_url: String::new(),
            expires_ms: 0,
        }),
    }
}

fn unavailable(error: RedisError) -> RegistryError {
    match error.kind() {
        redis::ErrorKind::Parse => RegistryError::Unavailable("a reply did not parse".into()),
        _ => RegistryError::Unavailable(error.to_string()),
    }
}

/// A record read back. A record that does not parse is reported by where serde stopped, never by its
/// message, which quotes the value it met (`invalid type: string "<password>"`).
fn parse<T: DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|error| {
        RegistryError::Corrupt(format!(
            "{:?} error at line {} column {}",
            error.classify(),
            error.line(),
            error.column()
        ))
    })
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
            let digest = token.digest();
            let (key, id_key) = (keys::session(&digest), keys::session_id(&session.id));
            let mut conn = self.conn();
            conn.sadd::<_, _, ()>(keys::tenant_sessions(&session.tenant), session.id.as_str())
                .await
                .map_err(unavailable)?;
            match session_ttl(session, SystemTime::now()) {
                Some(ttl) if ttl.is_zero() => return Ok(()),
                Some(ttl) => {
                    let ms = ttl.as_millis() as u64;
                    conn.pset_ex::<_, _, ()>(key, json(session), ms)
                        .await
                        .map_err(unavailable)?;
                    conn.pset_ex::<_, _, ()>(id_key, digest.to_hex(), ms).await
                }
                None => {
                    conn.set::<_, _, ()>(key, json(session))
                        .await
                        .map_err(unavailable)?;
                    conn.set::<_, _, ()>(id_key, digest.to_hex()).await
                }
            }
            .map_err(unavailable)
        })
    }

    fn renew<'a>(&'a self, node: &'a NodeRecord) -> BoxFuture<'a, Result<Heartbeat>> {
        Box::pin(async move {
            let (status, live, lapsed): (i64, usize, Vec<String>) = RENEW
                .key(keys::NODES)
                .key(keys::NODE_EXPIRIES)
                .arg(node.id.as_str())
                .arg(json(node))
                .arg(unix_ms(SystemTime::now()))
                .arg(node.expires_ms)
                .arg(LAPSED_PER_RENEWAL)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(Heartbeat {
                renewal: match status {
                    0 => Renewal::Renewed,
                    2 => Renewal::Fenced,
                    _ => Renewal::Fresh,
                },
                live,
                lapsed: lapsed.into_iter().map(NodeId::new).collect(),
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
            Ok(all
                .iter()
                .filter_map(|(id, record)| node_record(id, record))
                .collect())
        })
    }

    fn node_records<'a>(
        &'a self,
        ids: &'a [NodeId],
    ) -> BoxFuture<'a, Result<Vec<Option<NodeRecord>>>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let fields: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
            let records: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(keys::NODES)
                .arg(&fields)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(ids
                .iter()
                .zip(records)
                .map(|(id, record)| node_record(id.as_str(), &record?))
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
            UNFENCE
                .key(keys::NODES)
                .key(keys::NODE_EXPIRIES)
                .arg(id.as_str())
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map_err(unavailable)
                .map(drop)
        })
    }

    fn remove_lapsed_node<'a>(&'a self, id: &'a NodeId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // The fence keeps the node from renewing (and recording its tunnels again) while its records
            // go, so that a node that comes back never loses to its own cleanup; it lasts a bounded time,
            // in case this node stops half-way.
            let now = SystemTime::now();
            let until = now + LAPSED_CLEANUP_TIMEOUT;
            let fence = format!(r#"{{"cleaning_until_ms":{}}}"#, unix_ms(until));
            let fenced: i64 = FENCE
                .key(keys::NODES)
                .key(keys::NODE_EXPIRIES)
                .arg(id.as_str())
                .arg(unix_ms(now))
                .arg(&fence)
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            if fenced != 1 {
                return Ok(false);
            }
            // A few dozen tunnels at a time (one after another, 20,000 outlasted the fence on a loaded
            // Cluster); each removal leaves the node's set last (see remove_tunnel), so what is not done
            // now is found by the next cleanup. Stop while the fence still holds.
            let stop_by = until - 2 * REDIS_RESPONSE_TIMEOUT;
            let tunnels = self.tunnels_of(id).await?;
            let mut removals = futures_util::stream::iter(tunnels)
                .map(|tunnel| async move { self.remove_tunnel(&tunnel).await })
                .buffer_unordered(CLEANUP_AT_ONCE);
            while let Some(removed) = removals.next().await {
                removed?;
                if SystemTime::now() >= stop_by {
                    return Ok(true);
                }
            }
            UNFENCE
                .key(keys::NODES)
                .key(keys::NODE_EXPIRIES)
                .arg(id.as_str())
                .arg(&fence)
                .invoke_async::<i64>(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(true)
        })
    }

    fn reserve_slot<'a>(
        &'a self,
        tenant: &'a TenantId,
        holder: &'a SlotHolder,
        limit: u32,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // One key, one script: the check and the take are atomic on Redis and on a Redis Cluster.
            let taken: i64 = RESERVE_SLOT
                .key(keys::tenant_tunnels(tenant))
                .arg(limit)
                .arg(holder.encode())
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(taken == 1)
        })
    }

    fn hand_over_slot<'a>(
        &'a self,
        tenant: &'a TenantId,
        from: &'a SlotHolder,
        to: &'a SlotHolder,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            // One key: atomic on a Redis Cluster too.
            let handed: i64 = HAND_OVER_SLOT
                .key(keys::tenant_tunnels(tenant))
                .arg(from.encode())
                .arg(to.encode())
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            Ok(handed == 1)
        })
    }

    fn slot_holders<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Vec<SlotHolder>>> {
        Box::pin(async move {
            let members: Vec<String> = self
                .conn()
                .smembers(keys::tenant_tunnels(tenant))
                .await
                .map_err(unavailable)?;
            Ok(members
                .iter()
                .filter_map(|m| SlotHolder::parse(m))
                .collect())
        })
    }

    fn add_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (record, id) = (json(tunnel), tunnel.id.to_string());
            // The owner's set first: whatever is written after it is found again by the node's cleanup.
            self.conn()
                .sadd::<_, _, ()>(keys::node_tunnels(&tunnel.owner), &id)
                .await
                .map_err(unavailable)?;
            // The rest live in different slots (on different masters of a cluster): send them at once on
            // the multiplexed connection. The tenant's slot is taken already, except after Redis lost
            // its data, when this takes it again.
            let (mut a, mut b, mut c, mut d) = (self.conn(), self.conn(), self.conn(), self.conn());
            let by_id = a.set::<_, _, ()>(keys::tunnel(&tunnel.id), &record);
            let by_token = async {
                match &tunnel.http_token {
                    Some(token) => b.set::<_, _, ()>(keys::http_tunnel(token), &record).await,
                    None => Ok(()),
                }
            };
            let by_session = c.sadd::<_, _, ()>(keys::session_tunnels(&tunnel.session), &id);
            let slot = d.sadd::<_, _, ()>(
                keys::tenant_tunnels(&tunnel.tenant),
                tunnel.slot_holder().encode(),
            );
            tokio::try_join!(by_id, by_token, by_session, slot)
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn remove_tunnel<'a>(&'a self, tunnel: &'a TunnelRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let id = tunnel.id.to_string();
            // The slot first: a reconnect that no longer finds this tunnel among its session's finds its
            // slot free too, rather than a tenant at its limit with nothing to wait for. (With the bare id
            // that builds before slot holders wrote, so that a rolling upgrade's cleanup leaks no slot.)
            let slot = [tunnel.slot_holder().encode(), id.clone()];
            self.conn()
                .srem::<_, _, ()>(keys::tenant_tunnels(&tunnel.tenant), &slot)
                .await
                .map_err(unavailable)?;
            let (mut a, mut b, mut c) = (self.conn(), self.conn(), self.conn());
            let by_token = async {
                match &tunnel.http_token {
                    Some(token) => a.del::<_, ()>(keys::http_tunnel(token)).await,
                    None => Ok(()),
                }
            };
            let by_id = b.del::<_, ()>(keys::tunnel(&tunnel.id));
            let by_session = c.srem::<_, _, ()>(keys::session_tunnels(&tunnel.session), &id);
            tokio::try_join!(by_token, by_id, by_session).map_err(unavailable)?;
            // The owner's set last, so that a failure above leaves the tunnel where cleanup finds it.
            self.conn()
                .srem::<_, _, ()>(keys::node_tunnels(&tunnel.owner), &id)
                .await
                .map_err(unavailable)
        })
    }

    fn tunnel<'a>(&'a self, id: &'a TunnelId) -> BoxFuture<'a, Result<Option<TunnelRecord>>> {
        Box::pin(self.get_json(keys::tunnel(id)))
    }

    fn http_tunnel<'a>(
        &'a self,
        token: &'a TokenDigest,
    ) -> BoxFuture<'a, Result<Option<TunnelRecord>>> {
        Box::pin(self.get_json(keys::http_tunnel(token)))
    }

    fn tunnels_of<'a>(&'a self, node: &'a NodeId) -> BoxFuture<'a, Result<Vec<TunnelRecord>>> {
        Box::pin(self.tunnels_in(keys::node_tunnels(node)))
    }

    fn session_tunnels<'a>(
        &'a self,
        session: &'a SessionId,
    ) -> BoxFuture<'a, Result<Vec<TunnelRecord>>> {
        Box::pin(self.tunnels_in(keys::session_tunnels(session)))
    }

    fn session_by_id<'a>(
        &'a self,
        id: &'a SessionId,
    ) -> BoxFuture<'a, Result<Option<(TokenDigest, Session)>>> {
        Box::pin(async move {
            let digest: Option<String> = self
                .conn()
                .get(keys::session_id(id))
                .await
                .map_err(unavailable)?;
            let Some(digest) = digest.as_deref().and_then(TokenDigest::from_hex) else {
                return Ok(None);
            };
            let session: Option<Session> = self.get_json(keys::session(&digest)).await?;
            let now = SystemTime::now();
            Ok(session
                .filter(|s| !s.is_expired(now) && &s.id == id)
                .map(|s| (digest, s)))
        })
    }

    fn sessions_of<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Vec<Session>>> {
        Box::pin(async move {
            let set = keys::tenant_sessions(tenant);
            let ids: Vec<String> = self.conn().smembers(&set).await.map_err(unavailable)?;
            let mut sessions = Vec::with_capacity(ids.len());
            for id in ids.into_iter().map(SessionId::new) {
                match self.session_by_id(&id).await? {
                    Some((_, session)) => sessions.push(session),
                    // Expired or revoked: prune it from the index.
                    None => self
                        .conn()
                        .srem::<_, _, ()>(&set, id.as_str())
                        .await
                        .map_err(unavailable)?,
                }
            }
            Ok(sessions)
        })
    }

    fn revoke<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let Some((digest, session)) = self.session_by_id(id).await? else {
                return Ok(false);
            };
            let mut conn = self.conn();
            conn.del::<_, ()>(keys::session(&digest))
                .await
                .map_err(unavailable)?;
            conn.del::<_, ()>(keys::session_id(id))
                .await
                .map_err(unavailable)?;
            conn.srem::<_, _, ()>(keys::tenant_sessions(&session.tenant), id.as_str())
                .await
                .map_err(unavailable)?;
            // Remembered for a day, or until the session would have expired: a sealed token is refused
            // by its revocation alone.
            let until = session.expires.unwrap_or_else(SystemTime::now);
            self.put_revocation(id, until).await?;
            Ok(true)
        })
    }

    fn purge_expired(&self, _budget: usize) -> BoxFuture<'_, Result<usize>> {
        // Sessions and revocations are written with their expiry (`PX`, `EX`): Redis drops them itself.
        Box::pin(async { Ok(0) })
    }

    fn put_revocation<'a>(
        &'a self,
        id: &'a SessionId,
        until: SystemTime,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let left = until.duration_since(SystemTime::now()).unwrap_or_default();
            let ttl = left.max(REVOCATION_MEMORY).as_millis() as u64;
            self.conn()
                .pset_ex(keys::revoked(id), 1, ttl)
                .await
                .map_err(unavailable)
        })
    }

    fn revoked<'a>(&'a self, ids: &'a [SessionId]) -> BoxFuture<'a, Result<Vec<SessionId>>> {
        Box::pin(self.existing(ids, keys::revoked))
    }

    fn put_tenant<'a>(&'a self, tenant: &'a Tenant) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut conn = self.conn();
            if let Some(old) = self.tenant(&tenant.id).await? {
                conn.hdel::<_, _, ()>(keys::TENANT_KEYS, old.key_sha256.to_hex())
                    .await
                    .map_err(unavailable)?;
            }
            conn.del::<_, ()>(keys::removed_tenant(&tenant.id))
                .await
                .map_err(unavailable)?;
            conn.hset::<_, _, _, ()>(keys::TENANTS, tenant.id.as_str(), json(tenant))
                .await
                .map_err(unavailable)?;
            conn.hset::<_, _, _, ()>(
                keys::TENANT_KEYS,
                tenant.key_sha256.to_hex(),
                tenant.id.as_str(),
            )
            .await
            .map_err(unavailable)
        })
    }

    fn tenant<'a>(&'a self, id: &'a TenantId) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(async move {
            let text: Option<String> = self
                .conn()
                .hget(keys::TENANTS, id.as_str())
                .await
                .map_err(unavailable)?;
            text.map(|text| parse(&text)).transpose()
        })
    }

    fn tenant_by_key<'a>(&'a self, key: &'a TokenDigest) -> BoxFuture<'a, Result<Option<Tenant>>> {
        Box::pin(async move {
            let id: Option<String> = self
                .conn()
                .hget(keys::TENANT_KEYS, key.to_hex())
                .await
                .map_err(unavailable)?;
            match id {
                Some(id) => self.tenant(&TenantId::new(id)).await,
                None => Ok(None),
            }
        })
    }

    fn tenants(&self) -> BoxFuture<'_, Result<Vec<Tenant>>> {
        Box::pin(async move {
            let all: Vec<(String, String)> = self
                .conn()
                .hgetall(keys::TENANTS)
                .await
                .map_err(unavailable)?;
            all.iter().map(|(_, tenant)| parse(tenant)).collect()
        })
    }

    fn remove_tenant<'a>(&'a self, id: &'a TenantId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let Some(tenant) = self.tenant(id).await? else {
                return Ok(false);
            };
            let mut conn = self.conn();
            conn.hdel::<_, _, ()>(keys::TENANT_KEYS, tenant.key_sha256.to_hex())
                .await
                .map_err(unavailable)?;
            conn.hdel::<_, _, ()>(keys::TENANTS, id.as_str())
                .await
                .map_err(unavailable)?;
            conn.set_ex::<_, _, ()>(keys::removed_tenant(id), 1, REVOCATION_MEMORY.as_secs())
                .await
                .map_err(unavailable)?;
            Ok(true)
        })
    }

    fn removed_tenants<'a>(&'a self, ids: &'a [TenantId]) -> BoxFuture<'a, Result<Vec<TenantId>>> {
        Box::pin(self.existing(ids, keys::removed_tenant))
    }

    fn marked<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let key = keys::marker(marker);
            self.conn().exists(key).await.map_err(unavailable)
        })
    }

    fn mark<'a>(&'a self, marker: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = keys::marker(marker);
            self.conn().set(key, 1).await.map_err(unavailable)
        })
    }

    fn server_runs(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(async move {
            // A Cluster connection sends INFO to every master and answers with a map of their replies.
            let mut info = redis::cmd("INFO");
            info.arg("server");
            let answer = self.conn().send(&info).await.map_err(unavailable)?;
            run_ids(&answer)
                .ok_or_else(|| RegistryError::Unavailable("a master refused INFO".into()))
        })
    }

    fn publish<'a>(&'a self, event: &'a ControlEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.conn()
                .publish::<_, _, ()>(keys::CONTROL, json(event))
                .await
                .map_err(unavailable)
        })
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<EventStream>> {
        Box::pin(async move {
            // Behind Sentinel, the master: a subscription lost in a failover is made again on the new one.
            let master = match &self.connection {
                Connection::Sentinel(link) => {
                    Some(link.master_client().await.map_err(unavailable)?)
                }
                _ => None,
            };
            let subscribers = match master {
                Some(master) => Arc::new([master]),
                None => self.subscribers.clone(),
            };
            let servers = subscribers.len();
            let first = self.subscribed.load(Ordering::Relaxed);
            let mut failure = None;
            for server in (first..first + servers).map(|i| i % servers) {
                let subscribing = async {
                    let mut pubsub = subscribers[server].get_async_pubsub().await?;
                    pubsub.subscribe(keys::CONTROL).await?;
                    Ok::<_, RedisError>(pubsub)
                };
                match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, subscribing).await {
                    Ok(Ok(pubsub)) => {
                        self.subscribed.store(server, Ordering::Relaxed);
                        let events = pubsub.into_on_message().filter_map(|message| async move {
                            let text: String = message.get_payload().ok()?;
                            serde_json::from_str(&text).ok()
                        });
                        return Ok(Box::pin(events) as EventStream);
                    }
                    Ok(Err(error)) => failure = Some(unavailable(error)),
                    Err(_) => {
                        failure = Some(RegistryError::Unavailable("subscribing timed out".into()))
                    }
                }
            }
            Err(failure
                .unwrap_or_else(|| RegistryError::Unavailable("no server to subscribe on".into())))
        })
    }
}

/// The `run_id`s in INFO replies (one server's text, or a Cluster's map of them), sorted; `None` when a
/// server answered with an error (one still loading its data, say), whose run is then unknown.
fn run_ids(answer: &Value) -> Option<Vec<String>> {
    fn collect(value: &Value, ids: &mut Vec<String>) -> Option<()> {
        match value {
            Value::BulkString(bytes) => {
                let text = String::from_utf8_lossy(bytes);
                let found = text.lines().filter_map(|line| line.strip_prefix("run_id:"));
                ids.extend(found.map(|id| id.trim().to_owned()));
            }
            Value::VerbatimString { text, .. } => {
                return collect(&Value::BulkString(text.clone().into_bytes()), ids);
            }
            Value::Map(pairs) => {
                for (_, reply) in pairs {
                    collect(reply, ids)?;
                }
            }
            Value::ServerError(_) => return None,
            _ => {}
        }
        Some(())
    }
    let mut ids = Vec::new();
    collect(answer, &mut ids)?;
    ids.sort();
    Some(ids)
}

impl RedisRegistry {
    /// Those of `ids` whose key exists: one key per command, since the keys live in different slots on
    /// Redis Cluster.
    async fn existing<T: Clone>(&self, ids: &[T], key: fn(&T) -> String) -> Result<Vec<T>> {
        let mut conn = self.conn();
        let mut found = Vec::new();
        for id in ids {
            if conn.exists::<_, bool>(key(id)).await.map_err(unavailable)? {
                found.push(id.clone());
            }
        }
        Ok(found)
    }

    /// The tunnel records whose ids a set holds, dropping ids whose record is gone. The records are read
    /// a few dozen at a time: they live in different slots, one `GET` each.
    async fn tunnels_in(&self, set: String) -> Result<Vec<TunnelRecord>> {
        let ids: Vec<String> = self.conn().smembers(&set).await.map_err(unavailable)?;
        let ids: Vec<TunnelId> = ids.iter().filter_map(|id| TunnelId::parse(id)).collect();
        let mut tunnels = Vec::with_capacity(ids.len());
        let mut reads = futures_util::stream::iter(ids)
            .map(|id| async move { (id, self.get_json::<TunnelRecord>(keys::tunnel(&id)).await) })
            .buffer_unordered(CLEANUP_AT_ONCE);
        while let Some((id, read)) = reads.next().await {
            match read? {
                Some(tunnel) => tunnels.push(tunnel),
                None => self
                    .conn()
                    .srem::<_, _, ()>(&set, id.to_string())
                    .await
                    .map_err(unavailable)?,
            }
        }
        Ok(tunnels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_read_from_one_server_or_every_master() {
        let info = |id: &str| {
            Value::BulkString(
                format!("# Server\r\nredis_version:7.0.15\r\nrun_id:{id}\r\ntcp_port:6379\r\n")
                    .into_bytes(),
            )
        };
        assert_eq!(run_ids(&info("b2")).unwrap(), ["b2"]);
        let addr = |port: u16| Value::BulkString(format!("127.0.0.1:{port}").into_bytes());
        let cluster = Value::Map(vec![(addr(7002), info("c3")), (addr(7001), info("a1"))]);
        assert_eq!(run_ids(&cluster).unwrap(), ["a1", "c3"]);
        let loading =
            redis::parse_redis_value(b"-LOADING Redis is loading the dataset\r\n").unwrap();
        let one_loading = Value::Map(vec![(addr(7001), info("a1")), (addr(7002), loading)]);
        assert_eq!(
            run_ids(&one_loading),
            None,
            "a run not known is not a new run"
        );
    }

    #[test]
    fn errors_name_what_did_not_parse_without_quoting_it() {
        let record = parse::<u16>(r#""s3cr3t-in-a-record""#).unwrap_err();
        assert!(!record.to_string().contains("s3cr3t"), "{record}");
        assert!(record.to_string().contains("column"), "{record}");

        let reply = redis::Value::BulkString(b"s3cr3t-in-a-reply".to_vec());
        let error = RedisError::from(redis::from_redis_value::<i64>(reply).unwrap_err());
        assert!(error.to_string().contains("s3cr3t"), "the client quotes it");
        let error = unavailable(error);
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
    }
}
