//! Stage 3, window: drops readings repeated within the batch, folds the rest into partial
//! aggregates per `(sensor, resolution, bucket)`, and splits both by sensor into one shard per
//! write connection, in key order: the writer's connections only have to stream them to
//! PostgreSQL, and this work overlaps the previous batch's transactions.

use crate::domain::{FastState, Reading, Resolution, Windows};
use crate::pipeline::messages::{Readings, WriteBatch};
use crate::pipeline::write::{Shard, Writer, split};
use crate::pipeline::{Faults, count_restart, guarded};
use crate::streams::EntryId;
use crate::telemetry::Metrics;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;

pub struct Window {
    resolutions: Arc<[Resolution]>,
    /// Write connections: shards per batch.
    shards: usize,
    writer: Addr<Writer>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
}

impl Window {
    pub fn new(
        resolutions: &[Resolution],
        shards: usize,
        writer: Addr<Writer>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            resolutions: resolutions.into(),
            shards: shards.max(1),
            writer,
            metrics,
            faults,
        }
    }
}

impl Actor for Window {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1);
    }
}

impl Supervised for Window {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "window");
    }
}

impl Handler<Readings> for Window {
    type Result = ();

    fn handle(&mut self, batch: Readings, ctx: &mut Self::Context) {
        let resolutions = Arc::clone(&self.resolutions);
        let shards = self.shards;
        let writer = self.writer.clone();
        let faults = Arc::clone(&self.faults);
        let work = async move {
            faults.check("window", batch.readings.iter());
            let (shards, duplicates_in_batch) =
                prepare(batch.readings, batch.origins, &resolutions, shards);
            let message = WriteBatch {
                duplicates_in_batch,
                shards,
                entries: batch.entries,
                ticket: batch.ticket,
            };
            if writer.send(message).await.is_err() {
                tracing::warn!("write stage is gone; its batch will be re-read");
            }
        };
        ctx.wait(guarded("window", work));
    }
}

/// What this stage does to a batch: drops readings repeated within it (returning how many), folds
/// the rest into partials and splits both into `shards` write shards.
pub fn prepare(
    readings: Vec<Reading>,
    origins: Vec<EntryId>,
    resolutions: &[Resolution],
    shards: usize,
) -> (Vec<Shard>, u64) {
    let total = readings.len();
    let keep = first_of_each_key(&readings);
    let (readings, origins): (Vec<_>, Vec<_>) = readings
        .into_iter()
        .zip(origins)
        .zip(keep)
        .filter_map(|(pair, keep)| keep.then_some(pair))
        .unzip();
    let partials = Windows::fold(resolutions, &readings);
    let duplicates = (total - readings.len()) as u64;
    (split(readings, origins, partials, shards), duplicates)
}

/// For each reading, whether it is the first of its `(sensor_id, ts)` in the batch.
fn first_of_each_key(readings: &[Reading]) -> Vec<bool> {
    let mut seen: HashSet<(&str, DateTime<Utc>), FastState> =
        HashSet::with_capacity_and_hasher(readings.len(), FastState::default());
    readings
        .iter()
        .map(|r| seen.insert((r.sensor_id.as_str(), r.ts)))
        .collect()
}
