//! Renaming a stream with every key sensorhub keeps beside it (`<stream>:dead`, the ledger, the
//! leases, the idempotency keys), in one transaction: the way to give an existing deployment's
//! keys a hash tag (`sensor_stream` → `{sensor_stream}`), so that on a Redis Cluster they all
//! live in one slot and every script runs on one node. Run while every instance is stopped.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult};

/// Keys beside the stream with a fixed name.
const FIXED: [&str; 7] = [
    "dead",
    "dead:bytes",
    "bridge-lease",
    "mqtt-lease",
    "mqtt-subscriptions",
    "mqtt-retained",
    "sparkplug-names",
];
/// Keys beside the stream with a name of their own after the prefix (a group, a key).
const FAMILIES: [&str; 4] = ["committed", "committed-through", "in-flight", "idempotency"];

/// Renames `from` and the keys beside it to `to`; returns the pairs renamed. Refuses when `from`
/// is not a stream or a key of `to` exists already.
pub async fn rename_stream(
    conn: &mut impl ConnectionLike,
    from: &str,
    to: &str,
) -> RedisResult<Vec<(String, String)>> {
    let refuse = |why: String| RedisError::from((ErrorKind::Client, "cannot rename", why));
    let kind: String = redis::cmd("TYPE").arg(from).query_async(conn).await?;
    if kind != "stream" {
        return Err(refuse(format!("{from:?} is not a stream (TYPE {kind})")));
    }
    let mut keys = vec![from.to_owned()];
    for suffix in FIXED {
        let key = format!("{from}:{suffix}");
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(conn).await?;
        if exists {
            keys.push(key);
        }
    }
    let escaped = escape_glob(from);
    for family in FAMILIES {
        let pattern = format!("{escaped}:{family}:*");
        let mut cursor = 0u64;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            keys.extend(found);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    keys.sort();
    keys.dedup();
    let pairs: Vec<(String, String)> = keys
        .into_iter()
        .map(|key| {
            let renamed = format!("{to}{}", &key[from.len()..]);
            (key, renamed)
        })
        .collect();
    for (_, target) in &pairs {
        let exists: bool = redis::cmd("EXISTS").arg(target).query_async(conn).await?;
        if exists {
            return Err(refuse(format!("{target:?} exists already")));
        }
    }
    let mut pipe = redis::pipe();
    pipe.atomic();
    for (key, target) in &pairs {
        pipe.cmd("RENAME").arg(key).arg(target).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(pairs)
}

/// `text` with the glob characters of `SCAN MATCH` escaped.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(super::escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(super::escape_glob("{sensor_stream}"), "{sensor_stream}");
    }
}
