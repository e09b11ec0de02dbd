//! Stage 4, write: a batch's shards (split by sensor in the window stage, one per
//! `SENSORHUB_WRITE_CONNECTIONS`) are written by one lane each: a task per write connection that
//! writes its shards one after another, one transaction per shard (see [`store::write_batch`]).
//! A sensor always falls in the same lane, so lanes hold disjoint sensors: they never upsert the
//! same aggregate rows and never wait on each other's locks. A lane does not wait for the other
//! lanes to finish a batch before it starts its part of the next one, so a lane that finishes
//! early (a smaller shard, or its transaction ran while the other was off the CPU) keeps its
//! connection busy instead of idle. Batches still complete in order: once every shard of a batch
//! has committed, the batch is reported for acknowledgement, after the batches before it.
//!
//! Transient errors (connection loss, deadlock, serialization failure) are retried with capped
//! backoff until the shard commits: a batch is never dropped. An error that persists
//! [`REFUSALS_BEFORE_ISOLATING`] times is PostgreSQL refusing the data itself (poison data): the
//! shard is bisected into smaller transactions until the refused readings are isolated; those go
//! to the dead-letter stream (`database_rejected`) and the rest of the shard is stored, so one bad
//! row cannot block the stream forever.

use crate::actor::{count_restart, guarded};
use crate::domain::conflict::origin;
use crate::domain::fields;
use crate::domain::{AggKey, Aggregate, Origin, Reading, Reason, Rejection, Resolution, Windows};
use crate::health::WriteHealth;
use crate::pipeline::faults::Faults;
use crate::pipeline::flow::Ticket;
use crate::pipeline::lanes::Shard;
use crate::pipeline::messages::{Committed, Repeat, WriteBatch};
use crate::redis::connection::Connection;
use crate::redis::entry::EntryId;
use crate::retry::Backoff;
use crate::store::partition::Partitions;
use crate::store::{self, BatchOutcome, Conflict, StoreError};
use crate::stream::dead_letter::{DeadLetter, DeadLetters};
use crate::telemetry::Metrics;
use actix::prelude::*;
use deadpool_postgres::Pool;
use futures_util::FutureExt as _;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Non-transient failures of one batch before it is bisected to isolate poison data. More than
/// one, so that a passing oddity (a migration running, a constraint being validated) is retried.
pub const REFUSALS_BEFORE_ISOLATING: u32 = 3;

/// Where the writer writes: its own connections, and the partitions of `readings`.
pub struct WriteStore {
    pub pool: Pool,
    pub partitions: Arc<Partitions>,
    /// Whether batches commit, for `/readyz`.
    pub health: Arc<WriteHealth>,
    /// Whether readings are stored with their stream positions (some way in is `keep_last`).
    pub keep_origins: bool,
}

/// What the writer needs besides the batch.
#[derive(Clone)]
struct WriteContext {
    pool: Pool,
    /// The time partitions of `readings`, created before a batch needs one.
    partitions: Arc<Partitions>,
    resolutions: Arc<[Resolution]>,
    metrics: Arc<Metrics>,
    dead: Arc<DeadLetters>,
    /// For dead letters of poison data.
    conn: Connection,
    /// Whether writes fail, shared by every transaction in progress.
    health: Arc<WriteHealth>,
    keep_origins: bool,
}

/// One shard handed to its lane, and where its outcome goes.
struct LaneJob {
    shard: Shard,
    done: oneshot::Sender<ShardDone>,
}

/// A shard committed: what it did, and the readings it refused as conflicting with stored ones
/// (each with the value stored under its key).
struct ShardDone {
    outcome: BatchOutcome,
    conflicts: Vec<(DeadLetter, Key, f64)>,
}

/// A reading's key, `(sensor_id, ts)`.
type Key = (Arc<str>, chrono::DateTime<chrono::Utc>);

/// A batch whose shards are in the lanes: what completing it takes.
struct Dispatched {
    started: Instant,
    outcomes: Vec<oneshot::Receiver<ShardDone>>,
    repeats: Vec<Repeat>,
    entries: Vec<EntryId>,
    ticket: Ticket,
}

/// The lanes' and the completion task's ends, made on the writer's own thread when it starts.
struct Lanes {
    jobs: Vec<mpsc::Sender<LaneJob>>,
    dispatched: mpsc::UnboundedSender<Dispatched>,
}

pub struct Writer {
    context: WriteContext,
    lanes: usize,
    acker: Recipient<Committed>,
    faults: Arc<Faults>,
    running: Option<Lanes>,
}

impl Writer {
    /// `store.pool` is the writer's own: one lane per connection it may open.
    pub fn new(
        store: WriteStore,
        resolutions: &[Resolution],
        dead: DeadLetters,
        conn: Connection,
        acker: Recipient<Committed>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            lanes: store.pool.status().max_size.max(1),
            context: WriteContext {
                pool: store.pool,
                partitions: store.partitions,
                resolutions: resolutions.into(),
                metrics,
                dead: Arc::new(dead),
                conn,
                health: store.health,
                keep_origins: store.keep_origins,
            },
            acker,
            faults,
            running: None,
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1);
        // The lanes are plain tasks on this arbiter, not futures of the actor's context: the
        // handler waits (`ctx.wait`) for room in a lane, which pauses the context's own futures.
        // They outlive a restart of the actor (a panic in the handler) and keep the batches they
        // hold; they end when the writer is dropped and their queues close.
        if self.running.is_none() {
            let jobs = (0..self.lanes)
                .map(|_| {
                    let (tx, rx) = mpsc::channel(1);
                    actix::spawn(lane(self.context.clone(), Arc::clone(&self.faults), rx));
                    tx
                })
                .collect();
            let (dispatched, rx) = mpsc::unbounded_channel();
            actix::spawn(complete(self.context.clone(), self.acker.clone(), rx));
            self.running = Some(Lanes { jobs, dispatched });
        }
    }
}

impl Supervised for Writer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.context.metrics, "write");
    }
}

impl Handler<WriteBatch> for Writer {
    type Result = ();

    fn handle(&mut self, batch: WriteBatch, ctx: &mut Self::Context) {
        let Some(Lanes { jobs, dispatched }) = self.running.as_ref() else {
            return; // `started` always runs first
        };
        let (jobs, dispatched) = (jobs.clone(), dispatched.clone());
        let faults = Arc::clone(&self.faults);
        let work = async move {
            faults.check(
                "write",
                batch.shards.iter().flat_map(|shard| shard.readings.iter()),
            );
            let WriteBatch {
                shards,
                repeats,
                entries,
                ticket,
            } = batch;
            let started = Instant::now();
            let mut outcomes = Vec::with_capacity(shards.len());
            for shard in shards {
                let (done, outcome) = oneshot::channel();
                let lane = &jobs[shard.lane % jobs.len()];
                if lane.send(LaneJob { shard, done }).await.is_err() {
                    // Only a writer being dropped closes a lane; the batch is re-read.
                    return;
                }
                outcomes.push(outcome);
            }
            let _ = dispatched.send(Dispatched {
                started,
                outcomes,
                repeats,
                entries,
                ticket,
            });
        };
        // Waiting for room in the lanes keeps batches in order and holds the window stage back.
        ctx.wait(guarded("write", work));
    }
}

/// One write connection's lane: writes its shards in the order they come. A panic while writing
/// one (a bug) loses that batch, which is re-read, not the lane; it counts as a restart of the
/// write stage.
async fn lane(context: WriteContext, faults: Arc<Faults>, mut jobs: mpsc::Receiver<LaneJob>) {
    while let Some(LaneJob { mut shard, done }) = jobs.recv().await {
        let write = async {
            faults.check("write lane", shard.readings.iter());
            write_until_committed(&context, &mut shard).await
        };
        match AssertUnwindSafe(write).catch_unwind().await {
            Ok(mut outcome) => {
                let conflicts = std::mem::take(&mut outcome.conflicts)
                    .into_iter()
                    .map(|conflict| {
                        let reading = &shard.readings[conflict.index];
                        let key = (Arc::clone(&reading.sensor_id), reading.ts);
                        let letter = stored_conflict_letter(&shard, conflict);
                        (letter, key, conflict.stored)
                    })
                    .collect();
                let _ = done.send(ShardDone { outcome, conflicts });
            }
            Err(_) => {
                tracing::error!(
                    readings = shard.readings.len(),
                    "writing a shard panicked; its batch will be re-read"
                );
                count_restart(&context.metrics, "write");
            }
        }
    }
}

/// Completes batches in the order they were dispatched: waits for each shard's commit, keeps
/// the readings refused as conflicting in the dead-letter stream, counts the batch and reports it
/// for acknowledgement.
async fn complete(
    context: WriteContext,
    acker: Recipient<Committed>,
    mut batches: mpsc::UnboundedReceiver<Dispatched>,
) {
    let metrics = Arc::clone(&context.metrics);
    while let Some(batch) = batches.recv().await {
        let mut outcomes = Vec::with_capacity(batch.outcomes.len());
        for outcome in batch.outcomes {
            outcomes.push(outcome.await);
        }
        metrics
            .batch_write_duration
            .observe(batch.started.elapsed().as_secs_f64());
        for done in outcomes.iter().flatten() {
            metrics.readings_written.inc_by(done.outcome.inserted);
            metrics.readings_duplicate.inc_by(done.outcome.duplicates);
            metrics.readings_replaced.inc_by(done.outcome.replaced);
            metrics
                .aggregate_rows_upserted
                .inc_by(done.outcome.aggregate_rows);
        }
        if outcomes.iter().any(Result::is_err) {
            // A lane lost its shard (see `lane`): the ticket is dropped unsettled, and the reader
            // re-reads the batch; what did commit is skipped as duplicates.
            continue;
        }
        let mut stored_elsewhere: HashMap<Key, f64> = HashMap::new();
        let mut letters = Vec::new();
        for (letter, key, stored) in outcomes.into_iter().flatten().flat_map(|d| d.conflicts) {
            stored_elsewhere.insert(key, stored);
            letters.push(letter);
        }
        // A reading repeated within the batch: one of its key was written (the first, or under
        // keep_last the latest), and is stored unless the store refused it for another value
        // already there. Under keep_last a repeat of another value was replaced by a later one.
        for repeat in &batch.repeats {
            let key = (Arc::clone(&repeat.reading.sensor_id), repeat.reading.ts);
            let stored = stored_elsewhere.get(&key).copied().unwrap_or(repeat.first);
            if repeat.reading.value == stored {
                metrics.readings_duplicate.inc();
            } else if repeat.superseded {
                metrics.readings_replaced.inc();
            } else {
                letters.push(conflict_letter(&repeat.reading, repeat.entry, stored));
            }
        }
        if !letters.is_empty() {
            for letter in &letters {
                tracing::warn!(entry = %letter.entry, detail = %letter.rejection.detail, "reading conflicts with a stored one, moved to the dead-letter stream");
            }
            metrics.readings_conflicting.inc_by(letters.len() as u64);
            let mut conn = context.conn.clone();
            context
                .dead
                .keep(&mut conn, &letters, &metrics, "write")
                .await;
        }
        let now = chrono::Utc::now();
        let now_micros = now.timestamp_micros();
        metrics.last_commit_time.set(now_micros as f64 / 1e6);
        // Counted locally and added to the shared histogram once: an observation each entry
        // would be three atomic updates each.
        let latency = metrics.end_to_end_latency.local();
        for entry in &batch.entries {
            let micros = now_micros.saturating_sub(entry.time_micros()).max(0);
            latency.observe(micros as f64 / 1e6);
        }
        latency.flush();
        let committed = Committed {
            entries: batch.entries,
            ticket: batch.ticket,
        };
        if acker.send(committed).await.is_err() {
            tracing::warn!(
                "ack stage is gone; the committed batch will be re-read and skipped as duplicates"
            );
        }
    }
}

/// Writes the batch, retrying transient errors until it commits and isolating poison data. Logs
/// once when the database starts failing and once when it works again.
async fn write_until_committed(context: &WriteContext, batch: &mut Shard) -> BatchOutcome {
    let mut backoff = Backoff::new();
    let mut refusals = 0;
    loop {
        refuse_beyond_horizon(context, batch).await;
        let result = try_write(context, batch, 0..batch.readings.len(), &batch.partials).await;
        match result {
            // The horizon moved (another instance's retention): refused above on the next turn.
            Err(StoreError::BeyondHorizon) => continue,
            Err(error) if error.is_missing_partition() => {
                context.partitions.forget();
                backoff.wait().await;
                continue;
            }
            Ok(outcome) => {
                if context.health.works() {
                    context
                        .metrics
                        .reconnects
                        .with_label_values(&["postgres"])
                        .inc();
                    tracing::info!(
                        readings = batch.readings.len(),
                        "database writes work again"
                    );
                }
                return outcome;
            }
            Err(error) => {
                context.metrics.database_errors.inc();
                context.metrics.write_retries.inc();
                if !error.is_transient() {
                    refusals += 1;
                    if refusals >= REFUSALS_BEFORE_ISOLATING {
                        tracing::warn!(%error, readings = batch.readings.len(), "PostgreSQL keeps refusing this batch; isolating the readings it refuses");
                        let outcome = isolate_poison(context, batch).await;
                        // A refusal is not an outage: no "works again" line, no reconnect.
                        context.health.works();
                        return outcome;
                    }
                }
                context
                    .metrics
                    .write_errors
                    .with_label_values(&[error.sqlstate()])
                    .inc();
                if context.health.fails(error.to_string()) {
                    tracing::warn!(%error, transient = error.is_transient(), readings = batch.readings.len(), "batch write failed, retrying");
                }
                backoff.wait().await;
            }
        }
    }
}

async fn try_write(
    context: &WriteContext,
    shard: &Shard,
    part: std::ops::Range<usize>,
    partials: &[(AggKey, Aggregate)],
) -> Result<BatchOutcome, StoreError> {
    let readings = &shard.readings[part.clone()];
    let mut client = context.pool.get().await?;
    // A partition for every reading first: nearly always known already, with no query.
    context
        .partitions
        .ensure(&mut client, readings.iter().map(|r| r.ts))
        .await?;
    let origins: Vec<Origin> = shard.origins[part.clone()]
        .iter()
        .map(|e| origin(e.ms, e.seq))
        .collect();
    let batch = store::Batch {
        readings,
        origins: &origins,
        replaces: &shard.replaces[part],
        partials,
    };
    store::write_batch(
        &mut client,
        batch,
        &context.resolutions,
        context.keep_origins,
    )
    .await
}

/// Bisects the batch into smaller transactions until every reading PostgreSQL refuses stands
/// alone; stores the rest and dead-letters the refused ones.
async fn isolate_poison(context: &WriteContext, batch: &Shard) -> BatchOutcome {
    let mut total = BatchOutcome::default();
    let mut poison: Vec<(usize, String)> = Vec::new();
    let mut ranges = vec![(0, batch.readings.len())];
    let mut backoff = Backoff::new();
    while let Some((lo, hi)) = ranges.pop() {
        let partials = Windows::fold(&context.resolutions, &batch.readings[lo..hi]);
        match try_write(context, batch, lo..hi, &partials).await {
            Ok(outcome) => {
                total.add(outcome, lo);
                backoff.reset();
            }
            Err(error) if error.is_transient() => {
                context.metrics.database_errors.inc();
                ranges.push((lo, hi));
                backoff.wait().await;
            }
            Err(error) if hi - lo == 1 => {
                context.metrics.database_errors.inc();
                poison.push((lo, error.to_string()));
            }
            Err(_) => {
                context.metrics.database_errors.inc();
                let mid = lo + (hi - lo) / 2;
                ranges.push((mid, hi));
                ranges.push((lo, mid));
            }
        }
    }
    if !poison.is_empty() {
        let letters: Vec<DeadLetter> = poison
            .iter()
            .map(|(index, error)| {
                poison_letter(&batch.readings[*index], batch.origins[*index], error)
            })
            .collect();
        for letter in &letters {
            tracing::error!(entry = %letter.entry, detail = %letter.rejection.detail, "reading refused by PostgreSQL, moved to the dead-letter stream");
        }
        let mut conn = context.conn.clone();
        context
            .dead
            .keep(&mut conn, &letters, &context.metrics, "write")
            .await;
    }
    total
}

/// Takes the readings older than the retention horizon out of the shard, into the dead
/// letters: their period's raw readings are gone, so a repeat of one could not be recognised
/// and would count twice in a kept aggregate.
async fn refuse_beyond_horizon(context: &WriteContext, shard: &mut Shard) {
    let horizon = context.partitions.horizon();
    if !shard.readings.iter().any(|r| r.ts < horizon) {
        return;
    }
    let mut letters = Vec::new();
    let (mut readings, mut origins, mut replaces) = (Vec::new(), Vec::new(), Vec::new());
    let kept_replaces = std::mem::take(&mut shard.replaces);
    for ((reading, origin), replace) in shard
        .readings
        .drain(..)
        .zip(shard.origins.drain(..))
        .zip(kept_replaces)
    {
        if reading.ts < horizon {
            let detail = format!(
                "timestamp {} of sensor {:?} is older than the retention horizon {} \
                 (SENSORHUB_RETENTION_RAW): the raw readings of its period are gone, so it could \
                 not be told from a duplicate",
                reading.ts.to_rfc3339(),
                reading.sensor_id,
                horizon.to_rfc3339()
            );
            letters.push(reading_letter(&reading, origin, Reason::TooOld, detail));
        } else {
            readings.push(reading);
            origins.push(origin);
            replaces.push(replace);
        }
    }
    shard.partials = Windows::fold(&context.resolutions, &readings);
    shard.readings = readings;
    shard.origins = origins;
    shard.replaces = replaces;
    let mut conn = context.conn.clone();
    context
        .dead
        .keep(&mut conn, &letters, &context.metrics, "write")
        .await;
}

fn poison_letter(reading: &Reading, entry: EntryId, error: &str) -> DeadLetter {
    reading_letter(
        reading,
        entry,
        Reason::DatabaseRejected,
        format!(
            "PostgreSQL refused reading of sensor {:?}: {error}",
            reading.sensor_id
        ),
    )
}

/// A reading whose key is stored with another value, found by the store.
fn stored_conflict_letter(shard: &Shard, conflict: Conflict) -> DeadLetter {
    let reading = &shard.readings[conflict.index];
    conflict_letter(reading, shard.origins[conflict.index], conflict.stored)
}

fn conflict_letter(reading: &Reading, entry: EntryId, stored: f64) -> DeadLetter {
    reading_letter(
        reading,
        entry,
        Reason::ConflictingValue,
        format!(
            "sensor {:?} at {} has the value {stored} stored; this reading's value {} is refused \
             (the value committed first stays)",
            reading.sensor_id,
            reading.ts.to_rfc3339(),
            reading.value
        ),
    )
}

/// A dead letter of one reading that passed validation, kept as sensorhub's JSON.
fn reading_letter(reading: &Reading, entry: EntryId, reason: Reason, detail: String) -> DeadLetter {
    let original = serde_json::json!({
        "sensor": &*reading.sensor_id,
        "value": reading.value,
        "timestamp": reading.ts.to_rfc3339(),
        "unit": reading.unit,
    });
    DeadLetter {
        entry,
        rejection: Rejection {
            reason,
            detail,
            index: None,
            part: None,
        },
        original: vec![(
            bytes::Bytes::from_static(fields::DATA.as_bytes()),
            original.to_string().into(),
        )],
    }
}
