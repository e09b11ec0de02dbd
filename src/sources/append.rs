//! How a source appends its messages: to the stream, or with sharded streams each message to the
//! shard of its first valid reading's sensor (as producers pick: [`crate::redis::shards`]; a
//! message with no valid reading goes to the first shard, whose validator dead-letters it), each
//! under the source's lease beside that shard, checked in the script that appends.

use crate::domain::reading::{Limits, ParseContext, parse_entry_fields};
use crate::redis::connection::Connection;
use crate::redis::entry::{FencedError, append_entries_fenced};
use crate::redis::lease::Leases;
use crate::redis::shards::Streams;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// A message's fields, as they are appended.
pub type Entry<'a, const FIELDS: usize> = [(&'a str, &'a [u8]); FIELDS];

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
    /// for a retry of the same entries: [`Appender::next_append_id`]). Returns how many were
    /// appended; `NotHolder` when a lease was lost (the shards appended before are kept: the
    /// sources accept a message appended twice, which is stored once).
    pub async fn append<const FIELDS: usize>(
        &self,
        conn: &Connection,
        append_id: &str,
        entries: &[Entry<'_, FIELDS>],
    ) -> Result<usize, FencedError> {
        if self.streams.len() == 1 {
            let lease = self.leases.of_shard(0);
            let mut conn = conn.clone();
            return append_entries_fenced(
                &mut conn,
                self.streams.first(),
                &lease.key,
                &lease.holder,
                append_id,
                entries,
            )
            .await;
        }
        // One clock reading for the whole append, as the validator takes one per batch.
        let now = chrono::Utc::now();
        let ctx = ParseContext::new(&self.limits, now, now);
        let mut by_shard: BTreeMap<usize, Vec<Entry<FIELDS>>> = BTreeMap::new();
        for fields in entries {
            by_shard
                .entry(self.shard_of(fields, &ctx))
                .or_default()
                .push(*fields);
        }
        let appends = by_shard.iter().map(|(&shard, entries)| {
            let mut conn = conn.clone();
            let lease = self.leases.of_shard(shard);
            let stream = &self.streams.all()[shard];
            async move {
                append_entries_fenced(
                    &mut conn,
                    stream,
                    &lease.key,
                    &lease.holder,
                    append_id,
                    entries,
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

    /// The shard of one message: its first valid reading's sensor's.
    fn shard_of(&self, fields: &[(&str, &[u8])], ctx: &ParseContext) -> usize {
        let outcomes = parse_entry_fields(fields, ctx);
        match outcomes.iter().find_map(|o| o.as_ref().ok()) {
            Some(reading) => crate::redis::shards::shard_of(&reading.sensor_id, self.streams.len()),
            None => 0,
        }
    }
}
