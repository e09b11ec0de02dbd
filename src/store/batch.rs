//! The one batch transaction, the heart of the delivery guarantee. Under locks on the batch's
//! sensors it finds which readings are stored already and what the new ones change of the
//! `increase` steps (`store::increase`), stores the new readings (a binary COPY) and merges exactly
//! their contribution into the aggregates. Under `keep_last` a stored value is replaced by one
//! from a later stream position and its windows follow (`store::replace`); readings a
//! deletion covered are left out (`store::deletion`). A replayed or concurrently written reading therefore
//! never counts twice, and every window's `increase` stays the sum of its readings' steps.

use crate::domain::{AggKey, Aggregate, Origin, Reading, Resolution, Windows};
use crate::store::StoreError;
use crate::store::encode::{
    COPY_CHUNK_BYTES, COPY_HEADER, PgTimestamp, SensorRows, encode_copy_row,
};
use crate::store::increase::{self, Steps};
use crate::store::replace;
use crate::store::sql;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::SinkExt as _;
use std::borrow::Cow;
use tokio_postgres::error::SqlState;

/// What one committed batch did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchOutcome {
    /// Readings newly stored.
    pub inserted: u64,
    /// Readings skipped because their `(sensor_id, ts)` was already stored with the same value
    /// (or, under `keep_last`, with a value from a later stream position), or because a deletion
    /// covered them.
    pub duplicates: u64,
    /// Readings skipped because their `(sensor_id, ts)` was already stored with another value
    /// (`keep_first`).
    pub conflicts: Vec<Conflict>,
    /// Stored values replaced by one from a later stream position (`keep_last`).
    pub replaced: u64,
    /// Aggregate rows inserted or merged into.
    pub aggregate_rows: u64,
}

/// A reading whose `(sensor_id, ts)` is stored with a different value: the stored value stays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Conflict {
    /// The reading's position in the batch written.
    pub index: usize,
    /// The value stored under its key.
    pub stored: f64,
}

impl BatchOutcome {
    /// Adds what another part of the same batch did; `offset` is that part's first position in
    /// the batch.
    pub fn add(&mut self, part: BatchOutcome, offset: usize) {
        self.inserted += part.inserted;
        self.duplicates += part.duplicates;
        self.replaced += part.replaced;
        self.aggregate_rows += part.aggregate_rows;
        self.conflicts
            .extend(part.conflicts.into_iter().map(|c| Conflict {
                index: c.index + offset,
                ..c
            }));
    }
}

/// One batch to write: readings holding no two rows with the same `(sensor_id, ts)`, the stream
/// position each came from and whether it may replace a stored value of its key (`keep_last`;
/// same index), and their folded aggregates, sorted by key.
#[derive(Clone, Copy)]
pub struct Batch<'a> {
    pub readings: &'a [Reading],
    pub origins: &'a [Origin],
    pub replaces: &'a [bool],
    pub partials: &'a [(AggKey, Aggregate)],
}

/// Writes one batch in one transaction.
///
/// Readings after their sensor's newest stored one — nearly all of them — need no lookup: they
/// are new, and the step of the first is from that newest reading. Only readings at or before it
/// are looked up. A unique violation despite the locks means a writer that does not take them (an
/// older version during an upgrade): the batch is redone once looking every reading up.
///
/// `keep_origins`: whether readings are stored with their stream positions — when any way in is
/// `keep_last`, so that a later value can be told from an earlier one.
pub async fn write_batch(
    client: &mut deadpool_postgres::Client,
    batch: Batch<'_>,
    resolutions: &[Resolution],
    keep_origins: bool,
) -> Result<BatchOutcome, StoreError> {
    let readings = batch.readings;
    if readings.is_empty() {
        return Ok(BatchOutcome::default());
    }
    // Batches come in key order; the ids are compared as text only where the sensor changes.
    let in_key_order = readings.windows(2).all(|pair| {
        if pair[0].same_sensor(&pair[1]) {
            pair[0].ts < pair[1].ts
        } else {
            *pair[0].sensor_id < *pair[1].sensor_id
        }
    });
    let sorted: Vec<(usize, &Reading)> = if in_key_order {
        readings.iter().enumerate().collect()
    } else {
        Windows::key_order(readings)
            .into_iter()
            .map(|i| (i as usize, &readings[i as usize]))
            .collect()
    };
    let write = Write {
        sorted: &sorted,
        origins: batch.origins,
        replaces: batch.replaces,
        partials: batch.partials,
        resolutions,
        keep_origins,
    };
    match write_locked(client, &write, false).await {
        Err(StoreError::Db(error)) if error.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            write_locked(client, &write, true).await
        }
        other => other,
    }
}

/// A batch in key order, with what writing it needs.
struct Write<'w, 'a> {
    sorted: &'w [(usize, &'a Reading)],
    origins: &'w [Origin],
    replaces: &'w [bool],
    partials: &'w [(AggKey, Aggregate)],
    resolutions: &'w [Resolution],
    keep_origins: bool,
}

async fn write_locked(
    client: &mut deadpool_postgres::Client,
    write: &Write<'_, '_>,
    look_up_all: bool,
) -> Result<BatchOutcome, StoreError> {
    let Write {
        sorted,
        origins,
        replaces,
        partials,
        resolutions,
        keep_origins,
    } = *write;
    let tx = client.transaction().await?;
    let Steps {
        new,
        new_at,
        deleted,
        stored,
        changed,
    } = increase::work_out(&tx, sorted, origins, look_up_all).await?;
    let mut outcome = BatchOutcome {
        inserted: new.len() as u64,
        duplicates: deleted,
        ..BatchOutcome::default()
    };
    // A stored key's reading that may replace the stored value is decided by positions; any
    // other is a redelivery (same value) or a conflict (keep_first).
    let (may_replace, first_stays): (Vec<_>, Vec<_>) = stored
        .into_iter()
        .partition(|&(index, _, _)| replaces.get(index).copied().unwrap_or(false));
    for (index, reading, value) in first_stays {
        if value == reading.value {
            outcome.duplicates += 1; // a redelivery
        } else {
            outcome.conflicts.push(Conflict {
                index,
                stored: value,
            });
        }
    }
    let replacing = replace::decide(&tx, &may_replace, origins).await?;
    outcome.replaced = replacing.replaced.len() as u64;
    outcome.duplicates += (may_replace.len() - replacing.replaced.len()) as u64;
    if new.is_empty() && replacing.is_empty() {
        tx.commit().await?;
        return Ok(outcome);
    }
    replace::apply(&tx, &replacing).await?;
    // The partials folded upstream hold every reading; refolded when some were stored already.
    let partials: Cow<[(AggKey, Aggregate)]> = if new.len() == sorted.len() {
        Cow::Borrowed(partials)
    } else {
        Cow::Owned(Windows::fold_sorted(
            resolutions,
            new.iter().map(|(r, _)| *r),
        ))
    };
    let (increases, elsewhere) = increase::place(&new, &changed, &partials, resolutions);
    let with_origin = keep_origins;
    let sink = tx
        .copy_in::<_, Bytes>(if with_origin {
            sql::COPY_READINGS_WITH_ORIGIN
        } else {
            sql::COPY_READINGS
        })
        .await?;
    let mut sink = std::pin::pin!(sink);
    let mut buf = BytesMut::with_capacity(COPY_CHUNK_BYTES + 256);
    buf.extend_from_slice(COPY_HEADER);
    for ((r, _), &at) in new.iter().zip(&new_at) {
        encode_copy_row(r, origins.get(at).filter(|_| with_origin), &mut buf);
        if buf.len() >= COPY_CHUNK_BYTES {
            sink.send(buf.split().freeze()).await?;
        }
    }
    buf.put_i16(-1); // the trailer
    sink.send(buf.split().freeze()).await?;
    // The end of the COPY and the upserts go out back to back: one round trip instead of four.
    // The connection sends requests in order, so PostgreSQL runs them in this order; after a
    // failed COPY the upserts fail too ("transaction aborted") and the COPY's error is the one
    // returned.
    let (copied, aggregate_rows, moved, sensors) = futures_util::join!(
        sink.as_mut().finish(),
        upsert_aggregates(&tx, &partials, &increases),
        increase::add_elsewhere(&tx, &elsewhere),
        upsert_sensors(&tx, new.iter().map(|(r, _)| *r)),
    );
    copied?;
    outcome.aggregate_rows = aggregate_rows?;
    moved?;
    sensors?;
    // Last: the windows move from the replaced values, which every step above was worked out
    // against, to the new ones.
    outcome.aggregate_rows += replace::move_windows(&tx, &replacing, resolutions).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Merges `partials` (with the `increases` placed in them, one per partial) into the stored windows.
async fn upsert_aggregates(
    tx: &deadpool_postgres::Transaction<'_>,
    partials: &[(AggKey, Aggregate)],
    increases: &[f64],
) -> Result<u64, StoreError> {
    if partials.is_empty() {
        return Ok(0);
    }
    let n = partials.len();
    // Each resolution's label made once, not once per row.
    let mut labels: Vec<(Resolution, String)> = Vec::new();
    for (key, _) in partials {
        if !labels
            .iter()
            .any(|(resolution, _)| *resolution == key.resolution)
        {
            labels.push((key.resolution, key.resolution.to_string()));
        }
    }
    let label = |resolution: Resolution| -> &str {
        labels
            .iter()
            .find(|(known, _)| *known == resolution)
            .map_or("", |(_, label)| label.as_str())
    };
    let mut sensor_ids = Vec::with_capacity(n);
    let mut resolutions = Vec::with_capacity(n);
    let mut buckets = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut sums = Vec::with_capacity(n);
    let mut mins = Vec::with_capacity(n);
    let mut maxs = Vec::with_capacity(n);
    let mut first_ts = Vec::with_capacity(n);
    let mut first_values = Vec::with_capacity(n);
    let mut last_ts = Vec::with_capacity(n);
    let mut last_values = Vec::with_capacity(n);
    for (key, agg) in partials {
        sensor_ids.push(key.sensor_id.as_str());
        resolutions.push(label(key.resolution));
        buckets.push(PgTimestamp::from(key.bucket));
        counts.push(agg.count);
        sums.push(agg.sum);
        mins.push(agg.min);
        maxs.push(agg.max);
        first_ts.push(PgTimestamp::from(agg.first_ts));
        first_values.push(agg.first_value);
        last_ts.push(PgTimestamp::from(agg.last_ts));
        last_values.push(agg.last_value);
    }
    let upsert = tx.prepare_cached(sql::UPSERT_AGGREGATES).await?;
    let rows = tx
        .execute(
            &upsert,
            &[
                &sensor_ids,
                &resolutions,
                &buckets,
                &counts,
                &sums,
                &mins,
                &maxs,
                &first_ts,
                &first_values,
                &last_ts,
                &last_values,
                &increases,
            ],
        )
        .await?;
    Ok(rows)
}

async fn upsert_sensors<'a>(
    tx: &deadpool_postgres::Transaction<'_>,
    readings: impl Iterator<Item = &'a Reading>,
) -> Result<(), StoreError> {
    let Some(rows) = SensorRows::of(readings) else {
        return Ok(());
    };
    let upsert = tx.prepare_cached(sql::UPSERT_SENSORS).await?;
    tx.execute(&upsert, &rows.params()).await?;
    Ok(())
}
