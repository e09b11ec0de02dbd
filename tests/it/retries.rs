//! Retries that must not store twice: an `Idempotency-Key` reused for another body, the Pub/Sub
//! bridge retrying an append that timed out, and a Redis Cluster connection retrying an ingest
//! append on its own. Readings without timestamps, so that an entry appended twice would be two
//! rows (with a timestamp the store would skip the second as a duplicate and hide it).

use crate::helpers::cluster::{PrivateCluster, key_slot};
use crate::helpers::*;
use crate::helpers::{PrivateRedis, Sensorhub, metric_value, wait_ready_status};
use std::time::Duration;

async fn count(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.expect(sql).get(0)
}

/// The environment of a sensorhub on the Redis at `url` bridging the channel named as the
/// test's stream, with a bridge lease of `lease`.
fn bridging(url: &str, res: &Resources, lease: &str) -> Vec<(&'static str, String)> {
    let mut env = crate::resilience::hub_env(url, &res.database_url, &res.stream, "bridge");
    env.retain(|(name, _)| *name != "SENSORHUB_CHANNEL");
    env.push(("SENSORHUB_CHANNEL", res.stream.clone()));
    env.push(("SENSORHUB_BRIDGE_LEASE", lease.to_owned()));
    env
}

/// `CLIENT PAUSE <ms> WRITE` on the Redis at `url`: writes (and scripts, and `PUBLISH`) wait
/// until it ends.
async fn pause_writes(url: &str, ms: u64) {
    let mut admin = redis_conn(url).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
}

/// A key reused for another body is refused with 422 and counted; the first body stays the one
/// stored, and a retry of it is still answered as a repeat (the key answered 202 and stored
/// nothing, so a device whose key counter restarted lost its data behind success answers).
#[actix_web::test]
async fn an_idempotency_key_reused_for_another_body_is_refused() {
    let t = spawn_app().await;
    let port = t.app().port();
    let post = |body: &'static [u8]| async move {
        let headers = [
            ("Content-Type", "application/json"),
            ("Idempotency-Key", "boot-1"),
        ];
        http_request(port, "POST", "/api/v1/readings", &headers, body).await
    };
    let first = br#"{"sensor":"key","value":1}"#;
    let (status, answer) = post(first).await;
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post(br#"{"sensor":"key","value":2}"#).await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer.contains("boot-1"), "names the key: {answer}");
    let (status, answer) = post(first).await;
    assert_eq!(status, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["repeated"], true, "{answer}");
    assert_eq!(t.metrics().idempotency_keys_reused.get(), 1);
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'key' AND value = 1",
        1,
        Duration::from_secs(20),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(t.readings().await, 1, "the second body was not stored");
}

/// Redis pauses writes past the bridge's append timeout while messages are published: the
/// bridge's retry of an append that did run (once the pause ended) appends nothing, so every
/// message is stored once (the retry appended the batch again).
#[actix_web::test]
async fn a_bridge_retrying_an_append_that_ran_stores_it_once() {
    let redis = PrivateRedis::start(false);
    let url = redis.url();
    let res = Resources::new();
    // The lease outlives the pause: the bridge keeps it and retries (a pause past the lease
    // hands the bridge over, and what the old holder had is dropped, as docs/delivery.md says).
    let hub = Sensorhub::spawn(&bridging(&url, &res, "30s")).await;
    hub.wait_for_metric("sensorhub_bridge_leader", 1.0, Duration::from_secs(20))
        .await;
    // No response timeout: a PUBLISH waits out the pause (one that timed out would still run
    // after it, and a retry would publish twice).
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let mut publisher = redis::Client::open(url.clone())
        .unwrap()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap();
    let payload = |i: i64| format!(r#"{{"sensor":"bridged","value":{i}}}"#);
    let published: i64 = 1000;
    // Half before, then the last messages and the pause in one pipeline: Redis sends the
    // messages to the bridge as the pause begins, so the bridge's append of them waits out the
    // pause, times out, and is retried.
    let publish = |range: std::ops::Range<i64>| {
        let mut pipe = redis::pipe();
        for i in range {
            pipe.cmd("PUBLISH")
                .arg(&res.stream)
                .arg(payload(i))
                .ignore();
        }
        pipe
    };
    let _: () = publish(0..published / 2 - 10)
        .query_async(&mut publisher)
        .await
        .unwrap();
    let mut pausing = publish(published / 2 - 10..published / 2);
    pausing
        .cmd("CLIENT")
        .arg("PAUSE")
        .arg(7000)
        .arg("WRITE")
        .ignore();
    let _: () = pausing.query_async(&mut publisher).await.unwrap();
    let _: () = publish(published / 2..published)
        .query_async(&mut publisher)
        .await
        .unwrap();
    let pg = pg_client(&res.database_url).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&pg, "SELECT count(*) FROM readings").await < published {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {published} stored:\n{}",
            count(&pg, "SELECT count(*) FROM readings").await,
            hub.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&pg, "SELECT count(*) FROM readings").await, published);
    let (_, metrics) = http_get(hub.port, "/metrics").await;
    assert!(
        metric_value(&metrics, "sensorhub_redis_errors_total{actor=\"bridge\"}").unwrap_or(0.0)
            >= 1.0,
        "an append timed out during the pause and was retried"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "sensorhub_messages_dropped_total{source=\"pubsub\"}"
        ),
        Some(0.0)
    );
}

/// The Redis Cluster node that owns the stream pauses writes during an ingest POST: the cluster
/// connection retries the append on its own after its timeout, and the reading is stored once
/// whatever the answer (the retry appended a second entry, and the POST was answered 202).
#[actix_web::test]
async fn a_cluster_retrying_an_ingest_append_stores_it_once() {
    let cluster = PrivateCluster::start(3, 0);
    let res = Resources::new();
    let stream = format!("{{{}}}", res.name);
    let env = crate::resilience::hub_env(&cluster.url(), &res.database_url, &stream, "cluster");
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    let owner = cluster.owner_of(key_slot(&stream));
    let owner_url = format!("redis://127.0.0.1:{owner}");
    pause_writes(&owner_url, 7000).await;
    let headers = [("Content-Type", "application/json")];
    let body = br#"{"sensor":"once","value":1}"#;
    let (status, answer) = http_request(hub.port, "POST", "/api/v1/readings", &headers, body).await;
    assert!(
        status == 202 || (status == 503 && answer.contains("\"unknown\"")),
        "stored, or honestly unknown: {status} {answer}"
    );
    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        1,
        Duration::from_secs(40),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&pg, "SELECT count(*) FROM readings").await, 1);
}

/// A bridge that cannot subscribe (its Redis user may not) bridges nothing: once no instance has
/// bridged the channel for the grace period, `/readyz` says so, with the reason (it answered
/// ready while every published message was lost).
#[actix_web::test]
async fn readyz_reports_a_channel_no_instance_bridges() {
    let redis = PrivateRedis::start(false);
    let mut admin = redis_conn(&redis.url()).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nosub")
        .arg("on")
        .arg(">nosub-pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-subscribe")
        .arg("-psubscribe")
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = redis
        .url()
        .replacen("redis://", "redis://nosub:nosub-pw@", 1);
    let res = Resources::new();
    let hub = Sensorhub::spawn(&bridging(&url, &res, "1s")).await;
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(30)).await;
    assert!(body.contains("\"bridge\""), "{body}");
    assert!(body.contains("not been bridged"), "{body}");
}
