//! The time partitions of `readings` (`PARTITION BY RANGE (ts)`): each spans
//! `SENSORHUB_PARTITION` (aligned to the epoch), created ahead of time at start and on demand
//! before a batch holds a reading no partition covers, so a late or backfilled reading, even
//! one from years ago, is stored rather than refused. There is no default partition.
//!
//! A partition is created clipped to its neighbours, so partitions never overlap whatever
//! widths earlier runs used, and the table an upgrade attached (everything up to its newest day)
//! stays as it is. Creation takes an advisory lock in its transaction and reads the catalog
//! again under it: instances creating the same partition at once create it once. Retention
//! ([`super::retention`]) drops partitions under the same lock and moves the horizon before
//! which no partition is made again: a reading older than it is refused, never stored.

use crate::store::StoreError;
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::RwLock;

/// Serializes partition creation and retention's drops across instances.
pub(crate) const CREATE_LOCK: i64 = 7_358_203_916;

/// The bounds of every partition of `readings`: lower (`None`: MINVALUE) and upper (`None`:
/// MAXVALUE), as the catalog states them.
const PARTITION_BOUNDS: &str = "
SELECT c.relname::text,
       nullif(trim(both '''' from b[1]), 'MINVALUE')::timestamptz,
       nullif(trim(both '''' from b[2]), 'MAXVALUE')::timestamptz
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\((.*)\\) TO \\((.*)\\)') AS b
WHERE i.inhparent = 'readings_hot'::regclass";

/// One partition's range, `[lower, upper)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Range {
    pub name: String,
    pub lower: Option<DateTime<Utc>>,
    pub upper: Option<DateTime<Utc>>,
}

impl Range {
    fn covers(&self, ts: DateTime<Utc>) -> bool {
        self.lower.is_none_or(|l| l <= ts) && self.upper.is_none_or(|u| ts < u)
    }
}

/// The partitions this process knows of, and the width of the ones it creates.
#[derive(Debug)]
pub struct Partitions {
    width: TimeDelta,
    known: RwLock<Vec<Range>>,
    /// The retention horizon as last read: no partition is made before it.
    horizon: RwLock<DateTime<Utc>>,
}

impl Partitions {
    pub fn new(width: std::time::Duration) -> Self {
        Self {
            width: TimeDelta::from_std(width).unwrap_or(TimeDelta::days(1)),
            known: RwLock::new(Vec::new()),
            horizon: RwLock::new(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// The retention horizon as last read: readings before it are refused.
    pub fn horizon(&self) -> DateTime<Utc> {
        *self.horizon.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the partitions known, so that the next [`Self::ensure`] reads them (and the
    /// horizon) again: after a reading found no partition, as when another instance's
    /// retention dropped one.
    pub fn forget(&self) {
        self.known
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Stores the partitions known, sorted by lower bound (unbounded first) for [`covered`].
    fn set_known(&self, mut known: Vec<Range>) {
        known.sort_by_key(|r| r.lower);
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = known;
    }

    /// Makes sure a partition covers each of `times`: nothing to do (no query) when every one
    /// is covered by a known partition, as for nearly every batch.
    pub async fn ensure(
        &self,
        client: &mut tokio_postgres::Client,
        times: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        // One look at the known partitions for the whole batch: it runs before every write.
        let mut missing: Vec<DateTime<Utc>> = Vec::new();
        {
            let known = self.known.read().unwrap_or_else(|e| e.into_inner());
            for ts in times {
                if !covered(&known, ts) && !missing.iter().any(|m| self.same_span(*m, ts)) {
                    missing.push(ts);
                }
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CREATE_LOCK])
            .await?;
        let mut known = load(&tx).await?;
        let horizon = load_horizon(&tx).await?;
        *self.horizon.write().unwrap_or_else(|e| e.into_inner()) = horizon;
        if missing.iter().any(|ts| *ts < horizon) {
            // Never a partition before the horizon: the caller refuses those readings.
            self.set_known(known);
            return Err(StoreError::BeyondHorizon);
        }
        for ts in missing {
            if known.iter().any(|r| r.covers(ts)) {
                continue;
            }
            let range = self.range_for(ts, &known);
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{}\" PARTITION OF readings_hot FOR VALUES FROM ('{}') TO ('{}')",
                range.name,
                range.lower.map_or("MINVALUE".into(), |t| t.to_rfc3339()),
                range.upper.map_or("MAXVALUE".into(), |t| t.to_rfc3339()),
            ))
            .await?;
            tracing::info!(partition = %range.name, from = ?range.lower, to = ?range.upper, "created a partition of readings");
            known.push(range);
        }
        tx.commit().await?;
        self.set_known(known);
        Ok(())
    }

    /// Reads the partitions from the catalog, and creates those of now and the next span.
    pub async fn prepare(&self, client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
        self.set_known(load(&*client).await?);
        let horizon = load_horizon(&*client).await?;
        *self.horizon.write().unwrap_or_else(|e| e.into_inner()) = horizon;
        let now = Utc::now();
        self.ensure(client, [now, now + self.width]).await
    }

    /// Whether `a` and `b` fall in the same span of the width.
    fn same_span(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
        self.span_start(a) == self.span_start(b)
    }

    fn span_start(&self, ts: DateTime<Utc>) -> DateTime<Utc> {
        let width = self.width.num_microseconds().unwrap_or(i64::MAX).max(1);
        let micros = ts.timestamp_micros();
        DateTime::from_timestamp_micros(micros - micros.rem_euclid(width)).unwrap_or(ts)
    }

    /// The range to create for `ts`: its span of the width, clipped to its neighbours.
    fn range_for(&self, ts: DateTime<Utc>, known: &[Range]) -> Range {
        let mut lower = self.span_start(ts);
        let mut upper = lower + self.width;
        for range in known {
            // Every known range lies wholly before or wholly after `ts`, which none covers.
            match (range.upper, range.lower) {
                (Some(u), _) if u <= ts => lower = lower.max(u),
                (_, Some(l)) if l > ts => upper = upper.min(l),
                _ => {}
            }
        }
        Range {
            name: format!("readings_{}", lower.format("%Y%m%d_%H%M%S")),
            lower: Some(lower),
            upper: Some(upper),
        }
    }
}

/// Whether a partition of `known` (sorted by lower bound, never overlapping) covers `ts`: the
/// last one starting at or before it, found by binary search, as years of daily partitions are
/// looked up for every reading written.
fn covered(known: &[Range], ts: DateTime<Utc>) -> bool {
    let after = known.partition_point(|r| r.lower.is_none_or(|l| l <= ts));
    after > 0 && known[after - 1].covers(ts)
}

/// The retention horizon (the earliest time representable when nothing was dropped).
pub(crate) async fn load_horizon(
    client: &impl tokio_postgres::GenericClient,
) -> Result<DateTime<Utc>, StoreError> {
    let row = client
        .query_one(
            "SELECT greatest(horizon, '0001-01-01 00:00:00+00')::timestamptz FROM retention_horizon",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

pub(crate) async fn load(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<Range>, StoreError> {
    Ok(client
        .query(PARTITION_BOUNDS, &[])
        .await?
        .iter()
        .map(|row| Range {
            name: row.get(0),
            lower: row.get(1),
            upper: row.get(2),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_new_partition_is_its_span_clipped_to_its_neighbours() {
        let p = Partitions::new(std::time::Duration::from_secs(86_400));
        let known = vec![
            Range {
                name: "old".into(),
                lower: None,
                upper: Some(at("2026-12-01T06:00:00Z")),
            },
            Range {
                name: "later".into(),
                lower: Some(at("2026-12-03T12:00:00Z")),
                upper: Some(at("2026-12-04T00:00:00Z")),
            },
        ];
        let r = p.range_for(at("2026-12-01T10:00:00Z"), &known);
        assert_eq!(
            (r.lower, r.upper),
            (
                Some(at("2026-12-01T06:00:00Z")),
                Some(at("2026-12-02T00:00:00Z"))
            )
        );
        assert_eq!(r.name, "readings_20261201_060000");
        let r = p.range_for(at("2026-12-03T01:00:00Z"), &known);
        assert_eq!(
            (r.lower, r.upper),
            (
                Some(at("2026-12-03T00:00:00Z")),
                Some(at("2026-12-03T12:00:00Z"))
            )
        );
        // Years ago, before the epoch too: the span of the width.
        let r = p.range_for(at("1969-07-20T20:17:00Z"), &[]);
        assert_eq!(r.lower, Some(at("1969-07-20T00:00:00Z")));
        assert!(p.same_span(at("2026-12-05T00:00:00Z"), at("2026-12-05T23:59:59Z")));
        let mut sorted = known.clone();
        sorted.sort_by_key(|r| r.lower);
        assert!(covered(&sorted, at("2026-11-01T00:00:00Z")));
        assert!(!covered(&sorted, at("2026-12-02T00:00:00Z")));
        assert!(covered(&sorted, at("2026-12-03T12:00:00Z")));
        assert!(!covered(&sorted, at("2026-12-04T00:00:00Z")));
    }
}
