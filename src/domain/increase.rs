//! `increase`: how much a counter rose, exactly, however its readings arrive.
//!
//! Every reading has a *step*: from the sensor's previous reading in time (wherever that lies) to
//! it — the difference when the value rose or stayed, the value itself when it fell (a reset: the
//! counter started again from zero), and 0 for the sensor's first reading. A window's `increase` is
//! the sum of the steps of its readings, so consecutive windows add up to the increase over their
//! span with nothing lost between them.
//!
//! A new reading changes two steps: its own, and that of the stored reading right after it (whose
//! previous reading it becomes). [`plan`] works both out for one sensor's readings of a batch, from
//! what is stored around them: the sensor's latest reading for readings after it (the common
//! case, no query per reading), the stored neighbours for those at or before it.

use chrono::{DateTime, Utc};

/// The step from `previous` to `value`: a fall is a reset, counted as the new value.
pub fn step(previous: f64, value: f64) -> f64 {
    if value >= previous {
        value - previous
    } else {
        value
    }
}

/// A stored reading: its time and value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub ts: DateTime<Utc>,
    pub value: f64,
}

/// The stored readings around a reading of the batch: the latest before it, and the earliest at
/// or after it (at it: the reading is stored already).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Around {
    pub before: Option<Point>,
    pub at_or_after: Option<Point>,
}

/// What becomes of one reading of the batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fate {
    /// Stored now, with its step.
    New { step: f64 },
    /// Stored already, with this value (the same: a redelivery; another: a conflict).
    Stored { value: f64 },
}

/// One sensor's readings of a batch, planned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// One per reading, in the order given.
    pub fates: Vec<Fate>,
    /// Stored readings whose step changes, with the change: the reading right after a new one.
    pub changed: Vec<(DateTime<Utc>, f64)>,
}

/// Plans one sensor's `readings` (in time order, no two at one time). `latest` is the sensor's
/// newest stored reading (`None`: nothing stored). `around(i)` gives the stored neighbours of
/// reading `i`, and is asked only for readings at or before `latest` — or for every reading when
/// `latest` is not to be trusted (`look_up_all`).
pub fn plan(
    readings: &[Point],
    latest: Option<Point>,
    look_up_all: bool,
    mut around: impl FnMut(usize) -> Around,
) -> Plan {
    let mut plan = Plan {
        fates: Vec::with_capacity(readings.len()),
        changed: Vec::new(),
    };
    // The newest reading stored by this batch so far.
    let mut previous_new: Option<Point> = None;
    // A stored reading right after the newest new one, and the stored reading that came before
    // it until now: its step changes unless another new reading comes between them.
    let mut pending: Option<(Point, Option<Point>)> = None;
    let later = |a: Option<Point>, b: Option<Point>| match (a, b) {
        (Some(a), Some(b)) => Some(if b.ts > a.ts { b } else { a }),
        (a, b) => a.or(b),
    };
    for (i, &reading) in readings.iter().enumerate() {
        let looked_up = look_up_all || latest.is_some_and(|latest| reading.ts <= latest.ts);
        let stored_before = if looked_up {
            let found = around(i);
            if let Some(at) = found.at_or_after.filter(|at| at.ts == reading.ts) {
                plan.fates.push(Fate::Stored { value: at.value });
                continue;
            }
            settle(&mut pending, previous_new, reading.ts, &mut plan.changed);
            pending = found.at_or_after.map(|next| (next, found.before));
            found.before
        } else {
            // After every stored reading: nothing stored follows it.
            settle(&mut pending, previous_new, reading.ts, &mut plan.changed);
            latest
        };
        let previous = later(stored_before, previous_new);
        let step = previous.map_or(0.0, |p| step(p.value, reading.value));
        plan.fates.push(Fate::New { step });
        previous_new = Some(reading);
    }
    settle(
        &mut pending,
        previous_new,
        DateTime::<Utc>::MAX_UTC,
        &mut plan.changed,
    );
    plan
}

/// Records the changed step of the pending stored reading once the next reading of the batch lies
/// after it (or there is none): the newest new reading is then its previous one.
fn settle(
    pending: &mut Option<(Point, Option<Point>)>,
    previous_new: Option<Point>,
    next_ts: DateTime<Utc>,
    changed: &mut Vec<(DateTime<Utc>, f64)>,
) {
    let Some((stored, was_before)) = *pending else {
        return;
    };
    if stored.ts > next_ts {
        return; // the next reading comes first: it is the one right before `stored`
    }
    *pending = None;
    let Some(new) = previous_new else {
        return;
    };
    let old = was_before.map_or(0.0, |p| step(p.value, stored.value));
    changed.push((stored.ts, step(new.value, stored.value) - old));
}

#[cfg(test)]
mod tests;
