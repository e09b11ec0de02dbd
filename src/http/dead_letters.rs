//! The dead letters over HTTP, behind the API token:
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/dead-letters?reason=&sensor=&from=&to=&limit=&after=` | letters, newest first, paged by id |
//! | `GET /api/v1/dead-letters/summary` | counts by reason, over the stream and the last hour |
//! | `POST /api/v1/dead-letters/replay` | replays letters by ids or filters (`dry_run` only checks them) |
//! | `DELETE /api/v1/dead-letters?id=&reason=&sensor=&from=&to=&all=` | purges letters |
//!
//! With sharded streams the routes work over every shard's dead letters, a letter's id naming its
//! shard (`3/1733054400000-0`: [`crate::stream::dead_letter::operate::LetterId`]).
//!
//! Original bytes are answered as text when they are UTF-8 (`data`), else as base64
//! (`data_base64`); either way inside a JSON string, which a page shows as text.

use crate::http::HttpState;
use crate::http::auth::{AdminAuthorized, Authorized};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::params::{Params, ordered};
use crate::stream::dead_letter::browse::{Filter, Letter};
use crate::stream::dead_letter::operate::{DeadLetterStore, LetterId, ReplayReport, Selection};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 10_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/dead-letters")
            .route(web::get().to(list))
            .route(web::delete().to(purge)),
    )
    .service(web::resource("/api/v1/dead-letters/summary").route(web::get().to(summary)))
    .service(web::resource("/api/v1/dead-letters/replay").route(web::post().to(replay)));
}

/// One dead letter.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterView {
    /// Its id in the dead-letter stream: the paging cursor, and what replay and purge take.
    pub id: String,
    /// When it was rejected.
    pub time: DateTime<Utc>,
    pub reason: String,
    /// What was wrong, naming the bad value.
    pub detail: String,
    /// The stream entry it came from.
    pub entry: Option<String>,
    /// The element or line of that entry's payload it is about.
    pub index: Option<usize>,
    /// The original payload, when it is UTF-8.
    pub data: Option<String>,
    /// The original payload in base64, when it is not UTF-8.
    pub data_base64: Option<String>,
    /// The entry's other fields (topic, form, or a reading's own fields), as text.
    pub fields: BTreeMap<String, String>,
}

impl From<Letter> for DeadLetterView {
    fn from(letter: Letter) -> Self {
        let id = LetterId::of(&letter).to_string();
        let (data, data_base64) = match letter.data {
            None => (None, None),
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(error) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(error.into_bytes())),
                ),
            },
        };
        DeadLetterView {
            id,
            time: letter.id.time(),
            reason: letter.reason,
            detail: letter.detail,
            entry: letter.entry,
            index: letter.index,
            data,
            data_base64,
            fields: letter
                .fields
                .into_iter()
                .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
                .collect(),
        }
    }
}

/// A page of dead letters.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterPage {
    pub letters: Vec<DeadLetterView>,
    /// Pass as `after` for the next (older) page; absent on the last page.
    pub next: Option<String>,
}

/// Counts of dead letters by reason.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterSummary {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    /// Letters of the last hour, by reason.
    pub last_hour: BTreeMap<String, u64>,
}

/// Which letters to replay: `ids`, or the filters (at least one of the two).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    pub ids: Option<Vec<String>>,
    pub reason: Option<String>,
    /// Text the original bytes contain (a sensor id, a topic).
    pub sensor: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Replay every letter (when no ids and no filter are given).
    #[serde(default)]
    pub all: bool,
    /// Only check the letters against the current settings; move nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Serialize, ToSchema)]
pub struct ReplayAnswer {
    pub selected: usize,
    /// Letters moved back into the stream (0 in a dry run).
    pub replayed: usize,
    /// Readings in them that pass validation now (stored once: repeats are duplicates).
    pub valid: usize,
    /// Readings that fail again, by their reason now.
    pub rejected: BTreeMap<String, usize>,
    pub dry_run: bool,
}

/// What a purge did.
#[derive(Serialize, ToSchema)]
pub struct PurgeAnswer {
    pub deleted: usize,
}

/// A letter id of `store`'s streams.
fn letter_id(store: &Store, text: &str) -> Result<LetterId, ApiError> {
    let id: LetterId = text.parse().map_err(ApiError::BadRequest)?;
    store.check(&id).map_err(ApiError::BadRequest)?;
    Ok(id)
}

fn filter(
    reason: Option<String>,
    sensor: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Filter, ApiError> {
    let (from, to) = ordered((from, to))?;
    Ok(Filter {
        reason,
        sensor: sensor.filter(|s| !s.is_empty()),
        from,
        to,
    })
}

/// The filter of a query's `reason`, `sensor`, `from` and `to`.
fn query_filter(params: &Params) -> Result<Filter, ApiError> {
    let (from, to) = params.range()?;
    filter(
        params.get("reason").map(str::to_owned),
        params.get("sensor").map(str::to_owned),
        from,
        to,
    )
}

/// The selection of a replay or purge: ids, a filter, or everything when `all` says so.
fn selection(
    store: &Store,
    ids: Vec<String>,
    filter: Filter,
    all: bool,
) -> Result<Selection, ApiError> {
    if !ids.is_empty() {
        if !filter.is_empty() {
            return Err(ApiError::BadRequest("give ids or filters, not both".into()));
        }
        let ids = ids
            .iter()
            .map(|id| letter_id(store, id))
            .collect::<Result<_, _>>()?;
        return Ok(Selection::Ids(ids));
    }
    if filter.is_empty() && !all {
        return Err(ApiError::BadRequest(
            "name the letters: ids, a filter (reason, sensor, from, to), or all=true".into(),
        ));
    }
    Ok(Selection::Matching(filter))
}

type Store = DeadLetterStore<crate::redis::connection::Connection>;

fn store(state: &HttpState) -> Store {
    DeadLetterStore::new(state.redis.clone(), &state.api.streams)
}

fn redis_failed(error: redis::RedisError) -> ApiError {
    ApiError::Unavailable(format!("redis: {error}"))
}

/// Dead letters, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters",
    params(
        ("reason" = Option<String>, Query, description = "the reason code, exactly"),
        ("sensor" = Option<String>, Query, description = "text the original bytes contain (a sensor id, a topic)"),
        ("from" = Option<DateTime<Utc>>, Query, description = "rejected at or after (RFC 3339)"),
        ("to" = Option<DateTime<Utc>>, Query, description = "rejected at or before (RFC 3339)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "at most this many (default 100)"),
        ("after" = Option<String>, Query, description = "the `next` of the previous page: letters older than this id (`<shard>/<id>` with sharded streams)"),
    ),
    responses((status = 200, body = DeadLetterPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn list(
    _: Authorized,
    state: web::Data<HttpState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::new(
        req.query_string(),
        &["reason", "sensor", "from", "to", "limit", "after"],
    )?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)? as usize;
    let mut store = store(&state);
    let after = params
        .get("after")
        .map(|text| letter_id(&store, text))
        .transpose()?;
    let filter = query_filter(&params)?;
    let page = store
        .list(&filter, after, limit)
        .await
        .map_err(redis_failed)?;
    Ok(HttpResponse::Ok().json(DeadLetterPage {
        letters: page.letters.into_iter().map(DeadLetterView::from).collect(),
        next: page.next.map(|id| id.to_string()),
    }))
}

/// Counts of dead letters by reason.
#[utoipa::path(
    get,
    path = "/api/v1/dead-letters/summary",
    responses((status = 200, body = DeadLetterSummary), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn summary(
    _: Authorized,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let summary = store(&state)
        .summary(Utc::now())
        .await
        .map_err(redis_failed)?;
    Ok(HttpResponse::Ok().json(DeadLetterSummary {
        total: summary.total,
        by_reason: summary.by_reason,
        last_hour: summary.recent,
    }))
}

/// Replays dead letters into the stream: they are validated again with the current settings.
#[utoipa::path(
    post,
    path = "/api/v1/dead-letters/replay",
    request_body = ReplayRequest,
    responses((status = 200, body = ReplayAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn replay(
    _: AdminAuthorized,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: ReplayRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a replay request: {e}")))?;
    let mut store = store(&state);
    let selection = selection(
        &store,
        request.ids.unwrap_or_default(),
        filter(request.reason, request.sensor, request.from, request.to)?,
        request.all,
    )?;
    let ReplayReport {
        selected,
        replayed,
        valid,
        rejected,
    } = store
        .replay(&selection, &state.api.limits, request.dry_run, |_| {})
        .await
        .map_err(redis_failed)?;
    Ok(HttpResponse::Ok().json(ReplayAnswer {
        selected,
        replayed,
        valid,
        rejected,
        dry_run: request.dry_run,
    }))
}

/// Deletes dead letters by ids (`id=`, repeated) or filters, or all of them with `all=true`.
#[utoipa::path(
    delete,
    path = "/api/v1/dead-letters",
    params(
        ("id" = Option<Vec<String>>, Query, description = "ids of letters to delete (repeat the parameter; `<shard>/<id>` with sharded streams)"),
        ("reason" = Option<String>, Query, description = "the reason code, exactly"),
        ("sensor" = Option<String>, Query, description = "text the original bytes contain"),
        ("from" = Option<DateTime<Utc>>, Query, description = "rejected at or after"),
        ("to" = Option<DateTime<Utc>>, Query, description = "rejected at or before"),
        ("all" = Option<bool>, Query, description = "delete every letter (without ids or filters)"),
    ),
    responses((status = 200, body = PurgeAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn purge(
    _: AdminAuthorized,
    state: web::Data<HttpState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::new(
        req.query_string(),
        &["id", "reason", "sensor", "from", "to", "all"],
    )?;
    let mut store = store(&state);
    let selection = selection(
        &store,
        params.all("id"),
        query_filter(&params)?,
        params.flag("all")?,
    )?;
    let deleted = store.purge(&selection).await.map_err(redis_failed)?;
    Ok(HttpResponse::Ok().json(PurgeAnswer { deleted }))
}
