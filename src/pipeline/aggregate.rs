//! Stage 3, window: drops readings repeated within the batch, folds the rest into partial
//! aggregates per `(sensor, resolution, bucket)`, and splits both by sensor into one shard per
//! write connection, in key order: the writer's connections only have to stream them to
//! PostgreSQL, and this work overlaps the previous batch's transactions.

use crate::actor::{count_restart, guarded, off_thread};
use crate::domain::{Policies, Reading, Resolution, Windows};
use crate::pipeline::faults::Faults;
use crate::pipeline::lanes::{Shard, split};
use crate::pipeline::messages::{Readings, Repeat, WriteBatch};
use crate::redis::entry::EntryId;
use crate::telemetry::Metrics;
use actix::prelude::*;
use std::sync::Arc;

pub struct Aggregator {
    resolutions: Arc<[Resolution]>,
    /// Write connections: shards per batch.
    shards: usize,
    /// Which of a key's readings in one batch is written, by the way each came in.
    policies: Policies,
    writer: Recipient<WriteBatch>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
}

impl Aggregator {
    pub fn new(
        resolutions: &[Resolution],
        shards: usize,
        policies: Policies,
        writer: Recipient<WriteBatch>,
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
    ) -> Self {
        Self {
            resolutions: resolutions.into(),
            shards: shards.max(1),
            policies,
            writer,
            metrics,
            faults,
        }
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1);
    }
}

impl Supervised for Aggregator {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "window");
    }
}

impl Handler<Readings> for Aggregator {
    type Result = ();

    fn handle(&mut self, batch: Readings, ctx: &mut Self::Context) {
        let resolutions = Arc::clone(&self.resolutions);
        let shards = self.shards;
        let policies = self.policies;
        let writer = self.writer.clone();
        let faults = Arc::clone(&self.faults);
        let work = async move {
            faults.check("window", batch.readings.iter());
            let Readings {
                readings,
                origins,
                line_protocol,
                entries,
                ticket,
            } = batch;
            let replaces = line_protocol
                .iter()
                .map(|&line| policies.of(line) == crate::domain::OnConflict::KeepLast)
                .collect();
            let prepared =
                off_thread(move || prepare(readings, origins, replaces, &resolutions, shards))
                    .await;
            let message = WriteBatch {
                shards: prepared.shards,
                repeats: prepared.repeats,
                entries,
                ticket,
            };
            if writer.send(message).await.is_err() {
                tracing::warn!("write stage is gone; its batch will be re-read");
            }
        };
        ctx.wait(guarded("window", work));
    }
}

/// A batch ready for the write stage.
pub struct Prepared {
    pub shards: Vec<Shard>,
    /// Readings whose key came earlier in the batch: not written; the write stage tells
    /// duplicates from conflicts once it knows what is stored.
    pub repeats: Vec<Repeat>,
}

/// What this stage does to a batch: drops readings repeated within it, folds the rest into
/// partials and splits both into `shards` write shards. Of each key the first reading stays,
/// unless a reading that `replaces` (its way in is `keep_last`) comes from a later stream
/// position: then the latest such one. One sort into key order serves all three: repeated keys
/// are neighbours, each sensor's windows are consecutive runs, and every shard receives its rows
/// already in order.
pub fn prepare(
    readings: Vec<Reading>,
    origins: Vec<EntryId>,
    replaces: Vec<bool>,
    resolutions: &[Resolution],
    shards: usize,
) -> Prepared {
    let mut kept: Vec<u32> = Vec::with_capacity(readings.len());
    let mut dropped: Vec<(u32, bool)> = Vec::new();
    for position in Windows::key_order(&readings) {
        let reading = &readings[position as usize];
        let repeated = kept.last_mut().filter(|last| {
            let last = &readings[**last as usize];
            last.ts == reading.ts && last.sensor_id == reading.sensor_id
        });
        match repeated {
            None => kept.push(position),
            // Equal keys are in arrival order, which within one stream is stream order; a
            // replayed dead letter keeps the position it first came from.
            Some(last)
                if replaces.get(position as usize).copied().unwrap_or(false)
                    && origins[position as usize] >= origins[*last as usize] =>
            {
                dropped.push((std::mem::replace(last, position), true));
            }
            Some(_) => dropped.push((position, false)),
        }
    }
    let repeats = dropped
        .into_iter()
        .map(|(position, superseded)| {
            let reading = &readings[position as usize];
            // The kept reading of its key: the one before it in key order is of another key.
            let at = kept.partition_point(|&k| {
                let k = &readings[k as usize];
                (&*k.sensor_id, k.ts) < (&*reading.sensor_id, reading.ts)
            });
            Repeat {
                reading: reading.clone(),
                entry: origins[position as usize],
                first: readings[kept[at] as usize].value,
                superseded,
            }
        })
        .collect();
    let partials = Windows::fold_sorted(resolutions, kept.iter().map(|&i| &readings[i as usize]));
    Prepared {
        shards: split(readings, origins, replaces, &kept, partials, shards),
        repeats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    proptest! {
        /// Whatever the arrival order and repeats: the first reading of each key is kept with its
        /// origin, each shard holds whole sensors in key order, and the shards' partials are the
        /// fold of exactly the kept readings.
        #[test]
        fn prepare_keeps_the_first_of_each_key_in_key_order(
            values in prop::collection::vec((0usize..5, 0i64..300, -3i32..3), 0..200),
            shards in 1usize..4,
        ) {
            let base = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
            let readings: Vec<Reading> = values.iter()
                .map(|&(sensor, s, v)| Reading {
                    sensor_id: format!("s{sensor}").into(),
                    ts: base + chrono::TimeDelta::seconds(s),
                    value: f64::from(v),
                    unit: None,
                })
                .collect();
            let origins: Vec<EntryId> =
                (0..readings.len() as u64).map(|seq| EntryId { ms: 1, seq }).collect();
            let mut first: BTreeMap<(Arc<str>, DateTime<Utc>), (f64, EntryId)> = BTreeMap::new();
            for (r, &origin) in readings.iter().zip(&origins) {
                first.entry((r.sensor_id.clone(), r.ts)).or_insert((r.value, origin));
            }
            let kept: Vec<Reading> = readings.iter()
                .zip(&origins)
                .filter(|(r, origin)| first[&(r.sensor_id.clone(), r.ts)].1 == **origin)
                .map(|(r, _)| r.clone())
                .collect();
            let resolutions: Vec<Resolution> = vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
            let expected_partials = Windows::fold(&resolutions, &kept);

            let prepared = prepare(readings.clone(), origins.clone(), vec![false; readings.len()], &resolutions, shards);
            let out = prepared.shards;
            prop_assert_eq!(prepared.repeats.len(), readings.len() - first.len());
            for repeat in &prepared.repeats {
                let (value, origin) = first[&(repeat.reading.sensor_id.clone(), repeat.reading.ts)];
                prop_assert_eq!(repeat.first, value);
                prop_assert!(repeat.entry != origin);
            }
            let mut seen: HashMap<Arc<str>, usize> = HashMap::new();
            let mut stored = BTreeMap::new();
            let mut partials = Vec::new();
            for (i, shard) in out.iter().enumerate() {
                prop_assert!(shard.readings.windows(2)
                    .all(|w| (&w[0].sensor_id, w[0].ts) < (&w[1].sensor_id, w[1].ts)));
                for (r, origin) in shard.readings.iter().zip(&shard.origins) {
                    prop_assert_eq!(*seen.entry(r.sensor_id.clone()).or_insert(i), i);
                    stored.insert((r.sensor_id.clone(), r.ts), (r.value, *origin));
                }
                partials.extend(shard.partials.iter().cloned());
            }
            prop_assert_eq!(stored, first);
            partials.sort_by(|a, b| a.0.cmp(&b.0));
            prop_assert_eq!(partials, expected_partials);
        }
    }

    proptest! {
        /// Readings that may replace (keep_last) among others: of each key the one written is
        /// the latest stream position among the first reading and those that may replace (the
        /// later of equal positions); every other is a repeat, superseded when it lost to one
        /// that may replace.
        #[test]
        fn prepare_keeps_the_latest_position_of_readings_that_replace(
            values in prop::collection::vec((0usize..3, 0i64..20, -3i32..3, 0u64..50, any::<bool>()), 0..120),
        ) {
            let base = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
            let readings: Vec<Reading> = values.iter()
                .map(|&(sensor, s, v, _, _)| Reading {
                    sensor_id: format!("s{sensor}").into(),
                    ts: base + chrono::TimeDelta::seconds(s),
                    value: f64::from(v),
                    unit: None,
                })
                .collect();
            // Replayed letters keep older positions: origins are not in arrival order.
            let origins: Vec<EntryId> = values.iter().map(|&(_, _, _, ms, _)| EntryId { ms, seq: 0 }).collect();
            let replaces: Vec<bool> = values.iter().map(|&(_, _, _, _, r)| r).collect();
            let mut expected: BTreeMap<(Arc<str>, DateTime<Utc>), usize> = BTreeMap::new();
            for (i, r) in readings.iter().enumerate() {
                let key = (r.sensor_id.clone(), r.ts);
                match expected.get(&key) {
                    None => { expected.insert(key, i); }
                    Some(&kept) if replaces[i] && origins[i] >= origins[kept] => { expected.insert(key, i); }
                    Some(_) => {}
                }
            }
            let resolutions: Vec<Resolution> = vec!["1m".parse().unwrap()];
            let prepared = prepare(readings.clone(), origins.clone(), replaces, &resolutions, 2);
            let mut written = BTreeMap::new();
            for shard in &prepared.shards {
                for (r, origin) in shard.readings.iter().zip(&shard.origins) {
                    written.insert((r.sensor_id.clone(), r.ts), (r.value, *origin));
                }
            }
            let wanted: BTreeMap<_, _> = expected.iter()
                .map(|(key, &i)| (key.clone(), (readings[i].value, origins[i])))
                .collect();
            prop_assert_eq!(written, wanted);
            prop_assert_eq!(prepared.repeats.len(), readings.len() - expected.len());
        }
    }

    #[test]
    fn shards_keep_each_sensor_whole_and_rows_in_key_order() {
        let ts = chrono::Utc::now();
        // Sensors interleaved and each sensor's timestamps out of order, as they may arrive.
        let readings: Vec<Reading> = (0..100)
            .map(|i| Reading {
                sensor_id: format!("s{}", i % 13).into(),
                ts: ts + chrono::TimeDelta::seconds((i * 37) % 100),
                value: i as f64,
                unit: None,
            })
            .collect();
        let origins: Vec<EntryId> = (0..readings.len() as u64)
            .map(|seq| EntryId { ms: 1, seq })
            .collect();
        let resolutions: Vec<Resolution> = vec!["1m".parse().unwrap()];
        let prepared = prepare(readings, origins, vec![false; 100], &resolutions, 3);
        let shards = prepared.shards;
        assert!(prepared.repeats.is_empty());
        assert_eq!(shards.iter().map(|s| s.readings.len()).sum::<usize>(), 100);
        for (i, shard) in shards.iter().enumerate() {
            let sensors: std::collections::HashSet<&str> =
                shard.readings.iter().map(|r| &*r.sensor_id).collect();
            for other in shards.iter().skip(i + 1) {
                assert!(
                    other
                        .readings
                        .iter()
                        .all(|r| !sensors.contains(&*r.sensor_id)),
                    "a sensor is split over shards"
                );
            }
            assert!(
                shard
                    .partials
                    .iter()
                    .all(|(k, _)| sensors.contains(k.sensor_id.as_str()))
            );
            assert!(
                shard.partials.windows(2).all(|w| w[0].0 < w[1].0),
                "partials stay in key order"
            );
            assert!(
                shard
                    .readings
                    .windows(2)
                    .all(|w| (&w[0].sensor_id, w[0].ts) < (&w[1].sensor_id, w[1].ts)),
                "readings in key order"
            );
            for (reading, origin) in shard.readings.iter().zip(&shard.origins) {
                assert_eq!(
                    origin.seq, reading.value as u64,
                    "origin moved with its reading"
                );
            }
        }
    }
}
