//! The dead-letter stream, `<stream>:dead`: every rejected message or reading, with its original
//! bytes, a reason code and a detail, capped at `SENSORHUB_DEAD_LETTER_MAXLEN` entries and
//! `SENSORHUB_DEAD_LETTER_MAX_BYTES` bytes of original bytes, the oldest letters going first. The
//! bytes are counted in `<stream>:dead:bytes`, each letter's in its `size` field, by the scripts
//! that add, replay and purge letters: a cap on entries alone let letters of a megabyte each
//! (malformed lines kept whole) fill Redis's memory.
//! Kept here by the pipeline; listed, counted, replayed and purged by an operator ([`browse`],
//! [`replay`]).
//!
//! A dead letter's fields: `size` (its original bytes' length, as counted), `reason`, `detail`,
//! `entry` (the stream entry it came from), `index`
//! (the element or line of that entry's payload), `part` (`line` when `data` holds only the
//! rejected line of a payload of lines), and the original bytes: `data`, and the entry's other
//! fields as `field.<name>`.

pub mod browse;
pub mod operate;
pub mod replay;

use crate::domain::Rejection;
use crate::domain::fields;
use crate::redis::connection::Connection;
use crate::redis::entry::{EntryId, Field};
use crate::redis::memory::allow_oom;
use crate::retry::Backoff;
use crate::telemetry::Metrics;
use redis::RedisResult;
use std::collections::BTreeMap;

/// [`fields::RECEIVED`](crate::domain::fields::RECEIVED), as the bytes entries are matched by.
pub const REPLAY_RECEIVED: &[u8] = crate::domain::fields::RECEIVED.as_bytes();
/// [`fields::ONLY`](crate::domain::fields::ONLY), as the bytes entries are matched by.
pub const REPLAY_ONLY: &[u8] = crate::domain::fields::ONLY.as_bytes();

/// Where dead letters go.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    /// The dead-letter stream's key, `<stream>:dead`.
    pub key: String,
    /// Most letters it keeps.
    pub maxlen: usize,
    /// Most bytes of original payloads it keeps.
    pub max_bytes: usize,
}

/// The key counting the bytes of the dead letters in `dead`.
pub fn bytes_key(dead: &str) -> String {
    format!("{dead}:bytes")
}

/// Lua: the `size` field of a stream entry's flat field list `fields` (0 for a letter written
/// before letters had one).
pub(crate) const SIZE_OF: &str = r#"
local function size_of(fields)
  for j = 1, #fields, 2 do
    if fields[j] == 'size' then return tonumber(fields[j + 1]) or 0 end
  end
  return 0
end
"#;

/// Adds letters and trims the oldest until both caps hold (the newest letter always stays).
/// KEYS: the dead-letter stream, its byte count. ARGV: the most letters, the most bytes, then per
/// letter its size, its number of fields and the fields. Allowed when Redis is out of memory
/// ([`allow_oom`]): a batch is acknowledged only once its rejections are
/// kept, so refused letters would stop the backlog from draining; they stay bounded by the caps.
const ADD: &str = r#"
local i = 3
while i <= #ARGV do
  local fields = tonumber(ARGV[i + 1]) * 2
  redis.call('XADD', KEYS[1], '*', 'size', ARGV[i], unpack(ARGV, i + 2, i + 1 + fields))
  redis.call('INCRBY', KEYS[2], ARGV[i])
  i = i + 2 + fields
end
local maxlen = tonumber(ARGV[1])
local max_bytes = tonumber(ARGV[2])
local letters = redis.call('XLEN', KEYS[1])
while letters > 1 and (letters > maxlen or tonumber(redis.call('GET', KEYS[2]) or '0') > max_bytes) do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  redis.call('XDEL', KEYS[1], oldest[1])
  redis.call('DECRBY', KEYS[2], size_of(oldest[2]))
  letters = letters - 1
end
return letters
"#;

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
        while let Err(error) = append(conn, self, letters).await {
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

/// Appends dead letters in one script, which trims the stream to its caps.
async fn append(
    conn: &mut Connection,
    to: &DeadLetters,
    letters: &[DeadLetter],
) -> RedisResult<()> {
    if letters.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(allow_oom(&format!("{SIZE_OF}{ADD}")))
        .arg(2)
        .arg(&to.key)
        .arg(bytes_key(&to.key))
        .arg(to.maxlen)
        .arg(to.max_bytes);
    for letter in letters {
        let mut fields: Vec<(Vec<u8>, &[u8])> = vec![
            (
                b"reason".to_vec(),
                letter.rejection.reason.as_str().as_bytes(),
            ),
            (b"detail".to_vec(), letter.rejection.detail.as_bytes()),
        ];
        let entry = letter.entry.to_string();
        let index = letter.rejection.index.map(|i| i.to_string());
        fields.push((b"entry".to_vec(), entry.as_bytes()));
        if let Some(index) = &index {
            fields.push((b"index".to_vec(), index.as_bytes()));
        }
        if letter.rejection.part.is_some() {
            fields.push((b"part".to_vec(), b"line"));
        }
        let mut size = 0;
        for (name, value) in &letter.original {
            if name == fields::DATA {
                // A rejected line of a payload of lines: the line alone.
                let data = match &letter.rejection.part {
                    Some(part) => value.get(part.clone()).unwrap_or(value),
                    None => value,
                };
                size += data.len();
                fields.push((fields::DATA.as_bytes().to_vec(), data));
            } else {
                let mut field = b"field.".to_vec();
                field.extend_from_slice(name);
                size += value.len();
                fields.push((field, value.as_ref()));
            }
        }
        cmd.arg(size).arg(fields.len());
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
    }
    cmd.query_async::<()>(conn).await
}
