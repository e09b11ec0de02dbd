//! Deleting readings: `POST /api/v1/delete` (`{"sensor": "…", "from": "…", "to": "…"}`, the
//! readings in `[from, to)`, the whole sensor without either), and InfluxDB's `POST
//! /api/v2/delete` (`{"start": "…", "stop": "…", "predicate": "_measurement=\"m\" AND
//! tag=\"v\""}`, both ends inclusive as in InfluxDB, the series line protocol gave the ids of).
//! Either token opens them: the ingest token (what writes the data may correct it; InfluxDB's
//! clients send it as `Token …`) or the admin token. Idempotent: a deletion repeated removes
//! nothing more. The work is [`crate::stream::deletion`]'s.

use crate::domain::reading::Predicate;
use crate::http::HttpState;
use crate::http::auth::DeleteAuthorized;
use crate::http::error::{ApiError, ErrorBody};
use crate::stream::deletion::{DeleteError, delete};
use actix_web::{HttpResponse, web};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/delete").route(web::post().to(delete_v1)))
        .service(web::resource("/api/v2/delete").route(web::post().to(delete_v2)));
}

/// Readings to delete.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRequest {
    /// The sensor whose readings go.
    pub sensor: String,
    /// From this time, inclusive (RFC 3339; absent: from its first reading).
    pub from: Option<DateTime<Utc>>,
    /// To this time, exclusive (RFC 3339; absent: through its last reading).
    pub to: Option<DateTime<Utc>>,
}

/// What a deletion removed.
#[derive(Serialize, ToSchema)]
pub struct DeleteAnswer {
    pub sensor: String,
    /// Readings removed (0 when a deletion is repeated).
    pub deleted: u64,
    /// Whether the sensor has no reading left, and is gone from `/api/v1/sensors`.
    pub sensor_removed: bool,
}

/// Deletes a sensor's readings in `[from, to)`, with the windows and the sensor's latest value
/// following.
#[utoipa::path(
    post,
    path = "/api/v1/delete",
    request_body = DeleteRequest,
    responses((status = 200, body = DeleteAnswer), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn delete_v1(
    _: DeleteAuthorized,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: DeleteRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a deletion such as {{\"sensor\": \"t1\", \"from\": \
             \"2024-12-01T00:00:00Z\", \"to\": \"2024-12-02T00:00:00Z\"}}: {e}"
        ))
    })?;
    if request.sensor.is_empty() || request.sensor.contains('\0') {
        return Err(ApiError::BadRequest(format!(
            "sensor {:?} is not a sensor id",
            crate::domain::reading::excerpt(&request.sensor)
        )));
    }
    check_range(request.from, request.to)?;
    let done = run(
        &state,
        &[request.sensor.as_str()],
        (request.from, request.to),
    )
    .await?;
    let deleted = done.first();
    Ok(HttpResponse::Ok().json(DeleteAnswer {
        sensor: request.sensor.clone(),
        deleted: deleted.map_or(0, |d| d.readings),
        sensor_removed: deleted.is_some_and(|d| d.emptied),
    }))
}

/// InfluxDB 2's delete request.
#[derive(Deserialize)]
struct InfluxDelete {
    start: DateTime<Utc>,
    stop: DateTime<Utc>,
    #[serde(default)]
    predicate: String,
}

/// InfluxDB 2's `/api/v2/delete`: 204 once deleted, 400 with `{"code": "invalid", "message":
/// …}`. `org` and `bucket` are accepted and ignored, as on writes.
async fn delete_v2(
    _: DeleteAuthorized,
    state: web::Data<HttpState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let invalid = |message: String| {
        Ok(HttpResponse::BadRequest()
            .json(serde_json::json!({"code": "invalid", "message": message})))
    };
    let request: InfluxDelete = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return invalid(format!(
                "the body is not a delete request with start, stop (RFC 3339) and predicate: {e}"
            ));
        }
    };
    let predicate = match Predicate::parse(&request.predicate) {
        Ok(predicate) if predicate.is_empty() => {
            return invalid(
                "an empty predicate would delete every sensor's readings: name a _measurement \
                 or tags (POST /api/v1/delete deletes one sensor by its id)"
                    .to_owned(),
            );
        }
        Ok(predicate) => predicate,
        Err(why) => return invalid(why),
    };
    if request.stop < request.start {
        return invalid(format!(
            "stop {} is before start {}",
            request.stop.to_rfc3339(),
            request.start.to_rfc3339()
        ));
    }
    // The primary: a replica may not have a sensor created a moment ago.
    let client = state
        .pool
        .get()
        .await
        .map_err(|e| ApiError::Unavailable(format!("PostgreSQL is unavailable: {e}")))?;
    let rows = client
        .query(
            "SELECT sensor_id FROM sensors WHERE sensor_id LIKE $1 ORDER BY sensor_id",
            &[&predicate.like_prefix()],
        )
        .await
        .map_err(|e| ApiError::Unavailable(format!("PostgreSQL is unavailable: {e}")))?;
    drop(client);
    let ids: Vec<String> = rows
        .iter()
        .map(|row| row.get::<_, String>(0))
        .filter(|id| predicate.matches(id))
        .collect();
    if !ids.is_empty() {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        // InfluxDB's stop is inclusive.
        let to = request.stop + TimeDelta::microseconds(1);
        run(&state, &ids, (Some(request.start), Some(to))).await?;
    }
    Ok(HttpResponse::NoContent().finish())
}

fn check_range(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    match (from, to) {
        (Some(from), Some(to)) if to <= from => Err(ApiError::BadRequest(format!(
            "to {} is not after from {}: the range [from, to) is empty",
            to.to_rfc3339(),
            from.to_rfc3339()
        ))),
        _ => Ok(()),
    }
}

async fn run(
    state: &HttpState,
    sensors: &[&str],
    range: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
) -> Result<Vec<crate::store::deletion::Deleted>, ApiError> {
    let mut conn = state.redis.clone();
    delete(
        &mut conn,
        &state.pool,
        &state.api.streams,
        &state.api.resolutions,
        Some(&state.metrics),
        sensors,
        range,
    )
    .await
    .map_err(|error: DeleteError| {
        ApiError::Unavailable(format!(
            "nothing was deleted (one transaction: all or none): {error}"
        ))
    })
}
