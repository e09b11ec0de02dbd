//! Replies parsed from the `redis` crate's [`Value`], by hand, so that field order and raw bytes
//! are kept exactly (a dead letter must carry the original bytes), and both RESP2 arrays and RESP3
//! maps work. `XREADGROUP`, the one reply as large as a batch, is parsed by [`super::wire`]
//! instead.

use crate::redis::entry::{EntryId, Fields, StreamEntry};
use bytes::Bytes;
use redis::{RedisResult, Value};

/// The entries of an `XREADGROUP` reply as parsed by the `redis` crate: what the stream reader's
/// own parser ([`super::wire`]) is tested against.
#[cfg(test)]
pub fn read_group_reply(reply: Value) -> RedisResult<Vec<StreamEntry>> {
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
pub fn parse_entries(list: Value) -> RedisResult<Vec<StreamEntry>> {
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

pub fn into_bytes(value: Value) -> Bytes {
    match value {
        Value::BulkString(bytes) => bytes.into(),
        Value::SimpleString(text) => text.into(),
        Value::Int(n) => n.to_string().into(),
        Value::VerbatimString { text, .. } => text.into(),
        _ => Bytes::new(),
    }
}

pub fn parse_id(value: &Value) -> RedisResult<EntryId> {
    let text = match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes),
        Value::SimpleString(text) => text.as_str().into(),
        other => return Err(unexpected("entry id", other)),
    };
    text.parse().map_err(|why: String| {
        redis::RedisError::from((redis::ErrorKind::Parse, "bad entry id", why))
    })
}

pub fn unexpected(what: &'static str, value: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected reply",
        format!("{what}: {value:?}"),
    ))
}

pub fn as_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}
