//! The Pub/Sub channel: subscribing to it (the bridge) and publishing to it (`sensorhub simulate`).

use redis::RedisResult;
use redis::aio::{ConnectionLike, PubSub};

/// A subscription to `channel` on a connection of its own.
pub async fn subscribe(client: &redis::Client, channel: &str) -> RedisResult<PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Publishes payloads on a Pub/Sub channel, in one round trip (`sensorhub simulate --via
/// publish`: the bridge of a running sensorhub appends them to the stream).
pub async fn publish_payloads<P: redis::ToRedisArgs>(
    conn: &mut impl ConnectionLike,
    channel: &str,
    payloads: impl IntoIterator<Item = P>,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
    }
    pipe.query_async::<()>(conn).await
}
