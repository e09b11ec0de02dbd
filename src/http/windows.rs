//! `GET /api/v1/sensors/{id}/aggregates`: a sensor's windows — a stored resolution, or calendar
//! days, weeks, months and years in a time zone — with `increase` and `rate`, empty windows filled
//! on request, the resolution picked for a number of points on request.
//!
//! The windows come from the SQL function `sensorhub_windows` (`sql/V10__calendar_windows.sql`),
//! the one Grafana and psql users call: both answer with the same numbers.

use crate::domain::Resolution;
use crate::domain::reading::excerpt;
use crate::http::HttpState;
use crate::http::api::{DEFAULT_LIMIT, MAX_LIMIT, find_sensor};
use crate::http::auth::Authorized;
use crate::http::error::{ApiError, ErrorBody, unavailable};
use crate::http::params::Params;
use crate::store::export::at_offset;
use crate::store::sql;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};
use tokio_postgres::error::SqlState;
use utoipa::ToSchema;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/api/v1/sensors/{id}/aggregates").route(web::get().to(sensor_aggregates)),
    );
}

/// Calendar windows, from local midnight in the zone asked for.
const CALENDAR: [&str; 4] = ["1d", "1w", "1mo", "1y"];
/// Fill modes; `none` leaves empty windows out.
const FILLS: [&str; 4] = ["none", "null", "previous", "linear"];

/// One window (named `Window` in the OpenAPI document). An empty window (with `fill`) has
/// `count` 0, `increase` 0 and no first or last reading; its values are null or carried.
#[derive(Serialize, ToSchema)]
#[schema(as = Window)]
pub struct AggregateWindow {
    /// Start of the window, RFC 3339 with the zone's offset at that instant.
    pub bucket: String,
    /// End of the window (exclusive): a local day is 23 or 25 hours at the clock changes.
    pub bucket_end: String,
    pub count: i64,
    pub sum: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// `sum / count`.
    pub mean: Option<f64>,
    pub first_ts: Option<DateTime<Utc>>,
    pub first_value: Option<f64>,
    pub last_ts: Option<DateTime<Utc>>,
    pub last_value: Option<f64>,
    /// `last_value - first_value`.
    pub diff: Option<f64>,
    /// What a counter rose by: the steps of the window's readings from each one's previous reading,
    /// a fall counted as a reset to the new value. Consecutive windows add up with nothing lost.
    pub increase: f64,
    /// `increase` per second of the window.
    pub rate: f64,
}

#[derive(Serialize, ToSchema)]
pub struct WindowList {
    pub sensor: String,
    /// The windows' size: a stored resolution or `1d`, `1w`, `1mo`, `1y` (the one picked, for
    /// `resolution=auto`).
    pub resolution: String,
    /// The IANA time zone of calendar windows and of the offsets in `bucket`.
    pub tz: String,
    /// What the windows were built from: a stored resolution, or `raw` readings.
    pub source: Option<String>,
    /// Newest window first.
    pub aggregates: Vec<AggregateWindow>,
}

/// Window aggregates of a sensor, newest window first.
#[utoipa::path(
    get,
    path = "/api/v1/sensors/{id}/aggregates",
    params(
        ("id" = String, Path, description = "sensor id"),
        ("resolution" = Option<String>, Query, description = "a configured resolution (default: the finest), 1d, 1w (from Monday), 1mo, 1y, or auto (with points)"),
        ("tz" = Option<String>, Query, description = "IANA time zone of calendar windows (default UTC)"),
        ("fill" = Option<String>, Query, description = "none (default), null, previous or linear: every window of the range, empty ones filled"),
        ("points" = Option<u32>, Query, description = "with resolution=auto: the finest stored resolution giving at most this many windows"),
        ("from" = Option<DateTime<Utc>>, Query, description = "RFC 3339, inclusive, on the window start"),
        ("to" = Option<DateTime<Utc>>, Query, description = "RFC 3339, inclusive, on the window start"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100000, description = "at most this many windows (default 1440)"),
    ),
    responses((status = 200, body = WindowList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn sensor_aggregates(
    _: Authorized,
    state: web::Data<HttpState>,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::new(
        req.query_string(),
        &["resolution", "from", "to", "limit", "tz", "fill", "points"],
    )?;
    let mut configured = state.api.resolutions.clone();
    configured.sort_unstable();
    let (from, to) = params.range()?;
    let limit = params.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let fill = match params.get("fill") {
        None => "none",
        Some(fill) => FILLS.into_iter().find(|f| *f == fill).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "fill={} is not one of {}",
                excerpt(fill),
                FILLS.join(", ")
            ))
        })?,
    };
    let tz = params.get("tz").unwrap_or("UTC");
    let sensor = find_sensor(&state, &id).await?;
    let resolution = match params.get("resolution") {
        Some("auto") => {
            let points = points(&params)?;
            let span = to.unwrap_or(sensor.last_seen) - from.unwrap_or(sensor.first_seen);
            auto(&configured, span.num_seconds().max(0), points).to_string()
        }
        _ if params.get("points").is_some() => {
            return Err(ApiError::BadRequest(
                "points is for resolution=auto".to_owned(),
            ));
        }
        None => configured
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        Some(text) => window_size(text, &configured, ", or auto")?,
    };
    // Every window of the range is made for calendar windows and for fill: a range too long for
    // the resolution is refused before PostgreSQL builds millions of them.
    let width = match resolution.as_str() {
        "1d" => Some(86_400),
        "1w" => Some(7 * 86_400),
        "1mo" => Some(28 * 86_400),
        "1y" => Some(365 * 86_400),
        fixed if fill != "none" => fixed
            .parse::<Resolution>()
            .ok()
            .map(|r| i64::from(r.seconds())),
        _ => None,
    };
    if let Some(width) = width {
        let span = to.unwrap_or(sensor.last_seen) - from.unwrap_or(sensor.first_seen);
        let windows = span.num_seconds().max(0) / width;
        if windows > i64::from(MAX_LIMIT) {
            return Err(ApiError::BadRequest(format!(
                "{windows} windows of {resolution} from from to to: at most {MAX_LIMIT}; narrow from/to or take a coarser resolution"
            )));
        }
    }
    let client = state.read_pool.get().await.map_err(unavailable)?;
    check_zone(&client, tz).await?;
    let rows = client
        .query(
            sql::SENSOR_WINDOWS,
            &[&sensor.id, &from, &to, &resolution, &tz, &fill, &limit],
        )
        .await
        .map_err(refused_or_unavailable)?;
    let source = rows.first().map(|r| r.get::<_, String>(14));
    let aggregates = rows
        .iter()
        .map(|r| AggregateWindow {
            bucket: at_offset(r.get(0), r.get(15)),
            bucket_end: at_offset(r.get(1), r.get(16)),
            count: r.get(2),
            sum: r.get(3),
            min: r.get(4),
            max: r.get(5),
            mean: r.get(6),
            first_ts: r.get(7),
            first_value: r.get(8),
            last_ts: r.get(9),
            last_value: r.get(10),
            diff: r.get(11),
            increase: r.get(12),
            rate: r.get(13),
        })
        .collect();
    Ok(HttpResponse::Ok().json(WindowList {
        sensor: sensor.id,
        resolution,
        tz: tz.to_owned(),
        source,
        aggregates,
    }))
}

/// The window size `text` names: `1d`, `1w`, `1mo`, `1y`, or one of the `configured` resolutions
/// (as its label); refused naming the choices (and `more` of them the route takes).
pub(crate) fn window_size(
    text: &str,
    configured: &[Resolution],
    more: &str,
) -> Result<String, ApiError> {
    if CALENDAR.contains(&text) {
        return Ok(text.to_owned());
    }
    text.parse::<Resolution>()
        .ok()
        .filter(|r| configured.contains(r))
        .map(|r| r.to_string())
        .ok_or_else(|| {
            let labels: Vec<String> = configured.iter().map(ToString::to_string).collect();
            ApiError::BadRequest(format!(
                "resolution={} is not one of the configured resolutions ({}), 1d, 1w, 1mo, 1y{more}",
                excerpt(text),
                labels.join(", ")
            ))
        })
}

fn points(params: &Params) -> Result<i64, ApiError> {
    let text = params.get("points").ok_or_else(|| {
        ApiError::BadRequest("resolution=auto needs points=N, the most windows wanted".to_owned())
    })?;
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(i64::from(n)),
        _ => Err(ApiError::BadRequest(format!(
            "points={} must be a whole number from 1 to {MAX_LIMIT}",
            excerpt(text)
        ))),
    }
}

/// The finest of `configured` (sorted, finest first) giving at most `points` windows over
/// `span_seconds`; the coarsest when none does.
pub fn auto(configured: &[Resolution], span_seconds: i64, points: i64) -> Resolution {
    configured
        .iter()
        .copied()
        .find(|r| span_seconds / i64::from(r.seconds()) < points)
        .or_else(|| configured.last().copied())
        .unwrap_or_else(|| Resolution::from_seconds(3600).expect("an hour is a resolution"))
}

/// Zones found in PostgreSQL's time zone list: the list takes tens of milliseconds to read, and
/// the names asked for are few.
fn known_zones() -> &'static Mutex<HashSet<String>> {
    static ZONES: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    ZONES.get_or_init(|| Mutex::new(HashSet::from(["UTC".to_owned()])))
}

/// Refuses a `tz` that is not an IANA zone name. PostgreSQL alone would also take abbreviations
/// and POSIX specifications such as `UTC+3` — three hours *west* of UTC — which a user of an
/// API that promises IANA names would read the other way round.
pub(crate) async fn check_zone(
    client: &deadpool_postgres::Client,
    tz: &str,
) -> Result<(), ApiError> {
    if known_zones().lock().is_ok_and(|zones| zones.contains(tz)) {
        return Ok(());
    }
    let found: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_timezone_names WHERE name = $1)",
            &[&tz],
        )
        .await
        .map_err(unavailable)?
        .get(0);
    if !found {
        return Err(ApiError::BadRequest(format!(
            "tz={} is not an IANA time zone name such as Europe/Berlin",
            excerpt(tz)
        )));
    }
    if let Ok(mut zones) = known_zones().lock() {
        zones.insert(tz.to_owned());
    }
    Ok(())
}

/// A parameter `sensorhub_windows` refused (SQLSTATE 22023, its message names it) is the
/// client's; anything else is the database's.
fn refused_or_unavailable(error: tokio_postgres::Error) -> ApiError {
    match error.as_db_error() {
        Some(db) if *db.code() == SqlState::INVALID_PARAMETER_VALUE => {
            ApiError::BadRequest(db.message().to_owned())
        }
        _ => unavailable(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_finest_resolution_within_the_points() {
        let r = |s: &str| s.parse::<Resolution>().unwrap();
        let configured = [r("1m"), r("1h")];
        assert_eq!(auto(&configured, 3600, 100), r("1m"));
        assert_eq!(auto(&configured, 86_400, 100), r("1h"));
        assert_eq!(
            auto(&configured, 86_400 * 365, 100),
            r("1h"),
            "the coarsest at worst"
        );
    }
}
