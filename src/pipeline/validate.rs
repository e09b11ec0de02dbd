//! Stage 2, validate: parses every entry of a batch into readings; every rejection goes to the
//! dead-letter stream with its original bytes, reason and detail, before the batch moves on (so it
//! is acknowledged only once it is kept).

use crate::domain::reading::SensorIds;
use crate::domain::{Limits, ParseContext, Reading, Rejection, reading};
use crate::pipeline::faults::Faults;
use crate::pipeline::messages::{RawBatch, Readings};
use crate::pipeline::stage::{count_restart, guarded, off_thread};
use crate::redis::connection::Connection;
use crate::redis::dead_letter::{DeadLetter, DeadLetters, REPLAY_ONLY, REPLAY_RECEIVED};
use crate::redis::entry::{EntryId, StreamEntry};
use crate::telemetry::Metrics;
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;

pub struct Validator {
    limits: Arc<Limits>,
    dead: Arc<DeadLetters>,
    /// Shared multiplexed connection for dead-letter writes.
    conn: Connection,
    window: Recipient<Readings>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
}

impl Validator {
    pub fn new(
        limits: Limits,
        dead: DeadLetters,
        conn: Connection,
        window: Recipient<Readings>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            limits: Arc::new(limits),
            dead: Arc::new(dead),
            conn,
            window,
            metrics,
            faults,
        }
    }
}

impl Actor for Validator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1);
    }
}

impl Supervised for Validator {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "validate");
    }
}

impl Handler<RawBatch> for Validator {
    type Result = ();

    fn handle(&mut self, batch: RawBatch, ctx: &mut Self::Context) {
        let limits = Arc::clone(&self.limits);
        let dead = Arc::clone(&self.dead);
        let mut conn = self.conn.clone();
        let window = self.window.clone();
        let metrics = Arc::clone(&self.metrics);
        let faults = Arc::clone(&self.faults);
        let work = async move {
            let RawBatch { entries, ticket } = batch;
            // The entries' ids are taken there too, so their bytes are freed off the actor thread.
            let (entries, (readings, origins, letters)) = off_thread(move || {
                let parsed = parse_batch(&entries, &limits);
                (entries.iter().map(|e| e.id).collect::<Vec<_>>(), parsed)
            })
            .await;
            ticket.record_shape(entries.len(), readings.len() + letters.len());
            faults.check("validate", readings.iter());
            if !letters.is_empty() {
                dead.keep(&mut conn, &letters, &metrics, "validate").await;
            }
            let message = Readings {
                readings,
                origins,
                entries,
                ticket,
            };
            if window.send(message).await.is_err() {
                tracing::warn!("window stage is gone; its batch will be re-read");
            }
        };
        ctx.wait(guarded("validate", work));
    }
}

/// Parses every entry into readings (with the entry each came from) and dead letters; pure apart
/// from reading the clock.
pub fn parse_batch(
    entries: &[StreamEntry],
    limits: &Limits,
) -> (Vec<Reading>, Vec<EntryId>, Vec<DeadLetter>) {
    let ids = SensorIds::default();
    let mut ctx = ParseContext::new(limits, Utc::now(), Utc::now()).with_ids(&ids);
    let mut readings = Vec::with_capacity(entries.len());
    let mut origins = Vec::with_capacity(entries.len());
    let mut letters = Vec::new();
    for entry in entries {
        let Some(fields) = &entry.fields else {
            tracing::warn!(entry = %entry.id, "pending entry was deleted from the stream before it was processed");
            continue;
        };
        let replay = Replay::of(fields);
        let received = replay.received.unwrap_or(entry.id);
        ctx.set_received_entry(received.ms, received.seq);
        for outcome in reading::parse_entry_fields(fields, &ctx) {
            if let Err(rejection) = &outcome
                && !replay.keeps(rejection)
            {
                continue;
            }
            match outcome {
                Ok(reading) => {
                    readings.push(reading);
                    origins.push(entry.id);
                }
                Err(rejection) => letters.push(DeadLetter {
                    entry: entry.id,
                    rejection,
                    original: fields.to_vec(),
                }),
            }
        }
    }
    (readings, origins, letters)
}

/// What a replayed dead letter's entry says about itself ([`crate::redis::dead_letter`]): the
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
