//! sensorhub on a private Redis Cluster with sharded streams: the shards spread over every master,
//! and the guarantee holds per shard through kill -9 of sensorhub, the failover of a master and a
//! slot moving to another master under load. Every test ends with the same proof as the
//! single-node resilience tests: stored readings are exactly the distinct ones published (or, after
//! a failover, those Redis kept), every aggregate equals the GROUP BY over the raw rows, and every
//! shard is drained with nothing uncommitted.

use crate::helpers::cluster::{ClusterTls, PrivateCluster, key_slot};
use crate::helpers::*;
use sensorhub::redis::connection::Connection;
use sensorhub::stream::append::append_payloads;
use sensorhub::stream::shards::Streams;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
const GROUP: &str = "sensorhub";

/// What a producer publishes: `readings` over `sensors`, `per_tick` of them then a pause.
#[derive(Clone, Copy)]
struct Load {
    readings: u64,
    sensors: u64,
    per_tick: u64,
    tick: Duration,
}

/// A reading's key: `(sensor, ts in µs)`.
type Reading = (String, i64);

struct Produced {
    /// Distinct readings published, with when Redis acknowledged them.
    acked: HashMap<Reading, Instant>,
    /// The last entry id each shard acknowledged.
    last_ids: HashMap<String, String>,
}

/// How a client reaches a cluster: its URL, and the CA it trusts when it speaks TLS.
#[derive(Clone)]
struct Access {
    url: String,
    ca: Option<std::path::PathBuf>,
}

fn access(cluster: &PrivateCluster) -> Access {
    Access {
        url: cluster.url(),
        ca: cluster.ca(),
    }
}

/// A cluster connection as the application opens one.
async fn cluster_conn(access: &Access) -> Connection {
    let files = sensorhub::tls::TlsFiles {
        ca: access.ca.clone(),
        client: None,
    };
    let target = sensorhub::redis::target::parse(&access.url, &files).unwrap();
    Connection::open(&target, Duration::from_secs(5))
        .await
        .expect("the cluster answers")
}

/// Publishes `load` to the shards of `base` as a producer following the documented rule does:
/// each reading to the shard of its sensor, one pipeline per shard per tick, retried until the
/// cluster takes it (a failover or a moving slot make some round trips fail).
async fn produce(access: Access, base: String, load: Load) -> Produced {
    let mut conn = cluster_conn(&access).await;
    let streams = Streams::new(&base, SHARDS);
    let start: chrono::DateTime<chrono::Utc> = "2025-09-01T12:00:00Z".parse().unwrap();
    let mut acked = HashMap::new();
    let mut last_ids = HashMap::new();
    let mut n = 0;
    while n < load.readings {
        let mut by_shard: HashMap<&str, Vec<(Reading, String)>> = HashMap::new();
        for _ in 0..load.per_tick.min(load.readings - n) {
            let sensor = format!("cl-{}", n % load.sensors);
            let ts = start + chrono::Duration::seconds((n / load.sensors) as i64);
            let payload = reading_json(&sensor, (n % 1000) as f64 * 0.25, ts);
            let shard = streams.for_sensor(&sensor);
            by_shard
                .entry(shard)
                .or_default()
                .push(((sensor, ts.timestamp_micros()), payload));
            n += 1;
        }
        for (shard, readings) in by_shard {
            let ids = loop {
                let payloads = readings.iter().map(|(_, p)| p.as_str());
                match append_payloads(&mut conn, shard, payloads).await {
                    Ok(ids) => break ids,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let now = Instant::now();
            for (key, _) in readings {
                acked.entry(key).or_insert(now);
            }
            if let Some(last) = ids.last() {
                last_ids.insert(shard.to_owned(), last.to_string());
            }
        }
        tokio::time::sleep(load.tick).await;
    }
    Produced { acked, last_ids }
}

/// A stream name whose 16 shards hash to slots on every master of `cluster`, so that each test
/// reads from all of them (a random name leaves one master without a shard about once in 200).
fn spread_base(cluster: &PrivateCluster) -> String {
    let masters: HashSet<u16> = cluster.masters().into_iter().collect();
    for _ in 0..100 {
        let base = unique_name("test:cluster");
        let owners: HashSet<u16> = Streams::new(&base, SHARDS)
            .all()
            .iter()
            .map(|s| cluster.owner_of(key_slot(s)))
            .collect();
        if owners == masters {
            return base;
        }
    }
    panic!("no stream name spread over every master");
}

fn hub_env(
    cluster: &PrivateCluster,
    database_url: &str,
    base: &str,
) -> Vec<(&'static str, String)> {
    let mut env = crate::resilience::hub_env(&cluster.url(), database_url, base, "cluster");
    env.push(("SENSORHUB_STREAM_SHARDS", SHARDS.to_string()));
    env
}

/// sensorhub started with `env`, once it is ready.
async fn spawn_ready(env: &[(&str, String)]) -> Sensorhub {
    let hub = Sensorhub::spawn(env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    hub
}

/// Asserts that the readings stored are exactly the distinct ones published.
fn assert_stored_as_published(stored: &HashSet<Reading>, produced: &Produced) {
    let published: HashSet<Reading> = produced.acked.keys().cloned().collect();
    assert!(
        *stored == published,
        "stored {} readings, published {} distinct",
        stored.len(),
        published.len()
    );
}

/// Waits until every shard is delivered through its last acknowledged entry, with nothing
/// uncommitted.
async fn wait_all_drained(access: &Access, produced: &Produced) {
    let conn = cluster_conn(access).await;
    for (shard, last_id) in &produced.last_ids {
        wait_drained(&conn, shard, GROUP, last_id).await;
    }
}

/// The stored `(sensor, ts in µs)` readings; asserts each is stored once and the aggregates equal
/// the raw rows.
async fn stored_readings(database_url: &str) -> HashSet<(String, i64)> {
    let pg = pg_client(database_url).await;
    let rows = stored_keys(&pg, "%").await;
    let stored: HashSet<(String, i64)> = rows.iter().cloned().collect();
    assert_eq!(stored.len(), rows.len(), "a reading is stored twice");
    let resolutions: Vec<sensorhub::domain::Resolution> =
        vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    assert_aggregates_exact(&pg, &resolutions).await;
    stored
}

#[actix_web::test]
async fn sixteen_shards_over_three_masters_survive_kill_9_exactly_once() {
    let cluster = PrivateCluster::start(3, 0);
    let res = Resources::new();
    let base = spread_base(&cluster);
    let env = hub_env(&cluster, &res.database_url, &base);
    let mut hub = spawn_ready(&env).await;
    let load = Load {
        readings: 24_000,
        sensors: 240,
        per_tick: 240,
        tick: Duration::from_millis(25),
    };
    let producer = tokio::spawn(produce(access(&cluster), base.clone(), load));
    let mut rng = Rng::new(0x005e_edc1);
    for kill in 0..3 {
        tokio::time::sleep(Duration::from_millis(400 + rng.below(1000))).await;
        hub.kill9();
        eprintln!("kill -9 #{kill}");
        hub = Sensorhub::spawn(&env).await;
    }
    let produced = producer.await.unwrap();
    assert_eq!(produced.last_ids.len(), SHARDS, "every shard got readings");
    wait_all_drained(&access(&cluster), &produced).await;
    let stored = stored_readings(&res.database_url).await;
    assert_stored_as_published(&stored, &produced);
    drop(hub);
}

#[actix_web::test]
async fn a_master_failing_over_under_load_keeps_what_its_replica_has_exactly_once() {
    let mut cluster = PrivateCluster::start(3, 1);
    let res = Resources::new();
    let base = spread_base(&cluster);
    let hub = spawn_ready(&hub_env(&cluster, &res.database_url, &base)).await;
    let load = Load {
        readings: 30_000,
        sensors: 300,
        per_tick: 150,
        tick: Duration::from_millis(25),
    };
    let producer = tokio::spawn(produce(access(&cluster), base.clone(), load));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let slot = key_slot(&format!("{{{base}:0}}"));
    let victim = cluster.owner_of(slot);
    cluster.kill9(victim);
    let killed = Instant::now();
    cluster.wait_failover(slot, victim);
    cluster.wait_healthy(3, 0);
    let healthy = Instant::now();
    eprintln!(
        "failover: the cluster is ok {:.1}s after kill -9 of the master on {victim}",
        (healthy - killed).as_secs_f64()
    );

    let produced = producer.await.unwrap();
    assert!(
        produced.acked.values().any(|&at| at > healthy),
        "the load ran past the failover"
    );
    wait_all_drained(&access(&cluster), &produced).await;
    let stored = stored_readings(&res.database_url).await;
    let published: HashSet<(String, i64)> = produced.acked.keys().cloned().collect();
    assert!(
        stored.is_subset(&published),
        "a stored reading was never published"
    );
    // Replication is asynchronous: what the master acknowledged just before it died may not
    // have reached its replica. Everything older than a second, and everything after the
    // failover, must be stored.
    let must_keep = produced
        .acked
        .iter()
        .filter(|(_, at)| **at + Duration::from_secs(1) < killed || **at > healthy);
    let missing: Vec<_> = must_keep.filter(|(k, _)| !stored.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "{} readings acknowledged outside the failover are missing, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    eprintln!(
        "failover: {} of {} readings lost with the master's last writes",
        published.len() - stored.len(),
        published.len()
    );
    drop(hub);
}

#[actix_web::test]
async fn a_shard_moving_to_another_master_under_load_loses_and_doubles_nothing() {
    let cluster = Arc::new(PrivateCluster::start(3, 0));
    let res = Resources::new();
    let base = spread_base(&cluster);
    let hub = spawn_ready(&hub_env(&cluster, &res.database_url, &base)).await;
    let load = Load {
        readings: 24_000,
        sensors: 240,
        per_tick: 160,
        tick: Duration::from_millis(25),
    };
    let producer = tokio::spawn(produce(access(&cluster), base.clone(), load));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let shard = format!("{{{base}:0}}");
    let slot = key_slot(&shard);
    let from = cluster.owner_of(slot);
    let to = *cluster.masters().iter().find(|&&p| p != from).unwrap();
    // Moved from a thread of its own: the producer runs on this test's runtime meanwhile.
    let mover = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || mover.migrate_slot(slot, to))
        .await
        .unwrap();
    assert_eq!(cluster.owner_of(slot), to, "the slot moved");
    eprintln!("slot {slot} of {shard} moved from {from} to {to}");

    let produced = producer.await.unwrap();
    wait_all_drained(&access(&cluster), &produced).await;
    let stored = stored_readings(&res.database_url).await;
    assert_stored_as_published(&stored, &produced);
    drop(hub);
}

/// Publishes `payloads` on `channel` through the cluster (a cluster forwards every `PUBLISH` to
/// every node).
async fn publish_all(conn: &mut Connection, channel: &str, payloads: &[String]) {
    sensorhub::redis::channel::publish_payloads(conn, channel, payloads)
        .await
        .expect("PUBLISH");
}

/// The Pub/Sub bridge subscribes on the first node the URL names; when that node dies it
/// subscribes on the next, and what is published from then on is stored.
#[actix_web::test]
async fn the_bridge_moves_its_subscription_when_its_node_dies() {
    let mut cluster = PrivateCluster::start(3, 1);
    let res = Resources::new();
    let base = spread_base(&cluster);
    let channel = format!("{base}:channel");
    let mut env = hub_env(&cluster, &res.database_url, &base);
    env.retain(|(k, _)| *k != "SENSORHUB_CHANNEL");
    env.push(("SENSORHUB_CHANNEL", channel.clone()));
    let hub = spawn_ready(&env).await;
    let mut conn = cluster_conn(&access(&cluster)).await;
    let pg = pg_client(&res.database_url).await;
    let now = chrono::Utc::now();
    let readings = |prefix: &str, n: usize| -> Vec<String> {
        (0..n)
            .map(|i| reading_json(&format!("{prefix}-{i}"), i as f64, now))
            .collect()
    };

    // Pub/Sub keeps nothing for a subscriber still to come: publish once the bridge listens.
    hub.wait_for_metric("sensorhub_bridge_leader", 1.0, Duration::from_secs(30))
        .await;
    publish_all(&mut conn, &channel, &readings("before", 100)).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        100,
        Duration::from_secs(30),
    )
    .await;

    let first = cluster.url();
    let first: u16 = first["redis+cluster://127.0.0.1:".len()..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let first_slot = cluster
        .nodes_view()
        .unwrap()
        .into_iter()
        .find(|n| n.port == first)
        .and_then(|n| n.slots.first().map(|r| *r.start()));
    cluster.kill9(first);
    if let Some(slot) = first_slot {
        cluster.wait_failover(slot, first);
    }
    cluster.wait_healthy(3, 0);
    let mut conn = cluster_conn(&access(&cluster)).await;

    // Messages published while no subscription stands are lost, as Pub/Sub's always are: probe
    // until one arrives, then publish the batch that must all be stored.
    let mut probes = 0;
    wait_for(
        "the bridge subscribed again",
        Duration::from_secs(30),
        || {
            probes += 1;
            let probe = vec![reading_json(&format!("probe-{probes}"), 0.0, now)];
            let (mut conn, channel, pg) = (conn.clone(), channel.clone(), &pg);
            async move {
                let _ =
                    sensorhub::redis::channel::publish_payloads(&mut conn, &channel, &probe).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let stored: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM readings WHERE sensor_id LIKE 'probe-%'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (stored > 0).then_some(())
            }
        },
    )
    .await;
    publish_all(&mut conn, &channel, &readings("after", 100)).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings WHERE sensor_id LIKE 'after-%'",
        100,
        Duration::from_secs(30),
    )
    .await;
    let resolutions: Vec<sensorhub::domain::Resolution> =
        vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    assert_aggregates_exact(&pg, &resolutions).await;
    drop(hub);
}

/// `rediss+cluster://`: a cluster speaking only TLS, to clients and between its nodes, verified
/// against the CA; the round trip over its 16 shards is exact.
#[actix_web::test]
async fn sixteen_shards_on_a_tls_cluster_round_trip_exactly_once() {
    let certs = TestCerts::new();
    let cluster = PrivateCluster::start_tls(
        3,
        0,
        ClusterTls {
            ca: certs.ca.clone(),
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
        },
    );
    let res = Resources::new();
    let base = spread_base(&cluster);
    let mut env = hub_env(&cluster, &res.database_url, &base);
    env.push(("SENSORHUB_REDIS_CA_FILE", certs.ca.display().to_string()));
    assert!(cluster.url().starts_with("rediss+cluster://"));
    let hub = spawn_ready(&env).await;
    let load = Load {
        readings: 8_000,
        sensors: 160,
        per_tick: 400,
        tick: Duration::from_millis(10),
    };
    let produced = produce(access(&cluster), base.clone(), load).await;
    assert_eq!(produced.last_ids.len(), SHARDS, "every shard got readings");
    wait_all_drained(&access(&cluster), &produced).await;
    let stored = stored_readings(&res.database_url).await;
    assert_stored_as_published(&stored, &produced);

    // The CA is checked: trusting another CA, the start is refused, saying why.
    let mut config = test_config(&res.name);
    config.redis_url = sensorhub::config::Secret::new(cluster.url());
    config.redis_tls = sensorhub::tls::TlsFiles {
        ca: Some(certs.other_ca.clone()),
        client: None,
    };
    config.stream = base.clone();
    config.shards = SHARDS;
    config.read_shards = (0..SHARDS).collect();
    config.channel = None;
    let started = Instant::now();
    match tokio::time::timeout(
        Duration::from_secs(60),
        sensorhub::Application::build(config),
    )
    .await
    {
        Ok(Ok(app)) => {
            app.shutdown().await;
            panic!("started trusting another CA");
        }
        Ok(Err(error)) => {
            let error = format!("{error:#}");
            assert!(error.contains("certificate"), "says why: {error}");
            eprintln!(
                "refused after {:.1}s: {error}",
                started.elapsed().as_secs_f64()
            );
        }
        Err(_) => panic!("still starting after 60 s with an untrusted certificate"),
    }
    drop(hub);
}
