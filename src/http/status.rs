//! `GET /api/v1/pipeline`: the figures of the status page's pipeline panel in one answer, behind
//! the API token: throughput and end-to-end latency over about the last minute, the ledger and
//! the consumer group, batches in flight, actor restarts, the readiness checks, and the dead
//! letters by reason with the newest few.
//!
//! Rates and quantiles over the last minute come from snapshots of the counters that each
//! request keeps (at most one every few seconds): against the oldest of the last minute, or the
//! start of the process in its first minute.

use crate::http::dead_letters::DeadLetterView;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::{HttpState, auth::Authorized, health_checks};
use crate::stream::dead_letter::browse::Filter;
use crate::stream::dead_letter::operate::DeadLetterStore;
use crate::telemetry::{ACTORS, Metrics};
use actix_web::{HttpResponse, web};
use chrono::Utc;
use prometheus::core::Metric as _;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// How far back the panel's rates and quantiles look.
const WINDOW: Duration = Duration::from_secs(60);
/// Snapshots closer together than this are not kept.
const SPACING: Duration = Duration::from_secs(2);
/// Newest dead letters shown.
const NEWEST: usize = 5;

/// A snapshot of the counters the panel turns into rates.
#[derive(Clone)]
struct Snapshot {
    at: Instant,
    written: u64,
    /// The latency histogram's cumulative counts by upper bound.
    latency: Vec<(f64, u64)>,
}

impl Snapshot {
    fn of(metrics: &Metrics, at: Instant) -> Self {
        let histogram = metrics.end_to_end_latency.metric();
        let latency = histogram
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        Snapshot {
            at,
            written: metrics.readings_written.get(),
            latency,
        }
    }
}

/// The snapshots of the last minute, and the process's start as the first baseline.
pub struct Snapshots {
    start: Snapshot,
    recent: Mutex<VecDeque<Snapshot>>,
}

impl Snapshots {
    pub fn new(started: Instant) -> Self {
        Snapshots {
            start: Snapshot {
                at: started,
                written: 0,
                latency: Vec::new(),
            },
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Takes a snapshot now; returns it with the baseline it is measured against.
    fn take(&self, metrics: &Metrics) -> (Snapshot, Snapshot) {
        let now = Snapshot::of(metrics, Instant::now());
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent
            .front()
            .is_some_and(|s| now.at.duration_since(s.at) > WINDOW)
        {
            recent.pop_front();
        }
        // Within its first minute the process's start is the exact baseline; later the oldest
        // snapshot of the last minute (a shorter span when nobody asked a minute ago).
        let baseline = match recent.front() {
            Some(oldest) if now.at.duration_since(self.start.at) > WINDOW => oldest.clone(),
            _ => self.start.clone(),
        };
        if recent
            .back()
            .is_none_or(|s| now.at.duration_since(s.at) >= SPACING)
        {
            recent.push_back(now.clone());
        }
        (now, baseline)
    }
}

/// The status page's pipeline panel.
#[derive(Serialize, ToSchema)]
pub struct PipelineStatus {
    /// Readings newly stored per second over `window_seconds`.
    pub readings_per_second: f64,
    /// The span the rate and the quantiles cover: about the last minute.
    pub window_seconds: f64,
    /// Readings newly stored since the process started (`sensorhub_readings_written_total`).
    pub readings_written: u64,
    /// End-to-end latency quantiles over the window, as the upper bound of the histogram
    /// bucket holding them; absent without commits in the window.
    pub latency_p50_seconds: Option<f64>,
    pub latency_p99_seconds: Option<f64>,
    /// Delivered entries no commit covers yet (`sensorhub_ledger_uncommitted_entries`).
    pub uncommitted: i64,
    /// Entries not yet delivered to the group (`sensorhub_consumer_group_lag`).
    pub lag: i64,
    pub batches_in_flight: i64,
    /// Restarts of supervised actors, by actor.
    pub actor_restarts: BTreeMap<String, u64>,
    /// The readiness checks, as `/readyz` answers them: `ok` or the error.
    pub checks: BTreeMap<String, String>,
    pub dead_letters: DeadLetterPanel,
}

/// Dead letters for the panel.
#[derive(Serialize, ToSchema)]
pub struct DeadLetterPanel {
    pub total: u64,
    pub by_reason: BTreeMap<String, u64>,
    pub last_hour: BTreeMap<String, u64>,
    /// The newest few, with their detail and bytes.
    pub newest: Vec<DeadLetterView>,
}

/// The figures of the status page's pipeline panel.
#[utoipa::path(
    get,
    path = "/api/v1/pipeline",
    responses((status = 200, body = PipelineStatus), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = []))
)]
pub(crate) async fn pipeline(
    _: Authorized,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let metrics = &state.metrics;
    let (now, baseline) = state.snapshots.take(metrics);
    let seconds = now.at.duration_since(baseline.at).as_secs_f64().max(0.001);
    let deltas = latency_deltas(&baseline.latency, &now.latency);
    let health = health_checks(&state).await;
    let mut store = DeadLetterStore::new(state.redis.clone(), &state.api.streams);
    let unavailable = |e: redis::RedisError| ApiError::Unavailable(format!("redis: {e}"));
    let summary = store.summary(Utc::now()).await.map_err(unavailable)?;
    let newest = store
        .list(&Filter::default(), None, NEWEST)
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(PipelineStatus {
        readings_per_second: now.written.saturating_sub(baseline.written) as f64 / seconds,
        window_seconds: seconds,
        readings_written: now.written,
        latency_p50_seconds: quantile(&deltas, 0.5),
        latency_p99_seconds: quantile(&deltas, 0.99),
        uncommitted: metrics.ledger_uncommitted.get(),
        lag: metrics.group_lag.get(),
        batches_in_flight: metrics.batches_in_flight.get(),
        actor_restarts: ACTORS
            .iter()
            .map(|actor| {
                let n = metrics.actor_restarts.with_label_values(&[actor]).get();
                ((*actor).to_owned(), n)
            })
            .collect(),
        checks: health
            .checks
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        dead_letters: DeadLetterPanel {
            total: summary.total,
            by_reason: summary.by_reason,
            last_hour: summary.recent,
            newest: newest
                .letters
                .into_iter()
                .map(DeadLetterView::from)
                .collect(),
        },
    }))
}

/// Cumulative bucket counts of the window: now minus the baseline (all of now without one).
fn latency_deltas(baseline: &[(f64, u64)], now: &[(f64, u64)]) -> Vec<(f64, u64)> {
    now.iter()
        .map(|&(bound, count)| {
            let before = baseline
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, count.saturating_sub(before))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q`; `None` for an empty histogram (or one
/// whose quantile lies beyond the last finite bound).
fn quantile(cumulative: &[(f64, u64)], q: f64) -> Option<f64> {
    let total = cumulative.last().map(|(_, c)| *c)?;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    cumulative
        .iter()
        .find(|(_, count)| *count >= rank)
        .map(|(bound, _)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_the_bucket_holding_them_over_the_window() {
        let before = [(0.01, 10), (0.05, 10), (0.1, 10)];
        let now = [(0.01, 10), (0.05, 108), (0.1, 110)];
        let window = latency_deltas(&before, &now);
        assert_eq!(window, [(0.01, 0), (0.05, 98), (0.1, 100)]);
        assert_eq!(quantile(&window, 0.5), Some(0.05));
        assert_eq!(quantile(&window, 0.99), Some(0.1));
        assert_eq!(quantile(&[(0.01, 0)], 0.5), None);
    }
}
