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
