//! Stage 1, read: `XREADGROUP` batches from the stream into the pipeline.
//!
//! On start (and after a lost batch) it first re-reads this consumer's own pending entries, then
//! reads new ones; now and then it claims entries left pending by consumers that went idle. It
//! admits at most `max_in_flight` batches, so it stops reading while the pipeline is full.

use crate::pipeline::messages::RawBatch;
use crate::pipeline::validate::Validator;
use crate::pipeline::{Backoff, Flow, count_restart, guarded, stop_requested};
use crate::stream_reader::StreamReader;
use crate::streams::{self, EntryId, StreamEntry};
use crate::telemetry::Metrics;
use actix::prelude::*;
use redis::aio::ConnectionManager;
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
    pub redis: redis::ConnectionInfo,
    pub stream: String,
    pub group: String,
    pub consumer: String,
    /// Most readings in a batch: reads ask for as many entries as hold about that many
    /// ([`Flow::entries_for`]).
    pub batch_size: usize,
    /// Longest wait for a partly filled batch to grow.
    pub batch_delay: Duration,
    /// Idle time after which another consumer's pending entries are claimed.
    pub claim_idle: Duration,
}

/// Where the next read starts.
#[derive(Clone, Copy, Debug)]
enum Position {
    /// Re-reading this consumer's pending entries after this id.
    Pending(EntryId),
    /// Reading new entries (`>`).
    New,
}

pub struct Reader {
    settings: Arc<ReadSettings>,
    /// For claims and group re-creation. Entries are read on the read loop's own
    /// [`StreamReader`]: a blocking `XREADGROUP` holds the connection it runs on.
    conn: ConnectionManager,
    validator: Addr<Validator>,
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
        conn: ConnectionManager,
        validator: Addr<Validator>,
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
    conn: ConnectionManager,
    entries: StreamReader,
    validator: Addr<Validator>,
    flow: Arc<Flow>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    running: Arc<AtomicBool>,
}

impl ReadLoop {
    async fn run(mut self) {
        self.running.store(true, Ordering::Release);
        let mut position = Position::Pending(EntryId::ZERO);
        let mut backoff = Backoff::new();
        let mut redis_down = false;
        let claim_every = (self.settings.claim_idle / 2).max(Duration::from_millis(100));
        let mut last_claim = Instant::now();
        while !stop_requested(&self.stop) {
            if self.flow.take_rewind() {
                tracing::debug!(stream = %self.settings.stream, "re-reading pending entries once the pipeline drains");
                self.flow.drained().await;
                position = Position::Pending(EntryId::ZERO);
            }
            let ticket = tokio::select! {
                ticket = self.flow.admit() => ticket,
                _ = self.stop.changed() => break,
            };
            let claim_due = last_claim.elapsed() >= claim_every;
            let result = match position {
                Position::Pending(after) => self.read(Some(after)).await,
                Position::New if claim_due => {
                    last_claim = Instant::now();
                    self.claim().await
                }
                Position::New => self.read(None).await,
            };
            let entries = match result {
                Ok(entries) => {
                    if redis_down {
                        self.metrics.reconnects.with_label_values(&["redis"]).inc();
                        tracing::info!(stream = %self.settings.stream, "redis reads work again");
                        redis_down = false;
                    }
                    backoff.reset();
                    entries
                }
                Err(error) => {
                    // Redis may have delivered entries whose reply was lost with the connection:
                    // they are pending for this consumer now. Re-read them once the pipeline drains.
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
                        let _ = streams::ensure_group(
                            &mut self.conn,
                            &self.settings.stream,
                            &self.settings.group,
                            false,
                        )
                        .await;
                        position = Position::Pending(EntryId::ZERO);
                    }
                    backoff.wait().await;
                    continue;
                }
            };
            if entries.is_empty() {
                ticket.settle();
                if let Position::Pending(_) = position {
                    position = Position::New;
                }
                continue;
            }
            if let Position::Pending(_) = position {
                position = Position::Pending(entries.last().map_or(EntryId::ZERO, |e| e.id));
            }
            self.metrics
                .messages_received
                .with_label_values(&["stream"])
                .inc_by(entries.len() as u64);
            if self
                .validator
                .send(RawBatch {
                    entries,
                    ticket: ticket.carrying(),
                })
                .await
                .is_err()
            {
                tracing::warn!("validate stage is gone; its batch will be re-read");
            }
        }
        self.running.store(false, Ordering::Release);
    }

    /// Reads pending entries after `pending_after`, or new entries (growing the batch for up to
    /// `batch_delay` while it is not full).
    async fn read(
        &mut self,
        pending_after: Option<EntryId>,
    ) -> redis::RedisResult<Vec<StreamEntry>> {
        let s = Arc::clone(&self.settings);
        let batch_entries = self.flow.entries_for(s.batch_size);
        if let Some(after) = pending_after {
            return self
                .read_group(batch_entries, None, &after.to_string())
                .await;
        }
        let mut entries = self
            .read_group(batch_entries, Some(READ_BLOCK), ">")
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
            let more = self.read_group(wanted, Some(left), ">").await?;
            if more.is_empty() {
                break;
            }
            entries.extend(more);
        }
        Ok(entries)
    }

    /// One `XREADGROUP` on the reader's own connection; its reply's size bounds the next reads
    /// ([`Flow::entries_for`]).
    async fn read_group(
        &mut self,
        count: usize,
        block: Option<Duration>,
        start: &str,
    ) -> redis::RedisResult<Vec<StreamEntry>> {
        let s = Arc::clone(&self.settings);
        let entries = self
            .entries
            .read_group(&s.stream, &s.group, &s.consumer, count, block, start)
            .await?;
        self.flow
            .record_read(entries.len(), self.entries.last_reply_bytes());
        Ok(entries)
    }

    async fn claim(&mut self) -> redis::RedisResult<Vec<StreamEntry>> {
        let s = Arc::clone(&self.settings);
        let claim = streams::claim_idle(
            &mut self.conn,
            &s.stream,
            &s.group,
            &s.consumer,
            s.claim_idle,
            self.flow.entries_for(s.batch_size),
        )
        .await?;
        if claim.own_idle {
            tracing::info!(stream = %s.stream, idle = ?s.claim_idle, "own deliveries left idle (lost in flight); re-reading pending entries once the pipeline drains");
            self.flow.request_rewind();
        }
        if !claim.entries.is_empty() {
            tracing::info!(entries = claim.entries.len(), stream = %s.stream, "claimed entries left pending by an idle consumer");
            self.metrics
                .entries_claimed
                .inc_by(claim.entries.len() as u64);
        }
        Ok(claim.entries)
    }
}
