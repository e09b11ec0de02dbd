//! Reading the dead-letter stream as an operator does: letters newest first, filtered and paged
//! by entry id (a page's cursor stays valid while new letters arrive, as they arrive above it),
//! and counts by reason.

use crate::redis::entry::EntryId;
use chrono::{DateTime, Utc};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};
use std::collections::BTreeMap;

/// Which dead letters an operation applies to; every part optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The reason code, exactly.
    pub reason: Option<String>,
    /// Text the original bytes contain: a sensor id, a topic.
    pub sensor: Option<String>,
    /// Letters kept at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Letters kept at or before this time.
    pub to: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    fn matches(&self, letter: &Letter) -> bool {
        let time = letter.id.time();
        self.reason.as_ref().is_none_or(|r| *r == letter.reason)
            && self.from.is_none_or(|from| time >= from)
            && self.to.is_none_or(|to| time <= to)
            && self
                .sensor
                .as_ref()
                .is_none_or(|text| letter.contains(text))
    }
}

/// One dead letter as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Letter {
    pub id: EntryId,
    /// With sharded streams, the shard whose dead-letter stream holds it (set by the store that
    /// read it: [`crate::stream::dead_letter::operate`]).
    pub shard: Option<usize>,
    pub reason: String,
    pub detail: String,
    /// The stream entry it came from.
    pub entry: Option<String>,
    /// The element or line of that entry's payload.
    pub index: Option<usize>,
    /// Whether `data` holds only the rejected line of a payload of lines.
    pub part: bool,
    /// The original payload.
    pub data: Option<Vec<u8>>,
    /// The entry's other fields, by their own names (without `field.`).
    pub fields: Vec<(String, Vec<u8>)>,
}

impl Letter {
    fn from_fields(id: EntryId, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        let mut letter = Letter {
            id,
            shard: None,
            reason: String::new(),
            detail: String::new(),
            entry: None,
            index: None,
            part: false,
            data: None,
            fields: Vec::new(),
        };
        for (name, value) in pairs {
            let text = || String::from_utf8_lossy(&value).into_owned();
            match name.as_slice() {
                b"reason" => letter.reason = text(),
                b"detail" => letter.detail = text(),
                b"entry" => letter.entry = Some(text()),
                b"index" => letter.index = text().parse().ok(),
                b"part" => letter.part = true,
                b"data" => letter.data = Some(value),
                _ => {
                    if let Some(field) = name.strip_prefix(b"field.") {
                        letter
                            .fields
                            .push((String::from_utf8_lossy(field).into_owned(), value));
                    }
                }
            }
        }
        letter
    }

    /// Whether the original bytes (payload or fields) contain `text`.
    fn contains(&self, text: &str) -> bool {
        let needle = text.as_bytes();
        let found = |bytes: &[u8]| {
            !needle.is_empty() && bytes.windows(needle.len()).any(|window| window == needle)
        };
        self.data.as_deref().is_some_and(found) || self.fields.iter().any(|(_, value)| found(value))
    }
}

/// A page of letters, newest first, and the cursor of the next (older) page if there may be one.
#[derive(Debug, Default)]
pub struct Page {
    pub letters: Vec<Letter>,
    pub next: Option<EntryId>,
}

/// Letters read per round trip while scanning.
const CHUNK: usize = 500;

/// Up to `limit` letters matching `filter`, newest first, older than `after` when given.
pub async fn list(
    conn: &mut impl ConnectionLike,
    key: &str,
    filter: &Filter,
    after: Option<EntryId>,
    limit: usize,
) -> RedisResult<Page> {
    let mut page = Page::default();
    let mut start = match (after, filter.to) {
        (Some(after), _) => format!("({after}"),
        (None, Some(to)) => to.timestamp_millis().max(0).to_string(),
        (None, None) => "+".to_owned(),
    };
    let end = filter.from.map_or("-".to_owned(), |from| {
        from.timestamp_millis().max(0).to_string()
    });
    loop {
        let chunk = read_range(conn, "XREVRANGE", key, &start, &end, CHUNK).await?;
        let exhausted = chunk.len() < CHUNK;
        let Some(last) = chunk.last().map(|letter| letter.id) else {
            return Ok(page);
        };
        for letter in chunk {
            if filter.matches(&letter) {
                if page.letters.len() == limit {
                    page.next = page.letters.last().map(|l| l.id);
                    return Ok(page);
                }
                page.letters.push(letter);
            }
        }
        if exhausted {
            return Ok(page);
        }
        start = format!("({last}");
    }
}

/// The letters matching `filter` after the letter `after` (from the first with `None`) and up to
/// the letter `until` (to the last with `None`), oldest first, at most `limit`.
pub async fn select(
    conn: &mut impl ConnectionLike,
    key: &str,
    filter: &Filter,
    (after, until): (Option<EntryId>, Option<EntryId>),
    limit: usize,
) -> RedisResult<Vec<Letter>> {
    let mut selected = Vec::new();
    let from = filter
        .from
        .map(|from| EntryId {
            ms: from.timestamp_millis().max(0) as u64,
            seq: 0,
        })
        .unwrap_or(EntryId::ZERO);
    let mut start = match after {
        Some(after) if after >= from => format!("({after}"),
        _ => from.to_string(),
    };
    let end = match (filter.to, until) {
        (Some(to), Some(until)) if until.ms <= to.timestamp_millis().max(0) as u64 => {
            until.to_string()
        }
        (Some(to), _) => to.timestamp_millis().max(0).to_string(),
        (None, Some(until)) => until.to_string(),
        (None, None) => "+".to_owned(),
    };
    loop {
        let chunk = read_range(conn, "XRANGE", key, &start, &end, CHUNK).await?;
        let exhausted = chunk.len() < CHUNK;
        let Some(last) = chunk.last().map(|letter| letter.id) else {
            return Ok(selected);
        };
        for letter in chunk {
            if filter.matches(&letter) {
                selected.push(letter);
                if selected.len() == limit {
                    return Ok(selected);
                }
            }
        }
        if exhausted {
            return Ok(selected);
        }
        start = format!("({last}");
    }
}

/// The letters of the given ids that still exist, in the order given.
pub async fn by_ids(
    conn: &mut impl ConnectionLike,
    key: &str,
    ids: &[EntryId],
) -> RedisResult<Vec<Letter>> {
    let mut letters = Vec::with_capacity(ids.len());
    for id in ids {
        let id = id.to_string();
        letters.extend(read_range(conn, "XRANGE", key, &id, &id, 1).await?);
    }
    Ok(letters)
}

/// Counts by reason, over the whole stream and since `since`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub recent: BTreeMap<String, u64>,
}

/// Counts the letters by reason, all and those at or after `since`.
pub async fn summary(
    conn: &mut impl ConnectionLike,
    key: &str,
    since: DateTime<Utc>,
) -> RedisResult<Summary> {
    let mut summary = Summary::default();
    let mut start = "-".to_owned();
    loop {
        let chunk = read_range(conn, "XRANGE", key, &start, "+", CHUNK).await?;
        let exhausted = chunk.len() < CHUNK;
        let Some(last) = chunk.last().map(|letter| letter.id) else {
            return Ok(summary);
        };
        for letter in chunk {
            summary.total += 1;
            if letter.id.time() >= since {
                *summary.recent.entry(letter.reason.clone()).or_default() += 1;
            }
            *summary.by_reason.entry(letter.reason).or_default() += 1;
        }
        if exhausted {
            return Ok(summary);
        }
        start = format!("({last}");
    }
}

/// `XRANGE` / `XREVRANGE` of up to `count` letters.
async fn read_range(
    conn: &mut impl ConnectionLike,
    command: &str,
    key: &str,
    start: &str,
    end: &str,
    count: usize,
) -> RedisResult<Vec<Letter>> {
    let reply: Value = redis::cmd(command)
        .arg(key)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let Value::Array(entries) = reply else {
        return Ok(Vec::new());
    };
    let mut letters = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else { continue };
        let mut parts = parts.into_iter();
        let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
            (parts.next(), parts.next())
        else {
            continue;
        };
        let Some(id) = EntryId::parse_ascii(&id) else {
            continue;
        };
        let mut pairs = Vec::with_capacity(fields.len() / 2);
        let mut fields = fields.into_iter();
        while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
            (fields.next(), fields.next())
        {
            pairs.push((name, value));
        }
        letters.push(Letter::from_fields(id, pairs));
    }
    Ok(letters)
}

/// The id of the newest letter in `key`, if any.
pub async fn newest(conn: &mut impl ConnectionLike, key: &str) -> RedisResult<Option<EntryId>> {
    Ok(read_range(conn, "XREVRANGE", key, "+", "-", 1)
        .await?
        .first()
        .map(|letter| letter.id))
}
