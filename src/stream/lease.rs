//! A lease in Redis: a key that one holder sets with an expiry and renews while it works, so that
//! only one of several instances does a job (bridging a channel into the stream), and another
//! takes over when the holder stops renewing. A source appending to sharded streams holds one
//! beside every shard ([`Leases`]).

use crate::redis::connection::Connection;
use crate::stream::shards::Streams;
use redis::RedisResult;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Renews the lease only if this holder still holds it.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
/// Releases the lease only if this holder holds it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Takes the lease from the holder `ARGV[1]` if it still holds it.
const TAKE_OVER: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]); return 1 else return 0 end";

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
        if set.is_some() {
            return Ok(true);
        }
        // Held: by this instance's previous process, gone without giving it back (a kill -9,
        // a crash), it is taken at once instead of after it expires.
        let held: Option<String> = redis::cmd("GET").arg(&self.key).query_async(conn).await?;
        match held {
            Some(held) if holder_gone(&held, &self.holder) => {
                let taken: i64 = redis::cmd("EVAL")
                    .arg(TAKE_OVER)
                    .arg(1)
                    .arg(&self.key)
                    .arg(&held)
                    .arg(&self.holder)
                    .arg(self.ttl_millis())
                    .query_async(conn)
                    .await?;
                if taken == 1 {
                    tracing::info!(lease = %self.key, previous = %held, "took over the lease of this instance's previous process");
                }
                Ok(taken == 1)
            }
            _ => Ok(false),
        }
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
pub fn unique_token(name: &str) -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{name}/{}/{nanos}/{}",
        std::process::id(),
        MADE.fetch_add(1, Ordering::Relaxed)
    )
}

/// The token a lease holder holds its leases with: a [`unique_token`] that also names the host,
/// so that the instance's next process can tell it is gone ([`holder_gone`]). Made once per
/// source start, never per request: this process remembers each.
pub fn holder_token(consumer: &str) -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    let host = HOST.get_or_init(|| {
        gethostname::gethostname()
            .to_string_lossy()
            .replace('/', "_")
    });
    let token = unique_token(&format!("{consumer}/{host}"));
    made_here()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone());
    token
}

/// The tokens this process made.
fn made_here() -> &'static Mutex<HashSet<String>> {
    static MADE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    MADE.get_or_init(Mutex::default)
}

/// Whether the lease held by `held` is known to be given up although it did not expire: its
/// holder was a process of the same instance as `mine` (consumer name and host) that no longer
/// runs. A process with the same id but not this one is a container restarted (process ids
/// start again there); another id is looked up among the host's processes. Two processes that
/// share a consumer name by mistake are both running, and each waits for the other's lease.
fn holder_gone(held: &str, mine: &str) -> bool {
    /// consumer, host, pid, nanos, count.
    fn parts(token: &str) -> Option<(&str, &str, &str)> {
        let mut from_end = token.rsplitn(5, '/');
        let (_count, _nanos) = (from_end.next()?, from_end.next()?);
        let (pid, host, consumer) = (from_end.next()?, from_end.next()?, from_end.next()?);
        Some((consumer, host, pid))
    }
    let (Some(theirs), Some(ours)) = (parts(held), parts(mine)) else {
        return false;
    };
    if held == mine || theirs.0 != ours.0 || theirs.1 != ours.1 {
        return false;
    }
    if theirs.2 == ours.2 {
        let made_here = made_here().lock().unwrap_or_else(|p| p.into_inner());
        return !made_here.contains(held);
    }
    // Where processes cannot be looked up, nothing is known to be gone.
    cfg!(target_os = "linux")
        && theirs.2.parse::<u32>().is_ok()
        && !std::path::Path::new("/proc").join(theirs.2).exists()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_gone_only_when_it_was_this_instance_and_its_process_no_longer_runs() {
        let mine = holder_token("station");
        let host = gethostname::gethostname()
            .to_string_lossy()
            .replace('/', "_");
        let pid = std::process::id();
        // This process's own tokens, the current one or another source's: running.
        assert!(!holder_gone(&mine, &mine));
        assert!(!holder_gone(&holder_token("station"), &mine));
        // The same process id, a token not made here: the process before a container restart.
        assert!(holder_gone(&format!("station/{host}/{pid}/1/0"), &mine));
        // A process of this host that does not run (ids above the kernel's pid_max never do).
        assert!(holder_gone(&format!("station/{host}/99999999/1/0"), &mine));
        // A process that runs (pid 1 always does), another instance, another host: not gone.
        assert!(!holder_gone(&format!("station/{host}/1/1/0"), &mine));
        assert!(!holder_gone(&format!("other/{host}/99999999/1/0"), &mine));
        assert!(!holder_gone("station/elsewhere/99999999/1/0", &mine));
        // A consumer name with `/` in it is read from the end.
        let slashed = holder_token("site/a");
        assert!(holder_gone(
            &format!("site/a/{host}/99999999/1/0"),
            &slashed
        ));
        assert!(!holder_gone(&format!("a/{host}/99999999/1/0"), &slashed));
        // Tokens of the format before the host was in them: not known to be gone.
        assert!(!holder_gone("station/99999999/1/0", &mine));
    }
}
