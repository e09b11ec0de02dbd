//! A stage that panics mid-stream is restarted by its supervisor, and no reading is lost or doubled.

use crate::helpers::*;
use sensorhub::pipeline::faults::Faults;
use std::time::Duration;

/// `stage` panics on the first two batches holding the sensor `poison`; `actor` is the stage whose
/// restarts count it.
async fn panic_in_stage_loses_nothing(stage: &str, actor: &str) {
    let faults = Faults::panic_in(stage, "poison", 2);
    // The lost batch is re-read once the pipeline drains, not after the claim idle time.
    let mut t = spawn_app_with(
        |c| {
            c.batch_size = 50;
            c.claim_idle = Duration::from_secs(3600);
        },
        faults,
    )
    .await;
    let base: chrono::DateTime<chrono::Utc> = "2025-01-01T00:00:00Z".parse().unwrap();
    let mut payloads: Vec<Vec<u8>> = (0..2000)
        .map(|i| {
            reading_json(
                &format!("s{}", i % 25),
                f64::from(i),
                base + chrono::Duration::seconds(i64::from(i)),
            )
            .into_bytes()
        })
        .collect();
    payloads.insert(700, reading_json("poison", 1.0, base).into_bytes());
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;

    let metrics = t.metrics();
    wait_for(
        "the stage restarts counted",
        Duration::from_secs(10),
        || {
            let restarts = metrics.actor_restarts.with_label_values(&[actor]).get();
            async move { (restarts == 2).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        t.readings().await,
        2001,
        "every reading stored once after {stage} panicked twice"
    );
    assert_eq!(metrics.readings_written.get(), 2001);
    t.assert_aggregates_exact().await;
    // The restarted stage keeps working.
    let last = t
        .xadd_data(reading_json("after", 1.0, base).as_bytes())
        .await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 2002);
    let (status, body) = t.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    t.stop().await;
}

#[actix_web::test]
async fn panic_in_validate_is_restarted_without_loss() {
    panic_in_stage_loses_nothing("validate", "validate").await;
}

#[actix_web::test]
async fn panic_in_window_is_restarted_without_loss() {
    panic_in_stage_loses_nothing("window", "window").await;
}

#[actix_web::test]
async fn panic_in_write_is_restarted_without_loss() {
    panic_in_stage_loses_nothing("write", "write").await;
}

/// A panic inside one write lane, while the other lane may already have committed its part of the
/// batch: the batch is re-read (the committed part skipped as duplicates) and the lane goes on.
#[actix_web::test]
async fn panic_in_a_write_lane_loses_nothing() {
    panic_in_stage_loses_nothing("write lane", "write").await;
}

/// Entries delivered to an instance that died before committing them are in no batch of any
/// live instance, and sensorhub reads with `NOACK`, so Redis keeps no pending list for them. The
/// ledger shows them delivered and uncommitted; once that gap has stayed open for the claim idle
/// time, the reader re-reads them: they are stored, not stranded.
#[actix_web::test]
async fn deliveries_lost_in_flight_are_re_read() {
    let resources = Resources::new();
    let mut t = spawn_app_on(
        resources,
        |c| c.claim_idle = Duration::from_secs(1),
        Default::default(),
    )
    .await;
    let first = t
        .xadd_data(reading_json("normal", 1.0, chrono::Utc::now()).as_bytes())
        .await;
    t.wait_drained(&first).await;

    // Another consumer of the group takes the next entry and dies with it. In one transaction,
    // so that sensorhub's blocked read cannot be served first.
    let mut redis = t.redis.clone();
    let (lost, delivered): (String, redis::Value) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&t.config.stream)
        .arg("*")
        .arg("data")
        .arg(reading_json("lost", 7.0, chrono::Utc::now()))
        .cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&t.config.group)
        .arg("died")
        .arg("COUNT")
        .arg(1)
        .arg("NOACK")
        .arg("STREAMS")
        .arg(&t.config.stream)
        .arg(">")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        format!("{delivered:?}").contains(&lost),
        "the other consumer got the entry: {delivered:?}"
    );
    let (uncommitted, last_delivered) =
        group_state(&mut redis, &t.config.stream, &t.config.group).await;
    assert_eq!((uncommitted, last_delivered.to_string()), (1, lost.clone()));

    // Entries after it are read and committed as usual; the gap stays until it is re-read.
    let after = t
        .xadd_data(reading_json("after", 2.0, chrono::Utc::now()).as_bytes())
        .await;
    let pg = &t.pg;
    wait_for_count(
        pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'lost'",
        1,
        Duration::from_secs(15),
    )
    .await;
    t.wait_drained(&after).await;
    assert_eq!(t.readings().await, 3);
    assert!(t.metrics().entries_reread.get() >= 1);
    t.stop().await;
}

/// A crash after Redis delivered entries (`NOACK`) and before they were committed leaves them
/// in no pending list: on start, sensorhub re-reads what was delivered above the ledger's
/// watermark at once, without waiting for the claim idle time.
#[actix_web::test]
async fn entries_delivered_before_a_crash_are_re_read_on_start() {
    let resources = Resources::new();
    let stream = resources.stream.clone();
    let mut conn = redis_manager().await;
    let id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("data")
        .arg(reading_json("in-flight", 3.0, chrono::Utc::now()))
        .query_async(&mut conn)
        .await
        .unwrap();
    sensorhub::stream::group::ensure_group(&mut conn, &stream, "sensorhub", true)
        .await
        .unwrap();
    // The previous life of this consumer read it, then died.
    let delivered = read_as(&mut conn, &stream, ("sensorhub", "test-consumer"), 10, true).await;
    assert!(format!("{delivered:?}").contains(&id));

    let mut t = spawn_app_on(
        resources,
        |c| c.claim_idle = Duration::from_secs(3600),
        Default::default(),
    )
    .await;
    t.wait_drained(&id).await;
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'in-flight'")
            .await,
        1
    );
    assert_eq!(t.metrics().entries_reread.get(), 1);
    t.stop().await;
}
