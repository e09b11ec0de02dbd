//! The one loop of every source that one instance of several runs at a time (the Pub/Sub bridge,
//! the MQTT source): take the lease, do the job while it is held, and when another instance holds
//! it, try again every third of its time. A failure is retried with backoff, told to `/readyz`,
//! counted in `sensorhub_redis_errors_total{actor}` when Redis failed, and logged once when it
//! starts and once when the source works again; on stop the lease is given back.

use crate::actor::stop_requested;
use crate::redis::connection::Connection;
use crate::retry::Backoff;
use crate::stream::lease::Leases;
use crate::telemetry::Metrics;
use std::time::Duration;
use tokio::sync::watch;

/// How a turn with the lease ended.
pub(crate) enum Ended {
    /// Stop requested, or the lease went to another instance.
    Done,
    /// The job is over for good: the loop ends, and gives its lease back.
    Finished,
    /// The job failed: why, and whether Redis failed it (else the broker or the source itself).
    Failed { why: String, redis: bool },
}

impl Ended {
    /// A failure of Redis.
    pub(crate) fn redis(error: impl std::fmt::Display) -> Self {
        Self::Failed {
            why: format!("redis: {error}"),
            redis: true,
        }
    }

    /// A failure of anything but Redis.
    pub(crate) fn other(why: String) -> Self {
        Self::Failed { why, redis: false }
    }
}

/// What the loop works with, borrowed from the source for one step.
pub(crate) struct LoopParts<'a> {
    pub leases: &'a Leases,
    pub conn: &'a mut Connection,
    pub stop: &'a mut watch::Receiver<bool>,
    pub metrics: &'a Metrics,
    pub lease_ttl: Duration,
}

/// A source run under a lease.
pub(crate) trait Leased {
    /// The source's name in log lines and in `sensorhub_redis_errors_total{actor}`.
    const NAME: &'static str;

    fn parts(&mut self) -> LoopParts<'_>;

    /// What the log lines name besides the source: its channel, its broker.
    fn target(&self) -> String;

    /// Does the job while this instance holds the lease.
    async fn hold(&mut self) -> Ended;

    /// Another instance holds the lease, and its own `/readyz` speaks for it.
    fn others_hold(&mut self);

    /// The job failed, for `/readyz`.
    fn failed(&mut self, why: &str);

    /// After every turn, the lease held or not.
    fn turn_ended(&mut self) {}
}

/// Runs `source` until a stop is requested, then gives its lease back.
pub(crate) async fn run<S: Leased>(source: &mut S) {
    let mut backoff = Backoff::new();
    let mut failing = false;
    loop {
        let acquired = {
            let parts = source.parts();
            if stop_requested(parts.stop) {
                break;
            }
            parts.leases.acquire(parts.conn).await
        };
        let ended = match acquired {
            Ok(true) => {
                if std::mem::take(&mut failing) {
                    tracing::info!(source = S::NAME, target = %source.target(), "works again");
                }
                source.hold().await
            }
            Ok(false) => {
                source.others_hold();
                let parts = source.parts();
                tokio::select! {
                    _ = tokio::time::sleep(parts.lease_ttl / 3) => {}
                    _ = parts.stop.changed() => {}
                }
                Ended::Done
            }
            Err(error) => Ended::redis(error),
        };
        source.turn_ended();
        match ended {
            Ended::Done => backoff.reset(),
            Ended::Finished => break,
            Ended::Failed { why, redis } => {
                source.failed(&why);
                if redis {
                    let metrics = source.parts().metrics;
                    metrics.redis_errors.with_label_values(&[S::NAME]).inc();
                }
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(source = S::NAME, target = %source.target(), error = %why, "interrupted, retrying");
                }
                // A stop ends the wait: the shutdown waits for this loop.
                let parts = source.parts();
                tokio::select! {
                    _ = backoff.wait() => {}
                    _ = parts.stop.changed() => {}
                }
            }
        }
    }
    let parts = source.parts();
    let _ = parts.leases.release(parts.conn).await;
}
