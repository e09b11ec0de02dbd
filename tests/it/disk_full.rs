//! The database's disk fills under load: PostgreSQL answers queries but refuses every batch with
//! `53100 could not extend file`. Batches are retried without loss, `/readyz` and
//! `sensorhub_write_errors_total{sqlstate="53100"}` name the cause, the backlog waits in Redis,
//! and once space is freed everything drains exactly once.
//!
//! The database lives in a tablespace on a small tmpfs of the test's own, grown afterwards
//! (`mount -o remount,size=`) as an operator freeing space would.

use crate::helpers::*;
use crate::resilience::{Load, assert_exactly_once, hub_env, produce};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A tmpfs mounted for the test, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = std::env::temp_dir().join(unique_name("sensorhub-small-disk"));
        std::fs::create_dir_all(&dir).unwrap();
        let disk = Self(dir);
        disk.run(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
        ]);
        disk.run(&["chown", "postgres:postgres"]);
        disk
    }

    /// Grows the filesystem: space freed.
    fn grow(&self, size: &str) {
        self.run(&["mount", "-o", &format!("remount,size={size}")]);
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[actix_web::test]
async fn a_full_database_disk_holds_the_backlog_in_redis_and_drains_exactly_once_freed() {
    // A new database takes about 8 MB of catalog: room for a few tens of thousands of readings.
    // (Mounted first, so that the server stops before it is unmounted.)
    let disk = SmallDisk::mount("16m");
    let pg = PrivatePostgres::start();
    let admin = pg_client(&pg.url("postgres")).await;
    for sql in [
        format!("CREATE TABLESPACE small LOCATION '{}'", disk.0.display()),
        "CREATE DATABASE sensorhub TABLESPACE small".to_owned(),
    ] {
        admin.batch_execute(&sql).await.unwrap();
    }
    let database_url = pg.url("sensorhub");
    let res = Resources::new();
    let env = hub_env(REDIS_URL, &database_url, &res.stream, "disk-full");
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(20)).await;

    let load = Load {
        readings: 150_000,
        sensors: 500,
        per_tick: 500,
        tick: Duration::from_millis(20),
        duplicate_every: 0,
        late_every: 0,
    };
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load));
    let body = wait_ready_status(hub.port, 503, Duration::from_secs(60)).await;
    assert!(
        body.contains("\"writes\"") && body.contains("53100"),
        "/readyz names the full disk: {body}"
    );
    let full = hub
        .metric("sensorhub_write_errors_total{sqlstate=\"53100\"}")
        .await;
    assert!(full >= 1.0, "write errors counted as disk full ({full})");
    let (_, body) = http_get(hub.port, "/readyz").await;
    assert!(
        body.contains("\"postgres\":\"ok\""),
        "the server itself still answers: {body}"
    );
    let produced = producer.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let lag = hub.metric("sensorhub_consumer_group_lag").await;
    let in_flight = hub.metric("sensorhub_batches_in_flight").await;
    assert!(
        lag > 0.0 || in_flight > 0.0,
        "the backlog waits in Redis (lag {lag}, in flight {in_flight})"
    );

    disk.grow("512m");
    wait_ready_status(hub.port, 200, Duration::from_secs(60)).await;
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    assert_exactly_once(&database_url, &produced, 0).await;
    drop(hub);
    drop(admin);
}
