//! The ledger of committed stream ranges against a real Redis: ranges merge into the watermark
//! only where they continue it, whatever order they are recorded in, and the first gap is what a
//! re-read would fetch.

use crate::helpers::*;
use sensorhub::redis::entry::EntryId;
use sensorhub::stream::ledger::{self, EntryRange, Progress, Upto};

const GROUP: &str = "sensorhub";

#[actix_web::test]
async fn committed_ranges_merge_into_the_watermark_only_without_gaps() {
    let resources = Resources::new();
    let stream = resources.stream.clone();
    let mut conn = redis_manager().await;
    let ids = xadd_numbered(&mut conn, &stream, 10).await;
    delivered_all(&mut conn, &stream).await;
    let range = |a: usize, b: usize| EntryRange {
        first: ids[a],
        last: ids[b],
    };
    let shared = conn.clone();
    let record_and_compact = |ranges: &[EntryRange]| {
        let (mut conn, stream, ranges) = (shared.clone(), stream.clone(), ranges.to_vec());
        async move {
            ledger::record(&mut conn, &stream, GROUP, &ranges)
                .await
                .unwrap();
            ledger::compact(&mut conn, &stream, GROUP)
                .await
                .unwrap()
                .expect("the group exists")
        }
    };

    // Nothing recorded: the watermark is 0-0 and the first entry is the first not committed.
    let progress = record_and_compact(&[]).await;
    assert_eq!(
        progress,
        Progress {
            through: EntryId::ZERO,
            next: Some(ids[0]),
            next_committed: None,
            last_delivered: ids[9],
            reset: false,
        }
    );

    // Recorded out of order, with entry 2 missing: the watermark stops before it.
    let progress = record_and_compact(&[range(3, 5), range(0, 1)]).await;
    assert_eq!(
        progress,
        Progress {
            through: ids[1],
            next: Some(ids[2]),
            next_committed: Some(ids[3]),
            last_delivered: ids[9],
            reset: false,
        }
    );
    assert_eq!(progress.gap(ids[9]), Some((ids[1], Upto::Before(ids[3]))));
    let gap = ledger::read_range(&mut conn, &stream, ids[1], Upto::Before(ids[3]), 100)
        .await
        .unwrap();
    assert_eq!(gap.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2]]);
    assert_eq!(
        ledger::through(&mut conn, &stream, GROUP).await.unwrap(),
        ids[1]
    );

    // The gap filled: everything recorded so far merges.
    let progress = record_and_compact(&[range(2, 2)]).await;
    assert_eq!((progress.through, progress.next), (ids[5], Some(ids[6])));
    assert_eq!(progress.next_committed, None);

    // An entry deleted from the stream leaves no gap: 7..9 continue 5 once 6 is gone.
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(ids[6].to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let progress = record_and_compact(&[range(7, 9)]).await;
    assert_eq!((progress.through, progress.next), (ids[9], None));

    // A re-read of committed entries changes nothing and leaves no range behind.
    let progress = record_and_compact(&[range(0, 9), range(4, 4)]).await;
    assert_eq!((progress.through, progress.next_committed), (ids[9], None));
    let left: i64 = redis::cmd("ZCARD")
        .arg(ledger::ranges_key(&stream, GROUP))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Several groups on one stream: trimming keeps what any of them has not done with, reading a
/// group's ledger when it has one (its `NOACK` reads leave no pending entries to go by) and its
/// pending entries otherwise.
#[actix_web::test]
async fn trimming_keeps_what_any_group_has_not_committed() {
    let resources = Resources::new();
    let stream = resources.stream.clone();
    let mut conn = redis_manager().await;
    let ids = xadd_numbered(&mut conn, &stream, 20).await;
    let shared = conn.clone();
    let read = |group: &'static str, count: usize, noack: bool| {
        let (mut conn, stream) = (shared.clone(), stream.clone());
        async move {
            read_as(&mut conn, &stream, (group, "c"), count, noack).await;
        }
    };
    let ack = |group: &'static str, from: usize, to: usize| {
        let (mut conn, stream) = (shared.clone(), stream.clone());
        let acked: Vec<EntryId> = ids[from..=to].to_vec();
        async move {
            let _: i64 = redis::cmd("XACK")
                .arg(&stream)
                .arg(group)
                .arg(&acked)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    let trim_and_count = || {
        let (mut conn, stream) = (shared.clone(), stream.clone());
        async move {
            let groups = sensorhub::stream::group::groups(&mut conn, &stream)
                .await
                .unwrap();
            sensorhub::stream::group::trim_acknowledged(&mut conn, &stream, GROUP, &groups, 0)
                .await
                .unwrap();
            let len: i64 = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .unwrap();
            len
        }
    };
    // sensorhub's group: everything delivered and committed.
    for group in [GROUP, "other", "plain"] {
        sensorhub::stream::group::ensure_group(&mut conn, &stream, group, false)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("DEL")
        .arg(ledger::through_key(&stream, "plain"))
        .query_async(&mut conn)
        .await
        .unwrap();
    read(GROUP, 20, true).await;
    let all = EntryRange {
        first: ids[0],
        last: ids[19],
    };
    ledger::record(&mut conn, &stream, GROUP, &[all])
        .await
        .unwrap();
    ledger::compact(&mut conn, &stream, GROUP).await.unwrap();
    // Another sensorhub deployment's group: everything delivered, 0..=4 committed.
    read("other", 20, true).await;
    let first_five = EntryRange {
        first: ids[0],
        last: ids[4],
    };
    ledger::record(&mut conn, &stream, "other", &[first_five])
        .await
        .unwrap();
    ledger::compact(&mut conn, &stream, "other").await.unwrap();
    // A group without a ledger: 0..=9 delivered, 0..=2 acknowledged.
    read("plain", 10, false).await;
    ack("plain", 0, 2).await;
    assert_eq!(
        trim_and_count().await,
        17,
        "kept from plain's oldest pending entry"
    );

    ack("plain", 3, 9).await;
    read("plain", 10, false).await;
    ack("plain", 10, 19).await;
    assert_eq!(trim_and_count().await, 15, "kept after other's watermark");

    let _: () = redis::cmd("DEL")
        .arg(ledger::through_key(&stream, "other"))
        .arg(ledger::ranges_key(&stream, "other"))
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Random histories against the script: a stream cut into reads of 1–8 entries, some entries
/// deleted, most reads recorded in random order with merges in between. After the last merge the
/// watermark is the end of the committed prefix (the reads before the first live entry no recorded
/// read covers), `next` that entry, and `next_committed` the first recorded read after it.
#[actix_web::test]
async fn the_watermark_is_the_committed_prefix_whatever_the_order() {
    let resources = Resources::new();
    let mut conn = redis_manager().await;
    for seed in 1..=25u64 {
        let stream = format!("{}:{seed}", resources.stream);
        let mut rng = Rng::new(seed);
        let ids = xadd_numbered(&mut conn, &stream, 60).await;
        delivered_all(&mut conn, &stream).await;
        let mut reads = Vec::new();
        let mut start = 0;
        while start < ids.len() {
            let end = (start + 1 + rng.below(8) as usize).min(ids.len());
            reads.push((start, end - 1));
            start = end;
        }
        let deleted: Vec<bool> = ids.iter().map(|_| rng.below(10) == 0).collect();
        for (i, id) in ids.iter().enumerate() {
            if deleted[i] {
                let _: i64 = redis::cmd("XDEL")
                    .arg(&stream)
                    .arg(id.to_string())
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        }
        let mut recorded: Vec<(usize, usize)> = reads
            .iter()
            .copied()
            .filter(|_| rng.below(5) != 0)
            .collect();
        for i in (1..recorded.len()).rev() {
            recorded.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for read in &recorded {
            let range = EntryRange {
                first: ids[read.0],
                last: ids[read.1],
            };
            ledger::record(&mut conn, &stream, GROUP, &[range])
                .await
                .unwrap();
            if rng.below(3) == 0 {
                ledger::compact(&mut conn, &stream, GROUP).await.unwrap();
            }
        }
        let progress = ledger::compact(&mut conn, &stream, GROUP)
            .await
            .unwrap()
            .expect("the group exists");

        let covered = |i: usize| recorded.iter().any(|r| r.0 <= i && i <= r.1);
        let first_uncovered = (0..ids.len()).find(|&i| !deleted[i] && !covered(i));
        let limit = first_uncovered.unwrap_or(ids.len());
        let through = recorded
            .iter()
            .filter(|r| r.0 < limit)
            .map(|r| ids[r.1])
            .max()
            .unwrap_or(EntryId::ZERO);
        let next_committed = first_uncovered
            .and_then(|k| recorded.iter().filter(|r| r.0 > k).map(|r| ids[r.0]).min());
        let expected = Progress {
            through,
            next: first_uncovered.map(|k| ids[k]),
            next_committed,
            last_delivered: ids[59],
            reset: false,
        };
        assert_eq!(
            progress, expected,
            "seed {seed}: reads {reads:?}, recorded {recorded:?}, deleted {deleted:?}"
        );
        let _: () = redis::cmd("DEL")
            .arg(&stream)
            .arg(ledger::ranges_key(&stream, GROUP))
            .arg(ledger::through_key(&stream, GROUP))
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// Creates sensorhub's group as having delivered every entry of `stream`, as the ledger's merges
/// expect of a group whose entries are recorded committed.
async fn delivered_all(conn: &mut sensorhub::redis::connection::Connection, stream: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("$")
        .query_async(conn)
        .await
        .unwrap();
}

/// The group-wide count of entries delivered and not committed: each instance publishes its own;
/// one that stops publishing (died) keeps counting until the watermark passes the last entry it
/// held, then leaves the sum.
#[actix_web::test]
async fn uncommitted_entries_count_live_instances_and_what_the_dead_left() {
    let resources = Resources::new();
    let stream = resources.stream.clone();
    let mut conn = redis_manager().await;
    let ids = xadd_numbered(&mut conn, &stream, 10).await;
    delivered_all(&mut conn, &stream).await;
    let short = std::time::Duration::from_millis(50);
    let long = std::time::Duration::from_secs(60);
    // "dead" held entries 0..=4 when it last published; "live" holds 5..=9.
    let sum = ledger::in_flight(&mut conn, &stream, GROUP, "dead", (5, Some(ids[4])), short)
        .await
        .unwrap();
    assert_eq!(sum, 5);
    let sum = ledger::in_flight(&mut conn, &stream, GROUP, "live", (5, Some(ids[9])), long)
        .await
        .unwrap();
    assert_eq!(sum, 10);
    // "dead" stops publishing: past its time to live its entries still count, uncommitted.
    // Waiting is the point here: past its time to live, its count is no longer fresh.
    tokio::time::sleep(short * 4).await;
    let sum = ledger::in_flight(&mut conn, &stream, GROUP, "live", (5, Some(ids[9])), long)
        .await
        .unwrap();
    assert_eq!(sum, 10, "what the dead instance held is still uncommitted");
    // Its entries re-read and committed: the watermark passes them and they leave the sum.
    let first_five = EntryRange {
        first: ids[0],
        last: ids[4],
    };
    ledger::record(&mut conn, &stream, GROUP, &[first_five])
        .await
        .unwrap();
    ledger::compact(&mut conn, &stream, GROUP).await.unwrap();
    let sum = ledger::in_flight(&mut conn, &stream, GROUP, "live", (5, Some(ids[9])), long)
        .await
        .unwrap();
    assert_eq!(sum, 5);
    let sum = ledger::in_flight(&mut conn, &stream, GROUP, "live", (0, None), long)
        .await
        .unwrap();
    assert_eq!(sum, 0);
    let _: () = redis::cmd("DEL")
        .arg(ledger::in_flight_key(&stream, GROUP))
        .query_async(&mut conn)
        .await
        .unwrap();
}
