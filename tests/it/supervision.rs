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
