//! Nothing lost, nothing doubled: sensorhub as a real process under kill -9, a PostgreSQL outage,
//! a Redis restart, several instances (one killed for good), a slow database and SIGTERM — each
//! while a producer publishes. Every test ends with the same proof: the distinct readings published
//! are stored once each, every aggregate equals the GROUP BY over the raw rows, nothing delivered stays uncommitted.

use crate::helpers::*;
use redis::aio::ConnectionManager;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// What a producer publishes.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub(crate) readings: u64,
    pub(crate) sensors: u64,
    /// Entries per pipelined round trip, and the pause between them.
    pub(crate) per_tick: u64,
    pub(crate) tick: Duration,
    /// Every n-th message re-sends an earlier reading (0: none).
    pub(crate) duplicate_every: u64,
    /// Every n-th reading is an hour late (0: none).
    pub(crate) late_every: u64,
}

pub(crate) struct Produced {
    /// Distinct `(sensor, ts in µs)` published.
    pub(crate) distinct: HashSet<(String, i64)>,
    pub(crate) last_id: String,
}

/// Publishes `load` with `XADD`, retrying a round trip until Redis takes it (a retried round trip
/// may add some entries twice: they are duplicates by key, as a device retrying would send).
pub(crate) async fn produce(redis_url: String, stream: String, load: Load) -> Produced {
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut conn = ConnectionManager::new(client).await.unwrap();
    let base: chrono::DateTime<chrono::Utc> = "2025-09-01T12:00:00Z".parse().unwrap();
    let mut distinct = HashSet::new();
    let mut sent: Vec<String> = Vec::new();
    let mut last_id = String::new();
    let mut n = 0;
    while n < load.readings {
        let mut payloads = Vec::new();
        for _ in 0..load.per_tick.min(load.readings - n) {
            let sensor = format!("load-{}", n % load.sensors);
            let mut ts = base + chrono::Duration::seconds((n / load.sensors) as i64);
            if load.late_every > 0 && n % load.late_every == 0 {
                ts -= chrono::Duration::hours(1);
            }
            let payload = reading_json(&sensor, (n % 1000) as f64 * 0.5, ts);
            distinct.insert((sensor, ts.timestamp_micros()));
            if load.duplicate_every > 0 && n % load.duplicate_every == 0 && sent.len() > 20 {
                payloads.push(sent[sent.len() - 17].clone());
            }
            sent.push(payload.clone());
            payloads.push(payload);
            n += 1;
        }
        loop {
            let mut pipe = redis::pipe();
            for payload in &payloads {
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("data")
                    .arg(payload);
            }
            match pipe.query_async::<Vec<String>>(&mut conn).await {
                Ok(ids) => {
                    last_id = ids.last().cloned().unwrap_or(last_id);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tokio::time::sleep(load.tick).await;
    }
    Produced { distinct, last_id }
}

pub(crate) fn hub_env(
    redis_url: &str,
    database_url: &str,
    stream: &str,
    consumer: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("SENSORHUB_REDIS_URL", redis_url.to_owned()),
        ("SENSORHUB_DATABASE_URL", database_url.to_owned()),
        ("SENSORHUB_STREAM", stream.to_owned()),
        ("SENSORHUB_CHANNEL", String::new()),
        ("SENSORHUB_CONSUMER", consumer.to_owned()),
        ("SENSORHUB_BATCH_SIZE", "500".to_owned()),
        ("SENSORHUB_SHUTDOWN_TIMEOUT", "20s".to_owned()),
    ]
}

/// The proof every scenario ends with.
pub(crate) async fn assert_exactly_once(database_url: &str, produced: &Produced, extra_rows: i64) {
    let pg = pg_client(database_url).await;
    let rows: i64 = pg
        .query_one(
            "SELECT count(*) FROM readings WHERE sensor_id LIKE 'load-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows,
        produced.distinct.len() as i64,
        "every distinct reading published is stored once"
    );
    let stored: HashSet<(String, i64)> = stored_keys(&pg, "load-%").await.into_iter().collect();
    assert!(
        stored == produced.distinct,
        "stored readings differ from those published"
    );
    let all: i64 = pg
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(all, rows + extra_rows);
    let resolutions: Vec<sensorhub::domain::Resolution> =
        vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    assert_aggregates_exact(&pg, &resolutions).await;
}

#[actix_web::test]
async fn kill_9_at_random_moments_loses_and_doubles_nothing() {
    let res = Resources::new();
    let env = hub_env(REDIS_URL, &res.database_url, &res.stream, "victim");
    let mut hub = Sensorhub::spawn(&env).await;
    let load = Load {
        readings: 30_000,
        sensors: 200,
        per_tick: 100,
        tick: Duration::from_millis(15),
        duplicate_every: 20,
        late_every: 25,
    };
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load));
    hub.kill_and_restart(&env, 5, &mut Rng::new(0x9e37_79b9), 1200)
        .await;
    let produced = producer.await.unwrap();
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    assert_exactly_once(&res.database_url, &produced, 0).await;
    let (pending, _) = group_state(&mut redis.clone(), &res.stream, "sensorhub").await;
    assert_eq!(pending, 0);
    drop(hub);
}

#[actix_web::test]
async fn postgres_outage_of_30s_waits_in_redis_and_loses_nothing() {
    let pg = PrivatePostgres::start();
    let res = Resources::new();
    let database_url = pg.url("sensorhub");
    let mut env = hub_env(REDIS_URL, &database_url, &res.stream, "outage");
    env.push(("SENSORHUB_MAX_IN_FLIGHT", "4".into()));
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;
    let load = Load {
        readings: 60_000,
        sensors: 300,
        per_tick: 75,
        tick: Duration::from_millis(50),
        duplicate_every: 0,
        late_every: 30,
    };
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load));
    tokio::time::sleep(Duration::from_secs(4)).await;

    pg.stop_server();
    let down = Instant::now();
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(10)).await;
    assert!(
        body.contains("\"postgres\"") && body.contains("failing"),
        "{body}"
    );
    let mut peak_in_flight = 0.0f64;
    while down.elapsed() < Duration::from_secs(30) {
        peak_in_flight = peak_in_flight.max(hub.metric("sensorhub_batches_in_flight").await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, body) = http_get(hub.port, "/readyz").await;
    assert!(
        body.contains("postgres"),
        "still naming the database while it is down: {body}"
    );
    let lag = hub.metric("sensorhub_consumer_group_lag").await;
    assert!(lag > 0.0, "the backlog waits in Redis (group lag {lag})");

    pg.start_server();
    let up = Instant::now();
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    let ready_after = up.elapsed();
    let produced = producer.await.unwrap();
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    let peak_rss = hub.peak_rss_mib();
    eprintln!(
        "postgres outage: {} readings, ready again {:.1}s after restart, drained {:.1}s after restart, peak in flight {peak_in_flight}, peak RSS {peak_rss:.1} MiB",
        produced.distinct.len(),
        ready_after.as_secs_f64(),
        up.elapsed().as_secs_f64()
    );
    assert!(
        peak_in_flight <= 4.0,
        "in-flight bound held ({peak_in_flight})"
    );
    assert!(
        peak_rss < 100.0,
        "resident memory stayed bounded ({peak_rss:.1} MiB)"
    );
    assert_exactly_once(&database_url, &produced, 0).await;
    assert!(
        hub.metric("sensorhub_reconnects_total{target=\"postgres\"}")
            .await
            >= 1.0
    );
    assert!(
        hub.logs().matches("batch write failed, retrying").count() <= 2,
        "one log line per state change, not per attempt"
    );
}

#[actix_web::test]
async fn redis_restart_with_persistence_resumes_by_itself() {
    let mut redis_server = PrivateRedis::start(true);
    let res = Resources::new();
    let redis_url = redis_server.url();
    let mut env = hub_env(&redis_url, &res.database_url, &res.stream, "restart");
    env.retain(|(k, _)| *k != "SENSORHUB_CHANNEL");
    env.push(("SENSORHUB_CHANNEL", res.stream.clone()));
    let hub = Sensorhub::spawn(&env).await;
    let load = Load {
        readings: 20_000,
        sensors: 100,
        per_tick: 100,
        tick: Duration::from_millis(20),
        duplicate_every: 50,
        late_every: 0,
    };
    let producer = tokio::spawn(produce(redis_url.clone(), res.stream.clone(), load));
    tokio::time::sleep(Duration::from_secs(2)).await;

    redis_server.stop_server();
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis_server.start_server();
    let restarted = Instant::now();

    let produced = producer.await.unwrap();
    let redis = redis_conn(&redis_url).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    eprintln!(
        "redis restart: drained {:.1}s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    assert_exactly_once(&res.database_url, &produced, 0).await;
    assert!(
        hub.metric("sensorhub_reconnects_total{target=\"redis\"}")
            .await
            >= 1.0
    );
    wait_ready_status(hub.port, 200, Duration::from_secs(10)).await;
    // The bridge came back too: a published reading is stored.
    let conn = redis.clone();
    wait_for("the bridge to resubscribe", Duration::from_secs(20), || {
        let mut conn = conn.clone();
        let channel = res.stream.clone();
        async move {
            let n: i64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(r#"{"sensor":"after-restart","value":1}"#)
                .query_async(&mut conn)
                .await
                .unwrap();
            (n == 1).then_some(())
        }
    })
    .await;
    let pg = &pg_client(&res.database_url).await;
    wait_for_count(
        pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'after-restart'",
        1,
        Duration::from_secs(10),
    )
    .await;
}

#[actix_web::test]
async fn several_instances_share_the_stream_and_survive_one_killed_for_good() {
    let res = Resources::new();
    let lease_key = format!("{}:bridge-lease", res.stream);
    let env = |consumer: &str| {
        let mut env = hub_env(REDIS_URL, &res.database_url, &res.stream, consumer);
        env.retain(|(k, _)| *k != "SENSORHUB_CHANNEL");
        env.extend([
            ("SENSORHUB_CHANNEL", res.stream.clone()),
            ("SENSORHUB_CLAIM_IDLE", "2s".into()),
            ("SENSORHUB_BRIDGE_LEASE", "1500ms".into()),
        ]);
        env
    };
    let first = Sensorhub::spawn(&env("c1")).await; // migrates before the others start
    let mut hubs = [
        first,
        Sensorhub::spawn(&env("c2")).await,
        Sensorhub::spawn(&env("c3")).await,
    ];
    let mut redis = redis_conn(REDIS_URL).await;
    let leader_index = |redis: redis::aio::MultiplexedConnection| {
        let key = lease_key.clone();
        async move {
            let mut redis = redis;
            let holder: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            // The lease is held by a token that starts with the holder's consumer name.
            holder
                .and_then(|h| {
                    h.split('/')
                        .next()?
                        .strip_prefix('c')?
                        .parse::<usize>()
                        .ok()
                })
                .map(|n| n - 1)
        }
    };
    let leader = wait_for("a bridge leader", Duration::from_secs(10), || {
        leader_index(redis.clone())
    })
    .await;
    wait_for("the leader subscribed", Duration::from_secs(10), || {
        let hub = &hubs[leader];
        async move { (hub.metric("sensorhub_bridge_leader").await == 1.0).then_some(()) }
    })
    .await;

    // With three running, each published reading enters the stream once.
    let publish = |prefix: &'static str,
                   redis: redis::aio::MultiplexedConnection,
                   channel: String| async move {
        let mut redis = redis;
        let now = chrono::Utc::now();
        for i in 0..50 {
            let with_ts = reading_json(&format!("{prefix}-ts-{i}"), 1.0, now);
            let without_ts = format!(r#"{{"sensor":"{prefix}-nots-{i}","value":2}}"#);
            for payload in [with_ts, without_ts] {
                let receivers: i64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(payload)
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                assert_eq!(receivers, 1, "only the lease holder subscribes");
            }
        }
    };
    publish("pub-a", redis.clone(), res.stream.clone()).await;

    let load = Load {
        readings: 30_000,
        sensors: 150,
        per_tick: 100,
        tick: Duration::from_millis(15),
        duplicate_every: 40,
        late_every: 40,
    };
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Kill the bridging instance for good, mid-run.
    hubs[leader].kill9();
    let killed = Instant::now();
    // Delivered and not committed when it died: the victim's batches in flight, and the
    // survivors' (which they commit themselves).
    let (uncommitted, _) = group_state(&mut redis, &res.stream, "sensorhub").await;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let new_leader = wait_for(
        "another instance to take the bridge over",
        Duration::from_secs(10),
        || {
            let redis = redis.clone();
            let leader_index = &leader_index;
            async move { leader_index(redis).await.filter(|i| *i != leader) }
        },
    )
    .await;
    wait_for("the new leader subscribed", Duration::from_secs(10), || {
        let hub = &hubs[new_leader];
        async move { (hub.metric("sensorhub_bridge_leader").await == 1.0).then_some(()) }
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!(
        "bridge takeover after kill -9: {:.2}s (lease 1.5s); entries delivered and uncommitted at the kill: {uncommitted}",
        takeover.as_secs_f64()
    );
    assert!(
        takeover < Duration::from_secs(4),
        "takeover within 4/3 of the lease plus a margin"
    );
    publish("pub-b", redis.clone(), res.stream.clone()).await;

    let produced = producer.await.unwrap();
    let tail: String = {
        let ids: Vec<String> = redis::pipe()
            .cmd("XADD")
            .arg(&res.stream)
            .arg("*")
            .arg("data")
            .arg(r#"{"sensor":"marker","value":0}"#)
            .query_async(&mut redis)
            .await
            .unwrap();
        ids[0].clone()
    };
    wait_drained(&redis, &res.stream, "sensorhub", &tail).await;
    assert_exactly_once(&res.database_url, &produced, 200 + 1).await;
    let pg = pg_client(&res.database_url).await;
    for prefix in ["pub-a-%", "pub-b-%"] {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM readings WHERE sensor_id LIKE $1",
                &[&prefix],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 100, "{prefix}: each published reading stored once");
    }
    // The victim's uncommitted entries, if it had any in flight, were re-read by a survivor (the
    // deterministic check of that is `supervision::deliveries_lost_in_flight_are_re_read`).
    let mut reread = 0.0;
    for i in &survivors {
        reread += hubs[*i].metric("sensorhub_entries_reread_total").await;
    }
    eprintln!("entries re-read by the survivors: {reread}");
    let (uncommitted, _) = group_state(&mut redis, &res.stream, "sensorhub").await;
    assert_eq!(uncommitted, 0, "every delivered entry is committed");
}

#[actix_web::test]
async fn slow_database_keeps_the_in_flight_bound_and_memory() {
    let res = Resources::new();
    let mut env = hub_env(REDIS_URL, &res.database_url, &res.stream, "slow");
    env.push(("SENSORHUB_MAX_IN_FLIGHT", "3".into()));
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;
    let mut locker = pg_client(&res.database_url).await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE aggregates IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();

    let load = Load {
        readings: 40_000,
        sensors: 400,
        per_tick: 1000,
        tick: Duration::from_millis(10),
        duplicate_every: 0,
        late_every: 0,
    };
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load));
    let held = Instant::now();
    let mut peak_in_flight = 0.0f64;
    while held.elapsed() < Duration::from_secs(10) {
        peak_in_flight = peak_in_flight.max(hub.metric("sensorhub_batches_in_flight").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lag = hub.metric("sensorhub_consumer_group_lag").await;
    let written = hub.metric("sensorhub_readings_written_total").await;
    lock.rollback().await.unwrap();
    let produced = producer.await.unwrap();
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    let peak_rss = hub.peak_rss_mib();
    eprintln!(
        "slow database: peak in flight {peak_in_flight} (bound 3), peak RSS {peak_rss:.1} MiB, lag while locked {lag}"
    );
    assert_eq!(
        written, 0.0,
        "nothing committed while the aggregates were locked"
    );
    assert!(
        (1.0..=3.0).contains(&peak_in_flight),
        "in-flight bound held ({peak_in_flight})"
    );
    assert!(lag > 10_000.0, "the backlog waited in Redis (lag {lag})");
    assert!(
        peak_rss < 100.0,
        "resident memory stayed bounded ({peak_rss:.1} MiB)"
    );
    assert_exactly_once(&res.database_url, &produced, 0).await;
}

#[actix_web::test]
async fn sigterm_under_load_exits_zero_and_loses_nothing() {
    let res = Resources::new();
    let env = hub_env(REDIS_URL, &res.database_url, &res.stream, "term");
    let mut hub = Sensorhub::spawn(&env).await;
    let load = Load {
        readings: 20_000,
        sensors: 100,
        per_tick: 100,
        tick: Duration::from_millis(15),
        duplicate_every: 0,
        late_every: 0,
    };
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let status = hub
        .terminate(Duration::from_secs(15))
        .await
        .expect("exits within 15 s of SIGTERM");
    eprintln!(
        "SIGTERM under load: exit {status} after {:.2}s",
        asked.elapsed().as_secs_f64()
    );
    assert!(status.success(), "exit code 0:\n{}", hub.logs());
    assert!(
        hub.logs()
            .contains("all batches in flight committed and acknowledged")
    );
    let mut redis = redis_conn(REDIS_URL).await;
    let (uncommitted, _) = group_state(&mut redis, &res.stream, "sensorhub").await;
    assert_eq!(
        uncommitted, 0,
        "everything read was committed and recorded before a graceful stop"
    );

    let hub = Sensorhub::spawn(&env).await;
    let produced = producer.await.unwrap();
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    assert_exactly_once(&res.database_url, &produced, 0).await;
    assert_eq!(
        hub.metric("sensorhub_readings_duplicate_total").await,
        0.0,
        "nothing re-written after the graceful stop"
    );
}
