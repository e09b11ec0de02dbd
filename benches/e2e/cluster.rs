//! Phase 8, **Redis Cluster**: the same readings preloaded into 16 shards (by the producers' rule,
//! `crc32(sensor_id) mod 16`) on a three-master Redis Cluster of the run's own, then a fresh
//! sensorhub reading them all; against one stream on the local Redis, measured the same way in the
//! same run. Readings/s from spawning the process (on a database and groups a first start made)
//! to its last commit.

use super::{
    Args, drop_run, exactness, free_port, reading_payload, spawn_sensorhub_with, synthetic,
    until_stored, wait_ready,
};
use sensorhub::redis::connection::Connection;
use sensorhub::stream::append::append_payloads;
use sensorhub::stream::shards::{Streams, shard_of};
use std::process::Command;
use std::time::{Duration, Instant};

#[allow(dead_code)] // the tests' cluster, of which the run uses only the start
#[path = "../../tests/it/helpers/cluster.rs"]
mod redis_cluster;

/// Readings in the cluster phase (at most).
const CLUSTER_READINGS: u64 = 500_000;
const SHARDS: usize = 16;
const MASTERS: usize = 3;

/// Readings/s on one stream of the local Redis, and over the shards on the cluster.
pub struct ClusterRates {
    pub one_stream: f64,
    pub cluster: f64,
}

pub async fn cluster_phase(
    args: &Args,
    admin: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    base: chrono::DateTime<chrono::Utc>,
) -> Option<ClusterRates> {
    if args.tls {
        println!("Redis Cluster phase skipped with --tls");
        return None;
    }
    if Command::new("redis-cli").arg("--version").output().is_err() {
        println!("Redis Cluster phase skipped: it needs redis-cli (Debian's redis-tools)");
        return None;
    }
    let readings = args.readings.min(CLUSTER_READINGS);
    println!(
        "Redis Cluster: {readings} readings over {SHARDS} shards on {MASTERS} masters, against one \
         stream on the local Redis"
    );
    let one = format!("{name}_one");
    let one_stream = sharded_run(args, &one, &args.redis_url, 1, readings, base).await;
    drop_run(admin, redis, &one).await;
    let cluster = redis_cluster::PrivateCluster::start(MASTERS, 0);
    let sharded = format!("{name}_cluster");
    let on_cluster = sharded_run(args, &sharded, &cluster.url(), SHARDS, readings, base).await;
    drop(cluster);
    drop_run(admin, redis, &sharded).await;
    println!(
        "  one stream: {one_stream:.0} readings/s; {SHARDS} shards on the cluster: {on_cluster:.0} \
         readings/s ({:.2} of one stream)",
        on_cluster / one_stream
    );
    Some(ClusterRates {
        one_stream,
        cluster: on_cluster,
    })
}

/// Preloads `readings` into the `shards` streams of `bench:<name>` on the Redis at `url` and
/// returns the readings/s of a sensorhub reading them; asserts the result exact.
async fn sharded_run(
    args: &Args,
    name: &str,
    url: &str,
    shards: usize,
    readings: u64,
    base: chrono::DateTime<chrono::Utc>,
) -> f64 {
    let stream = format!("bench:{name}");
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let extra = [
        ("SENSORHUB_REDIS_URL", url.to_owned()),
        ("SENSORHUB_STREAM_SHARDS", shards.to_string()),
    ];
    // A first start migrates the database and makes the groups: the timed start finds both.
    let port = free_port();
    let hub = spawn_sensorhub_with(args, &db_url, &stream, port, &extra);
    wait_ready(port).await;
    drop(hub);

    let streams = Streams::new(&stream, shards);
    let target = sensorhub::redis::target::parse(url, &Default::default()).expect("a Redis URL");
    let mut conn = Connection::open(&target, Duration::from_secs(60))
        .await
        .expect("the Redis of the phase answers");
    let mut n = 0;
    while n < readings {
        let mut by_shard = vec![Vec::new(); shards];
        for i in n..(n + 10_000).min(readings) {
            let (sensor, ts, value) = synthetic(i, args.sensors, base);
            by_shard[shard_of(&sensor, shards)].push(reading_payload(&sensor, ts, value));
        }
        for (shard, payloads) in by_shard.into_iter().enumerate() {
            if !payloads.is_empty() {
                append_payloads(&mut conn, &streams.all()[shard], payloads)
                    .await
                    .expect("XADD");
            }
        }
        n += 10_000;
    }

    let port = free_port();
    let start = Instant::now();
    let hub = spawn_sensorhub_with(args, &db_url, &stream, port, &extra);
    wait_ready(port).await;
    let elapsed = until_stored(port, readings, start).await;
    drop(hub);
    let (rows, mismatches) = exactness(&db_url).await;
    assert_eq!(rows as u64, readings, "readings stored ({shards} shards)");
    assert_eq!(
        mismatches, 0,
        "aggregates differ from GROUP BY ({shards} shards)"
    );
    readings as f64 / elapsed
}
