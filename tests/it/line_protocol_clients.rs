//! InfluxDB line protocol as InfluxDB's clients send it: the ingest token in every form they use,
//! the size limit before and after decompression, and InfluxDB's own Python client.

use crate::helpers::*;
use crate::line_protocol::{an_hour_yesterday, gzip, post, stream_len};
use base64::Engine as _;
use chrono::Utc;
use sensorhub::config::Secret;
use serde_json::Value;
use std::time::Duration;

#[actix_web::test]
async fn ingest_has_its_own_token_in_every_form_influxdb_clients_send() {
    let t = spawn_app_with(
        |c| {
            c.api_token = Some(Secret::new("read-token"));
            c.ingest_token = Some(Secret::new("write-token"));
        },
        Default::default(),
    )
    .await;
    let s = an_hour_yesterday().timestamp();
    let line = format!("tok v=1 {s}");
    let basic = |user: &str, password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    let refused = [
        ("/api/v2/write?precision=s", None),
        ("/api/v2/write?precision=s", Some("Token wrong".to_owned())),
        (
            "/api/v2/write?precision=s",
            Some("Token read-token".to_owned()),
        ),
        ("/write?precision=s", Some(basic("telegraf", "read-token"))),
    ];
    for (path, authorization) in &refused {
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        let (status, answer) = post(&t, path, &headers, line.as_bytes()).await;
        assert_eq!(status, 401, "{path} {authorization:?}: {answer}");
    }
    let metrics = t.metrics();
    assert_eq!(
        metrics
            .unauthorized_requests
            .with_label_values(&["ingest"])
            .get(),
        refused.len() as u64
    );
    let (status, answer) = post(&t, "/api/v2/write?precision=s", &[], line.as_bytes()).await;
    assert_eq!(
        (status, &answer["code"]),
        (401, &Value::from("unauthorized"))
    );
    for (path, authorization) in [
        ("/api/v2/write?precision=s", "Token write-token".to_owned()),
        ("/api/v2/write?precision=s", "Bearer write-token".to_owned()),
        ("/write?precision=s", basic("telegraf", "write-token")),
    ] {
        let (status, answer) = post(
            &t,
            path,
            &[("Authorization", authorization.as_str())],
            line.as_bytes(),
        )
        .await;
        assert_eq!(status, 204, "{path} {authorization}: {answer}");
    }
    // JSON ingest takes the ingest token, and only it; the read API only its own.
    let json = reading_json("tok-json", 1.0, Utc::now());
    let port = t.app().port();
    let write = [("Authorization", "Bearer write-token")];
    let read = [("Authorization", "Bearer read-token")];
    let (status, _) = http_request(port, "POST", "/api/v1/readings", &write, json.as_bytes()).await;
    assert_eq!(status, 202);
    let (status, _) = http_request(port, "POST", "/api/v1/readings", &read, json.as_bytes()).await;
    assert_eq!(status, 401);
    let (status, _) = http_request(port, "GET", "/api/v1/sensors", &write, b"").await;
    assert_eq!(status, 401);
    let (status, _) = http_request(port, "GET", "/api/v1/sensors", &read, b"").await;
    assert_eq!(status, 200);
    assert_eq!(
        metrics
            .unauthorized_requests
            .with_label_values(&["api"])
            .get(),
        1
    );
}

#[actix_web::test]
async fn bodies_above_the_limit_are_refused_before_and_after_decompression() {
    let mut t = spawn_app_with(|c| c.limits.max_message_bytes = 4096, Default::default()).await;
    let s = an_hour_yesterday().timestamp();
    let lines: String = (0..200).map(|i| format!("big,n={i} v={i} {s}\n")).collect();
    assert!(lines.len() > 4096);
    let (status, answer) = post(&t, "/api/v2/write?precision=s", &[], lines.as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["code"], "request too large");
    // Small on the wire, too large unpacked.
    let packed = gzip(lines.as_bytes());
    assert!(packed.len() < 4096);
    let gz = [("Content-Encoding", "gzip")];
    let (status, _) = post(&t, "/api/v2/write?precision=s", &gz, &packed).await;
    assert_eq!(status, 413);
    let (status, _) = post(&t, "/api/v2/write", &[("Content-Encoding", "br")], b"x").await;
    assert_eq!(status, 415);
    assert_eq!(stream_len(&mut t).await, 0, "nothing appended");
    // Under the limit, gzipped: stored.
    let fits: String = lines.lines().take(20).map(|l| format!("{l}\n")).collect();
    let (status, _) = post(&t, "/api/v2/write?precision=s", &gz, &gzip(fits.as_bytes())).await;
    assert_eq!(status, 204);
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    assert_eq!(t.readings().await, 20);
    // JSON ingest reads compressed bodies the same way.
    let json = reading_json("gz-json", 2.5, Utc::now());
    let (status, answer) = post(&t, "/api/v1/readings", &gz, &gzip(json.as_bytes())).await;
    assert_eq!(status, 202, "{answer}");
    let entry = answer["entry"].as_str().unwrap().to_owned();
    t.wait_drained(&entry).await;
    assert_eq!(t.readings().await, 21);
    t.stop().await;
}

const INFLUX_CLIENT_SCRIPT: &str = r#"
import sys
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

url, token, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
for gzip in (False, True):
    with InfluxDBClient(url=url, token=token, org="home", enable_gzip=gzip) as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(bucket="meters", record=f"gas,client=raspberrypi_keller zahlerstand={12345 + gzip}i {start + gzip}", write_precision=WritePrecision.S)
        points = [
            Point("weather").tag("station", "roof").tag("gzip", str(gzip)).field("temp", 20 + i / 10).field("ok", True).time(start + i, WritePrecision.S)
            for i in range(100)
        ]
        write.write(bucket="meters", record=points, write_precision=WritePrecision.S)
with InfluxDBClient(url=url, token="wrong", org="home") as client:
    try:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="meters", record="gas v=1")
        print("wrong token accepted")
        sys.exit(1)
    except ApiException as e:
        print("refused", e.status)
"#;

#[actix_web::test]
async fn influxdbs_own_python_client_writes_to_the_v2_endpoint() {
    let mut t = spawn_app_with(
        |c| c.ingest_token = Some(Secret::new("py-token")),
        Default::default(),
    )
    .await;
    let start = an_hour_yesterday().timestamp();
    let python = tools_python();
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(INFLUX_CLIENT_SCRIPT)
        .arg(format!("http://127.0.0.1:{}", t.app().port()))
        .arg("py-token")
        .arg(start.to_string())
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} runs ({e}); scripts/services.sh --tools installs it",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("refused 401"), "{stdout}");
    let entry = t.last_entry().await;
    t.wait_drained(&entry).await;
    wait_for_count(
        &t.pg,
        "SELECT count(*) FROM readings",
        202,
        Duration::from_secs(10),
    )
    .await;
    let gas: f64 = t
        .pg
        .query_one(
            "SELECT value FROM readings WHERE sensor_id = 'gas,client=raspberrypi_keller.zahlerstand' ORDER BY ts LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gas, 12345.0);
    for gzip in ["False", "True"] {
        let n = t
            .count(&format!(
                "SELECT count(*) FROM readings WHERE sensor_id = 'weather,gzip={gzip},station=roof.temp'"
            ))
            .await;
        assert_eq!(n, 100, "{gzip}");
    }
    t.assert_aggregates_exact().await;
    t.stop().await;
}
