//! The pooled connection every Redis command but the reader's blocking read goes through: one
//! Redis server's (the `redis` crate's `ConnectionManager`, reconnecting on its own) or a Redis
//! Cluster's (the crate's cluster connection, which routes each command to the node owning its
//! key's slot, follows `MOVED`/`ASK`, retries `TRYAGAIN` and refreshes the slot map after a
//! failover). Both are multiplexed and cheap to clone.

use crate::redis::target::Target;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use std::time::Duration;

/// Replies the command-line tools wait for: they may move many entries in one command.
pub const TOOL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects to the Redis (or Redis Cluster) of `target`; replies slower than
    /// `response_timeout` count as failures.
    pub async fn open(target: &Target, response_timeout: Duration) -> RedisResult<Self> {
        if let Some(cluster) = &target.cluster {
            let config = redis::cluster::ClusterConfig::new()
                .set_response_timeout(response_timeout)
                .set_connection_timeout(CONNECT_TIMEOUT);
            return Ok(cluster
                .get_async_connection_with_config(config)
                .await?
                .into());
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        Ok(
            ConnectionManager::new_with_config(target.client.clone(), config)
                .await?
                .into(),
        )
    }
}

impl Connection {
    /// `PING`: whether the server (of a cluster, the node the crate picks) answers.
    pub async fn ping(&mut self) -> RedisResult<()> {
        redis::cmd("PING")
            .query_async::<String>(self)
            .await
            .map(drop)
    }
}

impl From<ConnectionManager> for Connection {
    fn from(conn: ConnectionManager) -> Self {
        Self::Single(conn)
    }
}

impl From<ClusterConnection> for Connection {
    fn from(conn: ClusterConnection) -> Self {
        Self::Cluster(conn)
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}
