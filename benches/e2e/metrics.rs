//! sensorhub's `/metrics` as the run reads it: samples every 100 ms, histograms and their
//! quantiles.

use super::*;

/// The cumulative latency histogram: (upper bound, count) per bucket.
pub(crate) const LATENCY: &str = "sensorhub_end_to_end_latency_seconds";
pub(crate) const TRANSACTION: &str = "sensorhub_batch_write_duration_seconds";

pub(crate) fn latency_buckets(port: u16) -> Vec<(f64, f64)> {
    let (_, body) = http_get(port, "/metrics").unwrap_or_default();
    buckets_of(&body, LATENCY)
}

/// The cumulative buckets `(le, count)` of the histogram `name` in a `/metrics` body.
pub(crate) fn buckets_of(body: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// Readings committed so far, from `/metrics`.
/// One unlabelled sample in a `/metrics` body.
pub(crate) fn value_of(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// One look at a running sensorhub: seconds since the phase began, readings committed, batch
/// transactions (seconds in them, how many, their histogram), latency histogram.
pub(crate) struct Sample {
    pub(crate) at: f64,
    pub(crate) written: f64,
    pub(crate) transactions: (f64, f64),
    pub(crate) transaction_buckets: Vec<(f64, f64)>,
    pub(crate) buckets: Vec<(f64, f64)>,
}

/// Samples `/metrics` every `SAMPLE_EVERY` on its own thread until stopped, for the plot.
pub(crate) struct Sampler {
    pub(crate) stop: std::sync::mpsc::Sender<()>,
    pub(crate) thread: std::thread::JoinHandle<Vec<Sample>>,
}

/// Often enough that a drain of under two seconds still gives a curve.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples per half second, the interval every curve of the plot is drawn over.
pub(crate) fn half_second() -> usize {
    (0.5 / SAMPLE_EVERY.as_secs_f64()).round().max(1.0) as usize
}

impl Sampler {
    pub(crate) fn start(port: u16, started: Instant) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            loop {
                if let Some((200, body)) = http_get(port, "/metrics") {
                    let value = |name: &str| value_of(&body, name).unwrap_or(0.0);
                    samples.push(Sample {
                        at: started.elapsed().as_secs_f64(),
                        written: value("sensorhub_readings_written_total"),
                        transactions: (
                            value(&format!("{TRANSACTION}_sum")),
                            value(&format!("{TRANSACTION}_count")),
                        ),
                        transaction_buckets: buckets_of(&body, TRANSACTION),
                        buckets: buckets_of(&body, LATENCY),
                    });
                }
                next += SAMPLE_EVERY;
                let wait = next.saturating_duration_since(Instant::now());
                if stopped.recv_timeout(wait) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    return samples;
                }
            }
        });
        Self { stop, thread }
    }

    /// Stops sampling at once and returns the samples.
    pub(crate) fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.thread.join().expect("sampler thread")
    }
}

/// Midpoint seconds, readings/s, p50 ms, p99 ms, mean batch transaction ms, slowest batch
/// transaction ms (the upper bound of its histogram bucket) of one interval.
pub(crate) type Interval = (f64, f64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// Per interval of `span` samples, sliding by one, an [`Interval`]; the quantiles interpolated
/// within the histogram bucket as Prometheus' `histogram_quantile` does, `None` for an interval
/// without commits.
pub(crate) fn series(samples: &[Sample], span: usize) -> Vec<Interval> {
    samples
        .windows(span + 1)
        .map(|w| {
            let (a, b) = (&w[0], &w[span]);
            let dt = b.at - a.at;
            let rate = (b.written - a.written) / dt;
            let q = |q| interpolated_quantile(&a.buckets, &b.buckets, q).map(|s| s * 1000.0);
            let batches = b.transactions.1 - a.transactions.1;
            let mean =
                (batches > 0.0).then(|| 1000.0 * (b.transactions.0 - a.transactions.0) / batches);
            let slowest = (batches > 0.0)
                .then(|| 1000.0 * quantile(&a.transaction_buckets, &b.transaction_buckets, 1.0));
            ((a.at + b.at) / 2.0, rate, q(0.5), q(0.99), mean, slowest)
        })
        .collect()
}

/// `histogram_quantile` over the observations between two snapshots.
pub(crate) fn interpolated_quantile(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    q: f64,
) -> Option<f64> {
    let deltas = bucket_deltas(before, after);
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &deltas {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

pub(crate) fn bucket_deltas(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, m)| *m);
            (*le, n - earlier)
        })
        .collect()
}

/// The bucket bound holding quantile `q` of the observations between two snapshots.
pub(crate) fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let deltas = bucket_deltas(before, after);
    let total = deltas.last().map_or(0.0, |(_, n)| *n);
    deltas
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| *le)
}
