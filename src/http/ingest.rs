//! HTTP ingest for devices that speak only HTTP: `POST /api/v1/readings` appends the body to the
//! stream as `XADD <stream> * data <body>` does ([`crate::sources::http`]), so HTTP readings get
//! the stream's delivery guarantee.
//!
//! The answer tells the truth about the append: 202 once Redis has the entry, 400 (or 413) when
//! nothing in the body can be a reading, and a 503 that says whether nothing was stored (a retry
//! is safe) or the outcome is unknown (Redis did not answer in time: the entry may exist). With
//! an `Idempotency-Key` header, a retry of the same request stores its readings once, however
//! the first attempt ended: the key is kept with the entry it was appended as and a digest of the
//! body for [`crate::sources::append::IDEMPOTENCY_TTL`], and the key reused for another body is refused (422). Without
//! one, the request appends under a key of its own, so the Redis client's own retry of a command
//! that timed out cannot append it twice.

use crate::http::HttpState;
use crate::http::auth::IngestAuthorized;
use crate::http::body::read_limited;
use crate::http::error::{ApiError, ErrorBody};
use crate::sources::http::JsonRefused;
use actix_web::{HttpRequest, HttpResponse, web};
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
    let accepted = match state.ingest().json(&body, idempotency_key.as_deref()).await {
        Ok(accepted) => accepted,
        Err(JsonRefused::NoValidReading(rejected)) => {
            let problems: Vec<String> = rejected
                .iter()
                .map(|r| match r.index {
                    Some(i) => format!("[{i}] {}: {}", r.reason, r.detail),
                    None => format!("{}: {}", r.reason, r.detail),
                })
                .collect();
            let error = format!("no valid reading in the body: {}", problems.join("; "));
            return Err(if JsonRefused::too_large(&rejected) {
                ApiError::TooLarge(error)
            } else {
                ApiError::BadRequest(error)
            });
        }
        Err(JsonRefused::KeyReused(appended)) => {
            return Err(ApiError::Unprocessable(format!(
                "Idempotency-Key {:?} was used for another body (appended as entry {}); nothing \
                 was stored: send each request with a key of its own",
                idempotency_key.unwrap_or_default(),
                appended.id
            )));
        }
        Err(JsonRefused::Append(error)) => return Err(error.into()),
    };
    Ok(HttpResponse::Accepted().json(Accepted {
        entry: accepted.appended.id.to_string(),
        readings: accepted.readings,
        rejected: accepted
            .rejected
            .into_iter()
            .map(|r| RejectedReading {
                index: r.index,
                reason: r.reason.as_str().to_owned(),
                detail: r.detail,
            })
            .collect(),
        repeated: accepted.repeated,
    }))
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
