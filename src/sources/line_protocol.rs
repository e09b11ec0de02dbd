//! InfluxDB line protocol apart from HTTP: a body is appended to the stream as one entry with the
//! form `line:<precision>` ([`crate::domain::reading::parse_line_protocol`] reads it there, as every
//! entry is read), routed by its lines' sensors, under a key of the request's own so that the
//! Redis client's retry cannot append it twice. The lines are read here too, only to answer which
//! are refused. The handlers ([`crate::http::line_protocol`]) speak InfluxDB's HTTP dialects.

use super::http::{AppendError, Ingest};
use crate::domain::fields;
use crate::domain::reading::{Form, Precision, parse_line_protocol};
use crate::domain::{ParseContext, Reason, Rejection};
use crate::sources::append::route;
use chrono::Utc;

impl Ingest<'_> {
    /// Appends a body of lines; answers the refused lines (kept as dead letters by the
    /// validator), the others stored.
    pub async fn lines(
        &self,
        body: &[u8],
        precision: Precision,
    ) -> Result<Vec<Rejection>, AppendError> {
        let now = Utc::now();
        let ctx = ParseContext::new(self.limits, now, now);
        // The sensors route the body to its shards; without shards there is one stream.
        let sharded = self.streams.len() > 1;
        let mut sensors = Vec::new();
        let rejections: Vec<Rejection> = match std::str::from_utf8(body) {
            Ok(text) => parse_line_protocol(text, precision, &ctx)
                .into_iter()
                .filter_map(|outcome| match outcome {
                    Ok(reading) => {
                        if sharded {
                            sensors.push(reading.sensor_id);
                        }
                        None
                    }
                    Err(rejection) => Some(rejection),
                })
                .collect(),
            Err(error) => vec![Rejection {
                index: Some(0),
                ..Rejection::new(
                    Reason::InvalidUtf8,
                    format!("the body is not UTF-8: {error}"),
                )
            }],
        };
        let form = Form::Line(precision).to_string();
        let shards = route(sensors.iter().map(|id| &**id), self.streams);
        self.append_once(
            &shards,
            None,
            &[(fields::DATA, body), (fields::FORM, form.as_bytes())],
        )
        .await?;
        self.metrics
            .messages_received
            .with_label_values(&["line_protocol"])
            .inc();
        Ok(rejections)
    }
}
