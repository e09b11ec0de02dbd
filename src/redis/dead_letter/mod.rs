//! The dead-letter stream, `<stream>:dead`: every rejected message or reading, with its original
//! bytes, a reason code and a detail, capped at about `SENSORHUB_DEAD_LETTER_MAXLEN` entries.
//! Kept here by the pipeline; listed, counted, replayed and purged by an operator ([`browse`],
//! [`replay`]).
//!
//! A dead letter's fields: `reason`, `detail`, `entry` (the stream entry it came from), `index`
//! (the element or line of that entry's payload), `part` (`line` when `data` holds only the
//! rejected line of a payload of lines), and the original bytes: `data`, and the entry's other
//! fields as `field.<name>`.

pub mod browse;
pub mod replay;

use crate::domain::Rejection;
use crate::redis::connection::Connection;
use crate::redis::entry::{EntryId, Field};
use crate::retry::Backoff;
use crate::telemetry::Metrics;
use redis::RedisResult;
use std::collections::BTreeMap;

/// The field of a replayed entry naming the entry its payload first came in as: a reading
/// without a timestamp keeps that entry's time, so a replay stores it once.
pub const REPLAY_RECEIVED: &[u8] = b"received";
/// The field of a replayed entry naming the one element of its payload it replays.
pub const REPLAY_ONLY: &[u8] = b"only";

/// Where dead letters go.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    /// The dead-letter stream's key, `<stream>:dead`.
    pub key: String,
    /// About how many entries it keeps (`XADD ... MAXLEN ~`).
    pub maxlen: usize,
}

/// A rejected message or reading, bound for the dead-letter stream.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The stream entry it came from.
    pub entry: EntryId,
    pub rejection: Rejection,
    /// The entry's original fields: a `data` field with the original bytes, or the reading's own
    /// fields, copied as `field.<name>`. Of a rejection that names a `part` of the payload (one
    /// line of several), only that part of `data` is kept.
    pub original: Vec<Field>,
}

impl DeadLetters {
    /// Writes dead letters, retrying until Redis takes them: a batch is not acknowledged before
    /// its rejections are kept. Counts them by reason; `actor` labels the Redis errors.
    pub async fn keep(
        &self,
        conn: &mut Connection,
        letters: &[DeadLetter],
        metrics: &Metrics,
        actor: &str,
    ) {
        let mut backoff = Backoff::new();
        let mut failing = false;
        while let Err(error) = append(conn, &self.key, self.maxlen, letters).await {
            metrics.redis_errors.with_label_values(&[actor]).inc();
            if !failing {
                tracing::warn!(%error, key = %self.key, "dead-letter write failed, retrying");
                failing = true;
            }
            backoff.wait().await;
        }
        let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
        for letter in letters {
            *by_reason
                .entry(letter.rejection.reason.as_str())
                .or_default() += 1;
        }
        for (reason, count) in by_reason {
            metrics
                .readings_rejected
                .with_label_values(&[reason])
                .inc_by(count);
        }
        tracing::debug!(rejected = letters.len(), key = %self.key, "rejections kept in the dead-letter stream");
    }
}

/// Appends dead letters in one round trip, capping the stream at about `maxlen` entries.
async fn append(
    conn: &mut Connection,
    key: &str,
    maxlen: usize,
    letters: &[DeadLetter],
) -> RedisResult<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for letter in letters {
        let cmd = pipe
            .cmd("XADD")
            .arg(key)
            .arg("MAXLEN")
            .arg("~")
            .arg(maxlen)
            .arg("*")
            .arg("reason")
            .arg(letter.rejection.reason.as_str())
            .arg("detail")
            .arg(&letter.rejection.detail)
            .arg("entry")
            .arg(letter.entry);
        if let Some(index) = letter.rejection.index {
            cmd.arg("index").arg(index);
        }
        if letter.rejection.part.is_some() {
            cmd.arg("part").arg("line");
        }
        for (name, value) in &letter.original {
            if name == "data" {
                // A rejected line of a payload of lines: the line alone.
                let data = match &letter.rejection.part {
                    Some(part) => value.get(part.clone()).unwrap_or(value),
                    None => value,
                };
                cmd.arg("data").arg(data);
            } else {
                let mut field = b"field.".to_vec();
                field.extend_from_slice(name);
                cmd.arg(field).arg(value.as_ref());
            }
        }
        cmd.ignore();
    }
    pipe.query_async::<()>(conn).await
}
