//! Redis as a test sees it: connections of its own, reads as another consumer, and the state of
//! the group and its ledger.

use crate::helpers::{REDIS_URL, wait_for};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use sensorhub::redis::connection::Connection;
use sensorhub::redis::entry::EntryId;
use std::time::Duration;

/// A Redis connection for a test's own commands (producing, inspecting).
pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers (scripts/services.sh)")
}

/// A connection manager to the shared Redis, as the application's own Redis code takes.
pub async fn redis_manager() -> Connection {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection_manager()
        .await
        .expect("Redis answers (scripts/services.sh)")
        .into()
}

/// `XREADGROUP GROUP <group> <consumer> COUNT <count> [NOACK] STREAMS <stream> >`: a read by a
/// consumer other than the application under test (or by its previous life).
pub async fn read_as(
    conn: &mut Connection,
    stream: &str,
    (group, consumer): (&str, &str),
    count: usize,
    noack: bool,
) -> redis::Value {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if noack {
        cmd.arg("NOACK");
    }
    cmd.arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap()
}

/// Appends `n` entries (`data` = 0, 1, ...) to `stream` and returns their ids.
pub async fn xadd_numbered(conn: &mut Connection, stream: &str, n: usize) -> Vec<EntryId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(i)
            .query_async(conn)
            .await
            .unwrap();
        ids.push(id.parse().unwrap());
    }
    ids
}

/// Waits until every entry up to `last_id` is delivered to the group and its commit recorded.
pub async fn wait_drained(
    redis: &(impl ConnectionLike + Clone),
    stream: &str,
    group: &str,
    last_id: &str,
) {
    let last: EntryId = last_id.parse().unwrap();
    wait_for(
        "the stream to be processed",
        Duration::from_secs(90),
        || {
            let mut redis = redis.clone();
            async move {
                let (pending, delivered) = group_state(&mut redis, stream, group).await;
                (pending == 0 && delivered >= last).then_some(())
            }
        },
    )
    .await;
}

/// Most entries [`group_state`] counts.
const UNCOMMITTED_COUNTED: usize = 1000;

/// (entries delivered to the group whose commit is not recorded, up to [`UNCOMMITTED_COUNTED`];
/// last delivered id) of a consumer group. sensorhub reads with `NOACK`: this is what the
/// group's pending count was, read from sensorhub's ledger instead.
pub async fn group_state(
    redis: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> (u64, EntryId) {
    let last_delivered = last_delivered(redis, stream, group).await;
    let through = sensorhub::stream::ledger::through(redis, stream, group)
        .await
        .expect("the ledger's watermark");
    if last_delivered <= through {
        return (0, last_delivered);
    }
    let uncommitted: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({through}"))
        .arg(last_delivered.to_string())
        .arg("COUNT")
        .arg(UNCOMMITTED_COUNTED)
        .query_async(redis)
        .await
        .expect("XRANGE");
    (uncommitted.len() as u64, last_delivered)
}

/// The last id delivered to a consumer group.
async fn last_delivered(redis: &mut impl ConnectionLike, stream: &str, group: &str) -> EntryId {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await
        .expect("XINFO GROUPS");
    let redis::Value::Array(groups) = reply else {
        panic!("unexpected XINFO reply {reply:?}")
    };
    for g in groups {
        let redis::Value::Array(flat) = g else {
            continue;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        let map: std::collections::HashMap<String, String> = flat
            .chunks(2)
            .map(|pair| (text(&pair[0]), text(&pair[1])))
            .collect();
        if map.get("name").map(String::as_str) == Some(group) {
            return map["last-delivered-id"].parse().unwrap();
        }
    }
    panic!("group {group} not found on {stream}");
}
