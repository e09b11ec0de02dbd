//! The read API for dashboards.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/v1/sensors[?all=true]` | sensors seen within `SENSORHUB_ACTIVE_WITHIN` (all with `all=true`) |
//! | `GET /api/v1/sensors/{id}` | the sensor's current value: the reading with the newest timestamp |
//! | `GET /api/v1/sensors/{id}/readings?from=&to=&limit=` | raw readings, newest first (default limit 1440) |
//! | `GET /api/v1/sensors/{id}/aggregates?resolution=&from=&to=&limit=&tz=&fill=&points=` | windows, newest first ([`windows`]) |
//!
//! Times are RFC 3339; `from` and `to` are inclusive. A bad parameter gets a 400 with a JSON
//! `{"error": ...}` naming it, an unknown sensor a 404. With `SENSORHUB_API_TOKEN` set, every route
//! here needs `Authorization: Bearer <token>` ([`Authorized`]).

use crate::domain::reading::{could_be_sensor_id, excerpt};
use crate::http::HttpState;
use crate::http::auth::Authorized;
use crate::http::error::{ApiError, ErrorBody, unavailable};
use crate::http::params::Params;
use crate::store::sql;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

pub(crate) const DEFAULT_LIMIT: u32 = 1440;
pub(crate) const MAX_LIMIT: u32 = 100_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/sensors").route(web::get().to(list_sensors)))
        .service(web::resource("/api/v1/sensors/{id}").route(web::get().to(get_sensor)))
        .service(
            web::resource("/api/v1/sensors/{id}/readings").route(web::get().to(sensor_readings)),
        );
}

/// One sensor and its current value.
#[derive(Serialize, ToSchema)]
pub struct Sensor {
    pub id: String,
    pub unit: Option<String>,
    /// Value of the reading with the newest timestamp.
    pub last_value: f64,
    /// Timestamp of the newest reading.
    pub last_seen: DateTime<Utc>,
    /// Timestamp of the oldest reading.
    pub first_seen: DateTime<Utc>,
}

impl From<&tokio_postgres::Row> for Sensor {
    fn from(row: &tokio_postgres::Row) -> Self {
        Sensor {
            id: row.get(0),
            unit: row.get(1),
            first_seen: row.get(2),
            last_seen: row.get(3),
            last_value: row.get(4),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SensorList {
    pub sensors: Vec<Sensor>,
    /// The configured window resolutions, finest first.
    pub resolutions: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ReadingPoint {
    pub ts: DateTime<Utc>,
    pub value: f64,
}

#[derive(Serialize, ToSchema)]
pub struct ReadingList {
    pub sensor: String,
    /// Newest first.
    pub readings: Vec<ReadingPoint>,
}

/// Sensors seen recently.
#[utoipa::path(
    get,
    path = "/api/v1/sensors",
    params(("all" = Option<bool>, Query, description = "list every sensor, not only those seen within SENSORHUB_ACTIVE_WITHIN")),
    responses(
        (status = 200, body = SensorList),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn list_sensors(
    _: Authorized,
    state: web::Data<HttpState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::new(req.query_string(), &["all"])?;
    let all = params.flag("all")?;
    let since = Utc::now()
        - chrono::TimeDelta::from_std(state.api.active_within).unwrap_or(chrono::TimeDelta::MAX);
    let client = state.read_pool.get().await.map_err(unavailable)?;
    let rows = client
        .query(sql::LIST_SENSORS, &[&all, &since])
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(SensorList {
        sensors: rows.iter().map(Sensor::from).collect(),
        resolutions: state
            .api
            .resolutions
            .iter()
            .map(ToString::to_string)
            .collect(),
    }))
}

pub(crate) async fn find_sensor(state: &HttpState, id: &str) -> Result<Sensor, ApiError> {
    if !could_be_sensor_id(id, &state.api.limits) {
        return Err(ApiError::NotFound(format!(
            "unknown sensor {}",
            excerpt(id)
        )));
    }
    let client = state.read_pool.get().await.map_err(unavailable)?;
    let row = client
        .query_opt(sql::GET_SENSOR, &[&id])
        .await
        .map_err(unavailable)?;
    row.as_ref()
        .map(Sensor::from)
        .ok_or_else(|| ApiError::NotFound(format!("unknown sensor {}", excerpt(id))))
}

/// A sensor's current value.
#[utoipa::path(
    get,
    path = "/api/v1/sensors/{id}",
    params(("id" = String, Path, description = "sensor id")),
    responses((status = 200, body = Sensor), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn get_sensor(
    _: Authorized,
    state: web::Data<HttpState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(find_sensor(&state, &id).await?))
}

/// Raw readings of a sensor, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/sensors/{id}/readings",
    params(
        ("id" = String, Path, description = "sensor id"),
        ("from" = Option<DateTime<Utc>>, Query, description = "RFC 3339, inclusive"),
        ("to" = Option<DateTime<Utc>>, Query, description = "RFC 3339, inclusive"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100000, description = "at most this many readings (default 1440)"),
    ),
    responses((status = 200, body = ReadingList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn sensor_readings(
    _: Authorized,
    state: web::Data<HttpState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::new(req.query_string(), &["from", "to", "limit"])?;
    let (from, to) = params.range()?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let sensor = find_sensor(&state, &id).await?;
    let client = state.read_pool.get().await.map_err(unavailable)?;
    let rows = client
        .query(sql::SENSOR_READINGS, &[&sensor.id, &from, &to, &limit])
        .await
        .map_err(unavailable)?;
    let readings = rows
        .iter()
        .map(|r| ReadingPoint {
            ts: r.get(0),
            value: r.get(1),
        })
        .collect();
    Ok(HttpResponse::Ok().json(ReadingList {
        sensor: sensor.id,
        readings,
    }))
}
