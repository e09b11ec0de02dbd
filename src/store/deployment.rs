//! The deployment's shared facts (`deployment` table): a value made once by the first instance
//! that needs it, and the same value for every instance after.

use anyhow::Context as _;
use deadpool_postgres::Pool;

/// The deployment's MQTT client id, when none is configured.
pub const MQTT_CLIENT_ID: &str = "mqtt_client_id";

/// The value of `name`: the one stored, or `candidate`, stored now, when there is none.
pub async fn value_or_insert(pool: &Pool, name: &str, candidate: &str) -> anyhow::Result<String> {
    let client = pool.get().await.context("connecting to PostgreSQL")?;
    // A statement sees the table as it began: when another instance inserts the value at the
    // same moment, this one's insert does nothing and its select sees no row; the next
    // statement sees the other's value.
    for _ in 0..3 {
        let row = client
            .query_opt(
                "WITH inserted AS (
                     INSERT INTO deployment (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING
                     RETURNING value
                 )
                 SELECT value FROM inserted
                 UNION ALL
                 SELECT value FROM deployment WHERE name = $1
                 LIMIT 1",
                &[&name, &candidate],
            )
            .await
            .with_context(|| format!("reading the deployment's {name}"))?;
        if let Some(row) = row {
            return Ok(row.get(0));
        }
    }
    anyhow::bail!("the deployment's {name} was neither stored nor readable")
}
