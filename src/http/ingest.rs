//! HTTP ingest for devices that speak only HTTP: `POST /api/v1/readings` appends the body to the
//! stream as `XADD <stream> * data <body>` does, so HTTP readings get the stream's delivery
//! guarantee.

use crate::domain::reading::parse_json;
use crate::domain::{ParseContext, Reason};
use crate::http::HttpState;
use crate::http::auth::Authorized;
use crate::http::error::{ApiError, ErrorBody};
use crate::redis::entry::append_payloads;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use futures_util::StreamExt as _;
use serde::Serialize;
use utoipa::ToSchema;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/readings", web::post().to(ingest));
}

/// A rejected reading of an accepted message.
#[derive(Serialize, ToSchema)]
pub struct RejectedReading {
    /// Position in the array, when the message was an array.
    pub index: Option<usize>,
    pub reason: String,
    pub detail: String,
}

/// The answer to an accepted ingest.
#[derive(Serialize, ToSchema)]
pub struct Accepted {
    /// The stream entry the message was appended as.
    pub entry: String,
    /// Valid readings in the message.
    pub readings: usize,
    /// Readings that will go to the dead-letter stream instead.
    pub rejected: Vec<RejectedReading>,
}

/// Appends a reading object or an array of them to the stream, as `XADD <stream> * data <body>`
/// does: 202 once Redis has the entry, so HTTP readings get the stream's delivery guarantee.
#[utoipa::path(
    post,
    path = "/api/v1/readings",
    request_body(content = String, content_type = "application/json", description = "one reading object or an array of them, as on the stream"),
    responses(
        (status = 202, body = Accepted),
        (status = 400, body = ErrorBody, description = "the body cannot be a reading: not JSON, not an object or array, or no valid reading in it"),
        (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn ingest(
    _: Authorized,
    state: web::Data<HttpState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let max = state.api.limits.max_message_bytes;
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
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(max));
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("reading the body failed: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    let now = Utc::now();
    let ctx = ParseContext::new(&state.api.limits, now, now);
    let outcomes = parse_json(&body, &ctx);
    let valid = outcomes.iter().filter(|o| o.is_ok()).count();
    let rejected: Vec<RejectedReading> = outcomes
        .into_iter()
        .filter_map(Result::err)
        .map(|r| RejectedReading {
            index: r.index,
            reason: r.reason.as_str().to_owned(),
            detail: r.detail,
        })
        .collect();
    if valid == 0 {
        let problems: Vec<String> = rejected
            .iter()
            .map(|r| match r.index {
                Some(i) => format!("[{i}] {}: {}", r.reason, r.detail),
                None => format!("{}: {}", r.reason, r.detail),
            })
            .collect();
        let error = format!("no valid reading in the body: {}", problems.join("; "));
        return Err(
            if rejected
                .iter()
                .any(|r| r.reason == Reason::TooLarge.as_str())
            {
                ApiError::TooLarge(error)
            } else {
                ApiError::BadRequest(error)
            },
        );
    }
    let mut redis = state.redis.clone();
    let entry = append_payloads(&mut redis, &state.api.stream, [body.as_slice()])
        .await
        .map_err(|e| ApiError::Unavailable(format!("redis unavailable, nothing was stored: {e}")))?
        .pop()
        .map(|id| id.to_string())
        .unwrap_or_default();
    state
        .metrics
        .messages_received
        .with_label_values(&["http"])
        .inc();
    Ok(HttpResponse::Accepted().json(Accepted {
        entry,
        readings: valid,
        rejected,
    }))
}
