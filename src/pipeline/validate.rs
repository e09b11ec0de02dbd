//! Stage 2, validate: parses every entry of a batch into readings; every rejection goes to the
//! dead-letter stream with its original bytes, reason and detail, before the batch moves on (so it
//! is acknowledged only once it is kept).

use crate::actor::{count_restart, guarded, off_thread};
use crate::domain::Limits;
use crate::domain::reading::{Skip, Skipped};
use crate::domain::shard::StreamShard;
use crate::pipeline::faults::Faults;
use crate::pipeline::messages::{RawBatch, Readings};
use crate::redis::connection::Connection;
use crate::stream::dead_letter::DeadLetters;
use crate::stream::parse::parse_batch_counting;
use crate::telemetry::Metrics;
use actix::prelude::*;
use std::sync::Arc;

pub struct Validator {
    limits: Arc<Limits>,
    /// The shard of the stream this validator reads: which sensors' readings are its own.
    reads: StreamShard,
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
        reads: StreamShard,
        dead: DeadLetters,
        conn: Connection,
        window: Recipient<Readings>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            limits: Arc::new(limits),
            reads,
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
        let reads = self.reads;
        let dead = Arc::clone(&self.dead);
        let mut conn = self.conn.clone();
        let window = self.window.clone();
        let metrics = Arc::clone(&self.metrics);
        let faults = Arc::clone(&self.faults);
        let work = async move {
            let RawBatch { entries, ticket } = batch;
            // The entries' ids are taken there too, so their bytes are freed off the actor thread.
            let (entries, parsed, skipped) = off_thread(move || {
                let skipped = Skipped::default();
                let parsed = parse_batch_counting(&entries, &limits, reads, &skipped);
                let skipped: Vec<(Skip, u64)> = skipped.counts().filter(|(_, n)| *n > 0).collect();
                let ids = entries.iter().map(|e| e.id).collect::<Vec<_>>();
                (ids, parsed, skipped)
            })
            .await;
            let crate::stream::parse::Parsed {
                readings,
                origins,
                line_protocol,
                letters,
            } = parsed;
            for (skip, count) in skipped {
                metrics
                    .mqtt_values_skipped
                    .with_label_values(&[skip.as_str()])
                    .inc_by(count);
            }
            ticket.record_shape(entries.len(), readings.len() + letters.len());
            faults.check("validate", readings.iter());
            if !letters.is_empty() {
                dead.keep(&mut conn, &letters, &metrics, "validate").await;
            }
            let message = Readings {
                readings,
                origins,
                line_protocol,
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
