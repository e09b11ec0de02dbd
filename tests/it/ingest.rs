//! The input forms of sensorhub's JSON and entry fields, both ways in (PUBLISH and XADD), and
//! duplicates among them.

use crate::helpers::*;

/// The three input examples of the README, exactly as an operator types them. They all describe
/// the same reading, so together they store one row and count the rest as duplicates.
#[actix_web::test]
async fn design_examples_store_one_row() {
    let mut t = spawn_app().await;
    t.wait_for_bridge().await;
    let example = br#"{"sensor": "temperature", "value": 14, "timestamp": "2024-12-01 12:00:00"}"#;
    assert_eq!(t.publish(example).await, 1, "the bridge is subscribed");
    t.xadd_data(example).await;
    let last = t
        .xadd_fields(&[
            ("sensor", b"temperature"),
            ("value", b"14"),
            ("timestamp", b"2024-12-01T12:00:00Z"),
        ])
        .await;
    t.wait_drained(&last).await;
    let metrics = t.metrics();
    wait_for(
        "three messages processed",
        std::time::Duration::from_secs(10),
        || {
            let done = metrics.readings_written.get() + metrics.readings_duplicate.get() == 3;
            async move { done.then_some(()) }
        },
    )
    .await;

    let rows =
        t.pg.query("SELECT sensor_id, ts::text, value FROM readings", &[])
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "temperature");
    assert_eq!(rows[0].get::<_, String>(1), "2024-12-01 12:00:00+00");
    assert_eq!(rows[0].get::<_, f64>(2), 14.0);
    assert_eq!(metrics.readings_written.get(), 1);
    assert_eq!(metrics.readings_duplicate.get(), 2);
    assert_eq!(
        metrics
            .messages_received
            .with_label_values(&["pubsub"])
            .get(),
        1
    );
    assert_eq!(
        metrics
            .messages_received
            .with_label_values(&["stream"])
            .get(),
        3
    );
    t.assert_aggregates_exact().await;
    let windows = t
        .count("SELECT count(*) FROM aggregates WHERE sensor_id = 'temperature'")
        .await;
    assert_eq!(windows, 2, "one 1m and one 1h window");
    let (status, body) = t.get("/healthcheck").await;
    assert_eq!(status, 200, "{body}");
    t.stop().await;
}

/// Each input form, with its own sensor, sent both ways: each sensor ends up with exactly one row.
#[actix_web::test]
async fn every_input_form_both_ways_is_one_row() {
    let mut t = spawn_app().await;
    t.wait_for_bridge().await;
    let forms: Vec<(&str, Vec<u8>)> = vec![
        ("naive", br#"{"sensor": "naive", "value": 14, "timestamp": "2024-12-01 12:00:00"}"#.to_vec()),
        ("rfc3339", br#"{"sensor": "rfc3339", "value": 1.5, "timestamp": "2024-12-01T13:00:00+01:00"}"#.to_vec()),
        ("epoch_s", br#"{"sensor": "epoch_s", "value": -3, "timestamp": 1733054400}"#.to_vec()),
        ("epoch_ms", br#"{"sensor": "epoch_ms", "value": 7, "timestamp": 1733054400123}"#.to_vec()),
        ("string_value", br#"{"sensor": "string_value", "value": "12.5", "timestamp": "2024-12-01T12:00:00Z"}"#.to_vec()),
        ("with_unit", br#"{"sensor": "with_unit", "value": 3, "unit": "kWh", "timestamp": "2024-12-01T12:00:00Z", "extra": [1, 2]}"#.to_vec()),
        ("array_a", br#"[{"sensor": "array_a", "value": 1, "timestamp": "2024-12-01T12:00:00Z"}, {"sensor": "array_b", "value": 2, "timestamp": "2024-12-01T12:00:00Z"}]"#.to_vec()),
    ];
    for (_, payload) in &forms {
        assert_eq!(t.publish(payload).await, 1);
        t.xadd_data(payload).await;
    }
    t.xadd_fields(&[
        ("sensor", b"fields"),
        ("value", b"14"),
        ("timestamp", b"2024-12-01T12:00:00Z"),
    ])
    .await;
    t.xadd_fields(&[
        ("sensor", b"fields"),
        ("value", b"14"),
        ("timestamp", b"2024-12-01 12:00:00"),
    ])
    .await;
    assert_eq!(
        t.publish(br#"{"sensor":"fields","value":14,"timestamp":"2024-12-01T12:00:00Z"}"#)
            .await,
        1
    );
    // Without a timestamp, the stream entry's time is used: one row per entry.
    t.xadd_data(br#"{"sensor": "no_ts", "value": 1}"#).await;
    let last = t
        .xadd_fields(&[("sensor", b"no_ts_fields"), ("value", b"2")])
        .await;
    t.wait_drained(&last).await;
    let metrics = t.metrics();
    wait_for(
        "every message processed",
        std::time::Duration::from_secs(10),
        || {
            let done =
                metrics.readings_written.get() + metrics.readings_duplicate.get() == 2 * 8 + 3 + 2;
            async move { done.then_some(()) }
        },
    )
    .await;

    let rows =
        t.pg.query(
            "SELECT sensor_id, count(*) FROM readings GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut expected: Vec<(String, i64)> = [
        "naive",
        "rfc3339",
        "epoch_s",
        "epoch_ms",
        "string_value",
        "with_unit",
        "array_a",
        "array_b",
        "fields",
        "no_ts",
        "no_ts_fields",
    ]
    .iter()
    .map(|s| (s.to_string(), 1))
    .collect();
    expected.sort();
    assert_eq!(counts, expected);
    assert_eq!(metrics.readings_written.get(), 11);
    assert_eq!(metrics.readings_duplicate.get(), 10);
    let value: f64 =
        t.pg.query_one(
            "SELECT value FROM readings WHERE sensor_id = 'string_value'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(value, 12.5);
    let ts: String =
        t.pg.query_one(
            "SELECT ts::text FROM readings WHERE sensor_id = 'epoch_ms'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ts, "2024-12-01 12:00:00.123+00");
    let unit: Option<String> =
        t.pg.query_one(
            "SELECT unit FROM sensors WHERE sensor_id = 'with_unit'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unit.as_deref(), Some("kWh"));
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// Publishing the same batch twice changes nothing; the duplicate counter says how many.
#[actix_web::test]
async fn same_batch_twice_changes_nothing() {
    let mut t = spawn_app().await;
    let base: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let payloads: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            reading_json(
                &format!("dup-{}", i % 7),
                f64::from(i) * 0.5,
                base + chrono::Duration::seconds(i64::from(i) * 13),
            )
            .into_bytes()
        })
        .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    let before: Vec<String> = snapshot(&t).await;
    let written = t.metrics().readings_written.get();
    assert_eq!(written, 300);

    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    let metrics = t.metrics();
    wait_for(
        "duplicates counted",
        std::time::Duration::from_secs(10),
        || {
            let n = metrics.readings_duplicate.get();
            async move { (n == 300).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        snapshot(&t).await,
        before,
        "a replayed batch changed stored data"
    );
    assert_eq!(metrics.readings_written.get(), 300);
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// The batch size counts readings: a backlog of gateway arrays is written in batches of about that
/// many readings, not `batch size` entries of 50 readings each (which would be one transaction of
/// 20,000 readings here, and a batch a hundred times the size in memory with larger arrays).
#[actix_web::test]
async fn gateway_arrays_are_batched_by_their_readings() {
    let mut in_flight = 0;
    let mut t = spawn_app_with(
        |c| {
            c.batch_size = 500;
            in_flight = c.max_in_flight as u64;
        },
        Default::default(),
    )
    .await;
    let base: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let payloads: Vec<Vec<u8>> = (0..400)
        .map(|entry| {
            let readings: Vec<String> = (0..50)
                .map(|device| {
                    reading_json(
                        &format!("gw-{device}"),
                        f64::from(entry),
                        base + chrono::Duration::seconds(i64::from(entry)),
                    )
                })
                .collect();
            format!("[{}]", readings.join(",")).into_bytes()
        })
        .collect();
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 20_000);
    t.assert_aggregates_exact().await;
    // Until a batch has been validated the reader cannot know the shape and reads probes of
    // `PROBE_ENTRIES` entries (5,000 readings here), at most `max_in_flight` of them; every
    // later batch holds 10 entries, 500 readings.
    let probes = in_flight * sensorhub::pipeline::flow::PROBE_ENTRIES as u64 * 50;
    let batches = t.metrics().batch_write_duration.get_sample_count();
    assert!(
        batches >= in_flight + (20_000 - probes.min(20_000)) / 500,
        "20,000 readings in arrays of 50 went in {batches} batches"
    );
    t.stop().await;
}

/// A backlog of large messages is read a few entries at a time, by the size of the entries read
/// before: a batch size's worth of megabyte messages at once would take gigabytes.
#[actix_web::test]
async fn large_messages_are_read_a_few_at_a_time() {
    let base: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    // 80 valid readings of 300 KiB each (trailing whitespace is valid JSON): 24 MiB in all,
    // waiting in the stream before sensorhub starts.
    let padding = " ".repeat(300 * 1024);
    let resources = Resources::new();
    let mut redis = redis_conn(REDIS_URL).await;
    let mut total_bytes = 0;
    let mut last = String::new();
    for i in 0..80 {
        let ts = base + chrono::Duration::seconds(i64::from(i));
        let payload = format!("{}{padding}", reading_json("big", f64::from(i), ts));
        total_bytes += payload.len();
        last = redis::cmd("XADD")
            .arg(&resources.stream)
            .arg("*")
            .arg("data")
            .arg(payload)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let mut t = spawn_app_on(resources, |c| c.batch_size = 20_000, Default::default()).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 80);
    t.assert_aggregates_exact().await;
    // The first read takes FIRST_READ_ENTRIES, every later one at most READ_BYTES; by readings
    // alone the 80 entries would be one batch.
    let batches = t.metrics().batch_write_duration.get_sample_count() as usize;
    assert!(
        batches >= total_bytes / sensorhub::pipeline::flow::READ_BYTES,
        "{total_bytes} bytes of entries went in {batches} batches"
    );
    t.stop().await;
}

/// A write lane that cannot commit (another session holds a row of one of its sensors) holds back
/// the acknowledgement of its batch and of every later one, but not the other lane: that one goes
/// on writing its part of the next batches. Once the lock is gone, every reading is stored once.
#[actix_web::test]
async fn a_blocked_write_lane_holds_back_acks_not_the_other_lane() {
    use sensorhub::pipeline::lanes::lane_of;
    let sensor_in = |lane: usize| {
        (0..)
            .map(|i| format!("lane{lane}-{i}"))
            .find(|s| lane_of(s, 2) == lane)
            .unwrap()
    };
    let (blocked, free) = (sensor_in(0), sensor_in(1));
    let base: chrono::DateTime<chrono::Utc> = "2025-06-01T00:00:00Z".parse().unwrap();
    let at = |s: i64| base + chrono::Duration::seconds(s);
    let mut t = spawn_app_with(
        |c| {
            c.write_connections = 2;
            c.batch_size = 2;
        },
        Default::default(),
    )
    .await;
    // The blocked sensor's row in `sensors`, written by sensorhub, then locked by another session.
    let first = t
        .xadd_data(reading_json(&blocked, 0.0, at(0)).as_bytes())
        .await;
    t.wait_drained(&first).await;
    let locker = pg_client(t.config.database_url.expose()).await;
    locker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM sensors WHERE sensor_id = '{blocked}' FOR UPDATE"
        ))
        .await
        .unwrap();

    // Batches of two entries: the first has a reading of each lane, the next two only the free
    // lane's.
    let mut payloads = vec![reading_json(&blocked, 1.0, at(1)).into_bytes()];
    payloads.extend((1..=5).map(|i| reading_json(&free, f64::from(i), at(i.into())).into_bytes()));
    let last = t.xadd_many(&payloads).await;
    let free_rows = format!("SELECT count(*) FROM readings WHERE sensor_id = '{free}'");
    wait_for(
        "the free lane to write its part of the later batches",
        std::time::Duration::from_secs(20),
        || {
            let pg = &t.pg;
            let sql = free_rows.clone();
            async move { (pg.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) == 5).then_some(()) }
        },
    )
    .await;
    // Committed but not acknowledged: the first batch is not complete, and batches complete in
    // order.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        t.metrics().entries_acked.get(),
        1,
        "only the entry before the lock"
    );
    assert_eq!(t.readings().await, 6, "the blocked reading waits");

    locker.batch_execute("COMMIT").await.unwrap();
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 7);
    assert_eq!(t.metrics().entries_acked.get(), 7);
    t.assert_aggregates_exact().await;
    t.stop().await;
}

/// Every stored row, as text, in key order.
async fn snapshot(t: &TestApp) -> Vec<String> {
    let mut rows = Vec::new();
    for sql in [
        "SELECT format('%s %s %s', sensor_id, ts, value) FROM readings ORDER BY sensor_id, ts",
        "SELECT format('%s %s %s %s %s %s %s', sensor_id, resolution, bucket, count, sum, first_value, last_value) FROM aggregates ORDER BY 1",
        "SELECT format('%s %s %s %s', sensor_id, first_seen, last_seen, last_value) FROM sensors ORDER BY 1",
    ] {
        for row in t.pg.query(sql, &[]).await.unwrap() {
            rows.push(row.get(0));
        }
    }
    rows
}

/// Removes a test's ACL user and its keys in another database, also when the test fails.
struct AclUser {
    user: String,
    url: String,
    keys: Vec<String>,
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(mut conn) =
            redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&self.keys).query(&mut conn);
        }
        if let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.user)
                .query(&mut conn);
        }
    }
}

/// Entries are read on a connection of the reader's own: it authenticates and selects the
/// database the URL names like every other connection (an ACL user with a password, database 3).
#[actix_web::test]
async fn reads_with_a_user_a_password_and_a_database_number() {
    let user = unique_name("sh_user");
    let password = "s3cret-pass";
    let url = format!("redis://{user}:{password}@127.0.0.1:6379/3");
    let mut admin = redis_conn(REDIS_URL).await;
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user)
        .arg("on")
        .arg(format!(">{password}"))
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut t = spawn_app_with(
        |c| {
            c.redis_url = sensorhub::config::Secret::new(url.clone());
            c.channel = None;
        },
        Default::default(),
    )
    .await;
    let _cleanup = AclUser {
        user: user.clone(),
        url: url.clone(),
        keys: vec![t.stream().to_owned(), t.dead_stream()],
    };
    let mut db3 = redis_conn(&url).await;
    let base: chrono::DateTime<chrono::Utc> = "2025-03-01T10:00:00Z".parse().unwrap();
    let payloads: Vec<String> = (0..50)
        .map(|i| {
            reading_json(
                "auth-s",
                f64::from(i),
                base + chrono::Duration::seconds(i.into()),
            )
        })
        .collect();
    sensorhub::stream::append::append_payloads(&mut db3, t.stream(), payloads)
        .await
        .unwrap();
    let pg = &t.pg;
    wait_for(
        "50 readings from database 3",
        std::time::Duration::from_secs(30),
        || async {
            let n: i64 = pg
                .query_one("SELECT count(*) FROM readings", &[])
                .await
                .unwrap()
                .get(0);
            (n == 50).then_some(())
        },
    )
    .await;
    let in_db0: i64 = redis::cmd("EXISTS")
        .arg(t.stream())
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(in_db0, 0, "nothing went to database 0");
    t.stop().await;
}
