//! A stage that panics mid-stream is restarted by its supervisor, and no reading is lost or doubled.

use crate::helpers::*;
use sensorhub::pipeline::Faults;
use std::time::Duration;

async fn panic_in_stage_loses_nothing(stage: &str) {
    let faults = Faults::panic_in(stage, "poison", 2);
    let mut t = spawn_app_with(|c| c.batch_size = 50, faults).await;
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
            let restarts = metrics.actor_restarts.with_label_values(&[stage]).get();
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
    panic_in_stage_loses_nothing("validate").await;
}

#[actix_web::test]
async fn panic_in_window_is_restarted_without_loss() {
    panic_in_stage_loses_nothing("window").await;
}

#[actix_web::test]
async fn panic_in_write_is_restarted_without_loss() {
    panic_in_stage_loses_nothing("write").await;
}

/// A delivery lost in flight (Redis delivered the entries, the reply never arrived) leaves entries
/// pending for this consumer that no stage holds. The claim pass notices them idle and the reader
/// re-reads them: they are stored, not stranded until the next restart.
#[actix_web::test]
async fn deliveries_lost_in_flight_are_re_read() {
    let resources = Resources::new();
    let mut redis = redis_conn(REDIS_URL).await;
    let lost: String = redis::cmd("XADD")
        .arg(&resources.stream)
        .arg("*")
        .arg("data")
        .arg(reading_json("lost", 7.0, chrono::Utc::now()))
        .query_async(&mut redis)
        .await
        .unwrap();
    // The group starts after the entry, so a normal read never delivers it.
    let () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&resources.stream)
        .arg("sensorhub")
        .arg("$")
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut t = spawn_app_on(
        resources,
        |c| c.claim_idle = Duration::from_secs(1),
        Default::default(),
    )
    .await;
    let last = t
        .xadd_data(reading_json("normal", 1.0, chrono::Utc::now()).as_bytes())
        .await;
    t.wait_drained(&last).await;
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id = 'lost'")
            .await,
        0
    );

    // Mid-run, the entry becomes pending for sensorhub's own consumer without being delivered to it.
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&t.config.stream)
        .arg("sensorhub")
        .arg(&t.config.consumer)
        .arg(0)
        .arg(&lost)
        .arg("FORCE")
        .arg("JUSTID")
        .query_async(&mut redis)
        .await
        .unwrap();
    let (pending, _) = group_state(&mut redis, &t.config.stream, "sensorhub").await;
    assert_eq!(pending, 1);
    let pg = &t.pg;
    wait_for_count(
        pg,
        "SELECT count(*) FROM readings WHERE sensor_id = 'lost'",
        1,
        Duration::from_secs(15),
    )
    .await;
    wait_for("nothing pending", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        let stream = t.config.stream.clone();
        async move { (group_state(&mut redis, &stream, "sensorhub").await.0 == 0).then_some(()) }
    })
    .await;
}
