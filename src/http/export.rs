//! `GET /api/v1/export?sensor=a&sensor=b&from=&to=[&resolution=&tz=][&format=][&layout=][&field=]`:
//! raw readings or windows streamed as CSV or NDJSON ([`store::export`](crate::store::export)),
//! behind the read token.

use crate::domain::reading::{could_be_sensor_id, excerpt};
use crate::http::HttpState;
use crate::http::auth::Authorized;
use crate::http::error::{ApiError, unavailable};
use crate::http::params::Params;
use crate::http::windows::{check_zone, window_size};
use crate::store::export::{Export, Format, Layout, WindowSpec, field};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::TryStreamExt as _;

/// Most sensors in one export.
const MAX_SENSORS: usize = 1_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/export").route(web::get().to(export)));
}

/// What `params` ask to export; every bad value refused naming it.
pub fn parse(params: &Params, state: &HttpState) -> Result<Export, ApiError> {
    let sensors = params.all("sensor");
    if sensors.is_empty() || sensors.len() > MAX_SENSORS {
        return Err(ApiError::BadRequest(format!(
            "give from 1 to {MAX_SENSORS} sensor= parameters (got {})",
            sensors.len()
        )));
    }
    if let Some(bad) = sensors
        .iter()
        .find(|s| !could_be_sensor_id(s, &state.api.limits))
    {
        return Err(ApiError::BadRequest(format!(
            "sensor={} is not a sensor id",
            excerpt(bad)
        )));
    }
    let (from, to) = params.range()?;
    // The value of a parameter read with `parse`, refused naming it.
    fn read<T>(
        params: &Params,
        name: &str,
        default: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ApiError> {
        let text = params.get(name).unwrap_or(default);
        parse(text).map_err(|why| ApiError::BadRequest(format!("{name}={} {why}", excerpt(text))))
    }
    let format: Format = read(params, "format", "csv", str::parse)?;
    let layout: Layout = read(params, "layout", "long", str::parse)?;
    let windows = match params.get("resolution") {
        None => {
            if let Some(name) = ["tz", "field"]
                .into_iter()
                .find(|n| params.get(n).is_some())
            {
                return Err(ApiError::BadRequest(format!(
                    "{name} is for windows: give resolution= too"
                )));
            }
            None
        }
        Some(text) => {
            let resolution = window_size(text, &state.api.resolutions, "")?;
            let field = read(params, "field", "mean", field)?;
            Some(WindowSpec {
                resolution,
                tz: params.get("tz").unwrap_or("UTC").to_owned(),
                field,
            })
        }
    };
    Ok(Export {
        sensors,
        from,
        to,
        windows,
        format,
        layout,
    })
}

/// Streams the export; memory stays flat however many rows.
pub(crate) async fn export(
    _: Authorized,
    state: web::Data<HttpState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = Params::new(
        req.query_string(),
        &[
            "sensor",
            "from",
            "to",
            "resolution",
            "tz",
            "format",
            "layout",
            "field",
        ],
    )?;
    let export = parse(&params, &state)?;
    let client = state.read_pool.get().await.map_err(unavailable)?;
    if let Some(windows) = &export.windows {
        check_zone(&client, &windows.tz).await?;
    }
    let known: Vec<String> = client
        .query(
            "SELECT sensor_id FROM sensors WHERE sensor_id = ANY($1)",
            &[&export.sensors],
        )
        .await
        .map_err(unavailable)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if let Some(unknown) = export.sensors.iter().find(|s| !known.contains(s)) {
        return Err(ApiError::NotFound(format!(
            "unknown sensor {}",
            excerpt(unknown)
        )));
    }
    let (content_type, extension) = match export.format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    let body = export.stream(client).map_err(|error| {
        tracing::warn!(%error, "export stopped");
        actix_web::error::ErrorInternalServerError(error)
    });
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"sensorhub-export.{extension}\""),
        ))
        .streaming(body))
}
