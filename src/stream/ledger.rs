//! The group's ledger of committed stream entries, kept in Redis beside the stream.
//!
//! sensorhub reads with `XREADGROUP ... NOACK`, so Redis keeps no pending-entries list: inserting
//! every delivered entry into that list and acknowledging it again was most of Redis's CPU in the
//! load run. What the list gave, a record of which delivered entries are stored, is kept here
//! instead, per batch rather than per entry (the design in full: `docs/delivery.md`):
//!
//! - Each read (one `XREADGROUP`, or one `XRANGE` when re-reading) returns a contiguous run of the
//!   stream, an [`EntryRange`]. Once every transaction holding a batch's readings has committed
//!   (and its rejections are dead-lettered), the batch's ranges are added to a sorted set
//!   ([`record`]).
//! - Once a second, ranges that continue the committed prefix of the stream are merged into its
//!   watermark, `through`: every entry up to it is stored ([`compact`], one Lua script, so
//!   instances sharing the group never merge the same range twice or lose one). The stream is
//!   trimmed up to the watermark.
//! - A delivered entry (at or below the group's last-delivered id) above the watermark that no
//!   committed range covers is in flight, or was lost: with a crashed instance, or with a reply
//!   that never arrived. [`Progress::gap`] finds the first such run; the reader re-reads it with
//!   `XRANGE` ([`read_range`]) after a restart or a lost batch at once, and otherwise once it has
//!   stayed uncovered for the claim idle time and no batch of its own holds it.
//!
//! A re-read can only repeat work: the store skips readings it already holds, so nothing is stored
//! twice. A range is recorded only after its commit, so nothing is marked stored that is not.

use crate::redis::connection::Connection;
use crate::redis::entry::{EntryId, StreamEntry};
use crate::redis::memory::allow_oom;
use crate::redis::values::{parse_entries, parse_id, unexpected};
use redis::{RedisResult, Value};

/// A contiguous run of stream entries, `first..=last`: no entry of the stream lies between two of
/// its entries that is not in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRange {
    pub first: EntryId,
    pub last: EntryId,
}

impl EntryRange {
    /// The range of entries read by one command, in stream order; `None` for no entries.
    pub fn of(entries: &[StreamEntry]) -> Option<EntryRange> {
        Some(EntryRange {
            first: entries.first()?.id,
            last: entries.last()?.id,
        })
    }

    pub fn contains(&self, id: EntryId) -> bool {
        self.first <= id && id <= self.last
    }
}

/// The sorted set of committed ranges above the watermark.
pub fn ranges_key(stream: &str, group: &str) -> String {
    format!("{stream}:committed:{group}")
}

/// The identity of the database (`<system identifier>/<timeline>`, [`crate::store::history`])
/// the ledger's commits were last made to: when the database's history changes, entries the
/// ledger counts as committed may be missing from it.
pub fn history_key(stream: &str, group: &str) -> String {
    format!("{stream}:postgres-history:{group}")
}

/// The recorded database identity of the ledger, if any.
pub async fn recorded_history(
    conn: &mut Connection,
    stream: &str,
    group: &str,
) -> RedisResult<Option<String>> {
    redis::cmd("GET")
        .arg(history_key(stream, group))
        .query_async(conn)
        .await
}

/// Records the database identity the ledger's commits are now made to.
pub async fn record_history(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    identity: &str,
) -> RedisResult<()> {
    redis::cmd("SET")
        .arg(history_key(stream, group))
        .arg(identity)
        .query_async(conn)
        .await
}

/// The watermark: every entry up to it is committed. Missing means `0-0`, nothing yet.
pub fn through_key(stream: &str, group: &str) -> String {
    format!("{stream}:committed-through:{group}")
}

/// An id in fixed width, so that the sorted set's byte order is stream order.
fn padded(id: EntryId) -> String {
    format!("{:020}-{:020}", id.ms, id.seq)
}

/// Adds ranges (ARGV: each `first last`) to the ledger's sorted set (KEYS[1]). Allowed when
/// Redis is out of memory ([`allow_oom`]), as [`COMPACT`] and [`IN_FLIGHT`] are: recording a commit
/// grows memory by a few bytes, and the trim it lets run frees whole stream nodes. Refused, as a
/// plain `ZADD` was under `noeviction` at the limit, no commit could be recorded, nothing could be
/// trimmed, and the backlog never drained.
const RECORD: &str = r#"
for i = 1, #ARGV do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
end
return #ARGV
"#;

/// Records the ranges of a committed batch ([`RECORD`]).
pub async fn record(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    ranges: &[EntryRange],
) -> RedisResult<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(allow_oom(RECORD))
        .arg(1)
        .arg(ranges_key(stream, group));
    for range in ranges {
        cmd.arg(format!("{} {}", padded(range.first), padded(range.last)));
    }
    cmd.query_async::<Value>(conn).await.map(drop)
}

/// Merges the committed ranges that continue the watermark into it, and reports where the
/// committed prefix ends. Ids are compared in their padded form; a range is merged when it starts
/// at or before the first entry after the watermark (entries deleted from the stream leave no gap).
///
/// The ledger must describe the group as it is: a watermark beyond the group's last-delivered id
/// cannot be this group's (nothing is committed before it is delivered), so it is left from a
/// stream or group since deleted and recreated, or a group moved back by `XGROUP SETID`. Such a
/// ledger is reset to nothing committed: what it claimed may now be unread entries, and the worst
/// a reset does is make entries be read again, which the store skips as duplicates. Without the
/// group, nothing is merged.
const COMPACT: &str = r#"
local function pad(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end
local function raw(p)
  local ms, seq = string.match(p, '^(%d+)-(%d+)$')
  return (string.gsub(ms, '^0+(%d)', '%1')) .. '-' .. (string.gsub(seq, '^0+(%d)', '%1'))
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
local delivered = nil
if ok then
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[2] then delivered = last end
  end
end
if not delivered then return {false, false, false, false, 0} end
local through = redis.call('GET', KEYS[3]) or pad('0-0')
local reset = 0
if through > pad(delivered) then
  redis.call('DEL', KEYS[2])
  through = pad('0-0')
  redis.call('SET', KEYS[3], through)
  reset = 1
end
local after = redis.call('XRANGE', KEYS[1], '(' .. raw(through), '+', 'COUNT', 1)[1]
local merged = 0
while merged < tonumber(ARGV[1]) do
  local low = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not low then break end
  local first, last = string.match(low, '^(%S+) (%S+)$')
  if first > through and after and first > pad(after[1]) then break end
  redis.call('ZREM', KEYS[2], low)
  merged = merged + 1
  if last > through then
    through = last
    after = redis.call('XRANGE', KEYS[1], '(' .. raw(through), '+', 'COUNT', 1)[1]
  end
end
if merged > 0 then redis.call('SET', KEYS[3], through) end
local low = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
local low_first = low and raw(string.match(low, '^(%S+)')) or false
return {raw(through), after and after[1] or false, low_first, delivered, reset}
"#;

/// Most ranges one [`compact`] call merges: it runs inside Redis, which serves nothing else
/// meanwhile.
const MERGE_AT_MOST: usize = 1000;

/// Where the committed prefix of the stream ends, after a [`compact`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every entry up to this one is committed.
    pub through: EntryId,
    /// The first entry of the stream after `through`, if any: the first one not known committed.
    pub next: Option<EntryId>,
    /// The start of the first committed range above the watermark, if any.
    pub next_committed: Option<EntryId>,
    /// The group's last-delivered id.
    pub last_delivered: EntryId,
    /// True when the ledger described another incarnation of the stream or group and was reset.
    pub reset: bool,
}

/// Where a re-read ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Upto {
    /// Up to and including this entry.
    Through(EntryId),
    /// Up to this entry, not including it.
    Before(EntryId),
}

impl Progress {
    /// The first run of entries that were delivered to the group (up to `last_delivered`) and are
    /// not known committed: `(after, upto)` for [`read_range`]. `None` when every delivered entry
    /// is committed.
    pub fn gap(&self, last_delivered: EntryId) -> Option<(EntryId, Upto)> {
        let next = self.next?;
        if next > last_delivered {
            return None;
        }
        let upto = match self.next_committed {
            Some(start) if start <= last_delivered => Upto::Before(start),
            _ => Upto::Through(last_delivered),
        };
        Some((self.through, upto))
    }
}

/// Runs the merge ([`COMPACT`]) and returns the progress it leaves; `None` when the group does not
/// exist (the stream or group was deleted): nothing was merged.
pub async fn compact(
    conn: &mut Connection,
    stream: &str,
    group: &str,
) -> RedisResult<Option<Progress>> {
    let reply: Value = redis::cmd("EVAL")
        .arg(allow_oom(COMPACT))
        .arg(3)
        .arg(stream)
        .arg(ranges_key(stream, group))
        .arg(through_key(stream, group))
        .arg(MERGE_AT_MOST)
        .arg(group)
        .query_async(conn)
        .await?;
    let Value::Array(parts) = reply else {
        return Err(unexpected("ledger compaction", &reply));
    };
    let id = |value: Option<&Value>| -> RedisResult<Option<EntryId>> {
        match value {
            None | Some(Value::Nil) | Some(Value::Boolean(false)) => Ok(None),
            Some(value) => parse_id(value).map(Some),
        }
    };
    let Some(last_delivered) = id(parts.get(3))? else {
        return Ok(None);
    };
    let progress = Progress {
        through: id(parts.first())?.unwrap_or(EntryId::ZERO),
        next: id(parts.get(1))?,
        next_committed: id(parts.get(2))?,
        last_delivered,
        reset: matches!(parts.get(4), Some(Value::Int(1))),
    };
    if progress.reset {
        tracing::warn!(stream, group, last_delivered = %last_delivered, "the ledger's watermark was beyond the group's last-delivered id: it described a stream or group since recreated; reset it (entries are read again, duplicates skipped)");
    }
    Ok(Some(progress))
}

/// Starts the ledger of a group just created: nothing committed. A ledger left by an earlier
/// group of the same name (the stream or group was deleted and recreated) describes entries that
/// may no longer exist, or exist again unread.
pub async fn reset(conn: &mut Connection, stream: &str, group: &str) -> RedisResult<()> {
    redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(ranges_key(stream, group))
        .ignore()
        .cmd("SET")
        .arg(through_key(stream, group))
        .arg(padded(EntryId::ZERO))
        .ignore()
        .query_async::<()>(conn)
        .await
}

/// Publishes how many delivered entries this instance holds in flight, and the last of them
/// (`holder`: a token unique to the process), and returns the sum over the group's instances:
/// the entries delivered to the group and not yet committed. A live instance's count is replaced
/// at each call. Once an instance stops publishing (it stopped, or died) its last count stays in
/// the sum until the watermark passes the last entry it held: until then those entries are
/// delivered and not committed, waiting to be re-read. While another instance re-reads them they
/// may count twice.
const IN_FLIGHT: &str = r#"
local function pad(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local through = redis.call('GET', KEYS[2]) or pad('0-0')
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. (now + tonumber(ARGV[3])) .. ' ' .. ARGV[4])
local sum = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local count, deadline, last = string.match(all[i + 1], '^(%d+) (%d+) (%S+)$')
  if count and (tonumber(deadline) >= now or last > through) then
    sum = sum + tonumber(count)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
redis.call('PEXPIRE', KEYS[1], 86400000)
return sum
"#;

/// The hash of each instance's entries in flight.
pub fn in_flight_key(stream: &str, group: &str) -> String {
    format!("{stream}:in-flight:{group}")
}

/// See [`IN_FLIGHT`]. `entries` in flight, the last of them `last` (`None` when none).
pub async fn in_flight(
    conn: &mut Connection,
    stream: &str,
    group: &str,
    holder: &str,
    (entries, last): (u64, Option<EntryId>),
    ttl: std::time::Duration,
) -> RedisResult<u64> {
    redis::cmd("EVAL")
        .arg(allow_oom(IN_FLIGHT))
        .arg(2)
        .arg(in_flight_key(stream, group))
        .arg(through_key(stream, group))
        .arg(holder)
        .arg(entries)
        .arg(ttl.as_millis() as u64)
        .arg(padded(last.unwrap_or(EntryId::ZERO)))
        .query_async(conn)
        .await
}

/// Opens the group's ledger, if it has none yet, with nothing committed: done with the group's
/// creation, before the first read, so that a group with a ledger can be told from one without
/// (another program's, which acknowledges with `XACK`) when the stream is trimmed.
pub async fn open(conn: &mut Connection, stream: &str, group: &str) -> RedisResult<()> {
    redis::cmd("SET")
        .arg(through_key(stream, group))
        .arg(padded(EntryId::ZERO))
        .arg("NX")
        .query_async::<Value>(conn)
        .await
        .map(drop)
}

/// The watermark as it stands, without merging; `None` when the group has no ledger.
pub async fn watermark(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> RedisResult<Option<EntryId>> {
    let value: Option<String> = redis::cmd("GET")
        .arg(through_key(stream, group))
        .query_async(conn)
        .await?;
    value
        .map(|text| {
            text.parse().map_err(|why: String| {
                redis::RedisError::from((redis::ErrorKind::Parse, "bad watermark", why))
            })
        })
        .transpose()
}

/// The watermark as it stands, `0-0` when there is no ledger yet.
pub async fn through(
    conn: &mut impl redis::aio::ConnectionLike,
    stream: &str,
    group: &str,
) -> RedisResult<EntryId> {
    Ok(watermark(conn, stream, group)
        .await?
        .unwrap_or(EntryId::ZERO))
}

/// Re-reads up to `count` entries after `after`, up to `upto` (`XRANGE`).
pub async fn read_range(
    conn: &mut Connection,
    stream: &str,
    after: EntryId,
    upto: Upto,
    count: usize,
) -> RedisResult<Vec<StreamEntry>> {
    let end = match upto {
        Upto::Through(id) => id.to_string(),
        Upto::Before(id) => format!("({id}"),
    };
    if matches!(upto, Upto::Before(id) | Upto::Through(id) if id <= after) {
        return Ok(Vec::new());
    }
    let reply: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({after}"))
        .arg(end)
        .arg("COUNT")
        .arg(count.max(1))
        .query_async(conn)
        .await?;
    parse_entries(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    #[test]
    fn padded_ids_sort_in_stream_order_and_parse_back() {
        let ids = [
            id(9, 10),
            id(10, 9),
            id(10, 10),
            id(1_700_000_000_000, 0),
            id(u64::MAX, u64::MAX),
        ];
        let mut texts: Vec<String> = ids.iter().map(|&i| padded(i)).collect();
        texts.sort();
        let back: Vec<EntryId> = texts.iter().map(|t| t.parse().unwrap()).collect();
        assert_eq!(back, ids);
    }

    #[test]
    fn the_gap_is_what_was_delivered_and_not_committed() {
        let progress = Progress {
            through: id(5, 0),
            next: Some(id(6, 0)),
            next_committed: Some(id(9, 0)),
            ..Progress::default()
        };
        // Delivered beyond the next committed range: re-read up to that range.
        assert_eq!(
            progress.gap(id(20, 0)),
            Some((id(5, 0), Upto::Before(id(9, 0))))
        );
        // Delivered up to before it: re-read what was delivered.
        assert_eq!(
            progress.gap(id(7, 0)),
            Some((id(5, 0), Upto::Through(id(7, 0))))
        );
        // Nothing delivered after the watermark: no gap, whatever the stream holds.
        assert_eq!(progress.gap(id(5, 0)), None);
        // Nothing in the stream after the watermark: no gap.
        let done = Progress {
            next: None,
            ..progress
        };
        assert_eq!(done.gap(id(20, 0)), None);
    }
}
