//! Which shard of a sharded stream a sensor's readings belong to, and how a message whose
//! readings belong to several shards is appended: once to each of those shards, every copy
//! marked with the field [`SPLIT`], so that each shard's validator keeps only its own sensors'
//! readings and one copy (the [`OWNER`]'s, the shard of the message's first valid reading) keeps
//! the rejections. A sensor's readings so never reach two shards, and a reading without a
//! timestamp, which takes its time from its entry's id, never shares a time with another of its
//! sensor's (entry ids repeat from shard to shard).

/// The entry field that marks one copy of a message split over shards: [`OWNER`] or [`PART`].
pub const SPLIT: &str = "split";
/// The copy in the shard of the message's first valid reading: it also keeps the rejections.
pub const OWNER: &[u8] = b"owner";
/// A copy in another shard: only its own sensors' readings.
pub const PART: &[u8] = b"part";

/// The shard of `sensor_id` among `shards`: `crc32(sensor_id) mod shards`, CRC-32 as zlib
/// computes it, so producers in any language pick the same.
pub fn shard_of(sensor_id: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    crc32fast::hash(sensor_id.as_bytes()) as usize % shards
}

/// The stream a validator reads: shard `index` of `of` (0 of 1 when not sharded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamShard {
    pub index: usize,
    pub of: usize,
}

impl StreamShard {
    /// One stream, not sharded.
    pub const WHOLE: StreamShard = StreamShard { index: 0, of: 1 };

    /// Whether `sensor_id`'s readings belong to this stream.
    pub fn holds(self, sensor_id: &str) -> bool {
        self.of <= 1 || shard_of(sensor_id, self.of) == self.index
    }
}
