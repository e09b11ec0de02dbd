//! A lease in Redis: a key that one holder sets with an expiry and renews while it works, so that
//! only one of several instances does a job (bridging a channel into the stream), and another
//! takes over when the holder stops renewing.

use crate::redis::connection::Connection;
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
