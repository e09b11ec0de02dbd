//! The API token: a request passes only with `Authorization: Bearer <token>` when
//! `SENSORHUB_API_TOKEN` is set.

use crate::http::HttpState;
use crate::http::error::ApiError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use std::future::{Ready, ready};
use subtle::ConstantTimeEq as _;

/// Extractor that passes only when the request carries the configured bearer token (or none is
/// configured). Compared in constant time.
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let expected = req
            .app_data::<web::Data<HttpState>>()
            .and_then(|state| state.api.token.clone());
        let Some(expected) = expected else {
            return ready(Ok(Authorized));
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        ready(match given {
            None => Err(ApiError::Unauthorized(
                "this API needs an 'Authorization: Bearer <token>' header",
            )),
            Some(token) if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) => {
                Ok(Authorized)
            }
            Some(_) => Err(ApiError::Unauthorized("wrong bearer token")),
        })
    }
}
