//! HTTP ingest for devices that speak only HTTP: `POST /api/v1/readings` appends the body to the
//! stream as `XADD <stream> * data <body>` does, so HTTP readings get the stream's delivery
//! guarantee.
//!
//! The answer tells the truth about the append: 202 once Redis has the entry, 400 (or 413) when
//! nothing in the body can be a reading, and a 503 that says whether nothing was stored (a retry
//! is safe) or the outcome is unknown (Redis did not answer in time: the entry may exist). With
//! an `Idempotency-Key` header, a retry of the same request stores its readings once, however
//! the first attempt ended: the key is kept with the entry it was appended as and a digest of the
//! body for [`append::IDEMPOTENCY_TTL`], and the key reused for another body is refused (422). Without
//! one, the request appends under a key of its own, so the Redis client's own retry of a command
//! that timed out cannot append it twice.

use crate::domain::fields;
use crate::domain::reading::parse_json;
use crate::domain::{ParseContext, Reason};
use crate::http::HttpState;
use crate::http::auth::IngestAuthorized;
use crate::http::body::read_limited;
use crate::http::error::{ApiError, ErrorBody};
use crate::sources::append::{self, route};
use crate::stream::append::{Appended, Once};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

/// The header that makes a retried POST store its readings once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Longest accepted `Idempotency-Key`.
const MAX_KEY_LEN: usize = 200;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/readings").route(web::post().to(ingest)));
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
    /// True when an earlier request with the same `Idempotency-Key` appended this entry, and this
    /// one appended nothing.
    pub repeated: bool,
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
        (status = 408, body = ErrorBody, description = "the body did not arrive within SENSORHUB_HTTP_BODY_TIMEOUT"),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "the Idempotency-Key was used before for another body: nothing was stored"),
        (status = 503, body = ErrorBody, description = "Redis did not take the entry: `outcome` is `not_stored` (a retry is safe) or `unknown` (it may be stored: retry with the same Idempotency-Key)"),
    ),
    params(("Idempotency-Key" = Option<String>, Header, description = "a key unique to this request (1 to 200 visible ASCII characters): a retry with the same key stores the readings once")),
    security(("bearer" = []))
)]
pub(crate) async fn ingest(
    _: IngestAuthorized,
    state: web::Data<HttpState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let idempotency_key = idempotency_key(&req)?;
    let body = read_limited(
        &req,
        payload,
        state.api.limits.max_message_bytes,
        state.api.body_timeout,
    )
    .await?;
    let now = Utc::now();
    let ctx = ParseContext::new(&state.api.limits, now, now);
    let outcomes = parse_json(&body, &ctx);
    let valid = outcomes.iter().filter(|o| o.is_ok()).count();
    let shards = route(
        outcomes
            .iter()
            .filter_map(|o| Some(&*o.as_ref().ok()?.sensor_id)),
        &state.api.streams,
    );
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
    let appended = append_once(
        &state,
        &shards,
        idempotency_key.as_deref(),
        &[(fields::DATA, &body)],
    )
    .await?;
    if appended.once == Once::KeyReused {
        state.metrics.idempotency_keys_reused.inc();
        return Err(ApiError::Unprocessable(format!(
            "Idempotency-Key {:?} was used for another body (appended as entry {}); nothing was \
             stored: send each request with a key of its own",
            idempotency_key.unwrap_or_default(),
            appended.id
        )));
    }
    let (entry, repeated) = (appended.id, appended.once == Once::Repeated);
    if !repeated {
        state
            .metrics
            .messages_received
            .with_label_values(&["http"])
            .inc();
    }
    Ok(HttpResponse::Accepted().json(Accepted {
        entry: entry.to_string(),
        readings: valid,
        rejected,
        repeated,
    }))
}

/// Appends the message `fields` once ([`append::append_once`]), with sharded streams to each of
/// the `shards` [`append::route`] gives; a failure is a 503 that says whether a retry is safe.
pub(crate) async fn append_once(
    state: &HttpState,
    shards: &[usize],
    idempotency_key: Option<&str>,
    fields: &[(&str, &[u8])],
) -> Result<Appended, ApiError> {
    append::append_once(
        &state.redis,
        &state.api.streams,
        shards,
        idempotency_key,
        fields,
    )
    .await
    .map_err(append_failed)?
    .ok_or_else(|| ApiError::OutcomeUnknown("the message was routed to no stream".into()))
}

/// The request's `Idempotency-Key`, if any: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters (no spaces)"
        ))
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// The 503 of a failed append: whether it may have been stored decides which retries are safe.
pub(crate) fn append_failed(error: redis::RedisError) -> ApiError {
    // Redis answered with an error (out of memory, read-only replica, ...), or the connection
    // was refused: the append never ran.
    let answered_with_error = error.code().is_some()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
        );
    if answered_with_error || error.is_connection_refusal() {
        return ApiError::NotStored(format!(
            "redis refused the append, nothing was stored: {error}; retrying is safe"
        ));
    }
    ApiError::OutcomeUnknown(format!(
        "redis did not answer in time ({error}): the readings may or may not be stored. A retry \
         with the same Idempotency-Key header stores them once; without one, a retry is safe for \
         readings that carry their own timestamp (a repeat is skipped as a duplicate), while a \
         reading without a timestamp could be stored twice"
    ))
}
