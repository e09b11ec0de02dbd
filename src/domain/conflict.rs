//! What a reading does when its `(sensor_id, ts)` is stored already with another value, and the
//! stream positions that decide which of two values is the later one.

use std::fmt;
use std::str::FromStr;

/// `SENSORHUB_ON_CONFLICT`: which value of a `(sensor_id, ts)` stays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnConflict {
    /// The value committed first stays; a later different one is dead-lettered
    /// (`conflicting_value`).
    #[default]
    KeepFirst,
    /// The value from the later stream position replaces the stored one (InfluxDB's "last write
    /// wins", by the stream's order rather than by arrival at the database).
    KeepLast,
}

impl OnConflict {
    pub fn as_str(self) -> &'static str {
        match self {
            OnConflict::KeepFirst => "keep_first",
            OnConflict::KeepLast => "keep_last",
        }
    }
}

impl fmt::Display for OnConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OnConflict {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "keep_first" => Ok(OnConflict::KeepFirst),
            "keep_last" => Ok(OnConflict::KeepLast),
            other => Err(format!(
                "{} is not keep_first or keep_last",
                crate::domain::reading::excerpt(other)
            )),
        }
    }
}

/// The policy of each way in: `SENSORHUB_ON_CONFLICT`, and line protocol's own
/// (`SENSORHUB_LINE_PROTOCOL_ON_CONFLICT`, for writers that expect InfluxDB's last write to win).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    pub default: OnConflict,
    pub line_protocol: OnConflict,
}

impl Policies {
    /// The policy of a reading, by whether it came as line protocol.
    pub fn of(self, line_protocol: bool) -> OnConflict {
        if line_protocol {
            self.line_protocol
        } else {
            self.default
        }
    }

    /// Whether some reading may replace a stored value: then every reading keeps its position.
    pub fn keeps_origins(self) -> bool {
        self.default == OnConflict::KeepLast || self.line_protocol == OnConflict::KeepLast
    }
}

/// The stream position a reading came from: its entry id's milliseconds then sequence number,
/// big-endian, so that the bytes order as the stream does (and as PostgreSQL compares `bytea`).
/// Readings of one entry share it: the entry's own order among them is kept within a batch, and
/// an entry is never split over batches.
pub type Origin = [u8; 16];

/// The origin of the entry `ms-seq`.
pub fn origin(ms: u64, seq: u64) -> Origin {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&ms.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    bytes
}

/// The entry id an origin names, `ms-seq`, for logs and errors.
pub fn origin_text(origin: &[u8]) -> String {
    match <[u8; 16]>::try_from(origin) {
        Ok(bytes) => {
            let ms = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default());
            format!("{ms}-{seq}")
        }
        Err(_) => format!("{origin:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_order_as_the_stream() {
        let ids = [
            (0, 0),
            (0, 1),
            (0, 256),
            (1, 0),
            (255, 9),
            (256, 0),
            (u64::MAX, u64::MAX),
        ];
        for pair in ids.windows(2) {
            assert!(
                origin(pair[0].0, pair[0].1) < origin(pair[1].0, pair[1].1),
                "{pair:?}"
            );
        }
        assert_eq!(origin_text(&origin(1733054400000, 7)), "1733054400000-7");
    }

    #[test]
    fn the_policy_parses_its_two_names_only() {
        assert_eq!("keep_last".parse(), Ok(OnConflict::KeepLast));
        assert_eq!(" keep_first".parse(), Ok(OnConflict::KeepFirst));
        assert!(
            "last"
                .parse::<OnConflict>()
                .unwrap_err()
                .contains("keep_first or keep_last")
        );
    }
}
