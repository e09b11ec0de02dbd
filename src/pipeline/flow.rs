//! Flow control: at most `max_in_flight` batches in the pipeline ([`Flow`]), each holding a
//! [`Ticket`], and how many entries the next read asks for.
//!
//! Every batch carries its ticket, which holds the stream ranges it was read as. If a batch is
//! lost (a stage panicked, a mailbox closed, recording its commit failed), dropping its ticket
//! raises the *rewind* flag: the reader waits for the pipeline to drain, then re-reads every
//! delivered entry the [`ledger`](crate::stream::ledger) does not show committed, the lost ones
//! among them.

use crate::redis::entry::EntryId;
use crate::stream::ledger::EntryRange;
use crate::telemetry::Metrics;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The in-flight bound and the rewind flag of one stream, shared by its reader and every ticket.
/// The shards of a sharded stream each have a flow, all drawing on one set of permits: one bound
/// for the instance.
pub struct Flow {
    permits: Arc<Semaphore>,
    /// Entries of this stream in flight.
    pending: AtomicU64,
    /// The stream ranges of every batch in flight, by ticket number.
    in_flight: Mutex<Vec<(u64, Vec<EntryRange>)>>,
    next_ticket: AtomicU64,
    max_in_flight: usize,
    rewind: AtomicBool,
    /// Told when the last batch of this flow in flight leaves it.
    emptied: Notify,
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
        Self::sharing(
            Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            metrics,
        )
    }

    /// A flow drawing on `permits`, `max_in_flight` of them, with other flows.
    pub fn sharing(
        permits: Arc<Semaphore>,
        max_in_flight: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            permits,
            pending: AtomicU64::new(0),
            in_flight: Mutex::new(Vec::new()),
            next_ticket: AtomicU64::new(0),
            max_in_flight,
            rewind: AtomicBool::new(false),
            emptied: Notify::new(),
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

    /// The entries in flight: how many, and the last of them in stream order (`None` when none).
    pub fn in_flight(&self) -> (u64, Option<EntryId>) {
        let in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let last = in_flight
            .iter()
            .flat_map(|(_, ranges)| ranges.iter().map(|r| r.last))
            .max();
        (self.pending.load(Ordering::Acquire), last)
    }

    /// Waits until no batch of this flow's stream is in flight. Only this flow's: the batches of
    /// other shards (which may wait for a database that is down) are not this stream's to
    /// re-read, and waiting for every permit would also stop them being admitted meanwhile.
    pub async fn drained(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check, so an emptying in between is not missed.
            emptied.as_mut().enable();
            if self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
            emptied.await;
        }
    }

    /// Waits until every admitted batch is settled, of every flow sharing the permits.
    pub async fn all_drained(&self) {
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
            .pending
            .fetch_add(carried.entries as u64, Ordering::AcqRel);
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
                .pending
                .fetch_sub(carried.entries as u64, Ordering::AcqRel);
            let mut in_flight = self
                .flow
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            in_flight.retain(|(number, _)| *number != self.number);
            if in_flight.is_empty() {
                self.flow.emptied.notify_waiters();
            }
        }
        if !self.settled {
            self.flow.request_rewind();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
