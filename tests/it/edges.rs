//! The guarantee at its edges: operators' mistakes and unlucky clocks that once lost or doubled
//! readings, each against the real Redis and PostgreSQL.

use crate::helpers::Sensorhub;
use crate::helpers::*;
use redis::aio::MultiplexedConnection;
use sensorhub::redis::entry::EntryId;
use std::time::Duration;

/// Two sensorhub processes that differ only in their HTTP port: the same consumer name, the same
/// stream, channel and database.
fn twin_env(res: &Resources) -> Vec<(&'static str, String)> {
    vec![
        ("SENSORHUB_REDIS_URL", REDIS_URL.to_owned()),
        ("SENSORHUB_DATABASE_URL", res.database_url.clone()),
        ("SENSORHUB_STREAM", res.stream.clone()),
        ("SENSORHUB_CHANNEL", res.stream.clone()),
        ("SENSORHUB_CONSUMER", "same-name".to_owned()),
        ("SENSORHUB_BATCH_SIZE", "500".to_owned()),
        ("SENSORHUB_BRIDGE_LEASE", "1s".to_owned()),
        ("SENSORHUB_CLAIM_IDLE", "2s".to_owned()),
    ]
}

const LEADER: &str = "sensorhub_bridge_leader";
const BRIDGED: &str = "sensorhub_messages_received_total{source=\"pubsub\"}";

/// Publishes `n` readings of `sensor` without a timestamp: each gets its stream entry's time, so
/// a message bridged twice would be stored twice.
async fn publish_untimed(redis: &mut MultiplexedConnection, channel: &str, sensor: &str, n: u32) {
    for i in 0..n {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(format!(r#"{{"sensor":"{sensor}","value":{i}}}"#))
            .query_async(redis)
            .await
            .unwrap();
    }
}

/// The id of the stream's newest entry.
async fn last_entry(redis: &mut MultiplexedConnection, stream: &str) -> String {
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(redis)
        .await
        .unwrap();
    newest.ids[0].id.clone()
}

/// Waits until `sensor` has at least `n` readings stored (more is what the test then refuses).
async fn wait_for_at_least(db: &tokio_postgres::Client, sensor: &str, n: i64) {
    let sql = format!("SELECT count(*) FROM readings WHERE sensor_id = '{sensor}'");
    wait_for(
        &format!("{n} readings of {sensor}"),
        Duration::from_secs(30),
        || async { (count(db, &sql).await >= n).then_some(()) },
    )
    .await;
}

/// The readings of `sensor` once the group has processed every entry now in `stream`.
async fn readings_once_drained(
    db: &tokio_postgres::Client,
    redis: &mut MultiplexedConnection,
    stream: &str,
    sensor: &str,
) -> i64 {
    let last = last_entry(redis, stream).await;
    wait_drained(redis, stream, "sensorhub", &last).await;
    let sql = format!("SELECT count(*) FROM readings WHERE sensor_id = '{sensor}'");
    count(db, &sql).await
}

async fn count(pg: &tokio_postgres::Client, sql: &str) -> i64 {
    pg.query_one(sql, &[]).await.unwrap().get(0)
}

/// Two processes with one consumer name (two units on one host) never both hold the bridge
/// lease: each message is bridged once (the lease is keyed by a token unique to the process, not
/// by the name).
#[actix_web::test]
async fn two_processes_with_one_consumer_name_bridge_each_message_once() {
    let res = Resources::new();
    let env = twin_env(&res);
    let first = Sensorhub::spawn(&env).await;
    let second = Sensorhub::spawn(&env).await;
    wait_for("one bridge leader", Duration::from_secs(15), || async {
        let leaders = first.metric(LEADER).await + second.metric(LEADER).await;
        (leaders >= 1.0).then_some(())
    })
    .await;
    let mut redis = redis_conn(REDIS_URL).await;
    publish_untimed(&mut redis, &res.stream, "twin", 100).await;

    let db = pg_client(&res.database_url).await;
    wait_for_at_least(&db, "twin", 100).await;
    assert_eq!(
        readings_once_drained(&db, &mut redis, &res.stream, "twin").await,
        100,
        "each published message stored once"
    );
    assert_eq!(
        first.metric(BRIDGED).await + second.metric(BRIDGED).await,
        100.0,
        "each published message bridged once"
    );
}

/// The bridge after a pause: the holder stopped (`SIGSTOP`) past its lease, another process takes
/// over, messages are published, and the old holder resumes with them waiting on its
/// subscription. It must not append them: the new holder already did.
#[actix_web::test]
async fn a_bridge_paused_past_its_lease_appends_nothing_when_it_resumes() {
    let res = Resources::new();
    let env = twin_env(&res);
    let hubs = [Sensorhub::spawn(&env).await, Sensorhub::spawn(&env).await];
    let holder = wait_for("a bridge leader", Duration::from_secs(15), || async {
        for (i, hub) in hubs.iter().enumerate() {
            if hub.metric(LEADER).await == 1.0 {
                return Some(i);
            }
        }
        None
    })
    .await;
    let (paused, other) = (&hubs[holder], &hubs[1 - holder]);
    let bridged_before = paused.metric(BRIDGED).await;
    signal(paused.pid(), "-STOP");
    other
        .wait_for_metric(LEADER, 1.0, Duration::from_secs(15))
        .await;
    let mut redis = redis_conn(REDIS_URL).await;
    publish_untimed(&mut redis, &res.stream, "paused", 50).await;
    let db = pg_client(&res.database_url).await;
    wait_for_at_least(&db, "paused", 50).await;

    signal(paused.pid(), "-CONT");
    paused
        .wait_for_metric(LEADER, 0.0, Duration::from_secs(15))
        .await;
    assert_eq!(
        readings_once_drained(&db, &mut redis, &res.stream, "paused").await,
        50,
        "no message bridged twice"
    );
    assert_eq!(
        paused.metric(BRIDGED).await,
        bridged_before,
        "the resumed process appended nothing"
    );
    assert_eq!(other.metric(BRIDGED).await, 50.0);
}

fn signal(pid: u32, which: &str) {
    let status = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} {pid}");
}

/// More than 1,000 entries without timestamp in one millisecond of stream time (an explicit
/// `<ms>-*` id, or Redis's clock stepping back) each get a time of their own: none is taken for a
/// duplicate of another.
#[actix_web::test]
async fn a_thousand_and_more_entries_in_one_millisecond_are_never_silent_duplicates() {
    let mut t = spawn_app().await;
    let ms = chrono::Utc::now().timestamp_millis() + 1500;
    let mut pipe = redis::pipe();
    for i in 0..1500 {
        pipe.cmd("XADD")
            .arg(t.stream())
            .arg(format!("{ms}-*"))
            .arg("data")
            .arg(format!(r#"{{"sensor":"burst","value":{i}}}"#));
    }
    let ids: Vec<String> = pipe.query_async(&mut t.redis).await.unwrap();
    t.wait_drained(ids.last().unwrap()).await;

    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'burst'")
            .await,
        1000,
        "the first 1,000 entries of the millisecond have distinct times"
    );
    let metrics = t.metrics();
    assert_eq!(
        metrics
            .readings_rejected
            .with_label_values(&["no_unique_time"])
            .get(),
        500
    );
    assert_eq!(
        metrics.readings_duplicate.get(),
        0,
        "none counted a duplicate"
    );
    let letters = t.dead_letters().await;
    assert_eq!(letters.ids.len(), 500);
    let reason: String = letters.ids[0].get("reason").unwrap();
    assert_eq!(reason, "no_unique_time");
    t.stop().await;
}

/// Holds `LOCK TABLE readings_hot` in a transaction of its own until dropped (or `release`d), so that
/// sensorhub's writes stall.
struct ReadingsLocked(tokio_postgres::Client);

impl ReadingsLocked {
    async fn take(url: &str) -> Self {
        let db = pg_client(url).await;
        db.batch_execute("BEGIN; LOCK TABLE readings_hot IN EXCLUSIVE MODE")
            .await
            .unwrap();
        Self(db)
    }

    async fn release(self) {
        self.0.batch_execute("COMMIT").await.unwrap();
    }
}

/// Stalls sensorhub's writes (`readings` locked) and appends `n` readings of `sensor`; returns the
/// lock and the last entry's id once the pipeline is full.
async fn stalled_backlog(t: &mut TestApp, sensor: &str, n: usize) -> (ReadingsLocked, String) {
    let lock = ReadingsLocked::take(t.config.database_url.expose()).await;
    let last = t.xadd_many(&timed_payloads(sensor, n)).await;
    let metrics = t.metrics();
    let bound = t.config.max_in_flight as i64;
    wait_for("the pipeline to fill", Duration::from_secs(30), || {
        let full = metrics.batches_in_flight.get() == bound;
        async move { full.then_some(()) }
    })
    .await;
    (lock, last)
}

async fn readings_of(t: &TestApp, sensor: &str) -> i64 {
    t.count(&format!(
        "SELECT count(*) FROM readings WHERE sensor_id = '{sensor}'"
    ))
    .await
}

fn timed_payloads(sensor: &str, n: usize) -> Vec<Vec<u8>> {
    let base: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    (0..n)
        .map(|i| {
            reading_json(sensor, i as f64, base + chrono::Duration::seconds(i as i64)).into_bytes()
        })
        .collect()
}

/// A ledger left ahead of its group (a far-future entry id moved the watermark, then the stream
/// was deleted and the group came back at 0) is reset, so the trim never removes entries that
/// were not read, even while writes are slow.
#[actix_web::test]
async fn a_recreated_stream_under_a_far_future_watermark_loses_nothing() {
    let mut t = spawn_app_with(|c| c.stream_tail = 0, Default::default()).await;
    let stream = t.stream().to_owned();
    let far: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("99999999999999-0")
        .arg("data")
        .arg(r#"{"sensor":"far","value":1}"#)
        .query_async(&mut t.redis)
        .await
        .unwrap();
    t.wait_drained(&far).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut t.redis)
        .await
        .unwrap();

    // Slow writes: the reader fills the pipeline, the stream waits in Redis, and the
    // maintenance passes (once a second) run meanwhile.
    let (lock, last) = stalled_backlog(&mut t, "after-del", 3000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    lock.release().await;

    wait_drained(&t.redis, &stream, &t.config.group, &last).await;
    assert_eq!(readings_of(&t, "after-del").await, 3000);
    let last: EntryId = last.parse().unwrap();
    let through = sensorhub::stream::ledger::through(&mut t.redis, &stream, &t.config.group)
        .await
        .unwrap();
    assert!(
        through <= last,
        "the watermark {through} describes this stream (last {last})"
    );
    t.stop().await;
}

/// While sensorhub's group is gone (destroyed while writes stall), the trim never follows another
/// group (`analytics`, at the stream's end): nothing sensorhub has not read is removed.
#[actix_web::test]
async fn trimming_never_follows_another_group_while_ours_is_gone() {
    let mut t = spawn_app_with(|c| c.stream_tail = 0, Default::default()).await;
    let stream = t.stream().to_owned();
    let group = t.config.group.clone();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("analytics")
        .arg("$")
        .query_async(&mut t.redis)
        .await
        .unwrap();
    let (lock, last) = stalled_backlog(&mut t, "beside", 3000).await;
    let _: i64 = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg(&group)
        .query_async(&mut t.redis)
        .await
        .unwrap();
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&stream)
        .arg("analytics")
        .arg("$")
        .query_async(&mut t.redis)
        .await
        .unwrap();
    // Maintenance passes run while sensorhub's group is missing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut t.redis)
        .await
        .unwrap();
    assert_eq!(
        len, 3000,
        "nothing trimmed while sensorhub's group is missing"
    );
    lock.release().await;

    wait_for("every reading stored", Duration::from_secs(60), || async {
        (readings_of(&t, "beside").await == 3000).then_some(())
    })
    .await;
    wait_drained(&t.redis, &stream, &group, &last).await;
    assert_eq!(readings_of(&t, "beside").await, 3000);
    t.stop().await;
}

/// Readings with a stored key and another value are conflicts, not duplicates: the
/// first committed value stays, the other is dead-lettered with both values; the same value again
/// is a plain duplicate. Within one batch and across batches.
#[actix_web::test]
async fn conflicting_values_are_dead_lettered_and_the_first_stays() {
    let mut t = spawn_app().await;
    let ts = "2025-06-01T00:00:00Z";
    let reading = |value: f64| format!(r#"{{"sensor":"c","value":{value},"timestamp":"{ts}"}}"#);
    // One message, so one batch: 1 is written first, 2 conflicts, 1 again is a duplicate.
    let array = format!("[{},{},{}]", reading(1.0), reading(2.0), reading(1.0));
    let last = t.xadd_data(array.as_bytes()).await;
    t.wait_drained(&last).await;
    // Later batches: 3 conflicts with the stored 1, 1 is a duplicate. Sent in one message again,
    // 3 first: the repeat of the key is judged by what is stored, not by the batch's first.
    let array = format!("[{},{}]", reading(3.0), reading(1.0));
    let last = t.xadd_data(array.as_bytes()).await;
    t.wait_drained(&last).await;
    let last = t.xadd_data(reading(4.0).as_bytes()).await;
    t.wait_drained(&last).await;

    let stored: Vec<f64> =
        t.pg.query("SELECT value FROM readings WHERE sensor_id = 'c'", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
    assert_eq!(stored, vec![1.0], "the value committed first stays");
    let metrics = t.metrics();
    assert_eq!(metrics.readings_conflicting.get(), 3);
    assert_eq!(metrics.readings_duplicate.get(), 2);
    assert_eq!(
        metrics
            .readings_rejected
            .with_label_values(&["conflicting_value"])
            .get(),
        3
    );
    let letters = t.dead_letters().await;
    let mut refused: Vec<String> = Vec::new();
    for letter in &letters.ids {
        let reason: String = letter.get("reason").unwrap();
        let detail: String = letter.get("detail").unwrap();
        assert_eq!(reason, "conflicting_value");
        assert!(detail.contains("value 1 stored"), "{detail}");
        let data: String = letter.get("data").unwrap();
        refused.push(data);
    }
    refused.sort();
    assert_eq!(refused.len(), 3);
    for (data, value) in refused.iter().zip(["2", "3", "4"]) {
        assert!(data.contains(&format!("\"value\":{value}")), "{data}");
    }
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// HTTP ingest tells the truth: with Redis's writes paused past the append's timeout the answer
/// is a 503 whose outcome is unknown (the append runs once the pause ends), a retry with the same
/// `Idempotency-Key` is answered 202 without a second entry, and a refused append is a 503 that
/// says nothing was stored. A private Redis: pausing the shared one would stall other tests.
#[actix_web::test]
async fn ingest_answers_tell_the_truth_and_an_idempotent_retry_stores_once() {
    let server = crate::helpers::PrivateRedis::start(false);
    let url = server.url();
    let t = spawn_app_with(
        |c| c.redis_url = sensorhub::config::Secret::new(url.clone()),
        Default::default(),
    )
    .await;
    let mut redis = redis_conn(&url).await;
    let port = t.app().port();
    let body = br#"{"sensor":"idem","value":1}"#; // no timestamp: a second append would store twice
    let post = |key: Option<&'static str>| async move {
        let mut headers = vec![("Content-Type", "application/json")];
        headers.extend(key.map(|key| ("Idempotency-Key", key)));
        http_request(port, "POST", "/api/v1/readings", &headers, body).await
    };

    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(8000)
        .arg("WRITE")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (status, answer) = post(Some("retry-1")).await;
    assert_eq!(status, 503, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["outcome"], "unknown", "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    // The paused append runs once the pause ends: the reading is stored after all.
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'idem'",
        1,
        Duration::from_secs(30),
    )
    .await;

    let (status, answer) = post(Some("retry-1")).await;
    assert_eq!(status, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["repeated"], true, "{answer}");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(t.stream())
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(entries.ids.len() <= 1, "the retry appended nothing");
    let (status, answer) = post(Some("retry-2")).await;
    assert_eq!(status, 202, "{answer}");
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'idem'",
        2,
        Duration::from_secs(30),
    )
    .await;

    // Redis refusing the write (out of memory): nothing stored, and the answer says so.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let (status, answer) = post(None).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(status, 503, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["outcome"], "not_stored", "{answer}");

    // A bridge that cannot append is named by /readyz until an append works again.
    t.wait_for_bridge().await;
    let channel = t
        .config
        .channel
        .clone()
        .expect("the test config bridges a channel");
    let admin = redis.clone();
    let maxmemory = |bytes: u64| {
        let mut redis = admin.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(bytes)
                .query_async(&mut redis)
                .await
                .unwrap();
        }
    };
    maxmemory(1).await;
    publish_untimed(&mut redis, &channel, "bridge-refused", 1).await;
    let body = wait_for(
        "/readyz to name the bridge",
        Duration::from_secs(15),
        || async {
            let (status, body) = t.get("/readyz").await;
            (status == 503 && body.contains("\"bridge\"")).then_some(body)
        },
    )
    .await;
    assert!(body.contains("cannot append"), "{body}");
    maxmemory(0).await;
    // Published until one is appended: the bridge may be re-taking its lease and subscribing.
    wait_for("/readyz ready again", Duration::from_secs(15), || {
        let mut redis = redis.clone();
        let channel = channel.clone();
        let t = &t;
        async move {
            publish_untimed(&mut redis, &channel, "bridge-again", 1).await;
            (t.get("/readyz").await.0 == 200).then_some(())
        }
    })
    .await;
}

/// The group-wide picture: while writes stall, the entries delivered and not committed show in
/// `sensorhub_ledger_uncommitted_entries` and the wait in `sensorhub_ledger_watermark_age_seconds`;
/// both fall to 0 once the backlog is committed.
#[actix_web::test]
async fn ledger_gauges_show_what_is_delivered_and_not_committed() {
    let mut t = spawn_app().await;
    let (lock, last) = stalled_backlog(&mut t, "gauges", 2000).await;
    let metrics = t.metrics();
    let (uncommitted, age) = wait_for(
        "the stalled entries in the ledger gauges",
        Duration::from_secs(30),
        || {
            let in_flight = metrics.group_pending.get();
            let uncommitted = metrics.ledger_uncommitted.get();
            let age = metrics.ledger_watermark_age.get();
            async move {
                (in_flight > 0 && uncommitted == in_flight && age >= 1.0)
                    .then_some((uncommitted, age))
            }
        },
    )
    .await;
    assert!(uncommitted <= 2000 && age < 60.0, "{uncommitted} {age}");
    lock.release().await;
    t.wait_drained(&last).await;
    wait_for("the gauges back at 0", Duration::from_secs(30), || {
        let done =
            metrics.ledger_uncommitted.get() == 0 && metrics.ledger_watermark_age.get() == 0.0;
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(readings_of(&t, "gauges").await, 2000);
    t.stop().await;
}
