//! Stage 5, ack: records the stream ranges of committed batches in the [`ledger`] and settles their
//! tickets; once a second it merges the ledger into its watermark, trims the stream up to it
//! (keeping the configured tail) and refreshes the consumer-group metrics.

use crate::actor::{count_restart, guarded};
use crate::pipeline::flow::{Carried, Flow};
use crate::pipeline::messages::Committed;
use crate::redis::connection::Connection;
use crate::redis::entry::EntryId;
use crate::retry::Backoff;
use crate::stream::{group, ledger};
use crate::telemetry::Metrics;
use actix::prelude::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often the stream is trimmed and the group metrics refreshed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// Attempts to record a batch's commit before leaving it to be re-read (it is committed, so a
/// re-read only skips duplicates).
const ACK_ATTEMPTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct AckSettings {
    pub stream: String,
    /// Which of the instance's streams this is, its place in [`ShardGauges`].
    pub shard: usize,
    pub group: String,
    /// A token unique to this instance, under which it publishes its entries in flight.
    pub instance: String,
    /// Committed entries kept in the stream for inspection.
    pub tail: usize,
}

/// The consumer-group gauges of every stream the instance reads, each acker setting its own:
/// the exported gauges are their sums (the watermark's age: the oldest).
#[derive(Debug, Default)]
pub struct ShardGauges {
    shards: std::sync::Mutex<Vec<StreamGauges>>,
}

#[derive(Clone, Copy, Debug, Default)]
struct StreamGauges {
    lag: Option<i64>,
    uncommitted: i64,
    watermark_age: f64,
}

impl ShardGauges {
    pub fn new(shards: usize) -> Self {
        Self {
            shards: std::sync::Mutex::new(vec![StreamGauges::default(); shards]),
        }
    }

    /// Records one stream's figures and exports the totals.
    fn set(&self, shard: usize, figures: StreamGauges, metrics: &Metrics) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if shard >= shards.len() {
            shards.resize(shard + 1, StreamGauges::default());
        }
        shards[shard] = figures;
        if shards.iter().any(|s| s.lag.is_some()) {
            metrics
                .group_lag
                .set(shards.iter().filter_map(|s| s.lag).sum());
        }
        metrics
            .ledger_uncommitted
            .set(shards.iter().map(|s| s.uncommitted).sum());
        metrics
            .ledger_watermark_age
            .set(shards.iter().map(|s| s.watermark_age).fold(0.0, f64::max));
    }
}

pub struct Acker {
    settings: Arc<AckSettings>,
    gauges: Arc<ShardGauges>,
    conn: Connection,
    /// This instance's batches in flight, published for the group-wide count.
    flow: Arc<Flow>,
    metrics: Arc<Metrics>,
    /// True while a maintenance pass runs, so passes never overlap on a slow Redis.
    maintaining: Arc<AtomicBool>,
    /// True while recording commits fails: one log line when it starts failing, one when it works.
    failing: Arc<AtomicBool>,
}

impl Acker {
    pub fn new(
        settings: AckSettings,
        conn: Connection,
        flow: Arc<Flow>,
        gauges: Arc<ShardGauges>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            gauges,
            conn,
            flow,
            metrics,
            maintaining: Arc::new(AtomicBool::new(false)),
            failing: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Actor for Acker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1);
        ctx.run_interval(MAINTENANCE_INTERVAL, |acker, ctx| {
            if acker.maintaining.swap(true, Ordering::AcqRel) {
                return;
            }
            let settings = Arc::clone(&acker.settings);
            let mut conn = acker.conn.clone();
            let metrics = Arc::clone(&acker.metrics);
            let flow = Arc::clone(&acker.flow);
            let gauges = Arc::clone(&acker.gauges);
            let maintaining = Arc::clone(&acker.maintaining);
            ctx.spawn(guarded("ack", async move {
                if let Err(error) = maintain(&mut conn, &settings, &flow, &gauges, &metrics).await {
                    metrics.redis_errors.with_label_values(&["ack"]).inc();
                    tracing::debug!(%error, "stream maintenance failed; next pass retries");
                }
                maintaining.store(false, Ordering::Release);
            }));
        });
    }
}

impl Supervised for Acker {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "ack");
        self.maintaining.store(false, Ordering::Release);
    }
}

impl Handler<Committed> for Acker {
    type Result = ();

    fn handle(&mut self, batch: Committed, ctx: &mut Self::Context) {
        let settings = Arc::clone(&self.settings);
        let mut conn = self.conn.clone();
        let metrics = Arc::clone(&self.metrics);
        let failing = Arc::clone(&self.failing);
        let work = async move {
            let mut backoff = Backoff::new();
            let Some(carried) = batch.ticket.carried().cloned() else {
                batch.ticket.settle();
                return;
            };
            for _ in 0..ACK_ATTEMPTS {
                match record(&mut conn, &settings, &carried, &batch.entries).await {
                    Ok(()) => {
                        if failing.swap(false, Ordering::AcqRel) {
                            tracing::info!("recording commits works again");
                        }
                        metrics.entries_acked.inc_by(carried.entries as u64);
                        batch.ticket.settle();
                        return;
                    }
                    Err(error) => {
                        metrics.redis_errors.with_label_values(&["ack"]).inc();
                        if !failing.swap(true, Ordering::AcqRel) {
                            tracing::warn!(%error, entries = carried.entries, "recording a commit failed, retrying");
                        }
                        backoff.wait().await;
                    }
                }
            }
            tracing::warn!(
                entries = carried.entries,
                "recording the commit kept failing; the committed batch will be re-read and skipped as duplicates"
            );
        };
        ctx.wait(guarded("ack", work));
    }
}

/// Records a committed batch in the ledger and merges it. A re-read batch is also `XACK`ed
/// ([`group::acknowledge`]).
async fn record(
    conn: &mut Connection,
    settings: &AckSettings,
    carried: &Carried,
    entries: &[EntryId],
) -> redis::RedisResult<()> {
    if carried.re_read {
        group::acknowledge(conn, &settings.stream, &settings.group, entries).await?;
    }
    ledger::record(conn, &settings.stream, &settings.group, &carried.ranges).await?;
    // Merged at once, so the watermark follows the commits (in order, a batch's ranges continue
    // it): the sorted set stays a handful of ranges, and what waits on the watermark (trimming,
    // an operator's check) sees the commit now rather than at the next maintenance pass.
    ledger::compact(conn, &settings.stream, &settings.group)
        .await
        .map(drop)
}

/// How long an instance's count of entries in flight stays in the group-wide sum without a new
/// one: a few maintenance passes, so a stopped instance leaves it soon.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(5);

async fn maintain(
    conn: &mut Connection,
    settings: &AckSettings,
    flow: &Flow,
    gauges: &ShardGauges,
    metrics: &Metrics,
) -> redis::RedisResult<()> {
    let progress = ledger::compact(conn, &settings.stream, &settings.group).await?;
    let groups = group::groups(conn, &settings.stream).await?;
    let lag = groups
        .iter()
        .find(|g| g.name == settings.group)
        .and_then(|ours| ours.lag)
        .map(|lag| lag as i64);
    let uncommitted = ledger::in_flight(
        conn,
        &settings.stream,
        &settings.group,
        &settings.instance,
        flow.in_flight(),
        IN_FLIGHT_TTL,
    )
    .await?;
    gauges.set(
        settings.shard,
        StreamGauges {
            lag,
            uncommitted: uncommitted as i64,
            watermark_age: progress.map_or(0.0, |p| watermark_age(&p, chrono::Utc::now())),
        },
        metrics,
    );
    group::trim_acknowledged(
        conn,
        &settings.stream,
        &settings.group,
        &groups,
        settings.tail,
    )
    .await
}

/// How long the oldest delivered entry that is not committed has waited, by its id's time: the
/// watermark's lag behind the work delivered. 0 when every delivered entry is committed.
fn watermark_age(progress: &ledger::Progress, now: chrono::DateTime<chrono::Utc>) -> f64 {
    match progress.next {
        Some(next) if next <= progress.last_delivered => {
            let waited = now.timestamp_millis() - next.ms.min(i64::MAX as u64) as i64;
            waited.max(0) as f64 / 1000.0
        }
        _ => 0.0,
    }
}
