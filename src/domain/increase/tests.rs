use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn at(second: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(second, 0).unwrap()
}

/// Every reading's step by the definition: from its previous reading in time.
fn steps(readings: &BTreeMap<i64, f64>) -> BTreeMap<i64, f64> {
    let mut previous: Option<f64> = None;
    readings
        .iter()
        .map(|(&ts, &value)| {
            let s = previous.map_or(0.0, |p| step(p, value));
            previous = Some(value);
            (ts, s)
        })
        .collect()
}

fn around(stored: &BTreeMap<i64, f64>, ts: i64) -> Around {
    let point = |(&ts, &value): (&i64, &f64)| Point { ts: at(ts), value };
    Around {
        before: stored.range(..ts).next_back().map(point),
        at_or_after: stored.range(ts..).next().map(point),
    }
}

/// Plans `batch` against `stored` and checks that the steps it gives the new readings, and the
/// changes it gives the stored ones, are exactly the definition's over everything afterwards.
fn check(stored: &BTreeMap<i64, f64>, batch: &BTreeMap<i64, f64>, look_up_all: bool) {
    let readings: Vec<Point> = batch
        .iter()
        .map(|(&ts, &value)| Point { ts: at(ts), value })
        .collect();
    let latest = stored
        .iter()
        .next_back()
        .map(|(&ts, &value)| Point { ts: at(ts), value });
    let mut asked = Vec::new();
    let plan = plan(&readings, latest, look_up_all, |i| {
        asked.push(i);
        around(stored, readings[i].ts.timestamp())
    });
    // Only readings at or before the latest stored one cost a lookup.
    for &i in &asked {
        assert!(look_up_all || latest.is_some_and(|l| readings[i].ts <= l.ts));
    }
    let mut after = stored.clone();
    for (point, fate) in readings.iter().zip(&plan.fates) {
        let ts = point.ts.timestamp();
        match *fate {
            Fate::Stored { value } => assert_eq!(Some(&value), stored.get(&ts)),
            Fate::New { .. } => {
                assert!(!stored.contains_key(&ts));
                after.insert(ts, point.value);
            }
        }
    }
    let (before_steps, after_steps) = (steps(stored), steps(&after));
    for (point, fate) in readings.iter().zip(&plan.fates) {
        if let Fate::New { step } = *fate {
            assert_eq!(
                step,
                after_steps[&point.ts.timestamp()],
                "step of {point:?}"
            );
        }
    }
    let mut changes: BTreeMap<i64, f64> = BTreeMap::new();
    for &(ts, change) in &plan.changed {
        assert!(
            stored.contains_key(&ts.timestamp()),
            "a change of an unstored reading"
        );
        *changes.entry(ts.timestamp()).or_default() += change;
    }
    for (ts, old) in &before_steps {
        let change = changes.get(ts).copied().unwrap_or(0.0);
        assert!(
            (old + change - after_steps[ts]).abs() < 1e-9,
            "stored reading at {ts}: step {old} + {change} != {}",
            after_steps[ts]
        );
    }
}

#[test]
fn a_fall_is_a_reset_counted_as_the_new_value() {
    assert_eq!(step(1000.0, 3.0), 3.0);
    assert_eq!(step(3.0, 10.0), 7.0);
    assert_eq!(step(5.0, 5.0), 0.0);
}

#[test]
fn a_late_reading_between_two_stored_changes_the_step_of_the_next() {
    let stored = BTreeMap::from([(0, 10.0), (20, 30.0)]);
    let batch = BTreeMap::from([(10, 25.0)]);
    let readings = [Point {
        ts: at(10),
        value: 25.0,
    }];
    let plan = plan(
        &readings,
        Some(Point {
            ts: at(20),
            value: 30.0,
        }),
        false,
        |_| around(&stored, 10),
    );
    assert_eq!(plan.fates, vec![Fate::New { step: 15.0 }]);
    // 30 came from 10 (+20), now from 25 (+5).
    assert_eq!(plan.changed, vec![(at(20), -15.0)]);
    check(&stored, &batch, false);
}

#[test]
fn readings_after_the_latest_need_no_lookup() {
    let stored = BTreeMap::from([(0, 10.0)]);
    let readings = [
        Point {
            ts: at(5),
            value: 12.0,
        },
        Point {
            ts: at(6),
            value: 2.0,
        },
    ];
    let plan = plan(
        &readings,
        Some(Point {
            ts: at(0),
            value: 10.0,
        }),
        false,
        |_| panic!("no lookup expected"),
    );
    assert_eq!(
        plan.fates,
        vec![Fate::New { step: 2.0 }, Fate::New { step: 2.0 }]
    );
    assert!(plan.changed.is_empty());
    check(&stored, &BTreeMap::from([(5, 12.0), (6, 2.0)]), false);
}

proptest! {
    /// Any batch against any stored readings — late, early, interleaved, redelivered, conflicting,
    /// counters with resets — gets exactly the definition's steps.
    #[test]
    fn plans_equal_the_definition(
        stored in proptest::collection::btree_map(0i64..60, 0u8..20, 0..20),
        batch in proptest::collection::btree_map(0i64..60, 0u8..20, 0..20),
        look_up_all in any::<bool>(),
    ) {
        let stored: BTreeMap<i64, f64> = stored.into_iter().map(|(t, v)| (t, f64::from(v))).collect();
        let batch: BTreeMap<i64, f64> = batch.into_iter().map(|(t, v)| (t, f64::from(v))).collect();
        check(&stored, &batch, look_up_all);
    }
}
