//! A lease in Redis: a key that one holder sets with an expiry and renews while it works, so that
//! only one of several instances does a job (bridging a channel into the stream), and another
//! takes over when the holder stops renewing. A source appending to sharded streams holds one
//! beside every shard ([`Leases`]).

use crate::redis::connection::Connection;
use crate::stream::shards::Streams;
use redis::RedisResult;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Renews the lease only if this holder still holds it.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Releases the lease only if this holder holds it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

#[derive(Clone, Debug)]
pub struct Lease {
    /// The lease's key.
    pub key: String,
    /// Who holds it when held by this instance: the key's value.
    pub holder: String,
    /// How long the lease lasts without a renewal.
    pub ttl: Duration,
}

impl Lease {
    /// Takes the lease if it is free, or renews it if this holder has it: true when held.
    pub async fn acquire(&self, conn: &mut Connection) -> RedisResult<bool> {
        if self.renew(conn).await? {
            return Ok(true);
        }
        let set: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&self.holder)
            .arg("NX")
            .arg("PX")
            .arg(self.ttl_millis())
            .query_async(conn)
            .await?;
        Ok(set.is_some())
    }

    /// Extends the lease by its time to live if this holder still holds it: false when it was
    /// lost.
    pub async fn renew(&self, conn: &mut Connection) -> RedisResult<bool> {
        let renewed: i64 = redis::cmd("EVAL")
            .arg(RENEW)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .arg(self.ttl_millis())
            .query_async(conn)
            .await?;
        Ok(renewed == 1)
    }

    /// Gives the lease up if this holder holds it, so another instance need not wait for it to
    /// expire.
    pub async fn release(&self, conn: &mut Connection) -> RedisResult<()> {
        redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&self.key)
            .arg(&self.holder)
            .query_async::<i64>(conn)
            .await
            .map(drop)
    }

    fn ttl_millis(&self) -> u64 {
        self.ttl.as_millis() as u64
    }
}

/// A token no other process or instance has: `name` (the consumer name, for operators reading
/// the key), the process id, the time it was made and a count of tokens made in this process.
pub fn unique_token(consumer: &str) -> String {
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{consumer}/{}/{nanos}/{}",
        std::process::id(),
        STARTED.fetch_add(1, Ordering::Relaxed)
    )
}

/// One lease per stream a source appends to (`<stream>:<name>` beside each shard, so that each
/// append's check runs in its shard's slot), held together: the source works only while it holds
/// all of them. They are taken in shard order, so two instances contending stop at the first one
/// the other holds; an instance that gets only some gives those back at once.
#[derive(Clone, Debug)]
pub struct Leases {
    leases: Vec<Lease>,
}

impl Leases {
    /// The lease named `name` beside each of `streams`, held by `holder`.
    pub fn new(streams: &Streams, name: &str, holder: String, ttl: Duration) -> Self {
        let leases = streams
            .all()
            .iter()
            .map(|stream| Lease {
                key: format!("{stream}:{name}"),
                holder: holder.clone(),
                ttl,
            })
            .collect();
        Self { leases }
    }

    /// Takes (or renews) every lease: true when all are held.
    pub async fn acquire(&self, conn: &mut Connection) -> RedisResult<bool> {
        for (taken, lease) in self.leases.iter().enumerate() {
            if !lease.acquire(conn).await? {
                for held in &self.leases[..taken] {
                    held.release(conn).await?;
                }
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Extends every lease: false when any was lost (the others are then given back).
    pub async fn renew(&self, conn: &mut Connection) -> RedisResult<bool> {
        for lease in &self.leases {
            if !lease.renew(conn).await? {
                self.release(conn).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Gives back every lease this holder holds.
    pub async fn release(&self, conn: &mut Connection) -> RedisResult<()> {
        for lease in &self.leases {
            lease.release(conn).await?;
        }
        Ok(())
    }

    /// The lease beside the stream `shard` (its index among the streams).
    pub fn of_shard(&self, shard: usize) -> &Lease {
        &self.leases[shard]
    }
}
