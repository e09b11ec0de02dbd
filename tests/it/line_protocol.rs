//! InfluxDB line protocol over HTTP: Telegraf-style batches, escapes, every precision, bad lines
//! among good ones, gzip, ids and last-write-wins (what clients send: `line_protocol_clients`).

use crate::helpers::*;
use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::Value;
use std::io::Write as _;
use std::time::Duration;

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A whole hour a day ago: every precision down to hours can name it, and it is well inside
/// the accepted range.
pub(crate) fn an_hour_yesterday() -> DateTime<Utc> {
    (Utc::now() - TimeDelta::days(1))
        .duration_trunc(TimeDelta::hours(1))
        .unwrap()
}

pub(crate) async fn post(
    t: &TestApp,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value) {
    let (status, body) = http_request(t.app().port(), "POST", path, headers, body).await;
    let json = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
    };
    (status, json)
}

pub(crate) async fn stream_len(t: &mut TestApp) -> i64 {
    redis::cmd("XLEN")
        .arg(t.stream())
        .query_async(&mut t.redis)
        .await
        .unwrap()
}

/// A batch as Telegraf's `influxdb_v2` output sends it: cpu, mem and system lines of ten hosts,
/// tags sorted, integer and string fields among the floats, nanosecond timestamps. Returns the
/// body and, per numeric field, (sensor id, ts in ns, value).
pub(crate) fn telegraf_batch(
    lines: usize,
    start: DateTime<Utc>,
) -> (String, Vec<(String, i64, f64)>) {
    let mut body = String::new();
    let mut expected = Vec::new();
    let start_ns = start.timestamp_nanos_opt().unwrap();
    for i in 0..lines {
        let host = format!("node-{}", i % 10);
        let ns = start_ns + (i as i64 / 30) * 1_000_000_000 + 7;
        let x = i as f64;
        match i % 3 {
            0 => {
                let cpu = format!("cpu{}", (i / 3) % 10);
                body.push_str(&format!(
                    "cpu,cpu={cpu},host={host} usage_idle={},usage_user={},usage_system={} {ns}\n",
                    90.0 + x / 1000.0,
                    x / 100.0,
                    1.5
                ));
                for (field, value) in [
                    ("usage_idle", 90.0 + x / 1000.0),
                    ("usage_user", x / 100.0),
                    ("usage_system", 1.5),
                ] {
                    expected.push((format!("cpu,cpu={cpu},host={host}.{field}"), ns, value));
                }
            }
            1 => {
                body.push_str(&format!(
                    "mem,host={host} used_percent={},available={}i,active={}u {ns}\n",
                    40.0 + x / 500.0,
                    8_000_000 + i,
                    1000 + i
                ));
                for (field, value) in [
                    ("used_percent", 40.0 + x / 500.0),
                    ("available", (8_000_000 + i) as f64),
                    ("active", (1000 + i) as f64),
                ] {
                    expected.push((format!("mem,host={host}.{field}"), ns, value));
                }
            }
            _ => {
                body.push_str(&format!(
                    "system,host={host} load1={},uptime={}i,uptime_format=\"{} days, 3:04\" {ns}\n",
                    x / 1e4,
                    i * 60,
                    i % 7
                ));
                for (field, value) in [("load1", x / 1e4), ("uptime", (i * 60) as f64)] {
                    expected.push((format!("system,host={host}.{field}"), ns, value));
                }
            }
        }
    }
    (body, expected)
}

#[actix_web::test]
async fn a_telegraf_batch_of_5000_gzipped_lines_is_stored_exactly_once() {
    let mut t = spawn_app().await;
    let start = an_hour_yesterday();
    let (body, expected) = telegraf_batch(5000, start);
    let compressed = gzip(body.as_bytes());
    let headers = [
        ("Content-Encoding", "gzip"),
        ("Content-Type", "text/plain; charset=utf-8"),
    ];
    let path = "/api/v2/write?org=home&bucket=telegraf&precision=ns";
    let (status, answer) = post(&t, path, &headers, &compressed).await;
    assert_eq!(status, 204, "{answer}");
    assert_eq!(stream_len(&mut t).await, 1, "one entry per write");
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(t.readings().await, expected.len() as i64);

    let rows =
        t.pg.query(
            "SELECT sensor_id, (extract(epoch FROM ts) * 1e6)::bigint, value FROM readings",
            &[],
        )
        .await
        .unwrap();
    let mut stored: Vec<(String, i64, f64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1), r.get(2)))
        .collect();
    let mut wanted: Vec<(String, i64, f64)> = expected
        .into_iter()
        .map(|(id, ns, v)| (id, ns / 1000, v))
        .collect();
    stored.sort_by(|a, b| a.partial_cmp(b).unwrap());
    wanted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(stored, wanted);
    t.assert_aggregates_exact().await;

    // Telegraf retries a batch it could not confirm: the repeat stores nothing new.
    let (status, _) = post(&t, path, &headers, &compressed).await;
    assert_eq!(status, 204);
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(t.readings().await, wanted.len() as i64);
    let metrics = t.metrics();
    assert_eq!(metrics.readings_duplicate.get(), wanted.len() as u64);
    assert_eq!(
        metrics
            .messages_received
            .with_label_values(&["line_protocol"])
            .get(),
        2
    );
    t.assert_aggregates_exact().await;
    t.stop().await;
}

#[actix_web::test]
async fn every_precision_of_both_endpoints_names_the_same_time() {
    let mut t = spawn_app().await;
    let at = an_hour_yesterday();
    let s = at.timestamp();
    let writes = [
        (
            "/api/v2/write?bucket=b&precision=ns",
            "v2-ns",
            s * 1_000_000_000,
        ),
        ("/api/v2/write?bucket=b", "v2-default", s * 1_000_000_000),
        (
            "/api/v2/write?bucket=b&precision=us",
            "v2-us",
            s * 1_000_000,
        ),
        ("/api/v2/write?bucket=b&precision=ms", "v2-ms", s * 1000),
        ("/api/v2/write?bucket=b&precision=s", "v2-s", s),
        ("/write?db=d&precision=n", "v1-n", s * 1_000_000_000),
        ("/write?db=d&precision=u", "v1-u", s * 1_000_000),
        ("/write?db=d&precision=ms", "v1-ms", s * 1000),
        ("/write?db=d&precision=s", "v1-s", s),
        ("/write?db=d&precision=m", "v1-m", s / 60),
        ("/write?db=d&precision=h", "v1-h", s / 3600),
    ];
    for (path, name, stamp) in writes {
        let (status, answer) = post(
            &t,
            path,
            &[],
            format!("prec,p={name} v=1 {stamp}").as_bytes(),
        )
        .await;
        assert_eq!(status, 204, "{path}: {answer}");
    }
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    let rows =
        t.pg.query("SELECT sensor_id, ts FROM readings ORDER BY sensor_id", &[])
            .await
            .unwrap();
    assert_eq!(rows.len(), writes.len());
    for row in rows {
        let (id, ts): (String, DateTime<Utc>) = (row.get(0), row.get(1));
        assert_eq!(ts, at, "{id}");
    }
    // A precision the endpoint does not have is refused, naming it; nothing is appended.
    let before = stream_len(&mut t).await;
    let (status, answer) = post(&t, "/api/v2/write?precision=h", &[], b"m v=1 1").await;
    assert_eq!(status, 400);
    assert_eq!(answer["code"], "invalid");
    assert!(
        answer["message"].as_str().unwrap().contains("\"h\""),
        "{answer}"
    );
    let (status, answer) = post(&t, "/write?precision=fortnight", &[], b"m v=1 1").await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("fortnight"),
        "{answer}"
    );
    assert_eq!(stream_len(&mut t).await, before);
    t.stop().await;
}

#[actix_web::test]
async fn escapes_and_home_assistant_ids_are_stored_and_served_url_encoded() {
    let mut t = spawn_app().await;
    let s = an_hour_yesterday().timestamp();
    let body = format!(
        "my\\ room,floor\\=1=k\\,ü\\ 2 temp\\ c=20,note=\"a \\\"quoted\\\", text\" {s}\n\
         °C,domain=sensor,entity_id=kitchen value=21.5,friendly_name_str=\"Küche\" {s}\n\
         température,lieu=salle/1 val=3i {s}\n"
    );
    let (status, answer) = post(&t, "/api/v2/write?precision=s", &[], body.as_bytes()).await;
    assert_eq!(status, 204, "{answer}");
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    for (id, encoded, value) in [
        (
            "my room,floor%3D1=k%2Cü 2.temp c",
            "my%20room%2Cfloor%253D1%3Dk%252C%C3%BC%202.temp%20c",
            20.0,
        ),
        (
            "°C,domain=sensor,entity_id=kitchen.value",
            "%C2%B0C%2Cdomain%3Dsensor%2Centity_id%3Dkitchen.value",
            21.5,
        ),
        (
            "température,lieu=salle/1.val",
            "temp%C3%A9rature%2Clieu%3Dsalle%2F1.val",
            3.0,
        ),
    ] {
        let (status, body) = t.get(&format!("/api/v1/sensors/{encoded}")).await;
        assert_eq!(status, 200, "{id}: {body}");
        let sensor: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(sensor["id"], id);
        assert_eq!(sensor["last_value"], value, "{body}");
    }
    assert_eq!(t.readings().await, 3, "string fields are not readings");
    t.stop().await;
}

#[actix_web::test]
async fn bad_lines_are_named_and_dead_lettered_alone_while_good_lines_are_stored() {
    let mut t = spawn_app().await;
    let s = an_hour_yesterday().timestamp();
    let body = format!(
        "lp v=1 {s}\ngarbage\nlp,t=x note=\"text only\" {s}\nlp v=2 {}\nlp v=1e999 {}\n",
        s + 1,
        s + 2
    );
    let (status, answer) = post(&t, "/api/v2/write?precision=s", &[], body.as_bytes()).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "invalid");
    assert_eq!(answer["line"], 2);
    let named: Vec<(u64, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["line"].as_u64().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        named,
        [
            (2, "malformed_line"),
            (3, "missing_field"),
            (5, "not_finite")
        ]
    );
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("line 2") && message.contains("garbage"),
        "{message}"
    );
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(t.readings().await, 2, "the good lines are stored");

    let dead = t.dead_letters().await;
    let letters: Vec<(String, String, String, String)> = dead
        .ids
        .iter()
        .map(|e| {
            let text = |name: &str| match e.map.get(name) {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{name}: {other:?}"),
            };
            (
                text("reason"),
                text("index"),
                text("data"),
                text("field.form"),
            )
        })
        .collect();
    assert_eq!(
        letters,
        [
            (
                "malformed_line".into(),
                "1".into(),
                "garbage".into(),
                "line:s".into()
            ),
            (
                "missing_field".into(),
                "2".into(),
                "lp,t=x note=\"text only\" ".to_owned() + &s.to_string(),
                "line:s".into()
            ),
            (
                "not_finite".into(),
                "4".into(),
                format!("lp v=1e999 {}", s + 2),
                "line:s".into()
            ),
        ]
    );

    // A body of bad lines only: refused, and still kept.
    let (status, answer) = post(&t, "/write", &[], b"nothing here\n").await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("line 1"),
        "{answer}"
    );
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(t.dead_letters().await.ids.len(), 4);
    // An empty body: nothing to store or keep.
    let before = stream_len(&mut t).await;
    let (status, answer) = post(&t, "/api/v2/write", &[], b"\n \n").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(stream_len(&mut t).await, before);
    t.stop().await;
}

/// Through the binary (so `SENSORHUB_TEST_BINARY` can run it against an older build): ids keep
/// tag keys (two tag sets with the same values were one sensor, and the second write a
/// conflict), a field or point written twice keeps its last value as InfluxDB does (the first
/// stayed), and CRLF line ends are read (each line was refused).
#[actix_web::test]
async fn ids_keep_tag_keys_the_last_write_wins_and_crlf_is_read() {
    let res = Resources::new();
    let hub = crate::helpers::Sensorhub::spawn(&res.hub_env()).await;
    let s = an_hour_yesterday().timestamp();
    let body = format!(
        "w,station=roof t=1 {s}\n\
         w,area=roof t=2 {s}\n\
         m v=1,v=2 {s}\n\
         n v=1 {s}\n\
         n v=3 {s}\r\n\
         c v=4 {s}\r\n"
    );
    let (status, answer) = post_lines(hub.port, &body).await;
    assert_eq!(status, 204, "{answer}");
    let pg = pg_client(&res.database_url).await;
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        5,
        Duration::from_secs(20),
    )
    .await;
    let rows = pg
        .query(
            "SELECT sensor_id, value FROM readings ORDER BY value, sensor_id COLLATE \"C\" DESC",
            &[],
        )
        .await
        .unwrap();
    let stored: Vec<(String, f64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        stored,
        [
            ("w,station=roof.t".to_owned(), 1.0),
            ("w,area=roof.t".to_owned(), 2.0),
            ("m.v".to_owned(), 2.0),
            ("n.v".to_owned(), 3.0),
            ("c.v".to_owned(), 4.0),
        ]
    );
}
