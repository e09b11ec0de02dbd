//! Errors of the HTTP API, answered as `{"error": "..."}` with the status that fits.

use crate::sources::http::AppendError;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// An API error, answered as `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    TooLarge(String),
    /// A request that is well formed but cannot be done as asked (an `Idempotency-Key` reused
    /// for another body).
    #[error("{0}")]
    Unprocessable(String),
    /// A body in an encoding sensorhub cannot read.
    #[error("{0}")]
    Unsupported(String),
    /// A client too slow to send its request.
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
    /// A write that did not happen: a retry is safe (`"outcome": "not_stored"`).
    #[error("{0}")]
    NotStored(String),
    /// A write whose outcome cannot be known (Redis did not answer in time): it may have been
    /// stored. The body says so (`"outcome": "unknown"`) and which retries are safe.
    #[error("{0}")]
    OutcomeUnknown(String),
}

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, naming the bad value.
    pub error: String,
    /// For a write answered 503: `not_stored` (nothing was written; a retry is safe) or `unknown`
    /// (it may have been written; see `error` for which retries are safe).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<&'static str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) | ApiError::NotStored(_) | ApiError::OutcomeUnknown(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(ErrorBody {
            error: self.to_string(),
            outcome: match self {
                ApiError::OutcomeUnknown(_) => Some("unknown"),
                ApiError::NotStored(_) => Some("not_stored"),
                _ => None,
            },
        })
    }
}

impl From<AppendError> for ApiError {
    /// The 503 of a failed append: whether it may have been stored decides which retries are
    /// safe.
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::NotStored(_) => ApiError::NotStored(error.to_string()),
            AppendError::Unknown(_) | AppendError::Unrouted => {
                ApiError::OutcomeUnknown(error.to_string())
            }
        }
    }
}

pub fn unavailable(error: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("database unavailable: {error}"))
}
