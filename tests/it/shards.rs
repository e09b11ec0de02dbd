//! Sharded streams on one Redis: whichever way a reading comes in (XADD and line protocol from
//! `sensorhub simulate`, Pub/Sub, HTTP, MQTT), it lands in the shard its sensor's id picks,
//! `crc32(sensor_id) mod N`, and is stored once.

use crate::helpers::*;
use crate::mqtt::{mqtt_settings, publish, wait_subscribed};
use sensorhub::domain::ParseContext;
use sensorhub::domain::reading::parse_entry_fields;
use sensorhub::stream::shards::{Streams, shard_of};
use std::collections::HashSet;
use std::time::Duration;

const SHARDS: usize = 4;

#[actix_web::test]
async fn every_source_puts_a_reading_in_its_sensors_shard() {
    let topics = unique_name("shards");
    let mqtt = mqtt_settings(&[(format!("{topics}/#"), "json")]);
    let t = spawn_app_with(
        move |c| {
            c.shards = SHARDS;
            c.read_shards = (0..SHARDS).collect();
            c.mqtt = Some(mqtt);
        },
        Default::default(),
    )
    .await;
    t.wait_for_bridge().await;
    wait_subscribed(&t).await;

    let simulate = |args: &'static [&'static str]| {
        let (stream, channel) = (t.config.stream.clone(), t.config.channel.clone().unwrap());
        let http = format!("127.0.0.1:{}", t.app().port());
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
                .arg("simulate")
                .args(args)
                .env("SENSORHUB_STREAM", stream)
                .env("SENSORHUB_STREAM_SHARDS", SHARDS.to_string())
                .env("SENSORHUB_CHANNEL", channel)
                .env("SENSORHUB_HTTP_ADDR", http)
                .output()
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "simulate {args:?}: {stderr}");
            stderr
        }
    };
    let xadd = simulate(&["--rate", "2000", "--sensors", "8", "--count", "160"]).await;
    assert!(xadd.contains("4 shards of"), "names the shards: {xadd}");
    simulate(&[
        "--rate",
        "2000",
        "--sensors",
        "8",
        "--count",
        "160",
        "--via",
        "publish",
        "--prefix",
        "pub",
    ])
    .await;
    simulate(&[
        "--rate",
        "2000",
        "--sensors",
        "8",
        "--count",
        "160",
        "--via",
        "line-protocol",
        "--prefix",
        "lp",
    ])
    .await;
    let now = chrono::Utc::now();
    for i in 0..12 {
        let body = reading_json(&format!("http-{i}"), f64::from(i), now);
        let (status, reply) = http_request(
            t.app().port(),
            "POST",
            "/api/v1/readings",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "{reply}");
    }
    let messages: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| {
            let payload = reading_json(&format!("mq-{i}"), f64::from(i), now);
            (format!("{topics}/d{i}"), payload.into_bytes())
        })
        .collect();
    publish(&messages).await;

    let total = 3 * 160 + 12 + 12;
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        total,
        Duration::from_secs(60),
    )
    .await;

    // Every entry of every shard holds readings of that shard's sensors only, and together the
    // shards hold every sensor.
    let ctx = ParseContext::new(&t.config.limits, now, now);
    let mut seen = HashSet::new();
    let mut redis = t.redis.clone();
    for (shard, stream) in Streams::of(&t.config).all().iter().enumerate() {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!entries.ids.is_empty(), "shard {shard} got readings");
        for entry in entries.ids {
            let fields: Vec<(String, Vec<u8>)> = entry
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value(v.clone()).unwrap()))
                .collect();
            for reading in parse_entry_fields(&fields, &ctx) {
                let reading = reading.expect("a valid reading");
                assert_eq!(
                    shard_of(&reading.sensor_id, SHARDS),
                    shard,
                    "{} in {stream}",
                    reading.sensor_id
                );
                seen.insert(reading.sensor_id.to_string());
            }
        }
    }
    let sensors: HashSet<String> =
        t.pg.query("SELECT DISTINCT sensor_id FROM readings", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(seen, sensors);
    assert_eq!(t.readings().await, total);
    t.assert_aggregates_exact().await;
}

/// A source's leases over every shard are held together: a second holder gets none while the
/// first has them, and one that finds a shard's lease taken gives back those it took.
#[actix_web::test]
async fn leases_over_shards_are_held_all_or_none() {
    use sensorhub::stream::lease::Leases;
    use sensorhub::stream::shards::Streams;
    let resources = Resources::new();
    let streams = Streams::new(&resources.stream, SHARDS);
    let ttl = Duration::from_secs(30);
    let first = Leases::new(&streams, "test-lease", "first".into(), ttl);
    let second = Leases::new(&streams, "test-lease", "second".into(), ttl);
    let mut conn = redis_manager().await;
    let holders = |conn: &mut sensorhub::redis::connection::Connection| {
        let mut conn = conn.clone();
        let keys: Vec<String> = streams
            .all()
            .iter()
            .map(|s| format!("{s}:test-lease"))
            .collect();
        async move {
            let held: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
            held
        }
    };

    // Another process's hold on (or release of) shard `shard`'s lease.
    let other = conn.clone();
    let held_by_other = |shard: usize, holder: Option<&'static str>| {
        let mut conn = other.clone();
        let key = format!("{}:test-lease", streams.all()[shard]);
        async move {
            let mut cmd = redis::cmd(if holder.is_some() { "SET" } else { "DEL" });
            cmd.arg(&key);
            if let Some(holder) = holder {
                cmd.arg(holder);
            }
            let _: () = cmd.query_async(&mut conn).await.unwrap();
        }
    };

    assert!(first.acquire(&mut conn).await.unwrap());
    assert!(!second.acquire(&mut conn).await.unwrap());
    assert!(first.renew(&mut conn).await.unwrap());
    assert_eq!(holders(&mut conn).await, vec![Some("first".into()); SHARDS]);

    first.release(&mut conn).await.unwrap();
    // A third process holds shard 2's lease: the second takes shards 0 and 1, then gives them back.
    held_by_other(2, Some("third")).await;
    assert!(!second.acquire(&mut conn).await.unwrap());
    assert_eq!(
        holders(&mut conn).await,
        vec![None, None, Some("third".into()), None]
    );
    held_by_other(2, None).await;
    assert!(second.acquire(&mut conn).await.unwrap());
    // Losing one lease (it expired and another took it) gives back the rest at the next renewal.
    held_by_other(3, Some("third")).await;
    assert!(!second.renew(&mut conn).await.unwrap());
    assert_eq!(
        holders(&mut conn).await,
        vec![None, None, None, Some("third".into())]
    );
}

async fn api(
    t: &TestApp,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    json_request(t.app().port(), method, path, &[], body).await
}

/// With shards, the dead-letter API works over every shard's dead letters: ids name their shard,
/// pages run newest first across shards, and a purge or replay goes to the letter's own shard.
#[actix_web::test]
async fn dead_letters_of_every_shard_are_listed_paged_purged_and_replayed() {
    use sensorhub::redis::entry::EntryId;
    use sensorhub::stream::append::append_payloads;
    use serde_json::json;
    let mut t = spawn_app_with(
        |c| {
            c.shards = SHARDS;
            c.read_shards = (0..SHARDS).collect();
        },
        Default::default(),
    )
    .await;
    // A year ahead: refused now, valid once the limit is relaxed.
    let ahead = chrono::Utc::now() + chrono::TimeDelta::days(365);
    let streams = Streams::of(&t.config);
    let mut redis = t.redis.clone();
    for i in 0..40 {
        let sensor = format!("dl-{i}");
        let payload = reading_json(&sensor, f64::from(i), ahead);
        append_payloads(&mut redis, streams.for_sensor(&sensor), [payload])
            .await
            .unwrap();
    }
    wait_for("40 dead letters", Duration::from_secs(20), || async {
        let (_, summary) = api(&t, "GET", "/api/v1/dead-letters/summary", &json!(null)).await;
        (summary["total"] == 40).then_some(())
    })
    .await;

    let mut seen: Vec<(EntryId, usize)> = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = api(
            &t,
            "GET",
            &format!("/api/v1/dead-letters?limit=7{after}"),
            &json!(null),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        for letter in page["letters"].as_array().unwrap() {
            let id = letter["id"].as_str().unwrap();
            let (shard, entry) = id.split_once('/').expect("a sharded id names its shard");
            let shard: usize = shard.parse().unwrap();
            let data: serde_json::Value =
                serde_json::from_str(letter["data"].as_str().unwrap()).unwrap();
            assert_eq!(
                shard_of(data["sensor"].as_str().unwrap(), SHARDS),
                shard,
                "{letter}"
            );
            seen.push((entry.parse().unwrap(), shard));
        }
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 40, "every letter once");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    assert!(
        (0..SHARDS).all(|s| seen.iter().any(|(_, shard)| *shard == s)),
        "letters in every shard"
    );

    let (status, error) = api(
        &t,
        "DELETE",
        &format!("/api/v1/dead-letters?id={}", seen[0].0),
        &json!(null),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error["error"].as_str().unwrap().contains("<shard>/"),
        "{error}"
    );
    let (status, purged) = api(
        &t,
        "DELETE",
        &format!("/api/v1/dead-letters?id={}/{}", seen[0].1, seen[0].0),
        &json!(null),
    )
    .await;
    assert_eq!(
        (status, purged["deleted"].as_u64()),
        (200, Some(1)),
        "{purged}"
    );

    t.config.limits.max_future_skew = Duration::from_secs(2 * 365 * 86_400);
    t.restart(Default::default()).await;
    let (status, replay) = api(
        &t,
        "POST",
        "/api/v1/dead-letters/replay",
        &json!({"all": true}),
    )
    .await;
    assert_eq!(
        (status, replay["replayed"].as_u64()),
        (200, Some(39)),
        "{replay}"
    );
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        39,
        Duration::from_secs(30),
    )
    .await;
    let (_, summary) = api(&t, "GET", "/api/v1/dead-letters/summary", &json!(null)).await;
    assert_eq!(summary["total"], 0, "{summary}");
    t.assert_aggregates_exact().await;
}

/// Readings of `sensors` sensors, `per_sensor` each a second apart, appended to their shards.
async fn produce_sharded(
    redis: &mut redis::aio::MultiplexedConnection,
    streams: &sensorhub::stream::shards::Streams,
    sensors: usize,
    per_sensor: usize,
) -> usize {
    let base = chrono::Utc::now() - chrono::TimeDelta::hours(2);
    for sensor in 0..sensors {
        let id = format!("bound-{sensor}");
        let payloads: Vec<String> = (0..per_sensor)
            .map(|i| reading_json(&id, i as f64, base + chrono::TimeDelta::seconds(i as i64)))
            .collect();
        sensorhub::stream::append::append_payloads(redis, streams.for_sensor(&id), payloads)
            .await
            .unwrap();
    }
    sensors * per_sensor
}

/// `SENSORHUB_READ_SHARDS` splits the shards between instances: one reading shards 0 and 1
/// leaves 2 and 3 to the other, and together they store everything once.
#[actix_web::test]
async fn instances_reading_different_shards_together_store_everything_once() {
    let t = spawn_app_with(
        |c| {
            c.shards = SHARDS;
            c.read_shards = vec![0, 1];
            c.channel = None;
        },
        Default::default(),
    )
    .await;
    let streams = Streams::of(&t.config);
    let mut redis = t.redis.clone();
    let total = produce_sharded(&mut redis, &streams, 40, 25).await as i64;
    let in_first: i64 = (0..40)
        .filter(|s| shard_of(&format!("bound-{s}"), SHARDS) < 2)
        .count() as i64
        * 25;
    assert!(0 < in_first && in_first < total, "both halves have sensors");
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        in_first,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        t.readings().await,
        in_first,
        "shards 2 and 3 are not read here"
    );

    let second = sensorhub::Application::build({
        let mut config = t.config.clone();
        config.read_shards = vec![2, 3];
        config.consumer = "second".into();
        config
    })
    .await
    .unwrap();
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        total,
        Duration::from_secs(30),
    )
    .await;
    t.assert_aggregates_exact().await;
    second.shutdown().await;
}

/// One `SENSORHUB_MAX_IN_FLIGHT` covers all the shards an instance reads: while PostgreSQL is
/// down, batches of four shards wait in Redis, at most the bound of them in flight.
#[actix_web::test]
async fn one_in_flight_bound_covers_every_shard() {
    let pg = crate::helpers::PrivatePostgres::start();
    let resources = Resources::new();
    let mut config = test_config(&resources.name);
    config.database_url = sensorhub::config::Secret::new(pg.url("sensorhub"));
    config.shards = SHARDS;
    config.read_shards = (0..SHARDS).collect();
    config.channel = None;
    config.batch_size = 50;
    config.max_in_flight = 2;
    let app = sensorhub::Application::build(config.clone()).await.unwrap();
    let metrics = app.metrics();

    pg.stop_server();
    let mut redis = redis_conn(REDIS_URL).await;
    let total = produce_sharded(&mut redis, &Streams::of(&config), 40, 50).await as i64;
    let mut peak = 0;
    let watching = std::time::Instant::now();
    while watching.elapsed() < Duration::from_secs(4) {
        peak = peak.max(metrics.batches_in_flight.get());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(peak, 2, "the bound is reached and never passed");
    pg.start_server();

    let client = pg_client(&pg.url("sensorhub")).await;
    wait_for_count(
        &client,
        "SELECT count(*) FROM readings",
        total,
        Duration::from_secs(60),
    )
    .await;
    assert_aggregates_exact(&client, &config.resolutions).await;
    app.shutdown().await;
}

/// One sensor's untimed readings, some alone and some inside arrays led by a sensor of another
/// shard, posted side by side over HTTP to 4 shards: every reading is stored once, each with a
/// time of its own (the array went to its first sensor's shard, entry ids repeat from shard to
/// shard, and readings that met the same time were counted duplicates or dead-lettered as
/// conflicts). A producer that appends such an array to one shard itself gets the foreign
/// untimed reading refused, naming the rule. Through the binary, so an older build can be tried.
#[actix_web::test]
async fn untimed_readings_of_one_sensor_in_two_shards_are_each_stored_once() {
    let res = Resources::new();
    let streams = sensorhub::stream::shards::Streams::new(&res.stream, SHARDS);
    let (alpha, beta) = pair_in_different_shards();
    let mut env = res.hub_env();
    env.push(("SENSORHUB_STREAM_SHARDS", SHARDS.to_string()));
    let hub = crate::helpers::Sensorhub::spawn(&env).await;
    let port = hub.port;
    let rounds: i64 = 1500;
    let post = |body: String| async move {
        let headers = [("Content-Type", "application/json")];
        http_request(port, "POST", "/api/v1/readings", &headers, body.as_bytes()).await
    };
    for chunk in (0..rounds).collect::<Vec<i64>>().chunks(16) {
        let requests = chunk.iter().flat_map(|&i| {
            [
                post(format!(
                    r#"[{{"sensor":"{alpha}","value":{i}}},{{"sensor":"{beta}","value":{i}}}]"#
                )),
                post(format!(r#"{{"sensor":"{beta}","value":{}}}"#, -i - 1)),
            ]
        });
        for (status, answer) in futures_util::future::join_all(requests).await {
            assert_eq!(status, 202, "{answer}");
        }
    }
    let pg = pg_client(&res.database_url).await;
    let all = 3 * rounds;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = http_get(hub.port, "/metrics").await;
        let stored: i64 = pg
            .query_one("SELECT count(*) FROM readings", &[])
            .await
            .unwrap()
            .get(0);
        let lost: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("sensorhub_readings_rejected_total{")
                    || l.starts_with("sensorhub_readings_duplicate_total ")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if stored + lost as i64 >= all {
            assert_eq!(
                stored, all,
                "every reading stored once ({lost} rejected or duplicate)"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{stored} of {all} stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let times: i64 = pg
        .query_one(
            "SELECT count(DISTINCT ts) FROM readings WHERE sensor_id = $1",
            &[&beta],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        times,
        2 * rounds,
        "each of beta's readings has a time of its own"
    );

    // Appended by a producer to alpha's shard: beta's untimed reading is refused, saying why.
    let mut redis = redis_conn(REDIS_URL).await;
    let array = format!(r#"[{{"sensor":"{alpha}","value":1}},{{"sensor":"{beta}","value":1}}]"#);
    let _: String = redis::cmd("XADD")
        .arg(streams.for_sensor(&alpha))
        .arg("*")
        .arg("data")
        .arg(array)
        .query_async(&mut redis)
        .await
        .unwrap();
    let dead = format!("{}:dead", streams.for_sensor(&alpha));
    let letter = wait_for("the refused reading", Duration::from_secs(20), || {
        let (mut redis, dead) = (redis.clone(), dead.clone());
        async move {
            let letters: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&dead)
                .arg("-")
                .arg("+")
                .query_async(&mut redis)
                .await
                .ok()?;
            letters.ids.into_iter().next()
        }
    })
    .await;
    let reason: String = letter.get("reason").unwrap();
    let detail: String = letter.get("detail").unwrap();
    assert_eq!(reason, "no_unique_time");
    assert!(detail.contains("crc32(sensor_id)"), "{detail}");
}

/// Two sensor ids whose shards differ.
fn pair_in_different_shards() -> (String, String) {
    let alpha = "alpha".to_owned();
    let beta = (0..)
        .map(|i| format!("beta{i}"))
        .find(|beta| shard_of(beta, SHARDS) != shard_of(&alpha, SHARDS))
        .unwrap();
    (alpha, beta)
}
