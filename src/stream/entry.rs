//! Stream entries: their ids, their fields as read, and appending payloads to the stream.

use crate::domain::fields;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::RedisResult;
use redis::aio::ConnectionLike;
use smallvec::SmallVec;
use std::fmt;
use std::str::FromStr;

/// A stream entry id, `<ms>-<seq>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The next possible id: `XTRIM MINID` with it keeps everything after `self`.
    pub fn successor(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }

    /// The entry's time, for the end-to-end latency: its millisecond, and its sequence number as
    /// microseconds (up to 999). A reading without a timestamp gets its time from the entry by
    /// the stricter rule of `ParseContext::set_received_entry`.
    pub fn time(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.time_micros()).unwrap_or_default()
    }

    /// [`EntryId::time`] in microseconds since the epoch.
    pub fn time_micros(self) -> i64 {
        (self.ms.min(i64::MAX as u64 / 1000) as i64) * 1000 + self.seq.min(999) as i64
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EntryId::parse_ascii(text.as_bytes())
            .ok_or_else(|| format!("{text:?} is not a stream entry id"))
    }
}

impl EntryId {
    /// `<ms>-<seq>` or `<ms>` (sequence 0), as Redis writes ids: one pass over the bytes, with no
    /// UTF-8 check and no search for the dash first (the reader parses one id per entry).
    pub fn parse_ascii(bytes: &[u8]) -> Option<EntryId> {
        fn number(digits: &[u8]) -> Option<u64> {
            if digits.is_empty() {
                return None;
            }
            digits.iter().try_fold(0u64, |n, &d| {
                let digit = d.wrapping_sub(b'0');
                (digit < 10).then_some(())?;
                n.checked_mul(10)?.checked_add(u64::from(digit))
            })
        }
        let dash = bytes.iter().position(|&b| b == b'-');
        let (ms, seq) = match dash {
            Some(at) => (&bytes[..at], &bytes[at + 1..]),
            None => (bytes, &b"0"[..]),
        };
        Some(EntryId {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl redis::ToRedisArgs for EntryId {
    /// Formatted on the stack with `itoa` rather than through `core::fmt`: `XACK` (of a re-read
    /// batch) sends one id per entry, so this runs once per entry.
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut buf = [0u8; 41]; // two u64 of at most 20 digits and the dash
        let mut digits = itoa::Buffer::new();
        let ms = digits.format(self.ms).as_bytes();
        buf[..ms.len()].copy_from_slice(ms);
        buf[ms.len()] = b'-';
        let mut len = ms.len() + 1;
        let seq = digits.format(self.seq).as_bytes();
        buf[len..len + seq.len()].copy_from_slice(seq);
        len += seq.len();
        out.write_arg(&buf[..len]);
    }
}

/// One entry read from the stream. `fields` is `None` when the entry was deleted (trimmed) after
/// it was delivered: it is acknowledged and otherwise skipped.
#[derive(Clone, Debug)]
pub struct StreamEntry {
    pub id: EntryId,
    pub fields: Option<Fields>,
}

/// An entry's fields. Most entries have one (`data`), kept inline: no allocation per entry.
pub type Fields = SmallVec<[Field; 1]>;

/// One field of a stream entry, name and value. [`Bytes`]: the stream reader hands out slices of
/// the reply it read, with no copy and no allocation per field.
pub type Field = (Bytes, Bytes);

/// Appends payloads to the stream as `data` fields, in one round trip: the one way a payload
/// enters the stream, for the Pub/Sub bridge, HTTP ingest and `sensorhub simulate` alike. Returns
/// the entries' ids, in the payloads' order.
pub async fn append_payloads<P: redis::ToRedisArgs>(
    conn: &mut impl ConnectionLike,
    stream: &str,
    payloads: impl IntoIterator<Item = P>,
) -> RedisResult<Vec<EntryId>> {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(fields::DATA)
            .arg(payload);
    }
    let ids: Vec<String> = pipe.query_async(conn).await?;
    ids.iter().map(|id| entry_id(id)).collect()
}

/// The id Redis answered an append with.
fn entry_id(id: &str) -> RedisResult<EntryId> {
    id.parse().map_err(|why: String| {
        redis::RedisError::from((redis::ErrorKind::Parse, "bad entry id", why))
    })
}

/// What a fenced append can end in besides success.
#[derive(Debug, thiserror::Error)]
pub enum FencedError {
    /// The lease is held by another process, or by none: nothing was appended.
    #[error("the lease is not held by this process; nothing was appended")]
    NotHolder,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Appends entries of the given fields, in order, only while `token` holds the lease at
/// `lease_key`, once per append id: an append whose id is recorded as done appends nothing and
/// answers how many it appended then, so a retry of one append (the source's own after a
/// timeout, or the cluster connection's) never appends twice. Done is checked before the lease,
/// so a retry after the lease moved on still learns that its entries are in. KEYS: the stream,
/// the lease, the append's done key; ARGV: the token, the done key's TTL in seconds, then per
/// entry its number of fields and its names and values.
const APPEND_ENTRIES_FENCED: &str = r#"
local done = redis.call('GET', KEYS[3])
if done then return tonumber(done) end
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('NOTHOLDER the lease is not held by this process')
end
local appended = 0
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i]) * 2
  redis.call('XADD', KEYS[1], '*', unpack(ARGV, i + 1, i + n))
  appended = appended + 1
  i = i + 1 + n
end
redis.call('SET', KEYS[3], appended, 'EX', ARGV[2])
return appended
"#;

/// How long an append's id is remembered: longer than any retry of it.
pub const APPEND_ID_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// Entries (each its fields), appended in one script only while `token` holds the lease at
/// `lease_key` (the sources that bridge into the stream: [`crate::stream::lease`]): the check and
/// the appends are one step in Redis, so a process that lost its lease (paused past its expiry,
/// say) can never append after another process took over. `append_id` names this append (the
/// same for each retry of it): see [`APPEND_ENTRIES_FENCED`]. Returns how many were appended.
pub async fn append_entries_fenced(
    conn: &mut impl ConnectionLike,
    stream: &str,
    lease_key: &str,
    token: &str,
    append_id: &str,
    entries: &[&[(&str, &[u8])]],
) -> Result<usize, FencedError> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(APPEND_ENTRIES_FENCED)
        .arg(3)
        .arg(stream)
        .arg(lease_key)
        .arg(format!("{stream}:appended:{append_id}"))
        .arg(token)
        .arg(APPEND_ID_TTL.as_secs());
    for fields in entries {
        cmd.arg(fields.len());
        for (name, value) in *fields {
            cmd.arg(*name).arg(*value);
        }
    }
    match cmd.query_async::<usize>(conn).await {
        Ok(appended) => Ok(appended),
        Err(error) if error.code() == Some("NOTHOLDER") => Err(FencedError::NotHolder),
        Err(error) => Err(error.into()),
    }
}

/// Appends one entry of the given fields unless `key` was used before: then the entry appended
/// the first time is returned, and nothing is appended. The key is kept for `ttl` with the
/// entry's id and a SHA-1 of its fields, so that a key reused for other fields (a device whose
/// key counter restarts, say) is told apart from a retry. One script, so a retry (the client's,
/// or the cluster connection's own after a timeout) can never append a second entry, whenever
/// the first attempt ran. KEYS: the stream, the key; ARGV: the TTL in seconds, then the fields'
/// names and values.
const APPEND_ONCE: &str = r#"
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
local digest = redis.sha1hex(table.concat(fields, '\0'))
local known = redis.call('GET', KEYS[2])
if known then
  local id, was = string.match(known, '^(%S+) (%x+)$')
  if not id then return {known, 0} end
  if was == digest then return {id, 0} end
  return {id, -1}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('SET', KEYS[2], id .. ' ' .. digest, 'EX', ARGV[1])
return {id, 1}
"#;

/// What an append under a key ended in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Once {
    /// Appended now.
    Appended,
    /// An earlier call with the same key and the same fields appended it: nothing now.
    Repeated,
    /// The key was used before for other fields: nothing appended now.
    KeyReused,
}

/// The entry a key stands for, and what this call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub id: EntryId,
    pub once: Once,
}

/// Appends an entry of `fields` once per `key` within `ttl`: see [`APPEND_ONCE`].
pub async fn append_fields_once(
    conn: &mut impl ConnectionLike,
    stream: &str,
    key: &str,
    ttl: std::time::Duration,
    fields: &[(&str, &[u8])],
) -> RedisResult<Appended> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(APPEND_ONCE)
        .arg(2)
        .arg(stream)
        .arg(key)
        .arg(ttl.as_secs().max(1));
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    let (id, outcome): (String, i64) = cmd.query_async(conn).await?;
    Ok(Appended {
        id: entry_id(&id)?,
        once: match outcome {
            1 => Once::Appended,
            0 => Once::Repeated,
            _ => Once::KeyReused,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_order_and_succeed() {
        let id: EntryId = "1733054400000-7".parse().unwrap();
        assert_eq!(
            id,
            EntryId {
                ms: 1_733_054_400_000,
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "1733054400000-7");
        assert!(id < "1733054400001-0".parse().unwrap());
        assert_eq!(id.successor().to_string(), "1733054400000-8");
        assert!("x-1".parse::<EntryId>().is_err());
        assert_eq!("5".parse::<EntryId>().unwrap(), EntryId { ms: 5, seq: 0 });
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(
            max.parse::<EntryId>().unwrap(),
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX
            }
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "1-x",
            "+1-2",
            "1 -2",
            "18446744073709551616-0",
            "0-18446744073709551616",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?} parsed");
        }
    }

    proptest::proptest! {
        #[test]
        fn entry_ids_parse_back_from_their_text(ms: u64, seq: u64) {
            let id = EntryId { ms, seq };
            proptest::prop_assert_eq!(id.to_string().parse::<EntryId>(), Ok(id));
        }
    }

    #[test]
    fn entry_ids_go_to_redis_as_their_text() {
        use redis::ToRedisArgs as _;
        for id in [
            EntryId::ZERO,
            "1733054400000-7".parse().unwrap(),
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        ] {
            assert_eq!(id.to_redis_args(), vec![id.to_string().into_bytes()]);
        }
    }

    #[test]
    fn entry_time_is_stable_and_distinct_within_a_millisecond() {
        let a: EntryId = "1733054400000-0".parse().unwrap();
        let b: EntryId = "1733054400000-1".parse().unwrap();
        assert_eq!(
            a.time(),
            "2024-12-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_ne!(a.time(), b.time());
        assert_eq!(b.time(), b.time());
        assert_eq!(b.time_micros(), b.time().timestamp_micros());
    }
}
