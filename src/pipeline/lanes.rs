//! Sharding a batch by sensor, one shard per write connection (lane): pure, used by the window
//! stage, which sorts the batch, and carried to the write stage in [`WriteBatch`].
//!
//! [`WriteBatch`]: super::messages::WriteBatch

use crate::domain::{AggKey, Aggregate, Reading};
use crate::redis::entry::EntryId;

/// The part of a batch one connection writes.
pub struct Shard {
    /// The write lane (connection) of this shard's sensors: the same for a sensor in every batch.
    pub lane: usize,
    pub readings: Vec<Reading>,
    pub origins: Vec<EntryId>,
    /// Whether each reading may replace a stored value of its key (its way in is `keep_last`).
    pub replaces: Vec<bool>,
    pub partials: Vec<(AggKey, Aggregate)>,
}

/// A sensor's lane among `shards` (FNV-1a of its id): stable, so one sensor's rows always go to
/// one lane.
pub fn lane_of(sensor_id: &str, shards: usize) -> usize {
    let hash = sensor_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % shards as u64) as usize
}

/// Splits a batch's readings and partials by sensor into `shards`: the readings at the positions
/// `order` (key order `(sensor_id, ts)`, from [`Windows::key_order`](crate::domain::Windows::key_order)), so every shard's readings
/// are in key order, and `partials`, already in key order. Empty shards are left out; each shard
/// keeps its lane.
///
/// The order is for PostgreSQL: rows inserted in primary-key order land one after another on the
/// same B-tree leaf page, where in arrival order (sensors interleaved) each insert descends to
/// another leaf; key order roughly halves the insert's time (`docs/performance.md`).
pub fn split(
    readings: Vec<Reading>,
    origins: Vec<EntryId>,
    replaces: Vec<bool>,
    order: &[u32],
    partials: Vec<(AggKey, Aggregate)>,
    shards: usize,
) -> Vec<Shard> {
    let mut slots: Vec<Option<(Reading, EntryId)>> =
        readings.into_iter().zip(origins).map(Some).collect();
    let replaces_at = |position: u32| replaces.get(position as usize).copied().unwrap_or(false);
    let mut out: Vec<Shard> = (0..shards)
        .map(|lane| Shard {
            lane,
            readings: Vec::with_capacity(order.len() / shards + 1),
            origins: Vec::with_capacity(order.len() / shards + 1),
            replaces: Vec::with_capacity(order.len() / shards + 1),
            partials: Vec::new(),
        })
        .collect();
    let mut current = 0;
    for &position in order {
        let Some((reading, origin)) = slots.get_mut(position as usize).and_then(Option::take)
        else {
            continue; // not a position of `readings`, or taken twice: `order` is ours, never so
        };
        // A sensor's readings are consecutive: its lane is hashed once per sensor.
        let same_sensor = out[current]
            .readings
            .last()
            .is_some_and(|last| last.same_sensor(&reading));
        if !same_sensor {
            current = lane_of(&reading.sensor_id, shards);
        }
        out[current].readings.push(reading);
        out[current].origins.push(origin);
        out[current].replaces.push(replaces_at(position));
    }
    for partial in partials {
        out[lane_of(&partial.0.sensor_id, shards)]
            .partials
            .push(partial);
    }
    out.retain(|shard| !shard.readings.is_empty());
    out
}
