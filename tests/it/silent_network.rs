//! Networks that go silent rather than fail: every packet between sensorhub and Redis, PostgreSQL
//! or the MQTT broker dropped for 60 s (no reset, as a failed switch or a firewall would), then
//! healed, while a producer keeps sending on a path of its own. Each connection notices within
//! `SENSORHUB_NETWORK_TIMEOUT`, `/readyz` says so, the connections in use afterwards are new ones
//! (not the old ones woken by TCP retransmission, hours later on a real dead peer), and every
//! reading is stored once with aggregates exact. A long, lossy link (200 ms round trip added, 5%
//! of packets dropped) under load keeps the same proof.
//!
//! The servers run in a network namespace of the test's own ([`crate::netns`]).

use crate::helpers::netns::DelayProxy;
use crate::helpers::*;
use crate::resilience::{Load, Produced, assert_exactly_once, hub_env, produce};
use std::time::{Duration, Instant};

/// What the tests configure: detection within 5 s.
const TIMEOUT: &str = "5s";
/// How long /readyz may take to turn, beyond the timeout: a probe, and the readiness poll.
const SLACK: Duration = Duration::from_secs(5);
/// How long the link stays silent.
const SILENCE: Duration = Duration::from_secs(60);

fn load(readings: u64) -> Load {
    Load {
        readings,
        sensors: 100,
        per_tick: 50,
        tick: Duration::from_millis(50),
        duplicate_every: 0,
        late_every: 0,
    }
}

/// Silences `ns` once the hub is busy, checks that `/readyz` names `check` within the timeout,
/// keeps the silence for [`SILENCE`], heals, and waits for readiness again. Returns the instant
/// the silence began.
async fn silence_and_heal(ns: &Netns, hub: &Sensorhub, check: &str) -> Instant {
    tokio::time::sleep(Duration::from_secs(3)).await;
    ns.silence();
    let silent = Instant::now();
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(5) + SLACK).await;
    let noticed = silent.elapsed();
    assert!(body.contains(check), "/readyz names {check}: {body}");
    eprintln!(
        "silent {check}: /readyz 503 after {:.1}s",
        noticed.as_secs_f64()
    );
    tokio::time::sleep(SILENCE.saturating_sub(silent.elapsed())).await;
    ns.heal();
    let healed = Instant::now();
    wait_ready_status(hub.port, 200, Duration::from_secs(60)).await;
    eprintln!(
        "silent {check}: ready {:.1}s after the link healed",
        healed.elapsed().as_secs_f64()
    );
    silent
}

#[actix_web::test]
async fn a_silent_redis_is_given_up_and_nothing_is_lost() {
    let ns = Netns::new();
    let redis = PrivateRedis::start_in(&ns);
    let side_url = redis.url().replace(&ns.ip(), &ns.side_ip());
    let res = Resources::new();
    let mut env = hub_env(&redis.url(), &res.database_url, &res.stream, "silent-redis");
    env.push(("SENSORHUB_NETWORK_TIMEOUT", TIMEOUT.into()));
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;
    let producer = tokio::spawn(produce(side_url.clone(), res.stream.clone(), load(60_000)));

    let silent = silence_and_heal(&ns, &hub, "redis").await;
    let produced: Produced = producer.await.unwrap();
    let side = redis_conn(&side_url).await;
    wait_drained(&side, &res.stream, "sensorhub", &produced.last_id).await;
    assert_exactly_once(&res.database_url, &produced, 0).await;

    // The connections sensorhub uses now were opened after the silence began: the old ones
    // were given up, not left waiting for TCP to retransmit into them.
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut side.clone())
        .await
        .unwrap();
    let since = silent.elapsed().as_secs();
    let hub_addr = format!("laddr={}:", ns.ip());
    let old_in_use: Vec<&str> = clients
        .lines()
        .filter(|line| line.contains(&hub_addr))
        .filter(|line| field(line, "idle") < 3 && field(line, "age") >= since)
        .collect();
    assert!(
        old_in_use.is_empty(),
        "connections from before the silence still in use: {old_in_use:#?}"
    );
}

#[actix_web::test]
async fn a_silent_postgres_is_given_up_and_nothing_is_lost() {
    let ns = Netns::new();
    let pg = PrivatePostgres::start_in(&ns);
    let database_url = pg.url("sensorhub");
    let side_url = database_url.replace(&ns.ip(), &ns.side_ip());
    let res = Resources::new();
    let mut env = hub_env(REDIS_URL, &database_url, &res.stream, "silent-pg");
    env.push(("SENSORHUB_NETWORK_TIMEOUT", TIMEOUT.into()));
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load(60_000)));

    let silent = silence_and_heal(&ns, &hub, "postgres").await;
    let produced = producer.await.unwrap();
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    assert_exactly_once(&side_url, &produced, 0).await;

    // No session of sensorhub's from before the silence is left on the server: neither one
    // still in use, nor one the server keeps for a client that is gone (an `idle in
    // transaction` one would hold its locks).
    let pg = pg_client(&side_url).await;
    let since = silent.elapsed().as_secs_f64();
    let old = wait_for(
        "the server to let go of the sessions from before the silence",
        Duration::from_secs(30),
        || {
            let pg = &pg;
            async move {
                let old: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                         WHERE application_name LIKE 'sensorhub%'
                           AND backend_start < now() - make_interval(secs => $1)",
                        &[&since],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (old == 0).then_some(old)
            }
        },
    )
    .await;
    assert_eq!(old, 0);
}

#[actix_web::test]
async fn a_silent_broker_is_given_up_and_nothing_is_lost() {
    let ns = Netns::new();
    let broker = PrivateMosquitto::start_in(&ns, "");
    let res = Resources::new();
    let base = unique_name("silent");
    let mut env = hub_env(REDIS_URL, &res.database_url, &res.stream, "silent-mqtt");
    env.extend([
        ("SENSORHUB_NETWORK_TIMEOUT", TIMEOUT.into()),
        ("SENSORHUB_MQTT_READY_GRACE", "1s".into()),
        (
            "SENSORHUB_MQTT_URL",
            format!("mqtt://{}:{}", broker.host(), broker.port),
        ),
        ("SENSORHUB_MQTT_TOPICS", format!("{base}/#=json")),
    ]);
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;

    let side = ns.side_ip();
    let port = broker.port;
    let topic = format!("{base}/meter");
    let base_ts: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let total = 7_000;
    let publisher = tokio::spawn(async move {
        for chunk in (0..total).collect::<Vec<i64>>().chunks(50) {
            let messages: Vec<(String, Vec<u8>)> = chunk
                .iter()
                .map(|i| {
                    let ts = base_ts + chrono::Duration::seconds(*i);
                    let payload = reading_json(&format!("load-{}", i % 20), *i as f64, ts);
                    (topic.clone(), payload.into_bytes())
                })
                .collect();
            crate::mqtt::publish_at(&side, port, &messages).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    silence_and_heal(&ns, &hub, "mqtt").await;
    publisher.await.unwrap();
    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        total,
        Duration::from_secs(60),
    )
    .await;
    let resolutions: Vec<sensorhub::domain::Resolution> =
        vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    assert_aggregates_exact(&pg, &resolutions).await;
}

/// A long, lossy link under load: 100 ms added each way (200 ms round trip) in front of Redis and
/// PostgreSQL, and one in twenty packets dropped on the link behind: slower, never wrong.
#[actix_web::test]
async fn a_slow_lossy_link_under_load_loses_and_doubles_nothing() {
    let ns = Netns::new();
    let redis = PrivateRedis::start_in(&ns);
    let pg = PrivatePostgres::start_in(&ns);
    let delay = Duration::from_millis(100);
    let redis_proxy = DelayProxy::start(format!("{}:{}", ns.ip(), redis.port), delay);
    let pg_proxy = DelayProxy::start(format!("{}:{}", ns.ip(), pg.port), delay);
    let database_url = format!("postgres://postgres@127.0.0.1:{}/sensorhub", pg_proxy.port);
    let side_redis = redis.url().replace(&ns.ip(), &ns.side_ip());
    let res = Resources::new();
    let mut env = hub_env(
        &format!("redis://127.0.0.1:{}", redis_proxy.port),
        &database_url,
        &res.stream,
        "lossy",
    );
    env.push(("SENSORHUB_NETWORK_TIMEOUT", TIMEOUT.into()));
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    ns.lose(5);
    let produced = produce(side_redis.clone(), res.stream.clone(), load(30_000)).await;
    let side = redis_conn(&side_redis).await;
    wait_drained(&side, &res.stream, "sensorhub", &produced.last_id).await;
    ns.heal();
    assert_exactly_once(
        &pg.url("sensorhub").replace(&ns.ip(), &ns.side_ip()),
        &produced,
        0,
    )
    .await;
    drop(hub);
}

/// The number after `name=` in a `CLIENT LIST` line.
fn field(line: &str, name: &str) -> u64 {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}
