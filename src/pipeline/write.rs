//! Stage 4, write: one transaction per batch (see [`store::write_batch`]), retried with capped
//! backoff until it commits — a batch is never dropped — then reported for acknowledgement.

use crate::domain::Resolution;
use crate::pipeline::ack::Acker;
use crate::pipeline::messages::{Committed, WriteBatch};
use crate::pipeline::{Backoff, Faults, count_restart, guarded};
use crate::store::{self, BatchOutcome, StoreError};
use crate::telemetry::Metrics;
use actix::prelude::*;
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::time::Instant;

pub struct Writer {
    pool: Pool,
    resolutions: Arc<[Resolution]>,
    acker: Addr<Acker>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
}

impl Writer {
    pub fn new(
        pool: Pool,
        resolutions: &[Resolution],
        acker: Addr<Acker>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            pool,
            resolutions: resolutions.into(),
            acker,
            metrics,
            faults,
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1);
    }
}

impl Supervised for Writer {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "write");
    }
}

impl Handler<WriteBatch> for Writer {
    type Result = ();

    fn handle(&mut self, batch: WriteBatch, ctx: &mut Self::Context) {
        let pool = self.pool.clone();
        let resolutions = Arc::clone(&self.resolutions);
        let acker = self.acker.clone();
        let metrics = Arc::clone(&self.metrics);
        let faults = Arc::clone(&self.faults);
        let work = async move {
            faults.check("write", batch.readings.iter());
            let started = Instant::now();
            let outcome = write_until_committed(&pool, &batch, &resolutions, &metrics).await;
            metrics
                .batch_write_duration
                .observe(started.elapsed().as_secs_f64());
            metrics.readings_written.inc_by(outcome.inserted);
            metrics
                .readings_duplicate
                .inc_by(outcome.duplicates + batch.duplicates_in_batch);
            metrics
                .aggregate_rows_upserted
                .inc_by(outcome.aggregate_rows);
            let now = chrono::Utc::now();
            metrics.last_commit_time.set(now.timestamp());
            for entry in &batch.entries {
                let latency = now.signed_duration_since(entry.time());
                metrics
                    .end_to_end_latency
                    .observe(latency.as_seconds_f64().max(0.0));
            }
            let committed = Committed {
                entries: batch.entries,
                ticket: batch.ticket,
            };
            if acker.send(committed).await.is_err() {
                tracing::warn!(
                    "ack stage is gone; the committed batch will be re-read and skipped as duplicates"
                );
            }
        };
        ctx.wait(guarded("write", work));
    }
}

/// Retries the batch transaction until it commits, logging once when the database starts failing
/// and once when it works again.
async fn write_until_committed(
    pool: &Pool,
    batch: &WriteBatch,
    resolutions: &[Resolution],
    metrics: &Metrics,
) -> BatchOutcome {
    let mut backoff = Backoff::new();
    let mut failing = false;
    loop {
        match try_write(pool, batch, resolutions).await {
            Ok(outcome) => {
                if failing {
                    tracing::info!(
                        readings = batch.readings.len(),
                        "database writes work again"
                    );
                }
                return outcome;
            }
            Err(error) => {
                metrics.database_errors.inc();
                metrics.write_retries.inc();
                if !failing {
                    let kind = if error.is_transient() {
                        "transient"
                    } else {
                        "persistent"
                    };
                    tracing::warn!(%error, kind, readings = batch.readings.len(), "batch write failed, retrying");
                    failing = true;
                }
                backoff.wait().await;
            }
        }
    }
}

async fn try_write(
    pool: &Pool,
    batch: &WriteBatch,
    resolutions: &[Resolution],
) -> Result<BatchOutcome, StoreError> {
    let mut client = pool.get().await?;
    store::write_batch(&mut client, &batch.readings, &batch.partials, resolutions).await
}
