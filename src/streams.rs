//! Redis streams: the commands the pipeline uses and the parsing of their replies.
//!
//! Replies are parsed from [`redis::Value`] by hand so that field order and raw bytes are kept
//! exactly (a dead letter must carry the original bytes), and both RESP2 arrays and RESP3 maps work.
//! `XREADGROUP`, the one reply as large as a batch, is read by [`crate::stream_reader`] instead.

use crate::domain::Rejection;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
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

    /// The entry's time: the timestamp of a reading that carries none. The sequence number is added
    /// as microseconds (up to 999) so entries added in the same millisecond stay distinct, and the
    /// result is the same on every delivery of the entry.
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
    /// Formatted on the stack with `itoa` (`core::fmt` was a few percent of the pipeline's CPU):
    /// `XACK` (of a re-read batch) sends one id per entry.
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

/// `XGROUP CREATE <stream> <group> 0 [MKSTREAM]`, and the group's ledger opened
/// ([`crate::ledger::open`]); an existing group is fine. Starting at `0` means
/// entries added before the group existed are processed too. Without `create_stream` a missing
/// stream is an error: the group is created once a producer writes to the stream again, and a
/// stream an operator deleted is not resurrected empty.
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    create_stream: bool,
) -> RedisResult<()> {
    let mut cmd = redis::cmd("XGROUP");
    cmd.arg("CREATE").arg(stream).arg(group).arg("0");
    if create_stream {
        cmd.arg("MKSTREAM");
    }
    match cmd.query_async::<Value>(conn).await {
        Err(error) if error.code() == Some("BUSYGROUP") => {}
        other => other.map(drop)?,
    }
    crate::ledger::open(conn, stream, group).await
}

/// The entries of an `XREADGROUP` reply as parsed by the `redis` crate: what the stream reader's
/// own parser ([`crate::stream_reader`]) is tested against.
#[cfg(test)]
pub(crate) fn read_group_reply(reply: Value) -> RedisResult<Vec<StreamEntry>> {
    // Reply: [[stream, [entry, ...]]] (RESP2) or {stream: [entry, ...]} (RESP3), or nil on timeout.
    let per_stream = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect::<Vec<_>>(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(unexpected("XREADGROUP", &other)),
    };
    let mut entries = Vec::new();
    for list in per_stream {
        entries.extend(parse_entries(list)?);
    }
    Ok(entries)
}

/// Parses `[[id, [f, v, ...] | nil], ...]`.
pub(crate) fn parse_entries(list: Value) -> RedisResult<Vec<StreamEntry>> {
    let Value::Array(items) = list else {
        return Ok(Vec::new());
    };
    items
        .into_iter()
        .filter(|item| *item != Value::Nil)
        .map(|item| {
            let Value::Array(mut parts) = item else {
                return Err(unexpected("stream entry", &item));
            };
            if parts.is_empty() {
                return Err(unexpected("stream entry", &Value::Array(parts)));
            }
            let fields = if parts.len() > 1 { parts.pop() } else { None };
            let id = parse_id(&parts[0])?;
            let fields = match fields {
                Some(Value::Array(flat)) => Some(pair_up(flat)),
                Some(Value::Map(map)) => Some(
                    map.into_iter()
                        .map(|(k, v)| (into_bytes(k), into_bytes(v)))
                        .collect(),
                ),
                _ => None,
            };
            Ok(StreamEntry { id, fields })
        })
        .collect()
}

fn pair_up(flat: Vec<Value>) -> Fields {
    let mut fields = Fields::with_capacity(flat.len() / 2);
    let mut iter = flat.into_iter();
    while let (Some(name), Some(value)) = (iter.next(), iter.next()) {
        fields.push((into_bytes(name), into_bytes(value)));
    }
    fields
}

fn into_bytes(value: Value) -> Bytes {
    match value {
        Value::BulkString(bytes) => bytes.into(),
        Value::SimpleString(text) => text.into(),
        Value::Int(n) => n.to_string().into(),
        Value::VerbatimString { text, .. } => text.into(),
        _ => Bytes::new(),
    }
}

pub(crate) fn parse_id(value: &Value) -> RedisResult<EntryId> {
    let text = match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes),
        Value::SimpleString(text) => text.as_str().into(),
        other => return Err(unexpected("entry id", other)),
    };
    text.parse().map_err(|why: String| {
        redis::RedisError::from((redis::ErrorKind::Parse, "bad entry id", why))
    })
}

pub(crate) fn unexpected(what: &'static str, value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        format!("{what}: {value:?}"),
    ))
}

/// The consumer group's state, for metrics and trimming.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupInfo {
    pub name: String,
    pub pending: u64,
    pub last_delivered: EntryId,
    /// Entries not yet delivered; `None` when Redis cannot tell (after deletions).
    pub lag: Option<u64>,
}

/// `XINFO GROUPS <stream>`.
pub async fn groups(conn: &mut ConnectionManager, stream: &str) -> RedisResult<Vec<GroupInfo>> {
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let Value::Array(groups) = reply else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for group in groups {
        let pairs: Vec<(Bytes, Value)> = match group {
            Value::Array(flat) => {
                let mut pairs = Vec::new();
                let mut iter = flat.into_iter();
                while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                    pairs.push((into_bytes(k), v));
                }
                pairs
            }
            Value::Map(map) => map.into_iter().map(|(k, v)| (into_bytes(k), v)).collect(),
            _ => continue,
        };
        let mut info = GroupInfo::default();
        for (key, value) in pairs {
            match key.as_ref() {
                b"name" => info.name = String::from_utf8_lossy(&into_bytes(value)).into_owned(),
                b"pending" => info.pending = as_u64(&value).unwrap_or(0),
                b"last-delivered-id" => info.last_delivered = parse_id(&value)?,
                b"lag" => info.lag = as_u64(&value),
                _ => {}
            }
        }
        out.push(info);
    }
    Ok(out)
}

fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// The oldest pending entry of a group (`XPENDING <stream> <group>` summary).
async fn oldest_pending(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
) -> RedisResult<Option<EntryId>> {
    let reply: Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await?;
    match reply {
        Value::Array(parts) if parts.len() >= 2 && parts[1] != Value::Nil => {
            parse_id(&parts[1]).map(Some)
        }
        _ => Ok(None),
    }
}

/// Trims entries that every group has done with, keeping at most `tail` of them for inspection:
/// for a group with a ledger (sensorhub's, [`crate::ledger`]) the entries up to its watermark; for
/// any other group the entries it had delivered and acknowledged. Entries not committed, pending
/// or not yet delivered in any group are never trimmed.
pub async fn trim_acknowledged(
    conn: &mut ConnectionManager,
    stream: &str,
    groups: &[GroupInfo],
    tail: usize,
) -> RedisResult<()> {
    let mut safe: Option<EntryId> = None;
    for group in groups {
        let watermark = crate::ledger::watermark(conn, stream, &group.name).await?;
        let keep_from = match (watermark, group.pending) {
            (Some(through), _) => through.successor(),
            (None, 0) => group.last_delivered.successor(),
            (None, _) => match oldest_pending(conn, stream, &group.name).await? {
                Some(id) => id,
                None => group.last_delivered.successor(),
            },
        };
        safe = Some(safe.map_or(keep_from, |s| s.min(keep_from)));
    }
    let Some(safe) = safe else { return Ok(()) };
    let min_id = if tail == 0 {
        safe
    } else {
        let kept: Value = redis::cmd("XREVRANGE")
            .arg(stream)
            .arg(format!("({safe}"))
            .arg("-")
            .arg("COUNT")
            .arg(tail)
            .query_async(conn)
            .await?;
        let kept = parse_entries(kept)?;
        match kept.last() {
            Some(oldest_kept) if kept.len() == tail => oldest_kept.id,
            _ => return Ok(()),
        }
    };
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(min_id)
        .query_async::<Value>(conn)
        .await
        .map(drop)
}

/// A rejected message or reading, bound for the dead-letter stream.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// The stream entry it came from.
    pub entry: EntryId,
    pub rejection: Rejection,
    /// The entry's original fields: a `data` field with the original bytes, or the reading's own
    /// fields, copied as `field.<name>`.
    pub original: Vec<Field>,
}

/// Appends dead letters in one round trip, capping the stream at about `maxlen` entries.
pub async fn append_dead_letters(
    conn: &mut ConnectionManager,
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
        for (name, value) in &letter.original {
            if name == "data" {
                cmd.arg("data").arg(value.as_ref());
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

/// Appends payloads to the stream as `data` fields, in one round trip.
pub async fn append_payloads<P: redis::ToRedisArgs>(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    payloads: impl IntoIterator<Item = P>,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    for payload in payloads {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(payload)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
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
