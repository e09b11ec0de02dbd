//! The typed messages between stages, in flow order. Every batch carries its [`Ticket`], the
//! in-flight permit that is returned when the batch is acknowledged (or lost).

use crate::domain::Reading;
use crate::pipeline::flow::Ticket;
use crate::pipeline::lanes::Shard;
use crate::redis::entry::{EntryId, StreamEntry};
use actix::Message;

/// read → validate: stream entries as read.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RawBatch {
    pub entries: Vec<StreamEntry>,
    pub ticket: Ticket,
}

/// validate → window: the valid readings of a batch (rejections are already dead-lettered).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Readings {
    pub readings: Vec<Reading>,
    /// The stream entry each reading came from (same index).
    pub origins: Vec<EntryId>,
    /// Whether each reading came as line protocol (same index).
    pub line_protocol: Vec<bool>,
    /// Every entry of the batch, valid or not: all are acknowledged together after the commit.
    pub entries: Vec<EntryId>,
    pub ticket: Ticket,
}

/// A reading whose `(sensor_id, ts)` came earlier in the same batch: left out of the write. Once
/// the batch has committed, it is a duplicate if its value is the one stored under its key, and a
/// conflict (dead-lettered) otherwise.
#[derive(Clone, Debug)]
pub struct Repeat {
    pub reading: Reading,
    /// The stream entry it came from.
    pub entry: EntryId,
    /// The value of the reading of its key in the batch that is written.
    pub first: f64,
    /// Whether that reading was written instead of this one as the later of the two (`keep_last`):
    /// a different value here was replaced, not refused.
    pub superseded: bool,
}

/// window → write: unique readings and their partial aggregates, split by sensor into one shard
/// per write connection, each in key order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteBatch {
    /// Disjoint sets of sensors; no two readings with the same `(sensor_id, ts)`.
    pub shards: Vec<Shard>,
    /// Readings left out because their `(sensor_id, ts)` came earlier in the batch.
    pub repeats: Vec<Repeat>,
    pub entries: Vec<EntryId>,
    pub ticket: Ticket,
}

/// write → ack: the batch is committed; its entries may be acknowledged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed {
    pub entries: Vec<EntryId>,
    pub ticket: Ticket,
}
