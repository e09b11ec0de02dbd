//! PostgreSQL as a test sees it: the aggregates checked against the raw rows, counts awaited.

use crate::helpers::wait_for;
use std::time::Duration;

/// A connection to the database at `url`, its I/O running on a task of its own.
pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("postgres connection");
    tokio::spawn(connection);
    client
}

/// The resolutions sensorhub aggregates into by default (those of a process started without
/// `SENSORHUB_RESOLUTIONS`).
pub fn default_resolutions() -> Vec<sensorhub::domain::Resolution> {
    sensorhub::Config::from_lookup(|_| None)
        .expect("defaults are valid")
        .resolutions
}

/// Asserts that every aggregate row equals the `GROUP BY` recomputation over `readings` —
/// `increase` the sum of the steps `lag()` gives — and that no window is missing or extra.
pub async fn assert_aggregates_exact(
    pg: &tokio_postgres::Client,
    resolutions: &[sensorhub::domain::Resolution],
) {
    assert_aggregates_exact_since(pg, resolutions, "-infinity").await;
}

/// As [`assert_aggregates_exact`], for the windows that start at or after `since` (a timestamp
/// literal): the periods retention keeps. There the window of a sensor's first kept reading is not
/// checked for `increase`: its step came from a reading retention removed.
pub async fn assert_aggregates_exact_since(
    pg: &tokio_postgres::Client,
    resolutions: &[sensorhub::domain::Resolution],
    since: &str,
) {
    let resolutions: Vec<(String, i64)> = resolutions
        .iter()
        .map(|r| (r.to_string(), i64::from(r.seconds())))
        .collect();
    let values: Vec<String> = resolutions
        .iter()
        .map(|(label, secs)| format!("('{label}', {secs})"))
        .collect();
    let sql = format!(
        "WITH expected AS (
           SELECT sensor_id, r.label AS resolution,
                  to_timestamp(floor(extract(epoch FROM ts) / r.secs) * r.secs) AS bucket,
                  count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
                  (array_agg(ts ORDER BY ts))[1] AS first_ts,
                  (array_agg(value ORDER BY ts))[1] AS first_value,
                  (array_agg(ts ORDER BY ts DESC))[1] AS last_ts,
                  (array_agg(value ORDER BY ts DESC))[1] AS last_value,
                  sum(CASE WHEN previous IS NULL THEN 0 WHEN value >= previous
                           THEN value - previous ELSE value END) AS increase,
                  sum(abs(value) + abs(coalesce(previous, 0))) AS magnitude,
                  bool_or(previous IS NULL) AS holds_first
           FROM (SELECT *, lag(value) OVER (PARTITION BY sensor_id ORDER BY ts) AS previous
                 FROM readings) steps
           CROSS JOIN (VALUES {}) AS r(label, secs)
           GROUP BY 1, 2, 3)
         SELECT coalesce(e.sensor_id, a.sensor_id) || ' ' || coalesce(e.resolution, a.resolution)
                || ' ' || coalesce(e.bucket, a.bucket)::text
                || ' expected ' || coalesce(e.count::text, 'none') || '/' || coalesce(e.sum::text, '-')
                || '/' || coalesce(e.increase::text, '-')
                || ' got ' || coalesce(a.count::text, 'none') || '/' || coalesce(a.sum::text, '-')
                || '/' || coalesce(a.increase::text, '-')
         FROM expected e FULL OUTER JOIN aggregate_windows a USING (sensor_id, resolution, bucket)
         WHERE coalesce(e.bucket, a.bucket) >= '{since}'::timestamptz
           AND (a.count IS DISTINCT FROM e.count
            OR abs(a.sum - e.sum) > 1e-9 * greatest(1, abs(e.sum))
            OR a.min IS DISTINCT FROM e.min OR a.max IS DISTINCT FROM e.max
            OR a.first_ts IS DISTINCT FROM e.first_ts OR a.first_value IS DISTINCT FROM e.first_value
            OR a.last_ts IS DISTINCT FROM e.last_ts OR a.last_value IS DISTINCT FROM e.last_value
            OR a.diff IS DISTINCT FROM e.last_value - e.first_value
            OR (NOT (e.holds_first AND '{since}'::timestamptz > '-infinity')
                AND abs(a.increase - e.increase) > 1e-9 * greatest(1, e.magnitude)))
         LIMIT 10",
        values.join(", ")
    );
    let rows = pg.query(&sql, &[]).await.expect("aggregate check");
    let mismatches: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        mismatches.is_empty(),
        "aggregates differ from GROUP BY over readings:\n{}",
        mismatches.join("\n")
    );
    let windows: i64 = pg
        .query_one("SELECT count(*) FROM aggregates", &[])
        .await
        .unwrap()
        .get(0);
    assert!(windows > 0, "no aggregate rows at all");
}

/// Waits until the single-number query `sql` answers `expected`.
pub async fn wait_for_count(
    pg: &tokio_postgres::Client,
    sql: &str,
    expected: i64,
    timeout: Duration,
) {
    wait_for(&format!("{sql} = {expected}"), timeout, || async move {
        let n: i64 = pg.query_one(sql, &[]).await.unwrap().get(0);
        (n == expected).then_some(())
    })
    .await;
}

/// The `(sensor_id, ts in µs)` of every stored reading whose sensor id is `LIKE sensor_like`.
pub async fn stored_keys(pg: &tokio_postgres::Client, sensor_like: &str) -> Vec<(String, i64)> {
    pg.query(
        "SELECT sensor_id, (extract(epoch FROM ts) * 1000000)::bigint FROM readings \
         WHERE sensor_id LIKE $1",
        &[&sensor_like],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}
