//! Tokens: the read API passes only with `Authorization: Bearer <token>` when
//! `SENSORHUB_API_TOKEN` is set; ingest (HTTP and line protocol) only with the ingest token,
//! which InfluxDB's clients send as `Token <token>`, `Bearer <token>` or, in InfluxDB 1's
//! clients, as the password of Basic credentials; dead-letter replay and purge only with
//! `Authorization: Bearer <admin token>`: they change what is stored, and neither the read token
//! (kept by the status page in the browser) nor the ingest token (held by every device) should
//! open them, so without an admin token they are refused whenever another token is set. Compared
//! in constant time; every refusal is counted in `sensorhub_http_unauthorized_total{scope}`.

use crate::http::HttpState;
use crate::http::error::ApiError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use base64::Engine as _;
use std::future::{Ready, ready};
use subtle::ConstantTimeEq as _;

/// Which token a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The read API: `SENSORHUB_API_TOKEN`.
    Api,
    /// HTTP ingest and the line-protocol endpoints: `SENSORHUB_INGEST_TOKEN`.
    Ingest,
    /// Dead-letter replay and purge: `SENSORHUB_ADMIN_TOKEN`.
    Admin,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Api => "api",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }
}

/// Whether `req` carries the token `scope` needs (or none is configured); a refusal says why
/// and is counted.
pub fn check(req: &HttpRequest, scope: Scope) -> Result<(), &'static str> {
    let Some(state) = req.app_data::<web::Data<HttpState>>() else {
        return Ok(());
    };
    let expected = match scope {
        Scope::Api => &state.api.token,
        Scope::Ingest => &state.api.ingest_token,
        Scope::Admin => &state.api.admin_token,
    };
    let any_token = state.api.token.is_some() || state.api.ingest_token.is_some();
    let outcome = match (expected, presented(req, scope)) {
        (None, _) if scope == Scope::Admin && any_token => Err(
            "replaying and purging dead letters needs SENSORHUB_ADMIN_TOKEN, which is not set \
             (the read and ingest tokens do not open them)",
        ),
        (None, _) => return Ok(()),
        (Some(_), None) => Err(match scope {
            Scope::Api => "this API needs an 'Authorization: Bearer <token>' header",
            Scope::Ingest => {
                "ingest needs an 'Authorization: Token <token>' or 'Bearer <token>' header"
            }
            Scope::Admin => "this route needs an 'Authorization: Bearer <admin token>' header",
        }),
        (Some(expected), Some(token))
            if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes())) =>
        {
            Ok(())
        }
        (Some(_), Some(_)) => Err(match scope {
            Scope::Api => "wrong bearer token",
            Scope::Ingest => "wrong ingest token",
            Scope::Admin => "wrong admin token",
        }),
    };
    if outcome.is_err() {
        state
            .metrics
            .unauthorized_requests
            .with_label_values(&[scope.label()])
            .inc();
    }
    outcome
}

/// The token in the `Authorization` header, in the forms `scope` takes.
fn presented(req: &HttpRequest, scope: Scope) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (kind, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    match (scope, kind) {
        (_, "Bearer") => Some(rest.to_owned()),
        (Scope::Ingest, "Token") => Some(rest.to_owned()),
        (Scope::Ingest, "Basic") => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let credentials = String::from_utf8(decoded).ok()?;
            let (_user, password) = credentials.split_once(':')?;
            Some(password.to_owned())
        }
        _ => None,
    }
}

/// Extractor that passes only with the read API's token (or when none is configured).
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            check(req, Scope::Api)
                .map(|()| Authorized)
                .map_err(ApiError::Unauthorized),
        )
    }
}

/// Extractor that passes only with the admin token (or when no token at all is configured).
pub struct AdminAuthorized;

impl FromRequest for AdminAuthorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            check(req, Scope::Admin)
                .map(|()| AdminAuthorized)
                .map_err(ApiError::Unauthorized),
        )
    }
}

/// Whether `req` may delete readings: with the ingest token (what writes the data may correct
/// it) or the admin token; open only when no token at all is configured.
pub fn check_delete(req: &HttpRequest) -> Result<(), &'static str> {
    let Some(state) = req.app_data::<web::Data<HttpState>>() else {
        return Ok(());
    };
    let api = &state.api;
    if api.token.is_none() && api.ingest_token.is_none() && api.admin_token.is_none() {
        return Ok(());
    }
    let opens = |expected: &Option<crate::config::Secret>, scope: Scope| {
        matches!(
            (expected, presented(req, scope)),
            (Some(expected), Some(token))
                if bool::from(token.as_bytes().ct_eq(expected.expose().as_bytes()))
        )
    };
    if opens(&api.ingest_token, Scope::Ingest) || opens(&api.admin_token, Scope::Admin) {
        return Ok(());
    }
    state
        .metrics
        .unauthorized_requests
        .with_label_values(&["delete"])
        .inc();
    Err(
        "deleting readings needs the ingest token ('Authorization: Token <token>' or 'Bearer \
         <token>') or the admin token ('Bearer <admin token>')",
    )
}

/// Extractor that passes only with a token that may delete readings ([`check_delete`]).
pub struct DeleteAuthorized;

impl FromRequest for DeleteAuthorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            check_delete(req)
                .map(|()| DeleteAuthorized)
                .map_err(ApiError::Unauthorized),
        )
    }
}

/// Extractor that passes only with the ingest token (or when none is configured).
pub struct IngestAuthorized;

impl FromRequest for IngestAuthorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            check(req, Scope::Ingest)
                .map(|()| IngestAuthorized)
                .map_err(ApiError::Unauthorized),
        )
    }
}
