//! Dead letters an operator works with: the API's routes and filters, paging while new letters
//! arrive, replay after the settings are relaxed (stored once, the rest back with reasons,
//! twice stores nothing new), and a replay of 50,000 killed midway.

use crate::helpers::Sensorhub;
use crate::helpers::*;
use chrono::{DateTime, TimeDelta, Utc};
use sensorhub::config::Secret;
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "dead-letter-token";

fn with_token(c: &mut sensorhub::Config) {
    c.api_token = Some(Secret::new(TOKEN));
    c.ingest_token = Some(Secret::new(TOKEN));
    c.admin_token = Some(Secret::new(TOKEN));
}

async fn call(t: &TestApp, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {TOKEN}");
    json_request(
        t.app().port(),
        method,
        path,
        &[("Authorization", auth.as_str())],
        body,
    )
    .await
}

fn ids(page: &Value) -> Vec<String> {
    page["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Rejected readings of three reasons: a timestamp a year ahead and one twenty years old (both
/// valid once the limits are relaxed), and `"12,5"` (never a number). Returns the entry of the
/// last message.
async fn reject(t: &mut TestApp, n: usize, tag: &str) -> String {
    let now = Utc::now();
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let sensor = format!("{tag}-{i}");
            match i % 3 {
                0 => reading_json(&sensor, i as f64, now + TimeDelta::days(365)),
                1 => reading_json(&sensor, i as f64, now - TimeDelta::days(20 * 365)),
                _ => format!(r#"{{"sensor":"{sensor}","value":"12,5"}}"#),
            }
            .into_bytes()
        })
        .collect();
    t.xadd_many(&payloads).await
}

#[actix_web::test]
async fn the_api_lists_filters_pages_counts_and_purges() {
    let mut t = spawn_app_with(with_token, Default::default()).await;
    let last = reject(&mut t, 30, "api").await;
    t.wait_drained(&last).await;

    let (status, page) = call(&t, "GET", "/api/v1/dead-letters?limit=12", &Value::Null).await;
    assert_eq!(status, 200, "{page}");
    let first = ids(&page);
    assert_eq!(first.len(), 12);
    let letter = &page["letters"][0];
    assert_eq!(letter["reason"], "not_a_number", "newest first: {letter}");
    assert!(letter["data"].as_str().unwrap().contains("api-29"));
    assert!(letter["entry"].is_string() && letter["time"].is_string());
    // New letters arrive: the next page goes on where the first ended.
    let last = reject(&mut t, 9, "late").await;
    t.wait_drained(&last).await;
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, second) = call(
        &t,
        "GET",
        &format!("/api/v1/dead-letters?limit=12&after={next}"),
        &Value::Null,
    )
    .await;
    let (_, third) = call(
        &t,
        "GET",
        &format!(
            "/api/v1/dead-letters?limit=12&after={}",
            second["next"].as_str().unwrap()
        ),
        &Value::Null,
    )
    .await;
    let mut paged = first.clone();
    paged.extend(ids(&second));
    paged.extend(ids(&third));
    assert_eq!(paged.len(), 30, "every letter of the first 30, once");
    let mut unique = paged.clone();
    unique.dedup();
    assert_eq!(unique, paged);
    assert!(third["next"].is_null(), "the last page has no next");

    // Filters: reason, text of the original bytes, time.
    let (_, old) = call(
        &t,
        "GET",
        "/api/v1/dead-letters?reason=too_old&limit=1000",
        &Value::Null,
    )
    .await;
    assert_eq!(ids(&old).len(), 10 + 3);
    let (_, one) = call(
        &t,
        "GET",
        "/api/v1/dead-letters?sensor=api-7%22",
        &Value::Null,
    )
    .await;
    assert_eq!(ids(&one).len(), 1, "{one}");
    let future =
        (Utc::now() + TimeDelta::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, none) = call(
        &t,
        "GET",
        &format!("/api/v1/dead-letters?from={future}"),
        &Value::Null,
    )
    .await;
    assert!(ids(&none).is_empty());
    for bad in [
        "limit=0",
        "after=yesterday",
        "from=soon",
        "id=1-0",
        "colour=red",
    ] {
        let (status, body) = call(
            &t,
            "GET",
            &format!("/api/v1/dead-letters?{bad}"),
            &Value::Null,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    let (_, summary) = call(&t, "GET", "/api/v1/dead-letters/summary", &Value::Null).await;
    assert_eq!(summary["total"], 39);
    assert_eq!(summary["by_reason"]["future_timestamp"], 10 + 3);
    assert_eq!(summary["by_reason"]["not_a_number"], 10 + 3);
    assert_eq!(summary["last_hour"]["too_old"], 13);

    // Purge: nothing without a selection; by id; by filter.
    let (status, _) = call(&t, "DELETE", "/api/v1/dead-letters", &Value::Null).await;
    assert_eq!(status, 400);
    let (_, gone) = call(
        &t,
        "DELETE",
        &format!("/api/v1/dead-letters?id={}&id={}", first[0], first[1]),
        &Value::Null,
    )
    .await;
    assert_eq!(gone["deleted"], 2);
    let (_, gone) = call(
        &t,
        "DELETE",
        "/api/v1/dead-letters?reason=too_old",
        &Value::Null,
    )
    .await;
    // One of the two purged by id (api-28) was too old already.
    assert_eq!(gone["deleted"], 12);
    let (_, summary) = call(&t, "GET", "/api/v1/dead-letters/summary", &Value::Null).await;
    assert_eq!(summary["total"], 39 - 2 - 12);
    let (_, gone) = call(&t, "DELETE", "/api/v1/dead-letters?all=true", &Value::Null).await;
    assert_eq!(gone["deleted"], 25);
    t.stop().await;
}

#[actix_web::test]
async fn a_replay_after_relaxing_the_limits_stores_once_and_keeps_the_rest() {
    let mut t = spawn_app_with(with_token, Default::default()).await;
    reject(&mut t, 990, "r").await;
    // Arrays whose first element has no timestamp and is stored, the second a year ahead: a
    // replay of the letter keeps the first element's time, so it is not stored again.
    let ahead = Utc::now() + TimeDelta::days(365);
    let arrays: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            format!(
                r#"[{{"sensor":"arr-now-{i}","value":1}},{}]"#,
                reading_json(&format!("arr-ahead-{i}"), 2.0, ahead)
            )
            .into_bytes()
        })
        .collect();
    let last = t.xadd_many(&arrays).await;
    t.wait_drained(&last).await;
    assert_eq!(t.readings().await, 10, "the elements without a timestamp");
    assert_eq!(t.dead_letters().await.ids.len(), 1000);

    // The limits relaxed, as an operator would after finding the cause.
    t.config.limits.max_future_skew = Duration::from_secs(2 * 365 * 86_400);
    t.config.limits.max_age = Duration::from_secs(30 * 365 * 86_400);
    t.restart(Default::default()).await;

    let (status, dry) = call(
        &t,
        "POST",
        "/api/v1/dead-letters/replay",
        &json!({"all": true, "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(
        (dry["selected"].as_u64(), dry["replayed"].as_u64()),
        (Some(1000), Some(0))
    );
    assert_eq!(dry["rejected"], json!({"not_a_number": 330}));
    assert_eq!(
        dry["valid"],
        660 + 10 + 10,
        "the arrays' first elements are valid too"
    );
    assert_eq!(
        t.dead_letters().await.ids.len(),
        1000,
        "a dry run moves nothing"
    );

    let (_, replay) = call(
        &t,
        "POST",
        "/api/v1/dead-letters/replay",
        &json!({"all": true}),
    )
    .await;
    assert_eq!(replay["replayed"], 1000, "{replay}");
    // Counted by the restarted instance: the 330 that fail again.
    let metrics = t.metrics();
    wait_for(
        "the replayed letters processed",
        Duration::from_secs(30),
        || {
            let done = metrics
                .readings_rejected
                .with_label_values(&["not_a_number"])
                .get()
                == 330;
            async move { done.then_some(()) }
        },
    )
    .await;
    let stream_last: String = redis::cmd("XREVRANGE")
        .arg(t.stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async::<redis::streams::StreamRangeReply>(&mut t.redis)
        .await
        .unwrap()
        .ids[0]
        .id
        .clone();
    t.wait_drained(&stream_last).await;
    assert_eq!(
        t.readings().await,
        10 + 660 + 10,
        "the now-valid ones, once"
    );
    let letters = t.dead_letters().await;
    assert_eq!(letters.ids.len(), 330, "the rest, back");
    assert!(
        letters
            .ids
            .iter()
            .all(|l| l.get::<String>("reason").unwrap() == "not_a_number")
    );
    t.assert_aggregates_exact().await;

    // Twice: the letters come back again, and nothing new is stored.
    let (_, again) = call(
        &t,
        "POST",
        "/api/v1/dead-letters/replay",
        &json!({"all": true}),
    )
    .await;
    assert_eq!(again["replayed"], 330);
    wait_for(
        "the second replay processed",
        Duration::from_secs(30),
        || {
            let done = metrics
                .readings_rejected
                .with_label_values(&["not_a_number"])
                .get()
                == 660;
            async move { done.then_some(()) }
        },
    )
    .await;
    assert_eq!(t.readings().await, 680);
    assert_eq!(t.dead_letters().await.ids.len(), 330);
    // By ids: a letter replayed once is gone; naming it again moves nothing.
    let id = t.dead_letters().await.ids[0].id.clone();
    let (_, once) = call(
        &t,
        "POST",
        "/api/v1/dead-letters/replay",
        &json!({"ids": [id]}),
    )
    .await;
    let (_, twice) = call(
        &t,
        "POST",
        "/api/v1/dead-letters/replay",
        &json!({"ids": [id]}),
    )
    .await;
    assert_eq!(
        (once["replayed"].as_u64(), twice["replayed"].as_u64()),
        (Some(1), Some(0))
    );
    t.stop().await;
}

#[actix_web::test]
async fn a_replay_of_50000_killed_midway_stores_each_once_and_keeps_every_invalid_one() {
    let res = Resources::new();
    let env: Vec<(&str, String)> = vec![
        ("SENSORHUB_REDIS_URL", REDIS_URL.to_owned()),
        ("SENSORHUB_DATABASE_URL", res.database_url.clone()),
        ("SENSORHUB_STREAM", res.stream.clone()),
        ("SENSORHUB_CHANNEL", String::new()),
        ("SENSORHUB_CLAIM_IDLE", "2s".to_owned()),
    ];
    let mut hub = Sensorhub::spawn(&env).await;
    // 50,000 letters as the pipeline keeps them: 40,000 readings with a timestamp (valid now,
    // as after a fix) and 10,000 that are still not numbers.
    let mut redis = redis_conn(REDIS_URL).await;
    let dead = format!("{}:dead", res.stream);
    let base: DateTime<Utc> = Utc::now() - TimeDelta::days(2);
    for chunk in (0..50_000u32).collect::<Vec<_>>().chunks(5000) {
        let mut pipe = redis::pipe();
        for &i in chunk {
            let data = if i % 5 == 4 {
                format!(r#"{{"sensor":"bad-{i}","value":"12,5"}}"#)
            } else {
                reading_json(
                    &format!("k{}", i % 100),
                    f64::from(i),
                    base + TimeDelta::seconds(i64::from(i)),
                )
            };
            pipe.cmd("XADD")
                .arg(&dead)
                .arg("*")
                .arg(&[
                    "reason",
                    "future_timestamp",
                    "detail",
                    "made by the test",
                    "entry",
                    "1-0",
                ])
                .arg("data")
                .arg(data)
                .ignore();
        }
        let _: () = pipe.query_async(&mut redis).await.unwrap();
    }
    let replay = |env: Vec<(&'static str, String)>| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_sensorhub"))
            .args(["dead-letters", "replay", "--all"])
            .envs(env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let cli_env: Vec<(&'static str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
    let mut cli = replay(cli_env.clone());
    // Both killed once a part of the letters has moved: the replay and the service reading them.
    wait_for("part of the replay", Duration::from_secs(60), || {
        let mut redis = redis.clone();
        let dead = dead.clone();
        async move {
            let left: i64 = redis::cmd("XLEN")
                .arg(&dead)
                .query_async(&mut redis)
                .await
                .unwrap();
            (left < 40_000).then_some(())
        }
    })
    .await;
    cli.start_kill().unwrap();
    hub.kill9();
    let _ = cli.wait().await;
    let left: i64 = redis::cmd("XLEN")
        .arg(&dead)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        left > 0,
        "the replay was killed midway ({left} letters left)"
    );

    let hub = Sensorhub::spawn(&env).await;
    let out = replay(cli_env).wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        40_000,
        Duration::from_secs(120),
    )
    .await;
    assert_aggregates_exact(&pg, &["1m".parse().unwrap(), "1h".parse().unwrap()]).await;
    // Every still-invalid reading is a dead letter again (at least once: a letter written just
    // before the kill may be written again when its entry is re-read).
    // Read in pages: one reply of every letter can take longer than a test connection waits.
    let letters = sensorhub::stream::dead_letter::browse::select(
        &mut redis,
        &dead,
        &Default::default(),
        (None, None),
        usize::MAX,
    )
    .await
    .unwrap();
    let mut sensors: Vec<Vec<u8>> = letters.iter().filter_map(|l| l.data.clone()).collect();
    sensors.sort();
    sensors.dedup();
    assert_eq!(sensors.len(), 10_000, "every invalid one kept");
    assert!(letters.len() >= 10_000);
    assert!(
        letters.iter().all(|l| l.reason == "not_a_number"),
        "only the still-invalid ones"
    );
    drop(hub);
}

/// A flood of malformed lines of a megabyte each: the dead letters keep at most
/// `SENSORHUB_DEAD_LETTER_MAX_BYTES` of them, the oldest going first, and Redis's memory for them
/// stays near that bound (a cap on the number of letters alone let them grow by a megabyte each).
#[actix_web::test]
async fn dead_letters_are_bounded_in_bytes_under_a_flood_of_large_bad_lines() {
    let res = Resources::new();
    let dead = format!("{}:dead", res.stream);
    let mut env = res.hub_env();
    env.extend([
        ("SENSORHUB_MAX_MESSAGE_BYTES", (2 << 20).to_string()),
        ("SENSORHUB_DEAD_LETTER_MAX_BYTES", (8 << 20).to_string()),
    ]);
    let hub = crate::helpers::Sensorhub::spawn(&env).await;
    let bad_line = format!("weather,station=roof temperature={}", "x".repeat(1 << 20));
    let floods = 40;
    for i in 0..floods {
        let body = format!(
            "weather,station=roof humidity={i} {}\n{bad_line}\n",
            1_700_000_000 + i
        );
        let (status, answer) = post_lines(hub.port, &body).await;
        assert_eq!(status, 400, "{answer}");
    }
    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        floods,
        Duration::from_secs(30),
    )
    .await;
    wait_for(
        "every bad line counted",
        Duration::from_secs(30),
        || async {
            let (_, metrics) = http_get(hub.port, "/metrics").await;
            let rejected = metrics
                .lines()
                .filter(|l| l.starts_with("sensorhub_readings_rejected_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>();
            (rejected >= floods as f64).then_some(())
        },
    )
    .await;
    let mut redis = redis_conn(REDIS_URL).await;
    let letters: i64 = redis::cmd("XLEN")
        .arg(&dead)
        .query_async(&mut redis)
        .await
        .unwrap();
    let memory: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&dead)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        memory < 10 << 20,
        "the dead letters take {memory} bytes of Redis memory"
    );
    assert!((1..=8).contains(&letters), "{letters} letters kept");
    let counted: i64 = redis::cmd("GET")
        .arg(format!("{dead}:bytes"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(counted <= 8 << 20, "{counted} bytes kept");
    // The newest bad line is among them.
    let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&dead)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let data: Vec<u8> = newest.ids[0].get("data").unwrap();
    assert_eq!(data, bad_line.as_bytes());
    // Purged, the letters take their bytes with them.
    let (status, answer) = http_request(
        hub.port,
        "DELETE",
        "/api/v1/dead-letters?all=true",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let counted: Option<i64> = redis::cmd("GET")
        .arg(format!("{dead}:bytes"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(counted, None);
}
