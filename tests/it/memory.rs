//! Redis's memory full under `noeviction` while PostgreSQL holds the batches back: producers are
//! refused (and told so), and once PostgreSQL takes writes again the backlog drains, every
//! acknowledged reading stored once, and trimming frees the memory so that appends work again.

use crate::helpers::*;
use crate::helpers::{PrivateRedis, Sensorhub, wait_ready_status};
use std::time::Duration;

/// `INFO memory`'s `used_memory` of the Redis behind `redis`.
async fn used_memory(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory in INFO")
}

/// `CONFIG SET name value` on the Redis at `url`.
async fn config_set(url: &str, name: &str, value: &str) {
    let mut redis = redis_conn(url).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// `POST /api/v1/readings` of one reading with a timestamp: (status, body).
async fn post_reading(port: u16) -> (u16, String) {
    http_request(
        port,
        "POST",
        "/api/v1/readings",
        &[("Content-Type", "application/json")],
        br#"{"sensor":"full.http","value":1,"timestamp":"2025-06-02T00:00:00Z"}"#,
    )
    .await
}

/// Redis fills during a PostgreSQL stall and drains after it (commit records and trims were
/// refused at the limit: the stored readings stopped there, memory stayed full and every append
/// was refused for good).
#[actix_web::test]
async fn a_full_redis_drains_once_postgresql_takes_writes_again() {
    const MAXMEMORY: u64 = 24 << 20;
    let server = PrivateRedis::start(false);
    let url = server.url();
    let mut redis = redis_conn(&url).await;
    config_set(&url, "maxmemory", &MAXMEMORY.to_string()).await;
    config_set(&url, "maxmemory-policy", "noeviction").await;
    let res = Resources::new();
    let env = crate::resilience::hub_env(&url, &res.database_url, &res.stream, "full");
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;

    // PostgreSQL holds every batch back.
    let mut locker = pg_client(&res.database_url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE readings_hot IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    // Producers fill Redis until it refuses them.
    let base: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let padding = "x".repeat(200);
    let mut sent = 0i64;
    let refusal = loop {
        let mut pipe = redis::pipe();
        for i in sent..sent + 200 {
            let ts = base + chrono::Duration::milliseconds(i);
            let payload = format!(
                r#"{{"sensor":"full.{}","value":{i},"timestamp":"{}","note":"{padding}"}}"#,
                i % 50,
                ts.to_rfc3339()
            );
            pipe.cmd("XADD")
                .arg(&res.stream)
                .arg("*")
                .arg("data")
                .arg(payload)
                .ignore();
        }
        sent += 200;
        if let Err(error) = pipe.query_async::<()>(&mut redis).await {
            break error;
        }
        assert!(sent < 2_000_000, "Redis never refused an append");
    };
    assert!(
        refusal.to_string().contains("OOM"),
        "refused for memory: {}",
        refusal.to_string().chars().take(300).collect::<String>()
    );
    let acknowledged: i64 = redis::cmd("XLEN")
        .arg(&res.stream)
        .query_async(&mut redis)
        .await
        .unwrap();
    // HTTP ingest tells the truth meanwhile: nothing stored, a retry is safe.
    let (status, answer) = post_reading(hub.port).await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("not_stored"), "{answer}");

    let full = hub.metric("sensorhub_redis_memory_used_ratio").await;
    assert!(full >= 0.9, "the used ratio shows Redis full: {full}");

    lock.rollback().await.unwrap();
    let pg = pg_client(&res.database_url).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored: i64 = pg
            .query_one("SELECT count(*) FROM readings", &[])
            .await
            .unwrap()
            .get(0);
        if stored == acknowledged {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{stored} of {acknowledged} acknowledged readings stored:\n{}",
            hub.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_aggregates_exact(&pg, &["1m".parse().unwrap(), "1h".parse().unwrap()]).await;
    // Trimmed: memory back under the limit, and appends are taken again.
    wait_for("memory under the limit", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        async move { (used_memory(&mut redis).await < MAXMEMORY).then_some(()) }
    })
    .await;
    let (status, answer) = post_reading(hub.port).await;
    assert_eq!(status, 202, "{answer}");
}

/// A Redis that evicts at its limit could drop the stream, the ledger or a lease: sensorhub
/// refuses to start on it, naming the policy (it started, and reported ready).
#[actix_web::test]
async fn an_evicting_redis_is_refused_at_start() {
    let server = PrivateRedis::start(false);
    let url = server.url();
    config_set(&url, "maxmemory-policy", "allkeys-lru").await;
    let res = Resources::new();
    let env = crate::resilience::hub_env(&url, &res.database_url, &res.stream, "evicting");
    let printed = Sensorhub::refused(&env).await;
    assert!(
        printed.contains("maxmemory-policy is allkeys-lru"),
        "{printed}"
    );
    assert!(printed.contains("noeviction"), "{printed}");
}

/// A Redis switched to an evicting policy while sensorhub runs: `/readyz` says so.
#[actix_web::test]
async fn readyz_names_a_redis_set_to_evict() {
    let server = PrivateRedis::start(false);
    let url = server.url();
    let res = Resources::new();
    let env = crate::resilience::hub_env(&url, &res.database_url, &res.stream, "evict-later");
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    config_set(&url, "maxmemory-policy", "volatile-lru").await;
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(10)).await;
    assert!(body.contains("redis_memory_policy"), "{body}");
    assert!(body.contains("volatile-lru"), "{body}");
}
