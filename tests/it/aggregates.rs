//! Aggregates equal a GROUP BY over the stored readings: many sensors, out of order, late readings.

use crate::helpers::*;
use chrono::{DateTime, Duration, Utc};

#[actix_web::test]
async fn aggregates_equal_group_by_with_out_of_order_and_late_readings() {
    let mut t = spawn_app_with(|c| c.batch_size = 200, Default::default()).await;
    let mut rng = Rng::new(0x5e45_0a11);
    let base: DateTime<Utc> = "2025-03-01T10:00:00Z".parse().unwrap();
    let sensors: Vec<String> = (0..40)
        .map(|i| format!("site-{}:sensor.{i}", i % 4))
        .collect();

    // ~4,000 readings over three hours, values in quarter steps, sent shuffled: single objects and
    // gateway arrays of up to 20 readings.
    let mut readings: Vec<String> = Vec::new();
    for sensor in &sensors {
        let mut offset = 0i64;
        for _ in 0..100 {
            offset += 1 + rng.below(200) as i64;
            let value = (rng.below(4000) as f64 - 2000.0) * 0.25;
            readings.push(reading_json(
                sensor,
                value,
                base + Duration::milliseconds(offset * 1000 + rng.below(1000) as i64),
            ));
        }
    }
    rng.shuffle(&mut readings);
    let late: Vec<String> = readings.split_off(readings.len() - 300);
    let mut payloads = Vec::new();
    let mut rest = readings.as_slice();
    while !rest.is_empty() {
        let n = (1 + rng.below(20) as usize).min(rest.len());
        let (group, tail) = rest.split_at(n);
        payloads.push(if n == 1 {
            group[0].clone().into_bytes()
        } else {
            format!("[{}]", group.join(",")).into_bytes()
        });
        rest = tail;
    }
    let last = t.xadd_many(&payloads).await;
    t.wait_drained(&last).await;
    t.assert_aggregates_exact().await;

    // Late readings, after their windows were already written: stored, and the windows corrected.
    let late: Vec<Vec<u8>> = late.into_iter().map(String::into_bytes).collect();
    let last = t.xadd_many(&late).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 4000);
    t.assert_aggregates_exact().await;

    // The sensors table holds the newest reading of each sensor, whatever the arrival order.
    let wrong = t
        .count(
            "SELECT count(*) FROM sensors s JOIN LATERAL (
                 SELECT ts, value FROM readings r WHERE r.sensor_id = s.sensor_id ORDER BY ts DESC LIMIT 1) newest ON true
             WHERE s.last_seen <> newest.ts OR s.last_value <> newest.value
                OR s.first_seen <> (SELECT min(ts) FROM readings r WHERE r.sensor_id = s.sensor_id)",
        )
        .await;
    assert_eq!(wrong, 0);
    assert_eq!(t.count("SELECT count(*) FROM sensors").await, 40);
    let metrics = t.metrics();
    assert_eq!(metrics.readings_written.get(), 4000);
    assert!(
        metrics.aggregate_rows_upserted.get() as i64
            >= t.count("SELECT count(*) FROM aggregates").await
    );
    t.stop().await;
}
