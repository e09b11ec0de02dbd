//! Hostile HTTP: the API fuzzed from its own OpenAPI document, ids and parameters that are SQL,
//! path traversal, 10 KB long or not UTF-8, and clients too slow to send their requests.

use crate::helpers::*;
use sensorhub::config::Secret;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "hostile-token";

fn with_tokens(c: &mut sensorhub::Config) {
    c.api_token = Some(Secret::new(TOKEN));
    c.ingest_token = Some(Secret::new(TOKEN));
    c.admin_token = Some(Secret::new(TOKEN));
}

#[actix_web::test]
async fn the_api_passes_schemathesis_run_from_its_own_openapi_document() {
    let mut t = spawn_app_with(with_tokens, Default::default()).await;
    // A sensor to find, so that the routes of one sensor get past their 404.
    let last = t
        .xadd_data(reading_json("0", 1.0, chrono::Utc::now()).as_bytes())
        .await;
    t.wait_drained(&last).await;
    let python = tools_python();
    let schemathesis = python.with_file_name("schemathesis");
    let out = tokio::process::Command::new(&schemathesis)
        .arg("run")
        .arg(format!(
            "http://127.0.0.1:{}/api/v1/openapi.json",
            t.app().port()
        ))
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        // Every check but "a request the schema allows must be accepted": the API refuses some
        // such requests on purpose, each with a documented 400 (`from` after `to`, a reading
        // that fails validation, an empty write).
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
        .args(["--max-examples", "40", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{} runs ({e}); scripts/services.sh --tools installs it",
                schemathesis.display()
            )
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |label: &str| {
        report
            .lines()
            .find_map(|line| line.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().split('/').next()?.parse::<u32>().ok())
    };
    let selected = count("Selected:");
    assert!(
        selected.is_some_and(|n| n >= 11) && count("Tested:") == selected,
        "every operation tested:\n{report}"
    );
    t.stop().await;
}

#[actix_web::test]
async fn hostile_ids_and_parameters_get_400_or_404_and_short_answers() {
    let t = spawn_app_with(with_tokens, Default::default()).await;
    let long = "a".repeat(10 * 1024);
    let paths = [
        "/api/v1/sensors/x%27%3B%20DROP%20TABLE%20readings%3B--".to_owned(),
        "/api/v1/sensors/x%27%3B%20DROP%20TABLE%20readings%3B--/readings".to_owned(),
        "/api/v1/sensors/..%2F..%2Fetc%2Fpasswd".to_owned(),
        "/api/v1/sensors/../../etc/passwd".to_owned(),
        "/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        format!("/api/v1/sensors/{long}"),
        format!("/api/v1/sensors/{long}/aggregates"),
        "/api/v1/sensors/%FF%FE".to_owned(),
        "/api/v1/sensors/%00".to_owned(),
        "/api/v1/sensors/a%00b/readings".to_owned(),
        "/api/v1/sensors/x/readings?from=%FF".to_owned(),
        "/api/v1/sensors/x/readings?from=2024-01-01T00:00:00Z%27%20OR%201%3D1".to_owned(),
        format!("/api/v1/sensors/x/readings?limit={long}"),
        "/api/v1/sensors/x/readings?limit=-1".to_owned(),
        "/api/v1/sensors/x/aggregates?resolution=%27%20OR%201%3D1".to_owned(),
        format!("/api/v1/sensors/x/aggregates?resolution={long}"),
        "/api/v1/sensors?all=%00".to_owned(),
        "/api/v1/sensors/x/readings?%FF=1".to_owned(),
        format!("/api/v1/sensors?{long}=1"),
    ];
    let auth = format!("Bearer {TOKEN}");
    for path in &paths {
        let (status, body) = http_request(
            t.app().port(),
            "GET",
            path,
            &[("Authorization", auth.as_str())],
            b"",
        )
        .await;
        assert!(
            status == 400 || status == 404,
            "{}: {status} {body}",
            &path[..path.len().min(80)]
        );
        assert!(body.len() < 1024, "a bounded answer: {} bytes", body.len());
    }
    // A head beyond what a client needs (actix's bound: 128 KiB, 96 headers) is refused rather
    // than buffered without end.
    let huge = "x".repeat(200 * 1024);
    let many: Vec<(String, &str)> = (0..120).map(|i| (format!("X-Filler-{i}"), "1")).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    for headers in [vec![("X-Filler", huge.as_str())], many] {
        let (status, _) =
            http_request(t.app().port(), "GET", "/api/v1/sensors", &headers, b"").await;
        assert!(status == 0 || (400..500).contains(&status), "{status}");
    }
}

/// Connects, sends `sent`, then sends nothing more: returns the status the server answered
/// with (0 for a closed connection without an answer) and how long it waited.
async fn stall(port: u16, sent: &[u8]) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(sent).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept a stalled client for 30 s");
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, started.elapsed())
}

#[actix_web::test]
async fn clients_too_slow_to_send_their_request_are_cut_off() {
    let t = spawn_app_with(
        |c| {
            with_tokens(c);
            c.http_body_timeout = Duration::from_secs(1);
        },
        Default::default(),
    )
    .await;
    let port = t.app().port();
    // A body that stops arriving: 408 after the body timeout.
    let head = format!(
        "POST /api/v1/readings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sensor\":"
    );
    let (status, waited) = stall(port, head.as_bytes()).await;
    assert_eq!(status, 408, "after {waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    let head = "POST /api/v2/write HTTP/1.1\r\nHost: x\r\nAuthorization: Token hostile-token\r\n\
                Content-Length: 100\r\n\r\nm v=1";
    let (status, _) = stall(port, head.as_bytes()).await;
    assert_eq!(status, 408);
    // A head that never ends: the connection is closed (with a 408) after the head timeout.
    let (status, waited) = stall(port, b"GET /api/v1/sensors HTTP/1.1\r\nHost: x\r\n").await;
    assert!(status == 408 || status == 0, "{status}");
    assert!(
        waited >= sensorhub::http::HEAD_TIMEOUT - Duration::from_secs(1),
        "{waited:?}"
    );
}

#[actix_web::test]
async fn a_missing_or_wrong_token_is_a_401_with_www_authenticate() {
    let t = spawn_app_with(with_tokens, Default::default()).await;
    for (request, challenge) in [
        (
            "GET /api/v1/sensors HTTP/1.0\r\n\r\n",
            "www-authenticate: bearer",
        ),
        (
            "GET /api/v1/sensors HTTP/1.0\r\nAuthorization: Bearer wrong\r\n\r\n",
            "www-authenticate: bearer",
        ),
        (
            "POST /api/v1/readings HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
            "www-authenticate: bearer",
        ),
        (
            "POST /api/v2/write HTTP/1.0\r\nAuthorization: Token wrong\r\nContent-Length: 0\r\n\r\n",
            "www-authenticate: token",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", t.app().port()))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(
            answer.split_whitespace().nth(1) == Some("401"),
            "{request}: {answer}"
        );
        assert!(answer.contains(challenge), "{request}: {answer}");
    }
    let metrics = t.metrics();
    let refused = |scope: &str| {
        metrics
            .unauthorized_requests
            .with_label_values(&[scope])
            .get()
    };
    assert_eq!((refused("api"), refused("ingest")), (2, 2));
}
