//! What the dependency checks (deny.toml) rely on: HTTP/2 is not served, so the h2 crate linked
//! through actix-http (an advisory recorded as unreachable) never parses a frame from a client.

use crate::helpers::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A client speaking HTTP/2 with prior knowledge (h2c) gets no HTTP/2 answer: the server reads the
/// connection preface as a malformed HTTP/1 request. An HTTP/2 server would answer with a
/// SETTINGS frame (type 4 in the frame header's fourth byte).
#[actix_web::test]
async fn http2_is_not_served() {
    let t = spawn_app().await;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", t.app().port()))
        .await
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    let is_settings_frame = answer.len() >= 9 && answer[3] == 4;
    assert!(!is_settings_frame, "an HTTP/2 SETTINGS frame: {answer:?}");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 4"),
        "answered as HTTP/1.1 with a refusal, or closed: {text:?}"
    );
    // HTTP/1.1 is still served on the same port.
    assert_eq!(t.get("/healthz").await.0, 200);
}

/// Twelve gzip bombs at once (under a megabyte each as sent, 768 MiB unpacked): each is refused with 413
/// and the process's peak memory grows by less than 20 MB (the limit was checked after each
/// decompressed chunk, and one network chunk unpacked into tens of megabytes first).
#[actix_web::test]
async fn gzip_bombs_are_refused_within_the_body_limit() {
    let res = Resources::new();
    let hub = crate::helpers::Sensorhub::spawn(&res.hub_env()).await;
    let port = hub.port;
    let bomb = std::process::Command::new("sh")
        .args(["-c", "head -c 805306368 /dev/zero | gzip -9"])
        .output()
        .expect("gzip")
        .stdout;
    // Under the limit as sent, so it is read and unpacked, not refused for its length.
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let post = |body: Vec<u8>, encoding: &'static str| async move {
        let headers = [
            ("Content-Type", "application/json"),
            ("Content-Encoding", encoding),
        ];
        http_request(port, "POST", "/api/v1/readings", &headers, &body).await
    };
    // A small gzip body still arrives whole, and the process has warmed up.
    let small = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(br#"{"sensor":"gz","value":1}"#).unwrap();
        encoder.finish().unwrap()
    };
    assert_eq!(post(small, "gzip").await.0, 202);
    let before = hub.peak_rss_mib();
    let bombs = (0..12).map(|_| post(bomb.clone(), "gzip"));
    for (status, body) in futures_util::future::join_all(bombs).await {
        assert_eq!(status, 413, "{body}");
    }
    let grown = hub.peak_rss_mib() - before;
    eprintln!("peak memory grew by {grown:.1} MiB for 12 bombs");
    assert!(grown < 20.0, "peak memory grew by {grown:.1} MiB");
}
