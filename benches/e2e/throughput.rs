//! Phases 1 and 2: the write path alone into PostgreSQL (the reference), and sensorhub
//! draining the same readings from the stream; a round's exactness.

use super::*;

/// The run's `SENSORHUB_ON_CONFLICT` (`--env`), which the reference writes with too.
pub(crate) fn on_conflict(args: &Args) -> sensorhub::domain::OnConflict {
    args.env
        .iter()
        .find(|(k, _)| k == "SENSORHUB_ON_CONFLICT")
        .map_or_else(Default::default, |(_, v)| {
            v.parse().expect("SENSORHUB_ON_CONFLICT")
        })
}

/// Phase 1: the write path alone, straight into PostgreSQL. Returns rows/s.
pub(crate) async fn reference(
    args: &Args,
    db_url: &str,
    base: chrono::DateTime<chrono::Utc>,
    connections: usize,
) -> f64 {
    let pool = sensorhub::store::connect(&measured_url(args, db_url), connections + 1)
        .await
        .unwrap();
    sensorhub::store::migrate(&pool).await.unwrap();
    // The partitions of the readings' days, as sensorhub creates them before its first batch.
    let partitions = sensorhub::store::partition::Partitions::new(Duration::from_secs(86_400));
    let last = synthetic(args.readings.saturating_sub(1), args.sensors, base).1;
    partitions
        .ensure(&mut pool.get().await.unwrap(), [base, last])
        .await
        .unwrap();
    let resolutions: Vec<Resolution> = vec!["1m".parse().unwrap(), "1h".parse().unwrap()];
    // Batches are built (folded, split) before the clock starts: the reference is what
    // PostgreSQL absorbs through the write path, not the client's preparation.
    let keep_last = on_conflict(args) == sensorhub::domain::OnConflict::KeepLast;
    let mut batches = Vec::new();
    let mut n = 0;
    while n < args.readings {
        let end = (n + args.batch_size).min(args.readings);
        let readings: Vec<Reading> = (n..end)
            .map(|i| {
                let (sensor_id, ts, value) = run_reading(args, i, base);
                Reading {
                    sensor_id: sensor_id.into(),
                    ts,
                    value,
                    unit: None,
                }
            })
            .collect();
        // Stream positions in order, as the entries' ids are: the corrections are later.
        let origins = (n..end).map(|seq| EntryId { ms: 1, seq }).collect();
        batches.push(
            prepare(
                readings,
                origins,
                vec![keep_last; (end - n) as usize],
                &resolutions,
                connections,
            )
            .shards,
        );
        n = end;
    }
    // One lane per connection, as sensorhub's writer: each writes its shards of every batch in
    // order, without waiting for the other lanes to finish a batch.
    let mut lanes: Vec<Vec<sensorhub::pipeline::lanes::Shard>> =
        (0..connections).map(|_| Vec::new()).collect();
    for shard in batches.into_iter().flatten() {
        let lane = shard.lane % connections;
        lanes[lane].push(shard);
    }
    let started = Instant::now();
    let writes = lanes.into_iter().map(|shards| {
        let pool = pool.clone();
        let resolutions = resolutions.clone();
        async move {
            let mut client = pool.get().await.unwrap();
            for shard in shards {
                let origins: Vec<sensorhub::domain::Origin> = shard
                    .origins
                    .iter()
                    .map(|e| sensorhub::domain::conflict::origin(e.ms, e.seq))
                    .collect();
                let batch = sensorhub::store::Batch {
                    readings: &shard.readings,
                    origins: &origins,
                    replaces: &shard.replaces,
                    partials: &shard.partials,
                };
                sensorhub::store::write_batch(&mut client, batch, &resolutions, keep_last)
                    .await
                    .unwrap();
            }
        }
    });
    futures_util::future::join_all(writes).await;
    args.readings as f64 / started.elapsed().as_secs_f64()
}

/// What `XINFO GROUPS` says of the stream's first group: entries read, lag and last-delivered id.
pub(crate) async fn group_info(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Option<(i64, i64, EntryId)> {
    let info: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await
        .ok()?;
    let redis::Value::Array(groups) = info else {
        return None;
    };
    let Some(redis::Value::Array(group)) = groups.into_iter().next() else {
        return None;
    };
    let field = |name: &str| {
        group
            .chunks(2)
            .find(|kv| matches!(&kv[0], redis::Value::BulkString(k) if k == name.as_bytes()))
            .map(|kv| &kv[1])
    };
    let int = |name: &str| match field(name) {
        Some(redis::Value::Int(n)) => *n,
        _ => -1,
    };
    let last_delivered = match field("last-delivered-id") {
        Some(redis::Value::BulkString(id)) => std::str::from_utf8(id).ok()?.parse().ok()?,
        _ => EntryId::default(),
    };
    Some((int("entries-read"), int("lag"), last_delivered))
}

/// Waits for sensorhub's first read of the stream (the group has read an entry); returns when
/// it was seen, polled every millisecond.
pub(crate) async fn first_read(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> SystemTime {
    let started = Instant::now();
    loop {
        if let Some((read, _, _)) = group_info(redis, stream).await
            && read > 0
        {
            return SystemTime::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sensorhub did not read the stream within a minute"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the group has read `at_least` entries, nothing is undelivered and sensorhub's
/// ledger shows every delivered entry committed.
pub(crate) async fn wait_drained(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    at_least: u64,
    started: Instant,
) {
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Some((read, lag, last_delivered)) = group_info(redis, stream).await else {
            continue;
        };
        let Ok(through) = sensorhub::stream::ledger::through(redis, stream, "sensorhub").await
        else {
            continue;
        };
        if read as u64 >= at_least && lag == 0 && through >= last_delivered {
            return;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            println!(
                "  read {read}, committed through {through}, {:.1}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "load run did not finish in 30 min"
        );
    }
}

/// `CHECKPOINT`: writes out what earlier phases left dirty, so a checkpoint they triggered does
/// not run during the next phase's clock.
pub(crate) async fn checkpoint(admin: &tokio_postgres::Client) {
    admin.batch_execute("CHECKPOINT").await.expect("CHECKPOINT");
}

/// One round's measurements: the reference, then sensorhub draining the same readings.
pub(crate) struct Round {
    pub(crate) name: String,
    pub(crate) db_url: String,
    pub(crate) stream: String,
    /// Stream entries preloaded.
    pub(crate) entries: u64,
    pub(crate) reference_rate: f64,
    pub(crate) reference_pg_cpu: f64,
    pub(crate) rate: f64,
    /// The ratio the CPU time of the three processes allows at all on these cores.
    pub(crate) allowed: f64,
    pub(crate) rss: f64,
    pub(crate) sensorhub_cpu: f64,
    pub(crate) redis_cpu: f64,
    pub(crate) pg_cpu: f64,
    pub(crate) samples: Vec<Sample>,
}

impl Round {
    pub(crate) fn ratio(&self) -> f64 {
        self.rate / self.reference_rate
    }
}

/// Phases 1 and 2 on databases and a stream named after `name`.
pub(crate) async fn throughput_round(
    args: &Args,
    admin: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    base: chrono::DateTime<chrono::Utc>,
    connections: usize,
    cores: f64,
) -> Round {
    let stream = format!("bench:{name}");
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let ref_url = format!("postgres://postgres@127.0.0.1:5432/{name}_ref");
    println!(
        "reference: {} rows straight into PostgreSQL, batches of {}, {connections} connections",
        args.readings, args.batch_size
    );
    // Each timed phase starts from a checkpoint, so that neither pays for the other's WAL.
    checkpoint(admin).await;
    let pg_before = cpu_of("postgres");
    let reference_rate = reference(args, &ref_url, base, connections).await;
    let reference_pg_cpu = cpu_of("postgres") - pg_before;
    println!(
        "  {reference_rate:.0} rows/s, {:.1} ms per batch; PostgreSQL used {reference_pg_cpu:.2} CPU s ({:.2} cores)",
        1000.0 * args.batch_size.min(args.readings) as f64 / reference_rate,
        reference_pg_cpu * reference_rate / args.readings as f64
    );
    let _ = admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{name}_ref\" WITH (FORCE)"
        ))
        .await;

    println!(
        "preloading {} readings over {} sensors into {stream}",
        args.readings, args.sensors
    );
    let entries = preload(redis, &stream, args, base).await;

    // sensorhub's database is created and migrated before the clock, as the reference's is, and
    // the throughput is timed as the load run is specified: from sensorhub's first read of the
    // stream to its last commit (`sensorhub_last_commit_timestamp_seconds`). Its startup, 15-30
    // ms, is measured on its own in phase 3; the time from spawning it is printed too.
    let pool = sensorhub::store::connect(&db_url, 1).await.unwrap();
    sensorhub::store::migrate(&pool).await.unwrap();
    drop(pool);
    checkpoint(admin).await;
    let redis_cpu = cpu_of("redis-server");
    let pg_cpu = cpu_of("postgres");
    let started = Instant::now();
    let port = free_port();
    let hub = spawn_sensorhub(args, &db_url, &stream, port);
    let pid = hub.0.id();
    let spawned = SystemTime::now();
    let sampler = Sampler::start(port, started);
    let first = first_read(redis, &stream).await;
    wait_drained(redis, &stream, entries, started).await;
    let from_spawn = started.elapsed().as_secs_f64();
    let samples = sampler.finish();
    let last_commit = metric(port, "sensorhub_last_commit_timestamp_seconds");
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let elapsed = last_commit - since_epoch(first);
    assert!(
        elapsed > 0.0 && last_commit <= since_epoch(SystemTime::now()),
        "last commit at {last_commit}, first read at {}",
        since_epoch(first)
    );
    let writer_busy = metric(port, "sensorhub_batch_write_duration_seconds_sum");
    let batches = metric(port, "sensorhub_batch_write_duration_seconds_count");
    let reread = metric(port, "sensorhub_entries_reread_total");
    let rss = peak_rss_mib(pid);
    let sensorhub_cpu = cpu_seconds(pid);
    let redis_cpu = cpu_of("redis-server") - redis_cpu;
    let pg_cpu = cpu_of("postgres") - pg_cpu;
    drop(hub);
    let rate = args.readings as f64 / elapsed;
    println!(
        "  drained in {elapsed:.2} s from the first read to the last commit ({rate:.0} readings/s, ratio {:.2}; the first read {:.0} ms after spawning sensorhub, the drain seen {from_spawn:.2} s after); {batches} batches of {:.0} readings, {:.1} ms each from hand-off to the write lanes to the last commit (batches overlap in the lanes)",
        rate / reference_rate,
        1000.0
            * first
                .duration_since(spawned)
                .unwrap_or_default()
                .as_secs_f64(),
        args.readings as f64 / batches.max(1.0),
        1000.0 * writer_busy / batches.max(1.0),
    );
    if reread > 0.0 {
        println!("  {reread} entries re-read (delivered, then found uncovered by any commit)");
    }
    // What the machine's cores allow: the three processes' CPU time spread over every core, set
    // against the reference's time. Below 1, the ratio cannot reach 1 however well they overlap.
    let cpu_total = sensorhub_cpu + redis_cpu + pg_cpu;
    let allowed = (args.readings as f64 / reference_rate * cores / cpu_total).min(1.0);
    println!(
        "  sensorhub, Redis and PostgreSQL used {cpu_total:.2} CPU s: at least {:.2} s on {cores} cores, \
         so the CPU allows a ratio of at most {allowed:.2}",
        cpu_total / cores,
    );
    Round {
        name: name.to_owned(),
        db_url,
        stream,
        entries,
        reference_rate,
        reference_pg_cpu,
        rate,
        allowed,
        rss,
        sensorhub_cpu,
        redis_cpu,
        pg_cpu,
        samples,
    }
}

/// Rows in `readings`, and aggregate rows that differ from a `GROUP BY` over them.
pub(crate) async fn exactness(db_url: &str) -> (i64, i64) {
    let db = connect(db_url).await;
    let rows: i64 = db
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .unwrap()
        .get(0);
    let mismatches: i64 = db
        .query_one(
            "WITH expected AS (
               SELECT sensor_id, r.label AS resolution,
                      to_timestamp(floor(extract(epoch FROM ts) / r.secs) * r.secs) AS bucket,
                      count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
                      (array_agg(value ORDER BY ts))[1] AS first_value,
                      (array_agg(value ORDER BY ts DESC))[1] AS last_value
               FROM readings CROSS JOIN (VALUES ('1m', 60), ('1h', 3600)) AS r(label, secs)
               GROUP BY 1, 2, 3)
             SELECT count(*) FROM expected e FULL OUTER JOIN aggregates a USING (sensor_id, resolution, bucket)
             WHERE a.count IS DISTINCT FROM e.count OR abs(a.sum - e.sum) > 1e-6 * greatest(1, abs(e.sum))
                OR a.min IS DISTINCT FROM e.min OR a.max IS DISTINCT FROM e.max
                OR a.first_value IS DISTINCT FROM e.first_value OR a.last_value IS DISTINCT FROM e.last_value",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (rows, mismatches)
}
