//! Phase 5, Redis's own share of the work.

use super::*;

/// Phase 5, Redis's own share: the same entries preloaded anew and delivered to a consumer group
/// that does nothing else with them, in reads of a batch each (`XREADGROUP COUNT`), then `XACK`
/// per batch as sensorhub does, or with `noack` (`XREADGROUP NOACK`: no pending-entries list and no
/// `XACK`, which gives up redelivery after a crash). Returns Redis's CPU seconds.
pub(crate) async fn redis_share(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    args: &Args,
    base: chrono::DateTime<chrono::Utc>,
    noack: bool,
) -> f64 {
    let entries = preload(redis, stream, args, base).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("share")
        .arg("0")
        .query_async(redis)
        .await
        .unwrap();
    let count = (args.batch_size / args.per_entry).max(1);
    let before = cpu_of("redis-server");
    let mut delivered = 0;
    loop {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("share")
            .arg("bench")
            .arg("COUNT")
            .arg(count);
        if noack {
            read.arg("NOACK");
        }
        let reply: redis::streams::StreamReadReply = read
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(redis)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|key| key.ids)
            .map(|entry| entry.id)
            .collect();
        if ids.is_empty() {
            break;
        }
        delivered += ids.len() as u64;
        if !noack {
            let _: u64 = redis::cmd("XACK")
                .arg(stream)
                .arg("share")
                .arg(&ids)
                .query_async(redis)
                .await
                .unwrap();
        }
    }
    let cpu = cpu_of("redis-server") - before;
    let _: u64 = redis::cmd("DEL")
        .arg(stream)
        .query_async(redis)
        .await
        .unwrap();
    assert_eq!(
        delivered, entries,
        "the group was not delivered every entry"
    );
    cpu
}
