//! `GET /api/v1/openapi.json`: the OpenAPI document of the read API and ingest, generated from
//! the handlers' annotations.

use crate::http::HttpState;
use crate::http::api::{self, ReadingList, ReadingPoint, Sensor, SensorList};
use crate::http::dead_letters::{
    self, DeadLetterPage, DeadLetterSummary, DeadLetterView, PurgeAnswer, ReplayAnswer,
    ReplayRequest,
};
use crate::http::delete::{self, DeleteAnswer, DeleteRequest};
use crate::http::error::ErrorBody;
use crate::http::ingest::{self, Accepted, RejectedReading};
use crate::http::line_protocol::{self, BadLine, WriteErrorBody};
use crate::http::status::{self, DeadLetterPanel, PipelineStatus};
use crate::http::windows::{self, AggregateWindow, WindowList};
use actix_web::{HttpResponse, web};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/openapi.json").route(web::get().to(openapi)));
}

/// The OpenAPI document of the API, naming this instance's resolutions as the values
/// `resolution` takes.
async fn openapi(state: web::Data<HttpState>) -> HttpResponse {
    let mut doc = ApiDoc::openapi();
    let resolutions: Vec<String> = state
        .api
        .resolutions
        .iter()
        .map(|r| r.to_string())
        .collect();
    for path in doc.paths.paths.values_mut() {
        if let Some(operation) = path.get.as_mut() {
            for parameter in operation.parameters.iter_mut().flatten() {
                if let RefOr::T(parameter) = parameter
                    && parameter.name == "resolution"
                {
                    parameter.schema = Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .enum_values(Some(resolutions.clone()))
                            .into(),
                    );
                }
            }
        }
    }
    HttpResponse::Ok().json(doc)
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "sensorhub", description = "Read API and HTTP ingest of sensorhub. The bearer token is required only when SENSORHUB_API_TOKEN (read API) or SENSORHUB_INGEST_TOKEN (ingest) is set."),
    paths(api::list_sensors, api::get_sensor, api::sensor_readings, windows::sensor_aggregates, ingest::ingest, line_protocol::write_v2, line_protocol::write_v1, dead_letters::list, dead_letters::summary, dead_letters::replay, dead_letters::purge, delete::delete_v1, status::pipeline),
    components(schemas(Sensor, SensorList, ReadingPoint, ReadingList, AggregateWindow, WindowList, Accepted, RejectedReading, ErrorBody, BadLine, WriteErrorBody, DeadLetterView, DeadLetterPage, DeadLetterSummary, ReplayRequest, ReplayAnswer, PurgeAnswer, DeleteRequest, DeleteAnswer, PipelineStatus, DeadLetterPanel)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;
