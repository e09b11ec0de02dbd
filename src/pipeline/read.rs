//! Stage 1, read: `XREADGROUP` batches from the stream into the pipeline.
//!
//! Reads are `NOACK`: the [`ledger`] records which delivered entries are committed. On start (and
//! after a lost batch, once the pipeline has drained) it first re-reads every delivered entry the
//! ledger does not show committed, then reads new ones; now and then it checks the ledger for a
//! gap that stayed open for the claim idle time without being its own work in flight (entries
//! delivered to an instance that died) and re-reads that. It admits at most `max_in_flight`
//! batches, so it stops reading while the pipeline is full.

use crate::actor::{count_restart, guarded, stop_requested};
use crate::pipeline::flow::{Carried, Flow};
use crate::pipeline::messages::RawBatch;
use crate::redis::connection::Connection;
use crate::redis::entry::{EntryId, StreamEntry};
use crate::redis::reader::StreamReader;
use crate::retry::Backoff;
use crate::stream::group;
use crate::stream::ledger::{self, EntryRange, Upto};
use crate::telemetry::Metrics;
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Longest a blocking read waits for new entries; also bounds how long a stop request waits.
pub const READ_BLOCK: Duration = Duration::from_millis(500);

/// What the reader needs to know about the stream.
#[derive(Clone)]
pub struct ReadSettings {
    /// Where Redis is: entries are read on a connection of the reader's own ([`StreamReader`]).
    pub redis: crate::redis::target::ReaderTarget,
    pub stream: String,
    pub group: String,
    pub consumer: String,
    /// Most readings in a batch: reads ask for as many entries as hold about that many
    /// ([`Flow::entries_for`]).
    pub batch_size: usize,
    /// Longest wait for a partly filled batch to grow.
    pub batch_delay: Duration,
    /// How long a gap in the ledger that is not this instance's own work stays open before it
    /// is re-read (entries delivered to an instance that died).
    pub claim_idle: Duration,
    /// The in-flight permits are shared with the readers of other shards: an idle reader waits
    /// for new entries before it takes a permit, rather than blocking in `XREADGROUP` with one
    /// that a shard with entries could use.
    pub shares_permits: bool,
    /// The database's identity as [`crate::store::history::watch`] reads it: when it differs from
    /// the one the ledger recorded, the stream's retained tail is re-read.
    pub history: watch::Receiver<Option<String>>,
}

/// Where the next read comes from.
#[derive(Clone, Copy, Debug)]
enum Position {
    /// Re-reading delivered entries after `after`, up to `upto` (`XRANGE`).
    ReRead { after: EntryId, upto: Upto },
    /// Reading new entries (`XREADGROUP ... NOACK ... >`).
    New,
}

/// Longest the read loop waits for one of the history's Redis commands. A write to a Redis
/// Cluster node that holds writes (`CLIENT PAUSE WRITE`, a failover in progress) is retried by
/// the cluster client for up to about a minute and a half; reading must not wait on it. A history
/// command that fails or times out is tried again on the next pass.
const HISTORY_CALL: Duration = Duration::from_secs(5);

/// `call`'s value, or `None` when it failed or took longer than [`HISTORY_CALL`].
async fn bounded<T>(call: impl std::future::Future<Output = redis::RedisResult<T>>) -> Option<T> {
    tokio::time::timeout(HISTORY_CALL, call).await.ok()?.ok()
}

/// Where the read loop stands: what it reads next, the gap it watches, when it last checked.
struct Cursor {
    position: Position,
    gap: Option<Gap>,
    last_check: Instant,
}

/// What one pass of the read loop read.
struct Batch {
    entries: Vec<StreamEntry>,
    /// One range per read command.
    ranges: Vec<EntryRange>,
    /// Re-read with `XRANGE` (delivered before, not known committed), not delivered now.
    re_read: bool,
}

/// A gap in the ledger seen by the idle check: its first entry, and since when.
#[derive(Clone, Copy, Debug)]
struct Gap {
    next: EntryId,
    since: Instant,
}

pub struct Reader {
    settings: Arc<ReadSettings>,
    /// For the ledger, re-reads and group re-creation. Entries are read on the read loop's own
    /// [`StreamReader`]: a blocking `XREADGROUP` holds the connection it runs on.
    conn: Connection,
    validator: Recipient<RawBatch>,
    flow: Arc<Flow>,
    metrics: Arc<Metrics>,
    /// Becomes true when the application stops: the reader stops admitting batches.
    stop: watch::Receiver<bool>,
    /// True while the read loop runs (readiness).
    running: Arc<AtomicBool>,
}

impl Reader {
    pub fn new(
        settings: ReadSettings,
        conn: Connection,
        validator: Recipient<RawBatch>,
        flow: Arc<Flow>,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
        running: Arc<AtomicBool>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            conn,
            validator,
            flow,
            metrics,
            stop,
            running,
        }
    }
}

impl Actor for Reader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let lp = ReadLoop {
            settings: Arc::clone(&self.settings),
            conn: self.conn.clone(),
            entries: StreamReader::new(self.settings.redis.clone()),
            validator: self.validator.clone(),
            flow: Arc::clone(&self.flow),
            metrics: Arc::clone(&self.metrics),
            stop: self.stop.clone(),
            running: Arc::clone(&self.running),
            history: self.settings.history.clone(),
            unchecked_history: None,
            history_after_tail: None,
        };
        ctx.spawn(guarded("read", lp.run()));
    }
}

impl Supervised for Reader {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "read");
        self.running.store(false, Ordering::Release);
        self.flow.request_rewind();
    }
}

/// The read loop's state, owned by the spawned future.
struct ReadLoop {
    settings: Arc<ReadSettings>,
    conn: Connection,
    entries: StreamReader,
    validator: Recipient<RawBatch>,
    flow: Arc<Flow>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    running: Arc<AtomicBool>,
    history: watch::Receiver<Option<String>>,
    /// A database identity not yet compared with the ledger's.
    unchecked_history: Option<String>,
    /// The identity to record once the tail re-read it called for is committed.
    history_after_tail: Option<String>,
}

impl ReadLoop {
    async fn run(mut self) {
        self.running.store(true, Ordering::Release);
        // Whatever was delivered and not committed before this start may be this consumer's own
        // lost work: re-read it first.
        self.flow.request_rewind();
        let mut cursor = Cursor {
            position: Position::New,
            gap: None,
            last_check: Instant::now(),
        };
        let mut backoff = Backoff::new();
        let mut redis_down = false;
        // The last read found nothing new.
        let mut idle = false;
        while !stop_requested(&self.stop) {
            if idle && self.settings.shares_permits {
                // An error here shows again in the read below, which reports it.
                tokio::select! {
                    _ = self.entries.wait_for_new(&self.settings.stream, READ_BLOCK) => {}
                    _ = self.stop.changed() => break,
                }
            }
            let tail = matches!(cursor.position, Position::New) && self.history_changed().await;
            let rewind = self.flow.take_rewind() || tail;
            if rewind {
                tracing::debug!(stream = %self.settings.stream, "re-reading uncommitted entries once the pipeline drains");
                self.flow.drained().await;
            }
            let ticket = tokio::select! {
                ticket = self.flow.admit() => ticket,
                _ = self.stop.changed() => break,
            };
            let result = if tail {
                let started = self.start_tail(&mut cursor).await;
                if started.is_err() {
                    // Compared again, and the tail re-read again, on the next pass.
                    self.unchecked_history = self.history_after_tail.take();
                }
                started
            } else {
                Ok(())
            };
            let result = match result {
                Ok(()) => self.next_batch(&mut cursor, rewind && !tail).await,
                Err(error) => Err(error),
            };
            let Batch {
                entries,
                ranges,
                re_read,
            } = match result {
                Ok(read) => {
                    if redis_down {
                        self.metrics.reconnects.with_label_values(&["redis"]).inc();
                        tracing::info!(stream = %self.settings.stream, "redis reads work again");
                        redis_down = false;
                    }
                    backoff.reset();
                    read
                }
                Err(error) => {
                    // Redis may have delivered entries whose reply was lost with the connection:
                    // re-read what is not committed once the pipeline drains.
                    ticket.settle();
                    self.flow.request_rewind();
                    self.metrics.redis_errors.with_label_values(&["read"]).inc();
                    if !redis_down {
                        tracing::warn!(%error, stream = %self.settings.stream, "redis read failed, retrying");
                        redis_down = true;
                    }
                    if error.code() == Some("NOGROUP") {
                        // The stream or group is gone (deleted, or Redis restarted without
                        // persistence): recreate the group once the stream exists again.
                        let _ = group::ensure_group(
                            &mut self.conn,
                            &self.settings.stream,
                            &self.settings.group,
                            false,
                        )
                        .await;
                    }
                    cursor.position = Position::New;
                    backoff.wait().await;
                    continue;
                }
            };
            idle = entries.is_empty() && !re_read;
            if entries.is_empty() {
                ticket.settle();
                continue;
            }
            if re_read {
                tracing::info!(entries = entries.len(), stream = %self.settings.stream, "re-reading delivered entries that no commit covers");
                self.metrics.entries_reread.inc_by(entries.len() as u64);
            }
            self.metrics
                .messages_received
                .with_label_values(&["stream"])
                .inc_by(entries.len() as u64);
            let carried = Carried {
                ranges,
                entries: entries.len(),
                re_read,
            };
            if self
                .validator
                .send(RawBatch {
                    entries,
                    ticket: ticket.carrying(carried),
                })
                .await
                .is_err()
            {
                tracing::warn!("validate stage is gone; its batch will be re-read");
            }
        }
        self.running.store(false, Ordering::Release);
    }

    /// Whether the database's history changed since the ledger's commits were made to it (a
    /// failover): then the retained tail is to be re-read. The first identity seen is recorded;
    /// once a tail re-read has been read and committed, the new identity is. A Redis error leaves
    /// the comparison for the next pass.
    async fn history_changed(&mut self) -> bool {
        if self.history.has_changed().unwrap_or(false) {
            self.unchecked_history = self.history.borrow_and_update().clone();
        }
        let s = Arc::clone(&self.settings);
        if let Some(identity) = self.history_after_tail.clone() {
            // The tail has been read: record the identity once its batches are committed.
            self.flow.drained().await;
            let record = ledger::record_history(&mut self.conn, &s.stream, &s.group, &identity);
            if bounded(record).await.is_some() {
                self.history_after_tail = None;
            }
            return false;
        }
        let Some(identity) = self.unchecked_history.clone() else {
            return false;
        };
        let recorded = ledger::recorded_history(&mut self.conn, &s.stream, &s.group);
        let Some(recorded) = bounded(recorded).await else {
            return false;
        };
        self.unchecked_history = None;
        match recorded {
            Some(recorded) if recorded != identity => {
                tracing::warn!(stream = %s.stream, was = %recorded, now = %identity, "PostgreSQL's history changed (a failover): re-reading the stream's retained tail, so that batches the old primary acknowledged and this one lacks are stored again");
                self.history_after_tail = Some(identity);
                true
            }
            Some(_) => false,
            None => {
                let record = ledger::record_history(&mut self.conn, &s.stream, &s.group, &identity);
                if bounded(record).await.is_none() {
                    // Recorded on a later pass: unrecorded, a failover would go unnoticed.
                    self.unchecked_history = Some(identity);
                }
                false
            }
        }
    }

    /// Points the cursor at the start of the stream's retained tail, through the last delivered
    /// entry.
    async fn start_tail(&mut self, cursor: &mut Cursor) -> redis::RedisResult<()> {
        let s = Arc::clone(&self.settings);
        if let Some(progress) = ledger::compact(&mut self.conn, &s.stream, &s.group).await? {
            cursor.position = Position::ReRead {
                after: EntryId::ZERO,
                upto: Upto::Through(progress.last_delivered),
            };
        }
        Ok(())
    }

    /// Reads the next batch: after a rewind, or when the periodic ledger check is due, it first
    /// checks the ledger for entries to re-read ([`ReadLoop::check_ledger`]); then it re-reads,
    /// or reads new entries. Moves the cursor past what it read.
    async fn next_batch(&mut self, cursor: &mut Cursor, rewind: bool) -> redis::RedisResult<Batch> {
        let check_every = (self.settings.claim_idle / 2).max(Duration::from_millis(100));
        let check_due =
            matches!(cursor.position, Position::New) && cursor.last_check.elapsed() >= check_every;
        if rewind || check_due {
            cursor.last_check = Instant::now();
            if let Some(re_read) = self.check_ledger(rewind, &mut cursor.gap).await? {
                cursor.position = re_read;
            }
        }
        let Position::ReRead { after, upto } = cursor.position else {
            let (entries, ranges) = self.read().await?;
            return Ok(Batch {
                entries,
                ranges,
                re_read: false,
            });
        };
        let (entries, ranges) = self.re_read(after, upto).await?;
        cursor.position = match entries.last() {
            Some(last) => Position::ReRead {
                after: last.id,
                upto,
            },
            None => Position::New,
        };
        Ok(Batch {
            entries,
            ranges,
            re_read: true,
        })
    }

    /// Merges the ledger and looks for delivered entries it does not show committed. After a
    /// rewind (`all`), everything delivered above the watermark is re-read at once: this
    /// instance's own lost work is among it, and whatever else is only skipped as duplicates.
    /// Otherwise only the first gap is, once it has stayed the same for the claim idle time and is
    /// not a batch of this instance's own in flight.
    async fn check_ledger(
        &mut self,
        all: bool,
        seen: &mut Option<Gap>,
    ) -> redis::RedisResult<Option<Position>> {
        let s = Arc::clone(&self.settings);
        let Some(progress) = ledger::compact(&mut self.conn, &s.stream, &s.group).await? else {
            // The group is gone (deleted, or Redis restarted without persistence): recreated, it
            // delivers the stream from its start, so there is nothing to re-read.
            group::ensure_group(&mut self.conn, &s.stream, &s.group, false).await?;
            *seen = None;
            return Ok(None);
        };
        let last_delivered = progress.last_delivered;
        if all {
            *seen = None;
            return Ok(
                (progress.through < last_delivered).then_some(Position::ReRead {
                    after: progress.through,
                    upto: Upto::Through(last_delivered),
                }),
            );
        }
        let (Some((after, upto)), Some(next)) = (progress.gap(last_delivered), progress.next)
        else {
            *seen = None;
            return Ok(None);
        };
        if self.flow.holds(next) {
            *seen = None;
            return Ok(None);
        }
        match *seen {
            Some(gap) if gap.next == next && gap.since.elapsed() >= s.claim_idle => {
                *seen = None;
                tracing::info!(stream = %s.stream, from = %next, idle = ?s.claim_idle, "delivered entries stayed uncommitted (an instance stopped with them); re-reading them");
                Ok(Some(Position::ReRead { after, upto }))
            }
            Some(gap) if gap.next == next => Ok(None),
            _ => {
                *seen = Some(Gap {
                    next,
                    since: Instant::now(),
                });
                Ok(None)
            }
        }
    }

    /// Re-reads a batch of delivered entries after `after`, up to `upto`.
    async fn re_read(
        &mut self,
        after: EntryId,
        upto: Upto,
    ) -> redis::RedisResult<(Vec<StreamEntry>, Vec<EntryRange>)> {
        let s = Arc::clone(&self.settings);
        let count = self.flow.entries_for(s.batch_size);
        let entries = ledger::read_range(&mut self.conn, &s.stream, after, upto, count).await?;
        let ranges = EntryRange::of(&entries).into_iter().collect();
        Ok((entries, ranges))
    }

    /// Reads new entries, growing the batch for up to `batch_delay` while it is not full. Each
    /// `XREADGROUP` reply is one range of the stream.
    async fn read(&mut self) -> redis::RedisResult<(Vec<StreamEntry>, Vec<EntryRange>)> {
        let s = Arc::clone(&self.settings);
        let mut ranges = Vec::new();
        // With shared permits the reader has waited for entries already, without a permit.
        let block = (!s.shares_permits).then_some(READ_BLOCK);
        let mut entries = self
            .read_group(self.flow.entries_for(s.batch_size), block, &mut ranges)
            .await?;
        let deadline = Instant::now() + s.batch_delay;
        loop {
            // Sized anew after each read (a read of large entries makes the batch end sooner),
            // once: the validate stage may change the shape between two calls.
            let wanted = self
                .flow
                .entries_for(s.batch_size)
                .saturating_sub(entries.len());
            let left = deadline.saturating_duration_since(Instant::now());
            if entries.is_empty() || wanted == 0 || left < Duration::from_millis(1) {
                break;
            }
            let more = self.read_group(wanted, Some(left), &mut ranges).await?;
            if more.is_empty() {
                break;
            }
            entries.extend(more);
        }
        Ok((entries, ranges))
    }

    /// One `XREADGROUP` on the reader's own connection; its reply's size bounds the next reads
    /// ([`Flow::entries_for`]), and its range is added to `ranges`.
    async fn read_group(
        &mut self,
        count: usize,
        block: Option<Duration>,
        ranges: &mut Vec<EntryRange>,
    ) -> redis::RedisResult<Vec<StreamEntry>> {
        let s = Arc::clone(&self.settings);
        let entries = self
            .entries
            .read_group(&s.stream, &s.group, &s.consumer, count, block)
            .await?;
        self.flow
            .record_read(entries.len(), self.entries.last_reply_bytes());
        ranges.extend(EntryRange::of(&entries));
        Ok(entries)
    }
}
