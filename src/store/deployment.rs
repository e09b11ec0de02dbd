//! The deployment's shared facts (`deployment` table): a value made once by the first instance
//! that needs it, and the same value for every instance after.

use anyhow::Context as _;
use deadpool_postgres::Pool;

/// The deployment's MQTT client id, when none is configured.
pub const MQTT_CLIENT_ID: &str = "mqtt_client_id";

/// 16 hex digits no other process or start shares: a randomly keyed hash (each `RandomState` of
/// a process has its own keys) of the process id and the time.
fn unique_hex() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::hash::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u32(std::process::id());
    hasher.write_u128(nanos);
    format!("{:016x}", hasher.finish())
}

/// A client id for a deployment that has none yet: names its stream, with a random part so that
/// deployments whose streams share a name differ too.
pub fn new_mqtt_client_id(stream: &str) -> String {
    format!("sensorhub-{stream}-{}", unique_hex())
}

/// The `application_name` of this instance's PostgreSQL connections: `sensorhub` and a part
/// unique to the process and this start, so that instances tell each other's connections apart.
pub fn instance_name() -> String {
    format!("sensorhub {}", unique_hex())
}

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
