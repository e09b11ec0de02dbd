//! Redis's memory as sensorhub needs it: no eviction (an evicting Redis may drop the stream, the
//! ledger or a lease, and with them readings or the fencing), and how full it is.

use redis::RedisResult;
use redis::aio::ConnectionLike;

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
