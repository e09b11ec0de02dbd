//! The consumer group: creating it, reading its state, and trimming the stream behind it.

use crate::redis::connection::Connection;
use crate::redis::entry::EntryId;
use crate::redis::values::{as_u64, into_bytes, parse_entries, parse_id};
use crate::stream::ledger;
use bytes::Bytes;
use redis::{RedisResult, Value};

/// `XGROUP CREATE <stream> <group> 0 [MKSTREAM]`, and the group's ledger opened
/// ([`ledger::open`]); an existing group is fine. Starting at `0` means
/// entries added before the group existed are processed too. Without `create_stream` a missing
/// stream is an error: the group is created once a producer writes to the stream again, and a
/// stream an operator deleted is not resurrected empty.
pub async fn ensure_group(
    conn: &mut Connection,
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
        Err(error) if error.code() == Some("BUSYGROUP") => ledger::open(conn, stream, group).await,
        Err(error) => Err(error),
        // A new group: whatever ledger an earlier group of this name left describes entries that
        // are gone or will be delivered again.
        Ok(_) => ledger::reset(conn, stream, group).await,
    }
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
pub async fn groups(conn: &mut Connection, stream: &str) -> RedisResult<Vec<GroupInfo>> {
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

/// The oldest pending entry of a group (`XPENDING <stream> <group>` summary).
async fn oldest_pending(
    conn: &mut Connection,
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

/// Trims entries that every group has done with, keeping at most `tail` of them for inspection,
/// and nothing at all while sensorhub's own group (`ours`) is missing:
/// for a group with a ledger (sensorhub's, [`ledger`]) the entries up to its watermark; for
/// any other group the entries it had delivered and acknowledged. Entries not committed, pending
/// or not yet delivered in any group are never trimmed.
pub async fn trim_acknowledged(
    conn: &mut Connection,
    stream: &str,
    ours: &str,
    groups: &[GroupInfo],
    tail: usize,
) -> RedisResult<()> {
    if !groups.iter().any(|g| g.name == ours) {
        // Without sensorhub's group nothing says what it has read: once recreated, it reads the
        // stream from its start.
        return Ok(());
    }
    let mut safe: Option<EntryId> = None;
    for group in groups {
        let watermark = ledger::watermark(conn, stream, &group.name).await?;
        let keep_from = match (watermark, group.pending) {
            // Nothing is committed before it is delivered: a watermark beyond the group's
            // last-delivered id is a stale ledger's, and trimming by it would remove unread
            // entries.
            (Some(through), _) => through.min(group.last_delivered).successor(),
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

/// `XACK`s entries: a re-read batch may sit in the group's pending-entries list, left there by a
/// version of sensorhub that acknowledged entry by entry (acknowledging an entry that is not
/// pending does nothing).
pub async fn acknowledge(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    entries: &[EntryId],
) -> RedisResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(entries)
        .query_async::<Value>(conn)
        .await
        .map(drop)
}
