//! The ledger of committed stream ranges against a real Redis: ranges merge into the watermark
//! only where they continue it, whatever order they are recorded in, and the first gap is what a
//! re-read would fetch.

use crate::helpers::*;
use sensorhub::ledger::{self, EntryRange, Progress, Upto};
use sensorhub::streams::EntryId;

const GROUP: &str = "sensorhub";

#[actix_web::test]
async fn committed_ranges_merge_into_the_watermark_only_without_gaps() {
    let resources = Resources::new();
    let stream = resources.stream.clone();
    let mut conn = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..10 {
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("data")
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
        ids.push(id.parse::<EntryId>().unwrap());
    }
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
            ledger::compact(&mut conn, &stream, GROUP).await.unwrap()
        }
    };

    // Nothing recorded: the watermark is 0-0 and the first entry is the first not committed.
    let progress = record_and_compact(&[]).await;
    assert_eq!(
        progress,
        Progress {
            through: EntryId::ZERO,
            next: Some(ids[0]),
            next_committed: None
        }
    );

    // Recorded out of order, with entry 2 missing: the watermark stops before it.
    let progress = record_and_compact(&[range(3, 5), range(0, 1)]).await;
    assert_eq!(
        progress,
        Progress {
            through: ids[1],
            next: Some(ids[2]),
            next_committed: Some(ids[3])
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
