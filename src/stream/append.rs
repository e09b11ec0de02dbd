//! Appending to the stream: payloads as `data` fields, entries under a source's lease (fenced),
//! and messages once under a request's key.

use crate::domain::fields;
use crate::redis::entry::EntryId;
use redis::RedisResult;
use redis::aio::ConnectionLike;

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
