//! Epoch-aligned tumbling windows and mergeable partial aggregates.
//!
//! A batch's readings are folded into partial [`Aggregate`]s per `(sensor, resolution, bucket)`;
//! the writer merges each partial into the stored row with the same rules as [`Aggregate::merge`]
//! (count + count, least of mins, earlier first, later last), so a window built from any split of
//! its readings into batches, in any order, equals the one a `GROUP BY` over the raw rows gives.

use crate::domain::{FastState, Reading};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A window length in whole seconds, e.g. `1m` or `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Resolution {
    seconds: u32,
}

impl Resolution {
    /// Longest accepted window: 31 days.
    pub const MAX_SECONDS: u32 = 31 * 24 * 3600;

    pub fn from_seconds(seconds: u32) -> Option<Self> {
        (1..=Self::MAX_SECONDS)
            .contains(&seconds)
            .then_some(Self { seconds })
    }

    pub fn seconds(self) -> u32 {
        self.seconds
    }

    /// The start of the window holding `ts`.
    pub fn bucket(self, ts: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.bucket_micros(ts.timestamp_micros())).unwrap_or(ts)
    }

    /// The start of the window holding the instant `micros` (microseconds since the epoch).
    pub fn bucket_micros(self, micros: i64) -> i64 {
        let width = i64::from(self.seconds) * 1_000_000;
        micros.div_euclid(width) * width
    }
}

impl fmt::Display for Resolution {
    /// The canonical label stored in `aggregates.resolution`: the largest unit that divides evenly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.seconds;
        match () {
            _ if s.is_multiple_of(86_400) => write!(f, "{}d", s / 86_400),
            _ if s.is_multiple_of(3_600) => write!(f, "{}h", s / 3_600),
            _ if s.is_multiple_of(60) => write!(f, "{}m", s / 60),
            _ => write!(f, "{s}s"),
        }
    }
}

impl FromStr for Resolution {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let duration: Duration = humantime::parse_duration(text.trim())
            .map_err(|e| format!("{text:?} is not a duration such as 1m or 1h: {e}"))?;
        if duration.subsec_nanos() != 0 {
            return Err(format!("{text:?} is not a whole number of seconds"));
        }
        u32::try_from(duration.as_secs())
            .ok()
            .and_then(Resolution::from_seconds)
            .ok_or_else(|| format!("{text:?} must be between 1s and 31d"))
    }
}

/// A partial or complete window aggregate. `mean` and `diff` are derived, not stored.
///
/// `increase` is the sum of its readings' steps (`domain::increase`), which depend on readings
/// outside the window: the fold leaves it 0, and the writer adds the steps it works out against the
/// stored readings. Partials add up like `count`.
#[derive(Clone, Debug, PartialEq)]
pub struct Aggregate {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first_ts: DateTime<Utc>,
    pub first_value: f64,
    pub last_ts: DateTime<Utc>,
    pub last_value: f64,
    pub increase: f64,
}

impl Aggregate {
    pub fn of(ts: DateTime<Utc>, value: f64) -> Self {
        Self {
            count: 1,
            sum: value,
            min: value,
            max: value,
            first_ts: ts,
            first_value: value,
            last_ts: ts,
            last_value: value,
            increase: 0.0,
        }
    }

    /// Adds one reading of the same window: `merge` with `Aggregate::of(ts, value)`.
    pub fn add(&mut self, ts: DateTime<Utc>, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if ts < self.first_ts {
            self.first_ts = ts;
            self.first_value = value;
        }
        if ts > self.last_ts {
            self.last_ts = ts;
            self.last_value = value;
        }
    }

    /// Merges another partial of the same window. Same rules as the SQL upsert in `store::sql`.
    pub fn merge(&mut self, other: &Aggregate) {
        self.count += other.count;
        self.increase += other.increase;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.first_ts < self.first_ts {
            self.first_ts = other.first_ts;
            self.first_value = other.first_value;
        }
        if other.last_ts > self.last_ts {
            self.last_ts = other.last_ts;
            self.last_value = other.last_value;
        }
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count as f64
    }

    /// `last − first`: what a meter consumed over the window.
    pub fn diff(&self) -> f64 {
        self.last_value - self.first_value
    }
}

/// The key of one aggregate row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggKey {
    pub sensor_id: String,
    pub resolution: Resolution,
    pub bucket: DateTime<Utc>,
}

/// Folds readings into partial aggregates at every configured resolution.
pub struct Windows;

impl Windows {
    /// Folds `readings` into partials per `(sensor, resolution, bucket)`, sorted by key: every
    /// writer upserts rows in this one order, so concurrent transactions queue on row locks
    /// instead of deadlocking.
    pub fn fold<'a>(
        resolutions: &[Resolution],
        readings: impl IntoIterator<Item = &'a Reading>,
    ) -> Vec<(AggKey, Aggregate)> {
        let readings: Vec<&Reading> = readings.into_iter().collect();
        let order = Self::key_order(&readings);
        Self::fold_sorted(resolutions, order.iter().map(|&i| readings[i as usize]))
    }

    /// The positions of `readings` in key order `(sensor_id, ts)`, equal keys in arrival order.
    ///
    /// Sensor ids are ranked once (a hash lookup each, then a sort of the distinct ids); the
    /// positions are then placed by rank, in arrival order (a counting sort), and only a sensor
    /// whose readings did not arrive in time order is sorted by time. A batch holds many readings
    /// of each sensor, nearly always in time order: a comparison sort of the whole batch was the
    /// largest single cost of the window stage.
    ///
    /// The lookup is by the id's allocation, which the readings of one sensor parsed together
    /// share (`SensorIds`), rather than by its text; equal ids in different allocations are
    /// given one rank when the distinct ones are sorted.
    pub fn key_order<R: std::borrow::Borrow<Reading>>(readings: &[R]) -> Vec<u32> {
        let mut ids: HashMap<*const u8, u32, FastState> = HashMap::default();
        let mut texts: Vec<&str> = Vec::new();
        let first_rank: Vec<u32> = readings
            .iter()
            .map(|r| {
                let id = &r.borrow().sensor_id;
                *ids.entry(id.as_ptr()).or_insert_with(|| {
                    texts.push(id);
                    texts.len() as u32 - 1
                })
            })
            .collect();
        let mut names: Vec<(&str, u32)> = texts.into_iter().zip(0..).collect();
        names.sort_unstable();
        let mut rank = vec![0u32; names.len()];
        let mut sensor = 0;
        for (position, &(name, id)) in names.iter().enumerate() {
            if position > 0 && names[position - 1].0 != name {
                sensor += 1;
            }
            rank[id as usize] = sensor;
        }
        // Where each sensor's run starts in the output, then the positions placed run by run.
        let mut starts = vec![0usize; names.len() + 1];
        for &id in &first_rank {
            starts[rank[id as usize] as usize + 1] += 1;
        }
        for k in 1..starts.len() {
            starts[k] += starts[k - 1];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; readings.len()];
        for (position, &id) in first_rank.iter().enumerate() {
            let slot = &mut next[rank[id as usize] as usize];
            order[*slot] = position as u32;
            *slot += 1;
        }
        let ts = |position: &u32| readings[*position as usize].borrow().ts;
        for run in starts.windows(2) {
            let run = &mut order[run[0]..run[1]];
            if !run.is_sorted_by_key(ts) {
                // Stable: equal timestamps stay in arrival order.
                run.sort_by_key(ts);
            }
        }
        order
    }

    /// [`Windows::fold`] of readings already in key order `(sensor_id, ts)`: each sensor's windows
    /// are consecutive runs, so partials are built in key order with no map and no sort.
    pub fn fold_sorted<'a>(
        resolutions: &[Resolution],
        sorted: impl IntoIterator<Item = &'a Reading>,
    ) -> Vec<(AggKey, Aggregate)> {
        let mut resolutions = resolutions.to_vec();
        resolutions.sort_unstable();
        resolutions.dedup();
        let mut rows = Vec::new();
        // One sensor's readings with their instants in microseconds: the calendar conversions of
        // `DateTime` cost more than the rest of the fold, so they happen once per reading (and
        // once per partial on the way back), not per reading and resolution.
        let mut run: Vec<(i64, &Reading)> = Vec::new();
        let flush = |run: &mut Vec<(i64, &Reading)>, rows: &mut Vec<(AggKey, Aggregate)>| {
            let Some((_, first)) = run.first() else {
                return;
            };
            for &resolution in &resolutions {
                let mut open: Option<(i64, Aggregate)> = None;
                for &(micros, r) in run.iter() {
                    let bucket = resolution.bucket_micros(micros);
                    match &mut open {
                        Some((b, agg)) if *b == bucket => agg.add(r.ts, r.value),
                        _ => {
                            if let Some(done) = open.take() {
                                rows.push(Self::row(&first.sensor_id, resolution, done));
                            }
                            open = Some((bucket, Aggregate::of(r.ts, r.value)));
                        }
                    }
                }
                if let Some(done) = open {
                    rows.push(Self::row(&first.sensor_id, resolution, done));
                }
            }
            run.clear();
        };
        for reading in sorted {
            if let Some((_, last)) = run.last() {
                debug_assert!(
                    (&last.sensor_id, last.ts) <= (&reading.sensor_id, reading.ts),
                    "fold_sorted needs readings in key order"
                );
                if !last.same_sensor(reading) {
                    flush(&mut run, &mut rows);
                }
            }
            run.push((reading.ts.timestamp_micros(), reading));
        }
        flush(&mut run, &mut rows);
        rows
    }

    fn row(
        sensor_id: &str,
        resolution: Resolution,
        (bucket, agg): (i64, Aggregate),
    ) -> (AggKey, Aggregate) {
        let key = AggKey {
            sensor_id: sensor_id.to_owned(),
            resolution,
            bucket: DateTime::from_timestamp_micros(bucket).unwrap_or(agg.first_ts),
        };
        (key, agg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn reading(sensor: &str, t: &str, value: f64) -> Reading {
        Reading {
            sensor_id: sensor.into(),
            ts: ts(t),
            value,
            unit: None,
        }
    }

    #[test]
    fn resolution_labels_round_trip() {
        for (text, label) in [
            ("1m", "1m"),
            ("60s", "1m"),
            ("1h", "1h"),
            ("90s", "90s"),
            ("1day", "1d"),
        ] {
            let r: Resolution = text.parse().unwrap();
            assert_eq!(r.to_string(), label);
            assert_eq!(r.to_string().parse::<Resolution>().unwrap(), r);
        }
        assert!("0s".parse::<Resolution>().is_err());
        assert!("1.5s".parse::<Resolution>().is_err());
        assert!("soon".parse::<Resolution>().is_err());
    }

    #[test]
    fn buckets_are_epoch_aligned() {
        let m: Resolution = "1m".parse().unwrap();
        let h: Resolution = "1h".parse().unwrap();
        assert_eq!(
            m.bucket(ts("2024-12-01T12:34:56.789Z")),
            ts("2024-12-01T12:34:00Z")
        );
        assert_eq!(
            h.bucket(ts("2024-12-01T12:34:56Z")),
            ts("2024-12-01T12:00:00Z")
        );
        assert_eq!(
            m.bucket(ts("1969-12-31T23:59:30Z")),
            ts("1969-12-31T23:59:00Z")
        );
    }

    #[test]
    fn fold_computes_every_field() {
        let m: Resolution = "1m".parse().unwrap();
        let rows = Windows::fold(
            &[m],
            &[
                reading("meter", "2024-12-01T12:00:30Z", 105.0),
                reading("meter", "2024-12-01T12:00:10Z", 100.0),
                reading("meter", "2024-12-01T12:00:50Z", 112.0),
                reading("meter", "2024-12-01T12:01:00Z", 113.0),
            ],
        );
        assert_eq!(rows.len(), 2);
        let (key, agg) = &rows[0];
        assert_eq!(key.bucket, ts("2024-12-01T12:00:00Z"));
        assert_eq!(
            (agg.count, agg.sum, agg.min, agg.max),
            (3, 317.0, 100.0, 112.0)
        );
        assert_eq!(
            (agg.first_value, agg.last_value, agg.diff()),
            (100.0, 112.0, 12.0)
        );
        assert_eq!(agg.first_ts, ts("2024-12-01T12:00:10Z"));
        assert!((agg.mean() - 317.0 / 3.0).abs() < 1e-12);
    }

    proptest! {
        /// The counting-sort key order is the order of a full sort by `(sensor_id, ts, arrival)`,
        /// whether the readings arrive in time order (most batches) or not, with repeated keys.
        #[test]
        fn key_order_is_the_sorted_order(
            values in prop::collection::vec((0usize..6, 0i64..40, any::<bool>()), 0..300),
            in_time_order in any::<bool>(),
        ) {
            let base = ts("2024-01-01T00:00:00Z").timestamp();
            let names = ["b", "a", "ab", "a-1", "B", "é"];
            // Ids shared by readings, as a batch's parse gives them, or a copy of their own.
            let shared: Vec<std::sync::Arc<str>> = names.iter().map(|&n| n.into()).collect();
            let readings: Vec<Reading> = values.iter()
                .enumerate()
                .map(|(i, &(sensor, s, own))| Reading {
                    sensor_id: if own { names[sensor].into() } else { shared[sensor].clone() },
                    // In time order: each reading a second after the one before, but for the
                    // generated offset of one in five.
                    ts: DateTime::from_timestamp(
                        base + if in_time_order && s % 5 != 0 { i as i64 } else { s },
                        0,
                    )
                    .unwrap(),
                    value: 0.0,
                    unit: None,
                })
                .collect();
            // The order by definition: one comparison sort of the positions by
            // `(sensor_id, ts, arrival)`.
            let mut sorted: Vec<u32> = (0..readings.len() as u32).collect();
            sorted.sort_by_key(|&i| {
                let r = &readings[i as usize];
                (r.sensor_id.clone(), r.ts, i)
            });
            prop_assert_eq!(Windows::key_order(&readings), sorted);
        }

        /// Adding a reading is merging its one-reading aggregate.
        #[test]
        fn add_equals_merge_of_one(
            first in (0i64..7200, -1000i32..1000),
            rest in prop::collection::vec((0i64..7200, -1000i32..1000), 0..20),
        ) {
            let base = ts("2024-01-01T00:00:00Z").timestamp();
            let at = |s: i64| DateTime::from_timestamp(base + s, 0).unwrap();
            let mut added = Aggregate::of(at(first.0), f64::from(first.1));
            let mut merged = added.clone();
            for &(s, v) in &rest {
                added.add(at(s), f64::from(v));
                merged.merge(&Aggregate::of(at(s), f64::from(v)));
            }
            prop_assert_eq!(added, merged);
        }

        /// The fold equals a `GROUP BY` over the readings in arrival order, for any order of
        /// sensors and times, repeated keys and several resolutions.
        #[test]
        fn fold_equals_group_by(
            values in prop::collection::vec((0usize..4, 0i64..7200, -1000i32..1000), 0..300),
            minutes in prop::sample::subsequence(vec![1u32, 5, 60, 1440], 1..4),
        ) {
            let base = ts("2024-01-01T00:00:00Z").timestamp();
            let readings: Vec<Reading> = values.iter()
                .map(|&(sensor, s, v)| Reading {
                    sensor_id: ["b", "a", "ab", "a-1"][sensor].into(),
                    ts: DateTime::from_timestamp(base + s, 0).unwrap(),
                    value: f64::from(v),
                    unit: None,
                })
                .collect();
            let mut resolutions: Vec<Resolution> =
                minutes.iter().map(|m| Resolution::from_seconds(m * 60).unwrap()).collect();
            let mut expected: std::collections::BTreeMap<AggKey, Aggregate> = Default::default();
            for r in &readings {
                for &resolution in &resolutions {
                    let key = AggKey {
                        sensor_id: r.sensor_id.to_string(),
                        resolution,
                        bucket: resolution.bucket(r.ts),
                    };
                    expected.entry(key)
                        .and_modify(|agg| agg.add(r.ts, r.value))
                        .or_insert_with(|| Aggregate::of(r.ts, r.value));
                }
            }
            // A resolution named twice is folded once.
            resolutions.extend(resolutions.clone());
            let folded = Windows::fold(&resolutions, &readings);
            prop_assert_eq!(folded, expected.into_iter().collect::<Vec<_>>());
        }

        /// Splitting readings into batches in any order and merging the partials gives the
        /// aggregate of all readings at once: what makes per-batch upserts exact.
        #[test]
        fn merge_of_partials_equals_whole(
            values in prop::collection::vec((0i64..7200, -1000i32..1000), 1..200),
            split in 0usize..200,
        ) {
            let h: Resolution = "1h".parse().unwrap();
            let base = ts("2024-01-01T00:00:00Z").timestamp();
            let mut seen = std::collections::HashSet::new();
            let readings: Vec<Reading> = values.iter()
                .filter(|(s, _)| seen.insert(*s))
                .map(|&(s, v)| Reading {
                    sensor_id: "s".into(),
                    ts: DateTime::from_timestamp(base + s, 0).unwrap(),
                    value: f64::from(v),
                    unit: None,
                })
                .collect();
            let split = split.min(readings.len());
            let whole = Windows::fold(&[h], &readings);
            let mut merged: HashMap<AggKey, Aggregate> = HashMap::new();
            for part in [&readings[split..], &readings[..split]] {
                for (key, agg) in Windows::fold(&[h], part) {
                    merged.entry(key).and_modify(|a| a.merge(&agg)).or_insert(agg);
                }
            }
            prop_assert_eq!(whole.len(), merged.len());
            for (key, agg) in whole {
                prop_assert_eq!(&merged[&key], &agg);
            }
        }
    }
}
