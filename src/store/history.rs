//! Which history the database has: its system identifier and current timeline. A failover to a
//! streaming replica shows as a new timeline (or, for a database restored elsewhere, another
//! system identifier). With asynchronous replication the old primary may have committed batches
//! the replica never received; the ledger in Redis still counts them stored. Each stream's reader
//! compares the identity it last recorded ([`crate::stream::ledger::history_key`]) with the one
//! watched here and, when it changed, re-reads the stream's retained tail
//! (`SENSORHUB_STREAM_TAIL`): what the new primary lacks is stored again, the rest skipped as
//! duplicates.

use crate::store::StoreError;
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio::sync::watch;

/// How often the database's identity is read.
const POLL: Duration = Duration::from_secs(1);

/// `<system identifier>/<timeline>` of the server behind `pool` (a primary: the timeline is the
/// one its WAL is written on now, which changes at promotion, before any checkpoint).
pub async fn identity(pool: &Pool) -> Result<String, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT (pg_control_system()).system_identifier::text
                    || '/' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Reads the identity every second and publishes it when it changes; ends when nobody
/// listens any more.
pub async fn watch(pool: Pool, identity_tx: watch::Sender<Option<String>>) {
    loop {
        if let Ok(now) = identity(&pool).await {
            identity_tx.send_if_modified(|seen| {
                let changed = seen.as_deref() != Some(now.as_str());
                if changed {
                    *seen = Some(now);
                }
                changed
            });
        }
        if identity_tx.is_closed() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}
