//! Sharded streams: with `SENSORHUB_STREAM_SHARDS=N` (N > 1) readings go to N streams instead of
//! one, so that a Redis Cluster spreads them over its nodes. Shard `i` of the stream `base` is
//! `{base:i}`: the hash tag gives each shard a slot of its own, and every key beside a shard
//! (ledger, dead letters, leases) starts with its name, so it shares that slot.
//!
//! A producer picks the shard of a message by its sensor id: `crc32(sensor_id) mod N` (CRC-32 as
//! in zlib, gzip and PNG, of the id's UTF-8 bytes). A message holding several readings goes by
//! its first reading's id. The rule spreads sensors evenly and keeps each sensor's readings in
//! one stream, in order; a message sent to another shard is still stored exactly once, since the
//! guarantee holds per stream and the database refuses a `(sensor_id, ts)` twice.

/// The streams of a deployment: one, or the shards of one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    names: Vec<String>,
}

/// The most shards a deployment may have.
pub use crate::config::MAX_SHARDS;

impl Streams {
    /// The streams `config` names: its stream, or that stream's shards.
    pub fn of(config: &crate::config::Config) -> Self {
        Self::new(&config.stream, config.shards)
    }

    /// The stream `base` alone (`shards` = 1), or its `shards` shards.
    pub fn new(base: &str, shards: usize) -> Self {
        let names = if shards <= 1 {
            vec![base.to_owned()]
        } else {
            let bare: String = base.chars().filter(|c| !matches!(c, '{' | '}')).collect();
            (0..shards).map(|i| format!("{{{bare}:{i}}}")).collect()
        };
        Self { names }
    }

    /// Every stream, shard 0 first.
    pub fn all(&self) -> &[String] {
        &self.names
    }

    /// The stream a message about `sensor_id` goes to.
    pub fn for_sensor(&self, sensor_id: &str) -> &str {
        &self.names[shard_of(sensor_id, self.names.len())]
    }

    /// The stream of a message whose sensor id is not known (the first shard).
    pub fn first(&self) -> &str {
        &self.names[0]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

pub use crate::domain::shard::shard_of;

/// Whether every key beside `stream` lands in one Redis Cluster slot: its name has a hash tag (a
/// `{...}` with something inside, the first `{` and the first `}` after it).
pub fn has_hash_tag(stream: &str) -> bool {
    stream
        .find('{')
        .and_then(|open| stream[open + 1..].find('}'))
        .is_some_and(|len| len > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_named_with_their_own_hash_tag() {
        let one = Streams::new("sensor_stream", 1);
        assert_eq!(one.all(), ["sensor_stream"]);
        assert_eq!(one.for_sensor("anything"), "sensor_stream");
        let four = Streams::new("sensor_stream", 4);
        assert_eq!(
            four.all(),
            [
                "{sensor_stream:0}",
                "{sensor_stream:1}",
                "{sensor_stream:2}",
                "{sensor_stream:3}"
            ]
        );
        assert_eq!(
            Streams::new("{sensor_stream}", 2).all()[1],
            "{sensor_stream:1}"
        );
        assert!(four.all().iter().all(|s| has_hash_tag(s)));
        assert!(!has_hash_tag("sensor_stream") && !has_hash_tag("a{}b") && !has_hash_tag("a}b{"));
    }

    #[test]
    fn the_shard_rule_is_crc32_of_the_id_modulo_the_shards() {
        // The values producers in other languages reproduce: Python's zlib.crc32(b"station-1")
        // is 0x7e9532c4 (2123707076), and 2123707076 % 16 == 4.
        assert_eq!(crc32fast::hash(b"station-1"), 2_123_707_076);
        assert_eq!(shard_of("station-1", 16), 4);
        assert_eq!(Streams::new("s", 16).for_sensor("station-1"), "{s:4}");
        // Spread: 16,000 ids over 16 shards, none far from 1,000.
        let mut counts = [0usize; 16];
        for n in 0..16_000 {
            counts[shard_of(&format!("sensor-{n}"), 16)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }
}
