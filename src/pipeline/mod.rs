//! The actors, one file per stage, in flow order:
//!
//! ```text
//!  bridge: SUBSCRIBE channel ──XADD──► stream      (only the instance holding the lease)
//!
//!  read ──RawBatch──► validate ──Readings──► window ──WriteBatch──► write ──Committed──► ack
//!   ▲  XREADGROUP NOACK  │ rejects             fold into               one transaction      ledger, XTRIM
//!   │  XRANGE (re-read)  ▼                     partial aggregates      per shard
//!   │              <stream>:dead
//!   └──────────── Ticket returned (permit back) when the batch is acknowledged ◄──────────────┘
//! ```
//!
//! - Every hop is bounded: each stage's mailbox holds one message and upstream waits with
//!   `send().await`; the reader admits at most `max_in_flight` batches ([`Flow`]), so a slow
//!   database leaves the backlog in Redis.
//! - Every batch carries a [`Ticket`], which holds the stream ranges it was read as. If a batch is
//!   lost (a stage panicked, a mailbox closed, recording its commit failed), dropping its ticket
//!   raises the *rewind* flag: the reader waits for the pipeline to drain, then re-reads every
//!   delivered entry the [`crate::ledger`] does not show committed, the lost ones among them.
//!   Duplicates cannot arise from that: the store skips stored `(sensor_id, ts)`.
//! - The pure, CPU-heavy parts of a batch (parsing its entries, sorting it into write shards) run
//!   on tokio's blocking pool ([`off_thread`]), so the actor thread, which serves the reader's and
//!   the writer's sockets, is never busy for milliseconds at a time. The read reply is parsed on
//!   that thread, but piece by piece as it arrives ([`crate::stream_reader`]).
//! - Each stage runs its work inside [`guarded`], which turns a panic into a counted stop; the
//!   actix `Supervisor` then restarts the actor with the same mailbox.

pub mod ack;
pub mod bridge;
pub mod messages;
pub mod read;
pub mod validate;
pub mod window;
pub mod write;

use crate::domain::Reading;
use crate::ledger::EntryRange;
use crate::streams::EntryId;
use crate::telemetry::Metrics;
use actix::prelude::*;
use futures_util::FutureExt as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The in-flight bound and the rewind flag, shared by the reader and every ticket.
pub struct Flow {
    permits: Arc<Semaphore>,
    /// The stream ranges of every batch in flight, by ticket number.
    in_flight: Mutex<Vec<(u64, Vec<EntryRange>)>>,
    next_ticket: AtomicU64,
    max_in_flight: usize,
    rewind: AtomicBool,
    /// Readings per stream entry in the last validated batch, as `f64` bits; 0 before the first.
    readings_per_entry: AtomicU64,
    /// Reply bytes per stream entry in the last read, as `f64` bits; 0 before the first.
    bytes_per_entry: AtomicU64,
    metrics: Arc<Metrics>,
}

/// Entries per read while no batch has been validated yet: the reader cannot tell a backlog of
/// single readings from one of large gateway arrays before the validate stage has seen some.
pub const PROBE_ENTRIES: usize = 100;

/// Entries in the first read, before the reader has seen how large the stream's entries are.
pub const FIRST_READ_ENTRIES: usize = 10;

/// Most bytes one read brings in (its `XREADGROUP` reply), judged by the size of the entries read
/// last. Entries of a few hundred bytes, even gateway arrays of hundreds of readings, never reach
/// it; a backlog of megabyte-sized messages, valid or not, is read a few entries at a time instead
/// of a batch size's worth at once, which would take gigabytes.
pub const READ_BYTES: usize = 8 * 1024 * 1024;

impl Flow {
    pub fn new(max_in_flight: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            in_flight: Mutex::new(Vec::new()),
            next_ticket: AtomicU64::new(0),
            max_in_flight,
            rewind: AtomicBool::new(false),
            readings_per_entry: AtomicU64::new(0),
            bytes_per_entry: AtomicU64::new(0),
            metrics,
        })
    }

    /// Waits for room in the pipeline and returns the ticket of a new batch.
    pub async fn admit(self: &Arc<Self>) -> Ticket {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the flow semaphore is never closed");
        Ticket {
            _permit: permit,
            flow: Arc::clone(self),
            number: self.next_ticket.fetch_add(1, Ordering::Relaxed),
            settled: false,
            carrying: None,
        }
    }

    /// True when a batch in flight holds the entry `id`: a gap there is this instance's own work
    /// in progress, not a lost delivery.
    pub fn holds(&self, id: EntryId) -> bool {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        in_flight
            .iter()
            .any(|(_, ranges)| ranges.iter().any(|r| r.contains(id)))
    }

    /// Waits until every admitted batch is settled.
    pub async fn drained(&self) {
        let all = self
            .permits
            .acquire_many(self.max_in_flight as u32)
            .await
            .expect("the flow semaphore is never closed");
        drop(all);
    }

    /// Takes the rewind flag: true when a batch was lost since the last call.
    pub fn take_rewind(&self) -> bool {
        self.rewind.swap(false, Ordering::AcqRel)
    }

    /// Asks the reader to re-read delivered entries not committed once the pipeline has drained.
    pub fn request_rewind(&self) {
        self.rewind.store(true, Ordering::Release);
    }

    /// How many stream entries hold about `readings` readings, by the shape of the last
    /// validated batch (at least one entry, at most `readings`): the batch size counts readings,
    /// so a backlog of gateway arrays makes batches of as many readings as one of single
    /// readings, not a hundred times more. [`PROBE_ENTRIES`] at most before any batch was seen.
    /// Never more than [`READ_BYTES`] of entries as large as the last read's, and
    /// [`FIRST_READ_ENTRIES`] before any read.
    pub fn entries_for(&self, readings: usize) -> usize {
        let per_entry = f64::from_bits(self.readings_per_entry.load(Ordering::Relaxed));
        let by_readings = if per_entry == 0.0 {
            readings.min(PROBE_ENTRIES)
        } else {
            ((readings as f64 / per_entry) as usize).clamp(1, readings.max(1))
        };
        let bytes = f64::from_bits(self.bytes_per_entry.load(Ordering::Relaxed));
        let by_bytes = if bytes == 0.0 {
            FIRST_READ_ENTRIES
        } else {
            ((READ_BYTES as f64 / bytes) as usize).max(1)
        };
        by_readings.min(by_bytes)
    }

    /// Records the size of a read: `bytes` of reply for `entries` stream entries.
    pub fn record_read(&self, entries: usize, bytes: usize) {
        if entries > 0 {
            let per_entry = bytes as f64 / entries as f64;
            self.bytes_per_entry
                .store(per_entry.to_bits(), Ordering::Relaxed);
        }
    }

    /// Records how many readings (valid or rejected) the validate stage found in a batch of
    /// `entries` stream entries.
    pub fn record_shape(&self, entries: usize, readings: usize) {
        if entries > 0 {
            let per_entry = readings.max(entries) as f64 / entries as f64;
            self.readings_per_entry
                .store(per_entry.to_bits(), Ordering::Relaxed);
        }
    }
}

/// The in-flight permit of one batch. Settle it when the batch's commit is recorded (or when an
/// empty read needs no record); dropping it unsettled means the batch was lost.
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    flow: Arc<Flow>,
    number: u64,
    settled: bool,
    /// What the batch carries, once it carries entries: only those batches count in
    /// `sensorhub_batches_in_flight`.
    carrying: Option<Carried>,
}

/// The stream entries a ticket's batch was read as.
#[derive(Clone, Debug)]
pub struct Carried {
    /// One range per read.
    pub ranges: Vec<EntryRange>,
    pub entries: usize,
    /// Re-read with `XRANGE` rather than delivered by `XREADGROUP`.
    pub re_read: bool,
}

impl Ticket {
    /// Marks the ticket as carrying entries into the pipeline: the batch read as `carried`.
    pub fn carrying(mut self, carried: Carried) -> Self {
        self.flow.metrics.batches_in_flight.inc();
        self.flow.metrics.group_pending.add(carried.entries as i64);
        self.flow
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.number, carried.ranges.clone()));
        self.carrying = Some(carried);
        self
    }

    /// What the batch was read as; `None` for a ticket that carries nothing.
    pub fn carried(&self) -> Option<&Carried> {
        self.carrying.as_ref()
    }

    /// See [`Flow::record_shape`].
    pub fn record_shape(&self, entries: usize, readings: usize) {
        self.flow.record_shape(entries, readings);
    }

    pub fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(carried) = &self.carrying {
            self.flow.metrics.batches_in_flight.dec();
            self.flow.metrics.group_pending.sub(carried.entries as i64);
            self.flow
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|(number, _)| *number != self.number);
        }
        if !self.settled {
            self.flow.request_rewind();
        }
    }
}

/// Runs a stage's pure, CPU-heavy part (parsing a batch, sorting it into write shards) on tokio's
/// blocking pool instead of the actor thread. The reader, the writer's PostgreSQL connections and
/// every actor share that one thread: a batch of 20,000 readings parsed there held up every socket
/// for its duration, and PostgreSQL waited on a client busy parsing. A panic in `work` is resumed
/// here, so [`guarded`] counts and restarts as before.
pub async fn off_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime shutting down cancels a blocking task, and then nothing awaits this.
            Err(error) => panic!("blocking work was cancelled: {error}"),
        },
    }
}

/// Runs a stage's work so that a panic stops the actor (counted, logged) instead of killing its
/// thread; the `Supervisor` restarts it. actix does not catch panics by itself.
pub fn guarded<A>(
    actor: &'static str,
    work: impl Future<Output = ()> + 'static,
) -> impl ActorFuture<A, Output = ()>
where
    A: Actor<Context = Context<A>>,
{
    actix::fut::wrap_future::<_, A>(AssertUnwindSafe(work).catch_unwind()).map(
        move |outcome, _actor, ctx: &mut Context<A>| {
            if let Err(panic) = outcome {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                tracing::error!(actor, panic = %message, "actor panicked, restarting it");
                ctx.stop();
            }
        },
    )
}

/// Capped exponential backoff for retries.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(5);

    pub fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the current delay and doubles it, up to the cap.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::CAP);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Test-only fault switch: makes a stage panic when it sees a reading of a given sensor, a given
/// number of times. Production builds it empty.
#[derive(Default)]
pub struct Faults {
    armed: Mutex<Option<(String, String, u32)>>,
}

impl Faults {
    /// Arms the switch: `stage` panics on the next `times` batches holding a reading of `sensor`.
    pub fn panic_in(stage: &str, sensor: &str, times: u32) -> Arc<Self> {
        Arc::new(Self {
            armed: Mutex::new(Some((stage.to_owned(), sensor.to_owned(), times))),
        })
    }

    pub fn check<'a>(&self, stage: &str, mut readings: impl Iterator<Item = &'a Reading>) {
        let fire = {
            let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
            match armed.as_mut() {
                Some((s, sensor, times))
                    if s == stage && *times > 0 && readings.any(|r| *r.sensor_id == **sensor) =>
                {
                    *times -= 1;
                    true
                }
                _ => false,
            }
        };
        if fire {
            panic!("fault injected in stage {stage}");
        }
    }
}

/// True once the application asked its loops to stop, or dropped the sender (a closed channel
/// must stop a loop too, or `changed()` returning at once would make it spin).
pub fn stop_requested(stop: &tokio::sync::watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

/// Counts a restart when the supervisor restarts an actor.
pub fn count_restart(metrics: &Metrics, actor: &str) {
    metrics.actor_restarts.with_label_values(&[actor]).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn work_off_the_actor_thread_returns_its_value_and_its_panic() {
        let actor_thread = std::thread::current().id();
        let (value, thread) = off_thread(|| (6 * 7, std::thread::current().id())).await;
        assert_eq!(value, 42);
        assert_ne!(thread, actor_thread);
        // A panic comes back to the awaiting stage, where `guarded` turns it into a restart.
        let panic = AssertUnwindSafe(off_thread(|| -> u32 { panic!("bad batch") }))
            .catch_unwind()
            .await
            .unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"bad batch"));
    }

    #[test]
    fn reads_are_sized_in_readings_by_the_last_validated_batch() {
        let flow = Flow::new(3, Arc::new(Metrics::new()));
        // Entries of about 100 bytes, so the byte bound is far (83,886 entries).
        flow.record_read(1_000, 100_000);
        // Nothing validated yet: a probe read, whatever the batch size.
        assert_eq!(flow.entries_for(20_000), PROBE_ENTRIES);
        assert_eq!(flow.entries_for(20), 20);

        // Gateway arrays of 100 readings: a batch of 20,000 readings is 200 entries.
        flow.record_shape(100, 10_000);
        assert_eq!(flow.entries_for(20_000), 200);
        // Never less than one entry, however large the arrays.
        flow.record_shape(2, 30_000);
        assert_eq!(flow.entries_for(20_000), 1);

        // Back to single readings; entries whose message was rejected whole still count as one.
        flow.record_shape(500, 480);
        assert_eq!(flow.entries_for(20_000), 20_000);
        // An empty batch tells nothing and changes nothing.
        flow.record_shape(0, 0);
        assert_eq!(flow.entries_for(20_000), 20_000);
    }

    #[test]
    fn reads_are_bounded_in_bytes_by_the_last_read() {
        let flow = Flow::new(3, Arc::new(Metrics::new()));
        // Nothing read yet: a first read of a few entries, however small the batch looks.
        assert_eq!(flow.entries_for(20_000), FIRST_READ_ENTRIES);
        assert_eq!(flow.entries_for(3), 3);
        flow.record_shape(100, 100);

        // Entries of 1 MiB: 8 a read, not 20,000 (20 GiB).
        flow.record_read(10, 10 << 20);
        assert_eq!(flow.entries_for(20_000), READ_BYTES >> 20);
        // Larger than the whole budget: still one entry a read.
        flow.record_read(1, 2 * READ_BYTES);
        assert_eq!(flow.entries_for(20_000), 1);
        // Small entries again: the readings bound the read, and an empty read changes nothing.
        flow.record_read(20_000, 2_400_000);
        assert_eq!(flow.entries_for(20_000), 20_000);
        flow.record_read(0, 17);
        assert_eq!(flow.entries_for(20_000), 20_000);
    }
}
