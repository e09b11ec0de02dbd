//! A minimal HTTP/1.0 client, enough for health, metrics and API checks.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A minimal HTTP/1.0 GET, enough for health, metrics and API checks.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], b"").await
}

/// A minimal HTTP/1.0 request: (status, body).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to sensorhub");
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body; a write error then is fine.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A JSON API call: `body` sent as JSON (nothing when null) with `headers`; the answer read as
/// JSON (a test fails on one that is not).
pub async fn json_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let (status, text) = http_request(port, method, path, &all, &body).await;
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, json)
}

/// Line protocol posted to `/api/v2/write?precision=s`, without a token: (status, body).
pub async fn post_lines(port: u16, body: &str) -> (u16, String) {
    http_request(
        port,
        "POST",
        "/api/v2/write?precision=s",
        &[],
        body.as_bytes(),
    )
    .await
}
