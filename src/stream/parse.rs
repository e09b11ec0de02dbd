//! How the entries of a stream become readings and dead letters: every entry's fields read in their
//! form, a replayed dead letter's own marks honoured, and a copy of a message split over shards
//! kept to its shard's sensors. The validator ([`crate::pipeline::validate`]) runs it on each batch;
//! a dead-letter replay's dry run ([`crate::stream::dead_letter::operate`]) on the letters.

use crate::domain::reading::{SensorIds, Skipped};
use crate::domain::shard::{OWNER, SPLIT, StreamShard, shard_of};
use crate::domain::{Limits, ParseContext, Reading, Reason, Rejection, reading};
use crate::redis::entry::{EntryId, StreamEntry};
use crate::stream::dead_letter::{DeadLetter, REPLAY_ONLY, REPLAY_RECEIVED};
use chrono::Utc;

/// Parses every entry into readings (with the entry each came from: for a replayed dead letter,
/// the entry it first came in as, its place in the stream's order) and dead letters; pure apart
/// from reading the clock. `reads` is the shard of the stream the entries come from: a copy of a
/// message split over shards ([`crate::domain::shard`]) gives only this shard's sensors'
/// readings, and its rejections only in the owner's copy; a reading without a timestamp of
/// another shard's sensor, in an entry a producer appended here, is refused
/// ([`Reason::NoUniqueTime`]): its time from this shard's entry id could be one its own shard
/// gives another of its readings.
pub fn parse_batch(
    entries: &[StreamEntry],
    limits: &Limits,
    reads: StreamShard,
) -> (Vec<Reading>, Vec<EntryId>, Vec<DeadLetter>) {
    let parsed = parse_batch_counting(entries, limits, reads, &Skipped::default());
    (parsed.readings, parsed.origins, parsed.letters)
}

/// A batch of entries parsed.
pub struct Parsed {
    pub readings: Vec<Reading>,
    /// The entry each reading came from (same index).
    pub origins: Vec<EntryId>,
    /// Whether each reading came as InfluxDB line protocol (same index): its writers may expect
    /// InfluxDB's last write to win (`SENSORHUB_LINE_PROTOCOL_ON_CONFLICT`).
    pub line_protocol: Vec<bool>,
    pub letters: Vec<DeadLetter>,
}

/// [`parse_batch`], counting the values that are not readings in `skipped`, and telling the
/// readings that came as line protocol.
pub fn parse_batch_counting(
    entries: &[StreamEntry],
    limits: &Limits,
    reads: StreamShard,
    skipped: &Skipped,
) -> Parsed {
    let ids = SensorIds::default();
    let mut ctx = ParseContext::new(limits, Utc::now(), Utc::now())
        .with_ids(&ids)
        .with_skipped(skipped);
    let mut readings = Vec::with_capacity(entries.len());
    let mut origins = Vec::with_capacity(entries.len());
    let mut line_protocol = Vec::with_capacity(entries.len());
    let mut letters = Vec::new();
    for entry in entries {
        let Some(fields) = &entry.fields else {
            tracing::warn!(entry = %entry.id, "pending entry was deleted from the stream before it was processed");
            continue;
        };
        let replay = Replay::of(fields);
        let received = replay.received.unwrap_or(entry.id);
        ctx.set_received_entry(received.ms, received.seq);
        let split = split_copy(fields);
        let line = is_line_protocol(fields);
        for outcome in reading::parse_entry_fields(fields, &ctx) {
            if let Err(rejection) = &outcome
                && (!replay.keeps(rejection) || split == Some(false))
            {
                continue;
            }
            match outcome {
                Ok(reading) if reads.holds(&reading.sensor_id) => {
                    readings.push(reading);
                    origins.push(received);
                    line_protocol.push(line);
                }
                // Another shard's sensor: its copy of the message is there.
                Ok(_) if split.is_some() => {}
                Ok(reading) if reading.ts != received.time() => {
                    readings.push(reading);
                    origins.push(received);
                    line_protocol.push(line);
                }
                Ok(reading) => letters.push(DeadLetter {
                    entry: entry.id,
                    rejection: foreign_untimed(&reading, reads),
                    original: fields.to_vec(),
                }),
                Err(rejection) => letters.push(DeadLetter {
                    entry: entry.id,
                    rejection,
                    original: fields.to_vec(),
                }),
            }
        }
    }
    Parsed {
        readings,
        origins,
        line_protocol,
        letters,
    }
}

/// Whether an entry's payload is InfluxDB line protocol (`form` `line:<precision>`, from the write
/// endpoints or an MQTT rule's `line` form).
fn is_line_protocol(fields: &[crate::redis::entry::Field]) -> bool {
    fields.iter().any(|(name, value)| {
        name.as_ref() == crate::domain::fields::FORM.as_bytes() && value.starts_with(b"line")
    })
}

/// `Some(true)` for the owner's copy of a message split over shards, `Some(false)` for another
/// copy, `None` for an entry that is the whole message.
fn split_copy(fields: &[crate::redis::entry::Field]) -> Option<bool> {
    fields
        .iter()
        .find(|(name, _)| name.as_ref() == SPLIT.as_bytes())
        .map(|(_, value)| value.as_ref() == OWNER)
}

/// The refusal of a reading without a timestamp whose sensor belongs to another shard.
fn foreign_untimed(reading: &Reading, reads: StreamShard) -> Rejection {
    Rejection::new(
        Reason::NoUniqueTime,
        format!(
            "the reading of {} has no timestamp and was appended to shard {} of {}, while its \
             sensor's shard is {}: its time, taken from the entry, could be one that shard gives \
             another of its readings. Append readings without a timestamp to their sensor's \
             shard (crc32(sensor_id) mod {}), or give them a timestamp",
            crate::domain::reading::excerpt(&reading.sensor_id),
            reads.index,
            reads.of,
            shard_of(&reading.sensor_id, reads.of),
            reads.of
        ),
    )
}

/// What a replayed dead letter's entry says about itself ([`crate::stream::dead_letter`]): the
/// entry its payload first came in as, whose time a reading without a timestamp keeps, so that
/// a replay stores nothing twice; and the one element of the payload it replays (its other
/// elements' rejections have dead letters of their own, and are not kept again).
#[derive(Default)]
struct Replay {
    received: Option<EntryId>,
    only: Option<usize>,
}

impl Replay {
    fn of(fields: &[crate::redis::entry::Field]) -> Self {
        let mut replay = Replay::default();
        for (name, value) in fields {
            match name.as_ref() {
                REPLAY_RECEIVED => replay.received = EntryId::parse_ascii(value),
                REPLAY_ONLY => {
                    replay.only = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
                }
                _ => {}
            }
        }
        replay
    }

    /// Whether a rejection is kept: every one, but in a replay of one element only its own.
    fn keeps(&self, rejection: &Rejection) -> bool {
        match (self.only, rejection.index) {
            (Some(only), Some(index)) => only == index,
            _ => true,
        }
    }
}
