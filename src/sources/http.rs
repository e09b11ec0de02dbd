//! HTTP JSON ingest apart from HTTP: a body of one reading object or an array of them is read to
//! answer (how many readings, which are refused), routed as every source routes, and appended once
//! ([`append::append_once`]). The handler ([`crate::http::ingest`]) only reads the request and
//! turns the outcome into an answer.

use crate::domain::fields;
use crate::domain::reading::{Limits, parse_json};
use crate::domain::{ParseContext, Reason, Rejection};
use crate::redis::connection::Connection;
use crate::sources::append::{self, route};
use crate::stream::append::{Appended, Once};
use crate::stream::shards::Streams;
use crate::telemetry::Metrics;
use chrono::Utc;

/// What the HTTP ways in append with.
#[derive(Clone, Copy)]
pub struct Ingest<'a> {
    pub conn: &'a Connection,
    pub streams: &'a Streams,
    pub limits: &'a Limits,
    pub metrics: &'a Metrics,
}

/// An append that did not happen, or may not have.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Redis refused it or could not be reached: nothing was stored, a retry is safe.
    #[error("redis refused the append, nothing was stored: {0}; retrying is safe")]
    NotStored(redis::RedisError),
    /// Redis did not answer in time: the entry may exist.
    #[error(
        "redis did not answer in time ({0}): the readings may or may not be stored. A retry with \
         the same Idempotency-Key header stores them once; without one, a retry is safe for \
         readings that carry their own timestamp (a repeat is skipped as a duplicate), while a \
         reading without a timestamp could be stored twice"
    )]
    Unknown(redis::RedisError),
    /// The message was routed to no stream (cannot happen with a route of at least one shard).
    #[error("the message was routed to no stream")]
    Unrouted,
}

impl From<redis::RedisError> for AppendError {
    /// Whether it may have been stored decides which retries are safe.
    fn from(error: redis::RedisError) -> Self {
        // Redis answered with an error (out of memory, read-only replica, ...), or the connection
        // was refused: the append never ran.
        let answered_with_error = error.code().is_some()
            || matches!(
                error.kind(),
                redis::ErrorKind::Server(_) | redis::ErrorKind::Extension
            );
        if answered_with_error || error.is_connection_refusal() {
            AppendError::NotStored(error)
        } else {
            AppendError::Unknown(error)
        }
    }
}

impl Ingest<'_> {
    /// Appends the message `fields` once, to each of the `shards` [`route`] gave.
    pub async fn append_once(
        &self,
        shards: &[usize],
        idempotency_key: Option<&str>,
        fields: &[(&str, &[u8])],
    ) -> Result<Appended, AppendError> {
        append::append_once(self.conn, self.streams, shards, idempotency_key, fields)
            .await?
            .ok_or(AppendError::Unrouted)
    }

    /// Appends a JSON body: refused whole when no reading in it is valid, else appended once
    /// (under `idempotency_key` when given) with its rejected readings named.
    pub async fn json(
        &self,
        body: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<JsonAccepted, JsonRefused> {
        let now = Utc::now();
        let ctx = ParseContext::new(self.limits, now, now);
        let outcomes = parse_json(body, &ctx);
        let readings = outcomes.iter().filter(|o| o.is_ok()).count();
        let shards = route(
            outcomes
                .iter()
                .filter_map(|o| Some(&*o.as_ref().ok()?.sensor_id)),
            self.streams,
        );
        let rejected: Vec<Rejection> = outcomes.into_iter().filter_map(Result::err).collect();
        if readings == 0 {
            return Err(JsonRefused::NoValidReading(rejected));
        }
        let appended = self
            .append_once(&shards, idempotency_key, &[(fields::DATA, body)])
            .await
            .map_err(JsonRefused::Append)?;
        if appended.once == Once::KeyReused {
            self.metrics.idempotency_keys_reused.inc();
            return Err(JsonRefused::KeyReused(appended));
        }
        let repeated = appended.once == Once::Repeated;
        if !repeated {
            self.metrics
                .messages_received
                .with_label_values(&["http"])
                .inc();
        }
        Ok(JsonAccepted {
            appended,
            readings,
            rejected,
            repeated,
        })
    }
}

/// A JSON body in the stream.
pub struct JsonAccepted {
    pub appended: Appended,
    /// Valid readings in the body.
    pub readings: usize,
    /// Readings the validator will dead-letter.
    pub rejected: Vec<Rejection>,
    /// An earlier request with the same key appended it; this one appended nothing.
    pub repeated: bool,
}

/// A JSON body not appended.
pub enum JsonRefused {
    /// Nothing in it can be a reading: each rejection says why.
    NoValidReading(Vec<Rejection>),
    /// The key was used for another body, appended as this entry; nothing was stored.
    KeyReused(Appended),
    Append(AppendError),
}

impl JsonRefused {
    /// True when the body was refused for its size.
    pub fn too_large(rejected: &[Rejection]) -> bool {
        rejected.iter().any(|r| r.reason == Reason::TooLarge)
    }
}
