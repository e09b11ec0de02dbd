//! Request bodies of the ingest routes: read whole, decompressed (`Content-Encoding: gzip`, as
//! Telegraf sends by default), and bounded by `SENSORHUB_MAX_MESSAGE_BYTES` while they are
//! decompressed: the decoder writes into a buffer that refuses to grow past the limit, so a small
//! compressed body (a kilobyte of gzip can unpack into a megabyte) never takes more memory than
//! the limit and the decoder's own window. Checking after each decompressed chunk would not do:
//! one network chunk of a gzip bomb unpacks into many megabytes at once.

use crate::http::error::ApiError;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use futures_util::StreamExt as _;
use std::io::Write as _;
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
    let capacity = declared.unwrap_or(1024).min(max);
    let mut decoder = match encoding.as_deref() {
        Some("gzip") => Decoder::Gzip(flate2::write::GzDecoder::new(Bounded::new(capacity, max))),
        // HTTP's "deflate" is the zlib format (RFC 9110), as actix and curl read it.
        Some("deflate") => {
            Decoder::Zlib(flate2::write::ZlibDecoder::new(Bounded::new(capacity, max)))
        }
        _ => Decoder::Identity(Bounded::new(capacity, max)),
    };
    let mut stream = payload.into_inner();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the body failed: {e}")))?;
        decoder
            .write(&chunk)
            .map_err(|e| body_error(e, &too_large))?;
    }
    let body = decoder.finish().map_err(|e| body_error(e, &too_large))?;
    Ok(body)
}

/// A body's bytes, refusing to hold more than `max`.
struct Bounded {
    bytes: Vec<u8>,
    max: usize,
}

impl Bounded {
    fn new(capacity: usize, max: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity),
            max,
        }
    }
}

/// The error a [`Bounded`] answers a write past its limit with.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("over the body limit")
    }
}

impl std::error::Error for OverLimit {}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.max {
            return Err(std::io::Error::other(OverLimit));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The body as it arrives, decoded as its `Content-Encoding` says.
enum Decoder {
    Identity(Bounded),
    Gzip(flate2::write::GzDecoder<Bounded>),
    Zlib(flate2::write::ZlibDecoder<Bounded>),
}

impl Decoder {
    fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self {
            Decoder::Identity(body) => body.write_all(chunk),
            Decoder::Gzip(decoder) => decoder.write_all(chunk),
            Decoder::Zlib(decoder) => decoder.write_all(chunk),
        }
    }

    fn finish(self) -> std::io::Result<Vec<u8>> {
        Ok(match self {
            Decoder::Identity(body) => body.bytes,
            Decoder::Gzip(decoder) => decoder.finish()?.bytes,
            Decoder::Zlib(decoder) => decoder.finish()?.bytes,
        })
    }
}

/// A failed write or finish: over the limit (413), or a body that does not decompress (400).
fn body_error(error: std::io::Error, too_large: &impl Fn() -> ApiError) -> ApiError {
    if error
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<OverLimit>().is_some())
    {
        return too_large();
    }
    ApiError::BadRequest(format!("the body could not be decompressed: {error}"))
}
