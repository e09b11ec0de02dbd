//! Stream entries as Redis holds them: their ids and their fields as read (appending them is
//! [`crate::stream::append`]).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use smallvec::SmallVec;
use std::fmt;
use std::str::FromStr;

/// A stream entry id, `<ms>-<seq>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryId {
    pub ms: u64,
    pub seq: u64,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId { ms: 0, seq: 0 };

    /// The next possible id: `XTRIM MINID` with it keeps everything after `self`.
    pub fn successor(self) -> EntryId {
        match self.seq.checked_add(1) {
            Some(seq) => EntryId { ms: self.ms, seq },
            None => EntryId {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }

    /// The entry's time, for the end-to-end latency: its millisecond, and its sequence number as
    /// microseconds (up to 999). A reading without a timestamp gets its time from the entry by
    /// the stricter rule of `ParseContext::set_received_entry`.
    pub fn time(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.time_micros()).unwrap_or_default()
    }

    /// [`EntryId::time`] in microseconds since the epoch.
    pub fn time_micros(self) -> i64 {
        (self.ms.min(i64::MAX as u64 / 1000) as i64) * 1000 + self.seq.min(999) as i64
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EntryId {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        EntryId::parse_ascii(text.as_bytes())
            .ok_or_else(|| format!("{text:?} is not a stream entry id"))
    }
}

impl EntryId {
    /// `<ms>-<seq>` or `<ms>` (sequence 0), as Redis writes ids: one pass over the bytes, with no
    /// UTF-8 check and no search for the dash first (the reader parses one id per entry).
    pub fn parse_ascii(bytes: &[u8]) -> Option<EntryId> {
        fn number(digits: &[u8]) -> Option<u64> {
            if digits.is_empty() {
                return None;
            }
            digits.iter().try_fold(0u64, |n, &d| {
                let digit = d.wrapping_sub(b'0');
                (digit < 10).then_some(())?;
                n.checked_mul(10)?.checked_add(u64::from(digit))
            })
        }
        let dash = bytes.iter().position(|&b| b == b'-');
        let (ms, seq) = match dash {
            Some(at) => (&bytes[..at], &bytes[at + 1..]),
            None => (bytes, &b"0"[..]),
        };
        Some(EntryId {
            ms: number(ms)?,
            seq: number(seq)?,
        })
    }
}

impl redis::ToRedisArgs for EntryId {
    /// Formatted on the stack with `itoa` rather than through `core::fmt`: `XACK` (of a re-read
    /// batch) sends one id per entry, so this runs once per entry.
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        let mut buf = [0u8; 41]; // two u64 of at most 20 digits and the dash
        let mut digits = itoa::Buffer::new();
        let ms = digits.format(self.ms).as_bytes();
        buf[..ms.len()].copy_from_slice(ms);
        buf[ms.len()] = b'-';
        let mut len = ms.len() + 1;
        let seq = digits.format(self.seq).as_bytes();
        buf[len..len + seq.len()].copy_from_slice(seq);
        len += seq.len();
        out.write_arg(&buf[..len]);
    }
}

/// One entry read from the stream. `fields` is `None` when the entry was deleted (trimmed) after
/// it was delivered: it is acknowledged and otherwise skipped.
#[derive(Clone, Debug)]
pub struct StreamEntry {
    pub id: EntryId,
    pub fields: Option<Fields>,
}

/// An entry's fields. Most entries have one (`data`), kept inline: no allocation per entry.
pub type Fields = SmallVec<[Field; 1]>;

/// One field of a stream entry, name and value. [`Bytes`]: the stream reader hands out slices of
/// the reply it read, with no copy and no allocation per field.
pub type Field = (Bytes, Bytes);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_parse_order_and_succeed() {
        let id: EntryId = "1733054400000-7".parse().unwrap();
        assert_eq!(
            id,
            EntryId {
                ms: 1_733_054_400_000,
                seq: 7
            }
        );
        assert_eq!(id.to_string(), "1733054400000-7");
        assert!(id < "1733054400001-0".parse().unwrap());
        assert_eq!(id.successor().to_string(), "1733054400000-8");
        assert!("x-1".parse::<EntryId>().is_err());
        assert_eq!("5".parse::<EntryId>().unwrap(), EntryId { ms: 5, seq: 0 });
        let max = format!("{}-{}", u64::MAX, u64::MAX);
        assert_eq!(
            max.parse::<EntryId>().unwrap(),
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX
            }
        );
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            "1-x",
            "+1-2",
            "1 -2",
            "18446744073709551616-0",
            "0-18446744073709551616",
        ] {
            assert!(bad.parse::<EntryId>().is_err(), "{bad:?} parsed");
        }
    }

    proptest::proptest! {
        #[test]
        fn entry_ids_parse_back_from_their_text(ms: u64, seq: u64) {
            let id = EntryId { ms, seq };
            proptest::prop_assert_eq!(id.to_string().parse::<EntryId>(), Ok(id));
        }
    }

    #[test]
    fn entry_ids_go_to_redis_as_their_text() {
        use redis::ToRedisArgs as _;
        for id in [
            EntryId::ZERO,
            "1733054400000-7".parse().unwrap(),
            EntryId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        ] {
            assert_eq!(id.to_redis_args(), vec![id.to_string().into_bytes()]);
        }
    }

    #[test]
    fn entry_time_is_stable_and_distinct_within_a_millisecond() {
        let a: EntryId = "1733054400000-0".parse().unwrap();
        let b: EntryId = "1733054400000-1".parse().unwrap();
        assert_eq!(
            a.time(),
            "2024-12-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_ne!(a.time(), b.time());
        assert_eq!(b.time(), b.time());
        assert_eq!(b.time_micros(), b.time().timestamp_micros());
    }
}
