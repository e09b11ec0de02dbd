//! InfluxDB's write endpoints, so that Telegraf (`influxdb_v2` and `influxdb` outputs), Home
//! Assistant and the device libraries write to sensorhub by changing only the URL:
//! `POST /api/v2/write?org=&bucket=&precision=` and `POST /write?db=&precision=`, with `GET
//! /ping` for the clients that check the server first.
//!
//! The body (gzip accepted) is appended to the stream as one entry by
//! [`crate::sources::line_protocol`], so these readings get the stream's guarantee. The answers are InfluxDB's, which these clients act
//! on: 204 once the entry is in the stream; 400 when lines are bad, naming them by line number
//! (from 1), while the good lines of the body are stored and the bad ones kept as dead letters;
//! 413 above `SENSORHUB_MAX_MESSAGE_BYTES` (Telegraf then splits its batch); 401 without the
//! ingest token; 503 when Redis did not take the entry (clients retry). `org`, `bucket` and `db`
//! are accepted and ignored: everything goes to the one stream.

use crate::domain::reading::Precision;
use crate::http::HttpState;
use crate::http::auth::{self, Scope};
use crate::http::body::read_limited;
use crate::http::error::ApiError;
use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Bad lines named in one answer; the rest are counted.
const MAX_LISTED: usize = 100;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v2/write").route(web::post().to(write_v2)))
        .service(web::resource("/write").route(web::post().to(write_v1)))
        .service(
            web::resource("/ping")
                .route(web::get().to(ping))
                .route(web::head().to(ping)),
        );
}

/// Which InfluxDB API a request came to: the error bodies differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    /// `{"code": "...", "message": "..."}`
    V2,
    /// `{"error": "..."}`
    V1,
}

/// The query of a write. Only `precision` matters here.
#[derive(Deserialize)]
struct WriteQuery {
    precision: Option<String>,
}

/// A refused line of a write.
#[derive(Serialize, ToSchema)]
pub struct BadLine {
    /// Line number in the body, from 1.
    pub line: usize,
    pub reason: String,
    pub detail: String,
}

/// An error answer as InfluxDB gives it: `code` and `message` (v2) or `error` (v1), and the
/// refused lines.
#[derive(Debug)]
pub(crate) struct WriteError {
    status: StatusCode,
    dialect: Dialect,
    message: String,
    lines: Vec<(usize, String, String)>,
    unlisted: usize,
}

/// The body of a line-protocol error answer.
#[derive(Serialize, ToSchema)]
pub struct WriteErrorBody {
    /// InfluxDB 2's error code (`invalid`, `unauthorized`, `request too large`, `unavailable`);
    /// absent on `/write`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    /// What was wrong (InfluxDB 2's field); on `/write` the same text is in `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first refused line's number, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The refused lines (at most 100).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<BadLine>,
    /// Refused lines beyond those listed.
    #[serde(skip_serializing_if = "is_zero")]
    pub more_rejected: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl WriteError {
    fn new(status: StatusCode, dialect: Dialect, message: impl Into<String>) -> Self {
        Self {
            status,
            dialect,
            message: message.into(),
            lines: Vec::new(),
            unlisted: 0,
        }
    }

    /// An [`ApiError`] (of the shared body reading, the token or the append) in this dialect.
    fn from_api(error: ApiError, dialect: Dialect) -> Self {
        Self::new(error.status_code(), dialect, error.to_string())
    }
}

impl ResponseError for WriteError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self.status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::PAYLOAD_TOO_LARGE => "request too large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported media type",
            StatusCode::REQUEST_TIMEOUT => "request timeout",
            _ => "unavailable",
        };
        let (code, message, error) = match self.dialect {
            Dialect::V2 => (Some(code), Some(self.message.clone()), None),
            Dialect::V1 => (None, None, Some(self.message.clone())),
        };
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Token"));
        }
        response.json(WriteErrorBody {
            code,
            message,
            error,
            line: self.lines.first().map(|(line, _, _)| *line),
            rejected: self
                .lines
                .iter()
                .map(|(line, reason, detail)| BadLine {
                    line: *line,
                    reason: reason.clone(),
                    detail: detail.clone(),
                })
                .collect(),
            more_rejected: self.unlisted,
        })
    }
}

/// Writes line protocol as InfluxDB 2 does.
#[utoipa::path(
    post,
    path = "/api/v2/write",
    request_body(content = String, content_type = "text/plain", description = "InfluxDB line protocol, one point per line; gzip with Content-Encoding: gzip"),
    params(
        ("precision" = Option<String>, Query, description = "unit of the lines' timestamps: ns (default), us, ms or s"),
        ("org" = Option<String>, Query, description = "accepted and ignored"),
        ("bucket" = Option<String>, Query, description = "accepted and ignored"),
    ),
    responses(
        (status = 204, description = "every line is in the stream"),
        (status = 400, body = WriteErrorBody, description = "bad lines, named by number: the good lines are stored, the bad ones kept as dead letters"),
        (status = 401, body = WriteErrorBody),
        (status = 408, body = WriteErrorBody, description = "the body did not arrive within SENSORHUB_HTTP_BODY_TIMEOUT"),
        (status = 413, body = WriteErrorBody),
        (status = 415, body = WriteErrorBody),
        (status = 503, body = WriteErrorBody, description = "Redis did not take the body; retry"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn write_v2(
    state: web::Data<HttpState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, WriteError> {
    write(state, req, payload, Dialect::V2).await
}

/// Writes line protocol as InfluxDB 1 does.
#[utoipa::path(
    post,
    path = "/write",
    request_body(content = String, content_type = "text/plain", description = "InfluxDB line protocol, one point per line; gzip with Content-Encoding: gzip"),
    params(
        ("precision" = Option<String>, Query, description = "unit of the lines' timestamps: n or ns (default), u or us, ms, s, m, h"),
        ("db" = Option<String>, Query, description = "accepted and ignored"),
    ),
    responses(
        (status = 204, description = "every line is in the stream"),
        (status = 400, body = WriteErrorBody, description = "bad lines, named by number: the good lines are stored, the bad ones kept as dead letters"),
        (status = 401, body = WriteErrorBody),
        (status = 408, body = WriteErrorBody, description = "the body did not arrive within SENSORHUB_HTTP_BODY_TIMEOUT"),
        (status = 413, body = WriteErrorBody),
        (status = 415, body = WriteErrorBody),
        (status = 503, body = WriteErrorBody, description = "Redis did not take the body; retry"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn write_v1(
    state: web::Data<HttpState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, WriteError> {
    write(state, req, payload, Dialect::V1).await
}

async fn write(
    state: web::Data<HttpState>,
    req: HttpRequest,
    payload: web::Payload,
    dialect: Dialect,
) -> Result<HttpResponse, WriteError> {
    let as_write_error = |error: ApiError| WriteError::from_api(error, dialect);
    auth::check(&req, Scope::Ingest).map_err(|why| as_write_error(ApiError::Unauthorized(why)))?;
    let bad_request = |message: String| WriteError::new(StatusCode::BAD_REQUEST, dialect, message);
    let query = web::Query::<WriteQuery>::from_query(req.query_string())
        .map_err(|e| bad_request(format!("bad query: {e}")))?;
    let precision = match (query.precision.as_deref(), dialect) {
        (None | Some(""), _) => Precision::Nanoseconds,
        (Some(text), Dialect::V2) => Precision::from_v2(text).map_err(bad_request)?,
        (Some(text), Dialect::V1) => Precision::from_v1(text).map_err(bad_request)?,
    };
    let body = read_limited(
        &req,
        payload,
        state.api.limits.max_message_bytes,
        state.api.body_timeout,
    )
    .await
    .map_err(as_write_error)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad_request(
            "writing requires points: the body is empty".into(),
        ));
    }
    let rejections = state
        .ingest()
        .lines(&body, precision)
        .await
        .map_err(|e| as_write_error(e.into()))?;
    if rejections.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let mut lines: Vec<(usize, String, String)> = rejections
        .into_iter()
        .map(|r| (r.index.map_or(1, |i| i + 1), r.reason.to_string(), r.detail))
        .collect();
    // Several fields of one line may each be refused: one entry per line and reason.
    lines.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    let bad = lines.len();
    let unlisted = bad.saturating_sub(MAX_LISTED);
    lines.truncate(MAX_LISTED);
    let first = &lines[0];
    Err(WriteError {
        message: format!(
            "partial write: {bad} refused line{} kept as dead letters, the other lines stored; \
             line {}: {}: {}",
            if bad == 1 { "" } else { "s" },
            first.0,
            first.1,
            first.2
        ),
        lines,
        unlisted,
        ..bad_request(String::new())
    })
}

/// What InfluxDB clients call to check the server: 204.
async fn ping() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((
            "X-Influxdb-Version",
            concat!("sensorhub-", env!("CARGO_PKG_VERSION")),
        ))
        .finish()
}
