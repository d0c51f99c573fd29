//! A Redis behind Sentinel (`redis+sentinel://sentinel:26379[,sentinel:26379…]/<master name>`), as the common
//! Kubernetes Redis charts run it: the current master's connection, found from the sentinels, and found
//! again whenever it fails. A failover moves the master elsewhere, and the old one comes back, if at all,
//! as a read-only replica; the redis crate's Sentinel client resolves the master once and does not follow.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Client, RedisError, RedisResult};
use tokio::sync::Mutex;

use crate::defaults::{REDIS_CONNECT_TIMEOUT, REDIS_MAX_RECONNECT_DELAY, REDIS_RESPONSE_TIMEOUT};

pub struct SentinelLink {
    sentinels: Mutex<SentinelClient>,
    /// The master's connection while it answers; `None` once it failed, until the sentinels are asked again.
    master: Mutex<Option<ConnectionManager>>,
}

impl SentinelLink {
    /// Reads `host:port[,host:port…]/<master name>` (what follows `redis+sentinel://`) and finds the master.
    pub async fn connect(spec: &str) -> RedisResult<Self> {
        let (hosts, name) = spec.rsplit_once('/').ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "redis+sentinel:// needs /<master name> after the sentinels",
            ))
        })?;
        let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}")).collect();
        let client =
            SentinelClient::build(sentinels, name.to_owned(), None, SentinelServerType::Master)?;
        let link = Self {
            sentinels: Mutex::new(client),
            master: Mutex::default(),
        };
        link.connection().await?;
        Ok(link)
    }

    /// A client for the current master, as the sentinels name it now.
    pub async fn master_client(&self) -> RedisResult<Client> {
        let mut sentinels = self.sentinels.lock().await;
        match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, sentinels.async_get_client()).await {
            Ok(client) => client,
            Err(_) => Err(RedisError::from((
                redis::ErrorKind::Io,
                "no sentinel named a master in time",
            ))),
        }
    }

    /// The master's connection, from the sentinels if the last one failed.
    pub async fn connection(&self) -> RedisResult<ConnectionManager> {
        let mut master = self.master.lock().await;
        if let Some(connection) = master.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT))
            .set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT))
            .set_max_delay(REDIS_MAX_RECONNECT_DELAY)
            .set_number_of_retries(1);
        let client = self.master_client().await?;
        let connection = ConnectionManager::new_with_config(client, config).await?;
        *master = Some(connection.clone());
        Ok(connection)
    }

    /// After a failure that may mean the master moved: the next command asks the sentinels again.
    pub async fn forget_master(&self) {
        *self.master.lock().await = None;
    }
}

/// Whether a failure may mean the master moved: its connection is gone or timed out, or it answers as a
/// replica now (`READONLY`).
pub fn master_moved(error: &RedisError) -> bool {
    error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_io_error()
        || error.code() == Some("READONLY")
}
