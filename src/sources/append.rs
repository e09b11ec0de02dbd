//! How a source appends its messages: to the stream, or with sharded streams each message to the
//! shard of its valid readings' sensors (as producers pick: [`crate::stream::shards`]), each under
//! the source's lease beside that shard, checked in the script that appends. A message whose
//! readings belong to several shards is appended to each of them, every copy marked as one
//! ([`crate::domain::shard`]): each shard keeps its own sensors' readings, and the shard of the
//! first valid reading also its rejections, so a sensor's readings never reach two shards. A
//! message with no valid reading goes to the first shard, whose validator dead-letters it.

use crate::domain::reading::{Limits, ParseContext, parse_entry_fields};
use crate::domain::shard::{OWNER, PART, SPLIT};
use crate::redis::connection::Connection;
use crate::stream::append::{Appended, FencedError, append_entries_fenced, append_fields_once};
use crate::stream::lease::Leases;
use crate::stream::lease::unique_token;
use crate::stream::shards::Streams;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A message's fields, as they are appended.
pub type Entry<'a> = Vec<(&'a str, &'a [u8])>;

/// Where a message goes, from its valid readings' sensors: its shard, or (split over shards) the
/// owner's shard (its first valid reading's) first and then the others; the first shard when it
/// has no valid reading, so that its validator dead-letters it.
pub fn route<'a>(sensors: impl IntoIterator<Item = &'a str>, streams: &Streams) -> Vec<usize> {
    let mut shards: Vec<usize> = Vec::new();
    if streams.len() > 1 {
        for sensor in sensors {
            let shard = crate::stream::shards::shard_of(sensor, streams.len());
            if !shards.contains(&shard) {
                shards.push(shard);
            }
        }
    }
    if shards.is_empty() {
        shards.push(0);
    }
    shards
}

/// The copies of a message `fields` that [`route`] sent to `shards`, by shard: the message as it
/// is when it has one shard, else each copy marked as the owner's (the first) or a part.
pub fn copies<'a>(fields: &[(&'a str, &'a [u8])], shards: &[usize]) -> Vec<(usize, Entry<'a>)> {
    if let [only] = shards {
        return vec![(*only, fields.to_vec())];
    }
    shards
        .iter()
        .enumerate()
        .map(|(at, &shard)| {
            let mut copy = fields.to_vec();
            copy.push((SPLIT, if at == 0 { OWNER } else { PART }));
            (shard, copy)
        })
        .collect()
}

/// How long an `Idempotency-Key` is remembered: longer than any client keeps retrying.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the key of a request without an `Idempotency-Key` is remembered: longer than the
/// Redis client's own retries of one command (a cluster connection retries a command that timed
/// out), which must not append the request twice.
pub const REQUEST_KEY_TTL: Duration = Duration::from_secs(120);

/// Appends the message `fields` once: under the client's `Idempotency-Key` (kept for
/// [`IDEMPOTENCY_TTL`]), or under a key unique to this call (kept for [`REQUEST_KEY_TTL`]), so
/// that neither a client's retry nor the Redis client's own retry appends it twice. With sharded
/// streams, to the `shards` [`route`] gives: a message split over shards is appended to each,
/// each copy under the key beside its shard. Answers the entry of the owner's copy (the shard of
/// the first valid reading); `None` when `shards` is empty.
pub async fn append_once(
    conn: &Connection,
    streams: &Streams,
    shards: &[usize],
    idempotency_key: Option<&str>,
    fields: &[(&str, &[u8])],
) -> redis::RedisResult<Option<Appended>> {
    let request = unique_token("http");
    let mut owner = None;
    for (shard, copy) in copies(fields, shards) {
        let stream = &streams.all()[shard];
        let (key, ttl) = match idempotency_key {
            Some(key) => (format!("{stream}:idempotency:{key}"), IDEMPOTENCY_TTL),
            None => (format!("{stream}:request:{request}"), REQUEST_KEY_TTL),
        };
        let appended = append_fields_once(&mut conn.clone(), stream, &key, ttl, &copy).await?;
        owner.get_or_insert(appended);
    }
    Ok(owner)
}

pub struct Appender {
    streams: Streams,
    leases: Leases,
    /// The validator's limits: a message is routed by the reading the validator will keep.
    limits: Limits,
    /// Appends made, for their ids.
    appends: AtomicU64,
}

impl Appender {
    pub fn new(streams: Streams, leases: Leases, limits: Limits) -> Self {
        Self {
            streams,
            leases,
            limits,
            appends: AtomicU64::new(0),
        }
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// The first stream, for log lines that name where messages go.
    pub fn stream(&self) -> &str {
        self.streams.first()
    }

    /// A new append's id: one per batch of messages, kept for each retry of that batch, so
    /// that no retry appends the batch twice.
    pub fn next_append_id(&self) -> String {
        let n = self.appends.fetch_add(1, Ordering::Relaxed);
        format!("{}/{n}", self.leases.of_shard(0).holder)
    }

    /// Appends `entries` (each a message's fields) in order within each shard, every shard's in
    /// one script that first checks this source's lease there, once per `append_id` (the same
    /// for a retry of the same entries: [`Appender::next_append_id`]). Returns how many entries
    /// were appended (a message split over shards counts once per copy); `NotHolder` when a
    /// lease was lost (the shards appended before are kept: the sources accept a message
    /// appended twice, which is stored once).
    pub async fn append(
        &self,
        conn: &Connection,
        append_id: &str,
        entries: &[Entry<'_>],
    ) -> Result<usize, FencedError> {
        if self.streams.len() == 1 {
            let lease = self.leases.of_shard(0);
            let mut conn = conn.clone();
            let entries: Vec<&[(&str, &[u8])]> = entries.iter().map(Vec::as_slice).collect();
            return append_entries_fenced(
                &mut conn,
                self.streams.first(),
                &lease.key,
                &lease.holder,
                append_id,
                &entries,
            )
            .await;
        }
        // One clock reading for the whole append, as the validator takes one per batch.
        let now = chrono::Utc::now();
        let ctx = ParseContext::new(&self.limits, now, now);
        let mut by_shard: BTreeMap<usize, Vec<Entry>> = BTreeMap::new();
        for fields in entries {
            let outcomes = parse_entry_fields(fields, &ctx);
            let sensors = outcomes
                .iter()
                .filter_map(|o| Some(&*o.as_ref().ok()?.sensor_id));
            let shards = route(sensors, &self.streams);
            for (shard, copy) in copies(fields, &shards) {
                by_shard.entry(shard).or_default().push(copy);
            }
        }
        let appends = by_shard.iter().map(|(&shard, entries)| {
            let mut conn = conn.clone();
            let lease = self.leases.of_shard(shard);
            let stream = &self.streams.all()[shard];
            async move {
                let entries: Vec<&[(&str, &[u8])]> = entries.iter().map(Vec::as_slice).collect();
                append_entries_fenced(
                    &mut conn,
                    stream,
                    &lease.key,
                    &lease.holder,
                    append_id,
                    &entries,
                )
                .await
            }
        });
        let mut appended = 0;
        let mut failure = None;
        for result in futures_util::future::join_all(appends).await {
            match result {
                Ok(n) => appended += n,
                Err(FencedError::NotHolder) => return Err(FencedError::NotHolder),
                Err(error) => failure = Some(error),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(appended),
        }
    }
}
