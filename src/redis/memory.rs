//! Redis's memory as sensorhub needs it: no eviction (an evicting Redis may drop the stream, the
//! ledger or a lease, and with them readings or the fencing), and how full it is.

use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the server runs scripts with flags (Redis 7 and later): see [`allow_oom`].
static SCRIPT_FLAGS: AtomicBool = AtomicBool::new(false);

/// `script` flagged to run when Redis is out of memory (`#!lua flags=allow-oom`), on a server
/// that takes flags ([`note_version`]); as it is on an older one, which has no such flag (and
/// refuses those scripts at the limit, as it refuses everything else).
pub fn allow_oom(script: &str) -> Cow<'_, str> {
    if SCRIPT_FLAGS.load(Ordering::Relaxed) {
        Cow::Owned(format!("#!lua flags=allow-oom\n{script}"))
    } else {
        Cow::Borrowed(script)
    }
}

/// Reads the server's version (`INFO server`) and notes whether it takes script flags.
pub async fn note_version(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    let reply: Value = redis::cmd("INFO").arg("server").query_async(conn).await?;
    let major = first_text(&reply).map_or(0, |info| major_version(&info));
    SCRIPT_FLAGS.store(major >= 7, Ordering::Relaxed);
    Ok(())
}

/// The major version `INFO server` names (0 when it names none).
fn major_version(info: &str) -> u32 {
    info.lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .unwrap_or(0)
}

/// The first text in a reply: a server's `INFO`, or one node's of a cluster's map of them.
fn first_text(reply: &Value) -> Option<String> {
    match reply {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => Some(text.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().find_map(first_text),
        Value::Map(pairs) => pairs.iter().find_map(|(_, v)| first_text(v)),
        _ => None,
    }
}

/// What `INFO memory` says of the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub used: u64,
    /// `maxmemory`; 0 when there is no limit.
    pub max: u64,
    pub policy: String,
}

impl Memory {
    /// `used / max`, 0 without a limit.
    pub fn used_ratio(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.used as f64 / self.max as f64
        }
    }

    /// Why this Redis could lose sensorhub's keys, if it could: any policy but `noeviction`
    /// evicts keys once memory reaches `maxmemory` (the `volatile-*` ones only keys with a
    /// time to live, which leases, idempotency keys and append ids are).
    pub fn eviction_risk(&self) -> Option<String> {
        (self.policy != "noeviction").then(|| {
            format!(
                "Redis's maxmemory-policy is {}: at its memory limit it would evict keys, and \
                 with them stream entries, the ledger or the leases that fence the sources \
                 (readings lost, or appended by two instances). Set `maxmemory-policy noeviction`: \
                 at the limit sensorhub then refuses new readings truthfully and drains what it \
                 holds",
                self.policy
            )
        })
    }
}

/// The memory of the server `conn` talks to (`INFO memory`).
pub async fn memory(conn: &mut impl ConnectionLike) -> RedisResult<Memory> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    Ok(parse(&info))
}

fn parse(info: &str) -> Memory {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let number = |name: &str| field(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    Memory {
        used: number("used_memory"),
        max: number("maxmemory"),
        policy: field("maxmemory_policy").unwrap_or("noeviction").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_decides_script_flags() {
        assert_eq!(
            major_version("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"),
            7
        );
        assert_eq!(major_version("redis_version:6.2.14\r\n"), 6);
        assert_eq!(major_version("no version here"), 0);
        let cluster = Value::Map(vec![(
            Value::SimpleString("127.0.0.1:7000".into()),
            Value::BulkString(b"redis_version:7.2.4\r\n".to_vec()),
        )]);
        assert_eq!(first_text(&cluster).map(|t| major_version(&t)), Some(7));
    }

    #[test]
    fn info_memory_is_read_and_eviction_named() {
        let memory = parse(
            "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:4194304\r\n\
             maxmemory_human:4.00M\r\nmaxmemory_policy:allkeys-lru\r\n",
        );
        assert_eq!(
            memory,
            Memory {
                used: 1 << 20,
                max: 4 << 20,
                policy: "allkeys-lru".into()
            }
        );
        assert_eq!(memory.used_ratio(), 0.25);
        assert!(memory.eviction_risk().unwrap().contains("allkeys-lru"));
        let unlimited = parse("used_memory:10\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n");
        assert_eq!(unlimited.used_ratio(), 0.0);
        assert!(unlimited.eviction_risk().is_none());
    }
}
