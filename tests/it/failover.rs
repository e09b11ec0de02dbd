//! A PostgreSQL failover under load: a primary and a streaming replica (`initdb`,
//! `pg_basebackup`), sensorhub given both in one libpq-style URL with
//! `target_session_attrs=read-write`, the primary killed with kill -9 and the replica promoted.
//!
//! Asynchronous: the replica is first cut off from the primary for a few seconds of load, so the
//! primary acknowledges batches the replica never receives — the ledger in Redis counts them
//! stored, and without more they would be gone. sensorhub notices the new timeline and re-reads
//! the stream's retained tail. Synchronous: nothing is acknowledged that the replica lacks.
//! Either way: every reading stored once on the new primary, aggregates exact.

use crate::helpers::*;
use crate::resilience::{Load, assert_exactly_once, hub_env, produce};
use std::time::Duration;

fn load() -> Load {
    Load {
        readings: 40_000,
        sensors: 200,
        per_tick: 100,
        tick: Duration::from_millis(25),
        duplicate_every: 0,
        late_every: 0,
    }
}

async fn fail_over(synchronous: bool) {
    let primary = PrivatePostgres::start();
    let replica = PrivatePostgres::replica_of(&primary);
    let admin = pg_client(&primary.url("postgres")).await;
    if synchronous {
        for sql in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            admin.batch_execute(sql).await.unwrap();
        }
    }
    let database_url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/sensorhub?target_session_attrs=read-write",
        primary.port, replica.port
    );
    let res = Resources::new();
    let mut env = hub_env(REDIS_URL, &database_url, &res.stream, "failover");
    // Sized for the replication lag: the entries committed while the replica was cut off.
    env.push(("SENSORHUB_STREAM_TAIL", "1000000".into()));
    let hub = Sensorhub::spawn(&env).await;
    wait_ready_status(hub.port, 200, Duration::from_secs(30)).await;
    let producer = tokio::spawn(produce(REDIS_URL.into(), res.stream.clone(), load()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let on_replica = pg_client(&replica.url("sensorhub")).await;
    if !synchronous {
        // The replica stops receiving WAL: what the primary commits from now on, only it has.
        for sql in [
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1'",
            "SELECT pg_reload_conf()",
        ] {
            on_replica.batch_execute(sql).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    let count = |sql: &'static str| {
        let urls = (primary.url("sensorhub"), replica.url("sensorhub"));
        async move {
            let mut counts = Vec::new();
            for url in [urls.0, urls.1] {
                let pg = pg_client(&url).await;
                counts.push(pg.query_one(sql, &[]).await.unwrap().get::<_, i64>(0));
            }
            counts
        }
    };
    let before = count("SELECT count(*) FROM readings").await;
    eprintln!(
        "readings before the crash: primary {}, replica {}",
        before[0], before[1]
    );
    if !synchronous {
        assert!(
            before[0] > before[1],
            "the primary acknowledged batches the replica lacks ({before:?})"
        );
    }
    drop(on_replica);
    drop(admin);

    primary.kill9();
    replica.promote();
    let produced = producer.await.unwrap();
    let redis = redis_conn(REDIS_URL).await;
    wait_drained(&redis, &res.stream, "sensorhub", &produced.last_id).await;
    let new_primary = replica.url("sensorhub");
    wait_for_count(
        &pg_client(&new_primary).await,
        "SELECT count(*) FROM readings WHERE sensor_id LIKE 'load-%'",
        produced.distinct.len() as i64,
        Duration::from_secs(60),
    )
    .await;
    assert_exactly_once(&new_primary, &produced, 0).await;
    if !synchronous {
        assert!(
            hub.logs().contains("PostgreSQL's history changed"),
            "the failover was noticed"
        );
    }
    drop(hub);
}

#[actix_web::test]
async fn an_asynchronous_failover_stores_again_what_the_old_primary_alone_had() {
    fail_over(false).await;
}

#[actix_web::test]
async fn a_synchronous_failover_loses_nothing() {
    fail_over(true).await;
}
