//! Poison data: readings PostgreSQL itself refuses do not block the stream. They are isolated into
//! the dead-letter stream after bounded retries, and the rest of their batch is stored.

use crate::helpers::*;

#[actix_web::test]
async fn readings_the_database_refuses_are_dead_lettered_and_the_rest_stored() {
    let mut t = spawn_app_with(|c| c.batch_size = 1000, Default::default()).await;
    // A forced refusal through real PostgreSQL: a check constraint the validator knows nothing of.
    t.pg.batch_execute(
        "ALTER TABLE readings_hot ADD CONSTRAINT no_poison CHECK (sensor_id NOT LIKE 'poison%')",
    )
    .await
    .unwrap();
    let base: chrono::DateTime<chrono::Utc> = "2025-07-01T00:00:00Z".parse().unwrap();
    let mut payloads: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            reading_json(
                &format!("ok-{}", i % 10),
                f64::from(i),
                base + chrono::Duration::seconds(i64::from(i)),
            )
            .into_bytes()
        })
        .collect();
    payloads[137] = reading_json("poison-a", 1.0, base).into_bytes();
    payloads[801] = format!(
        "[{},{}]",
        reading_json("poison-b", 2.0, base),
        reading_json("ok-x", 3.0, base)
    )
    .into_bytes();
    // Pub/Sub bridging and reads happen fast enough that the stream is one or two batches.
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;

    assert_eq!(
        t.readings().await,
        999,
        "998 plain readings plus ok-x are stored"
    );
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id LIKE 'poison%'")
            .await,
        0
    );
    t.assert_aggregates_exact().await;

    let dead = t.dead_letters().await;
    let mut letters: Vec<(String, String)> = dead
        .ids
        .iter()
        .map(|letter| {
            let text = |name: &str| match letter.map.get(name) {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            };
            assert!(
                text("detail").contains("no_poison"),
                "detail names the refusal: {}",
                text("detail")
            );
            (text("reason"), text("data"))
        })
        .collect();
    letters.sort();
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|(reason, _)| reason == "database_rejected")
    );
    assert!(letters[0].1.contains("poison-a") && letters[1].1.contains("poison-b"));
    let metrics = t.metrics();
    assert_eq!(
        metrics
            .readings_rejected
            .with_label_values(&["database_rejected"])
            .get(),
        2
    );
    assert_eq!(metrics.readings_written.get(), 999);
    let (status, body) = t.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    t.stop().await;
}
