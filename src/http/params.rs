//! Query parameters of the API's routes, read one by one so that each error names its
//! parameter and quotes at most a short excerpt of the bad value.

use crate::domain::reading::excerpt;
use crate::http::error::ApiError;
use actix_web::web;
use chrono::{DateTime, Utc};

/// `from` and `to`, each optional (unbounded).
pub type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A route's query: its parameters in order, only those the route takes.
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(query: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|e| ApiError::BadRequest(format!("query string is not valid: {e}")))?
            .into_inner();
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            return Err(ApiError::BadRequest(format!(
                "unknown parameter {}; this route takes: {}",
                excerpt(name),
                allowed.join(", ")
            )));
        }
        Ok(Self(pairs))
    }

    /// The parameter's value (the last, when repeated).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated parameter.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
        self.get(name)
            .map(|value| {
                DateTime::parse_from_rfc3339(value)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::BadRequest(format!(
                            "{name}={} is not an RFC 3339 time such as 2024-12-01T12:00:00Z",
                            excerpt(value)
                        ))
                    })
            })
            .transpose()
    }

    /// `limit`: `default` when absent, else a whole number from 1 to `max`.
    pub fn limit(&self, default: u32, max: u32) -> Result<i64, ApiError> {
        match self.get("limit") {
            None => Ok(i64::from(default)),
            Some(value) => match value.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(i64::from(n)),
                _ => Err(ApiError::BadRequest(format!(
                    "limit={} must be a whole number from 1 to {max}",
                    excerpt(value)
                ))),
            },
        }
    }

    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name}={} must be true or false",
                excerpt(other)
            ))),
        }
    }

    /// `from` and `to`, the first not after the second.
    pub fn range(&self) -> Result<TimeRange, ApiError> {
        let range = (self.time("from")?, self.time("to")?);
        ordered(range)
    }
}

/// A range whose `from` is not after its `to`.
pub fn ordered(range: TimeRange) -> Result<TimeRange, ApiError> {
    if let (Some(from), Some(to)) = range
        && from > to
    {
        return Err(ApiError::BadRequest(format!(
            "from={} is after to={}",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    Ok(range)
}
