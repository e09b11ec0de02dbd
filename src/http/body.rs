//! Request bodies of the ingest routes: read whole, decompressed (`Content-Encoding: gzip`, as
//! Telegraf sends by default), and bounded by `SENSORHUB_MAX_MESSAGE_BYTES` after decompression,
//! so a small compressed body cannot unpack into more memory than the limit.

use crate::http::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, dev::Decompress, web};
use futures_util::StreamExt as _;
use std::time::Duration;

/// The encodings a body may arrive in.
const ENCODINGS: [&str; 3] = ["gzip", "deflate", "identity"];

/// The body of `req`, decompressed, at most `max` bytes, arrived within `timeout`.
pub async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ApiError> {
    tokio::time::timeout(timeout, read_body(req, payload, max))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::Timeout(format!(
                "the body did not arrive within {} (SENSORHUB_HTTP_BODY_TIMEOUT)",
                humantime::format_duration(timeout)
            )))
        })
}

async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let encoding = req.headers().get(header::CONTENT_ENCODING).map(|v| {
        v.to_str()
            .unwrap_or("(not text)")
            .trim()
            .to_ascii_lowercase()
    });
    if let Some(encoding) = &encoding
        && !ENCODINGS.contains(&encoding.as_str())
    {
        return Err(ApiError::Unsupported(format!(
            "Content-Encoding {encoding:?} is not one of {}",
            ENCODINGS.join(", ")
        )));
    }
    let too_large = || {
        ApiError::TooLarge(format!(
            "body is larger than the limit of {max} bytes (SENSORHUB_MAX_MESSAGE_BYTES)"
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut stream = Decompress::from_headers(payload.into_inner(), req.headers());
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(max));
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
