//! End-to-end load run against the real local Redis and PostgreSQL.
//!
//!     cargo bench --bench e2e -- [--readings N] [--sensors N] [--batch-size N]
//!                                [--steady-rate R] [--steady-seconds S] [--per-entry N]
//!                                [--env SENSORHUB_X=V ...] [--plot PATH] [--rounds N]
//!                                [--binary PATH] [--tls] [--only-throughput]
//!                                [--replace-percent P]
//!
//! The binary measured is the release build as users build it (`cargo build --release`, run by the
//! benchmark), or `--binary PATH` (another build, to compare two).
//!
//! Phases, each on fresh databases and a fresh stream; phases 1 and 2 are run `--rounds` times
//! (default 5), alternating, and the round with the median ratio is reported (with the range of
//! all rounds): on a shared machine, one pair of 2-second measurements moves by a fifth from one
//! minute to the next. Every round is checked exact.
//! 1. **reference**: the same rows written straight to PostgreSQL by the same write path
//!    (`store::write_batch`, sharded over the same number of connections, each writing its shards
//!    one after another as sensorhub's write lanes do), no Redis, no actors;
//!    the batches are built before the clock starts, so it measures what PostgreSQL absorbs;
//! 2. **throughput**: N readings (default 1,000,000 over 1,000 sensors, each reporting once a
//!    second; one reading per stream entry, or `--per-entry N` readings as one JSON array, as a
//!    gateway sends them) preloaded into the stream, then the `sensorhub` binary started as its
//!    own process on a database already migrated (as the reference's is): readings/s from its
//!    first read of the stream to its last commit, peak RSS, CPU seconds of sensorhub,
//!    Redis and PostgreSQL, and the ratio the machine's cores allow at all;
//! 3. **startup**: sensorhub restarted on the now up-to-date schema, time to `/readyz` 200;
//! 4. **latency**: a steady producer at R readings/s (default 20,000) for S seconds; p50/p99 of
//!    `sensorhub_end_to_end_latency_seconds` (stream entry time to commit), read from the histogram
//!    as the upper bound of the bucket holding the quantile.
//!
//!    Then the **answers** on that database (`e2e/answers.rs`): a year of one meter's `1h`
//!    windows as Berlin days (SQL and API, median of 21), and a CSV export of raw readings
//!    through the API in rows/s.
//!
//! 5. **Redis's own share**: the same entries preloaded anew and delivered to a consumer group that
//!    does nothing else (`XREADGROUP` + `XACK` per batch, as sensorhub read before its ledger, then
//!    `XREADGROUP NOACK`, as it reads now): Redis's CPU for that alone, with the reference's
//!    PostgreSQL CPU, bounds the ratio even a sensorhub that cost nothing could reach on these
//!    cores.
//!
//! 6. **MQTT**: up to 200,000 of the readings published at QoS 1 (one per message) by four
//!    `mosquitto_pub` processes to a Mosquitto of the run's own, through fresh sensorhub
//!    instances: one connection under the lease, one instance with 3 connections and 3 instances
//!    in a shared subscription. Readings/s from the first publish to the last commit, each beside
//!    the broker's own rate to as many `mosquitto_sub -q 1` that do nothing, and the one
//!    connection against the stream phase's rate (skipped without Debian's mosquitto and
//!    mosquitto-clients).
//!
//! 7. **line protocol**: up to 500,000 of the readings as InfluxDB line protocol, posted to
//!    `/api/v2/write` in requests of 5,000 lines by four concurrent writers to a fresh sensorhub:
//!    readings/s from the first request to the last commit, against the stream phase's rate.
//!
//! 8. **Redis Cluster**: up to 500,000 of the readings preloaded into 16 shards on a three-master
//!    Redis Cluster of the run's own, and the same into one stream on the local Redis; readings/s
//!    of a fresh sensorhub over each, from its start to its last commit (skipped with `--tls`, or
//!    without `redis-cli`).
//!
//! With `--replace-percent P` (and `--env SENSORHUB_ON_CONFLICT=keep_last`), P% of the readings of
//! phases 1 and 2 are corrections: another value for their sensor's reading 25 seconds earlier, so
//! that most meet a stored reading (the reference writes with the same policy). Rates count every
//! reading sent; the exactness check expects the rows the corrections leave.
//!
//! With `--tls`, sensorhub and the reference speak TLS: to a TLS-only Redis the run starts with
//! certificates of its own (verified), and to PostgreSQL with `sslmode=require`.
//!
//! While sensorhub runs, a thread samples `/metrics` every 100 ms; the run ends by drawing
//! throughput and latency over time into a PNG (`--plot PATH`, default `docs/e2e-load-run.png`).
//!
//! It ends by checking the result is exact (row count and aggregate equality with a GROUP BY), so a
//! fast wrong run cannot pass for a fast run.

#[path = "e2e/answers.rs"]
mod answers;
#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/data.rs"]
mod data;
#[path = "e2e/line_protocol.rs"]
mod line_protocol;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/mqtt.rs"]
mod mqtt;
#[path = "e2e/plot.rs"]
mod plot;
#[path = "e2e/process.rs"]
mod process;
#[path = "e2e/redis_share.rs"]
mod redis_share;
#[path = "e2e/throughput.rs"]
mod throughput;

use data::*;
use line_protocol::*;
use metrics::*;
use mqtt::*;
use plot::*;
use process::*;
use redis_share::*;
use throughput::*;

use sensorhub::domain::{Reading, Resolution};
use sensorhub::pipeline::aggregate::prepare;
use sensorhub::redis::entry::EntryId;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::NoTls;

struct Args {
    readings: u64,
    sensors: u64,
    batch_size: u64,
    steady_rate: u64,
    steady_seconds: u64,
    /// Readings per stream entry (`--per-entry N`): 1 is one device per entry, more is a gateway
    /// sending its devices' readings as one JSON array.
    per_entry: u64,
    /// Extra `SENSORHUB_*` settings for the run (`--env NAME=VALUE`).
    env: Vec<(String, String)>,
    /// Where the plot of the run goes (`--plot PATH`).
    plot: String,
    /// Rounds of reference and throughput (`--rounds N`); the median round's ratio is reported.
    rounds: u64,
    /// The sensorhub binary to run (`--binary PATH`): by default the release build as users build
    /// it, without the test-only features `cargo bench` turns on for this crate.
    binary: Option<String>,
    /// `--tls`: sensorhub and the reference speak TLS to Redis and PostgreSQL.
    tls: bool,
    /// `--only-throughput`: the rounds of reference and throughput, nothing after them (to compare
    /// two builds' ingest in alternating runs).
    only_throughput: bool,
    /// `--only-mqtt`: the MQTT phase alone.
    only_mqtt: bool,
    /// `--replace-percent P`: one reading in `replace_every` (100 / P) is a correction (0: none).
    replace_every: u64,
    /// The Redis every phase uses: the local one, or with `--tls` a TLS-only one of the run's own.
    redis_url: String,
    /// The CA file that Redis's certificate is verified against (`--tls`).
    redis_ca: Option<std::path::PathBuf>,
}

fn args() -> Args {
    let mut args = Args {
        readings: 1_000_000,
        sensors: 1_000,
        batch_size: 20_000,
        steady_rate: 20_000,
        steady_seconds: 10,
        per_entry: 1,
        env: Vec::new(),
        plot: "docs/e2e-load-run.png".into(),
        rounds: 5,
        binary: None,
        tls: false,
        only_throughput: false,
        only_mqtt: false,
        replace_every: 0,
        redis_url: "redis://127.0.0.1:6379".into(),
        redis_ca: None,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| -> u64 {
            iter.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--readings" => args.readings = value("--readings"),
            "--sensors" => args.sensors = value("--sensors"),
            "--batch-size" => args.batch_size = value("--batch-size"),
            "--steady-rate" => args.steady_rate = value("--steady-rate"),
            "--steady-seconds" => args.steady_seconds = value("--steady-seconds"),
            "--per-entry" => args.per_entry = value("--per-entry").max(1),
            "--rounds" => args.rounds = value("--rounds").max(1),
            "--env" => {
                let pair = iter.next().expect("--env needs NAME=VALUE");
                let (name, value) = pair.split_once('=').expect("--env needs NAME=VALUE");
                args.env.push((name.to_owned(), value.to_owned()));
            }
            "--plot" => args.plot = iter.next().expect("--plot needs a path"),
            "--binary" => args.binary = Some(iter.next().expect("--binary needs a path")),
            "--tls" => args.tls = true,
            "--only-throughput" => args.only_throughput = true,
            "--only-mqtt" => args.only_mqtt = true,
            "--replace-percent" => {
                let percent = value("--replace-percent").min(100);
                args.replace_every = 100u64.checked_div(percent).unwrap_or(0);
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh)");
    tokio::spawn(conn);
    client
}

/// Drops the database and the stream keys of the run named `name`.
async fn drop_run(
    admin: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
) {
    let stream = format!("bench:{name}");
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{stream}:dead"))
        .arg(sensorhub::stream::ledger::ranges_key(&stream, "sensorhub"))
        .arg(sensorhub::stream::ledger::through_key(&stream, "sensorhub"))
        .query_async(redis)
        .await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = args();
    if args.binary.is_none() {
        args.binary = Some(production_binary());
    }
    eprintln!(
        "sensorhub binary: {}",
        args.binary.as_deref().unwrap_or_default()
    );
    let name = format!("sensorhub_bench_{}", std::process::id());
    let admin = connect("postgres://postgres@127.0.0.1:5432/postgres").await;
    let _tls_redis = if args.tls {
        let (guard, port, ca, dir) = start_tls_redis();
        args.redis_url = format!("rediss://127.0.0.1:{port}");
        args.redis_ca = Some(ca);
        println!(
            "TLS: sensorhub and the reference speak TLS to Redis (a TLS-only redis-server on port {port}) and PostgreSQL (sslmode=require)"
        );
        Some((guard, TempDir(dir)))
    } else {
        None
    };
    let files = sensorhub::tls::TlsFiles {
        ca: args.redis_ca.clone(),
        client: None,
    };
    let client = sensorhub::redis::target::parse(&args.redis_url, &files)
        .expect("a Redis URL")
        .client;
    let mut redis = {
        let started = Instant::now();
        loop {
            match client.get_multiplexed_async_connection().await {
                Ok(conn) => break conn,
                Err(error) if started.elapsed() > Duration::from_secs(10) => {
                    panic!("Redis at {} (scripts/services.sh): {error}", args.redis_url)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    // To the microsecond, as PostgreSQL keeps times and the parser truncates them: the reference
    // builds its readings from it directly.
    let base = chrono::DateTime::from_timestamp_micros(
        (chrono::Utc::now()
            - chrono::Duration::seconds((args.readings / args.sensors) as i64 + 60))
        .timestamp_micros(),
    )
    .expect("a time");
    if args.only_mqtt {
        mqtt_phase(&args, &admin, &mut redis, &format!("{name}_mqtt"), base).await;
        return;
    }
    let connections: usize = args
        .env
        .iter()
        .find(|(k, _)| k == "SENSORHUB_WRITE_CONNECTIONS")
        .map_or(2, |(_, v)| v.parse().unwrap());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;

    // Rounds of reference then sensorhub, each on fresh databases and a fresh stream: on a shared
    // machine one pair of 2-second measurements moves by a fifth from one minute to the next,
    // so the ratio reported is the median round's. The last round's database and stream stay for
    // the phases after it.
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let name = format!("{name}_{round}");
        println!("round {round} of {}", args.rounds);
        let measured =
            throughput_round(&args, &admin, &mut redis, &name, base, connections, cores).await;
        if round < args.rounds {
            let (rows, mismatches) = exactness(&measured.db_url).await;
            assert_eq!(
                rows as u64,
                distinct_rows(&args),
                "round {round}: row count differs from readings published"
            );
            assert_eq!(
                mismatches, 0,
                "round {round}: aggregates differ from GROUP BY over readings"
            );
            drop_run(&admin, &mut redis, &name).await;
        }
        rounds.push(measured);
    }
    let last = rounds.last().expect("at least one round");
    let (name, db_url, stream) = (last.name.clone(), last.db_url.clone(), last.stream.clone());
    let mut entries = last.entries;
    let entries_preloaded = last.entries;
    let mut by_ratio: Vec<&Round> = rounds.iter().collect();
    by_ratio.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let median = by_ratio[by_ratio.len() / 2];
    if rounds.len() > 1 {
        println!(
            "ratios of the {} rounds: {}; the median round's figures are reported",
            rounds.len(),
            rounds
                .iter()
                .map(|r| format!("{:.2}", r.ratio()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.only_throughput {
        let (rows, mismatches) = exactness(&db_url).await;
        assert_eq!(rows as u64, distinct_rows(&args), "last round: row count");
        assert_eq!(mismatches, 0, "last round: aggregates differ from GROUP BY");
        for (round, measured) in rounds.iter().enumerate() {
            println!(
                "round {}: sensorhub {:.0} readings/s, reference {:.0} rows/s",
                round + 1,
                measured.rate,
                measured.reference_rate
            );
        }
        drop_run(&admin, &mut redis, &name).await;
        return;
    }
    let reference_rate = median.reference_rate;
    let reference_pg_cpu = median.reference_pg_cpu;
    let reference_elapsed = args.readings as f64 / reference_rate;

    // Startup on an up-to-date schema.
    let port = free_port();
    let restarted = Instant::now();
    let hub = spawn_sensorhub(&args, &db_url, &stream, port);
    wait_ready(port).await;
    let startup = restarted.elapsed().as_secs_f64();

    // Latency under a steady producer.
    println!(
        "steady producer: {} readings/s for {} s",
        args.steady_rate, args.steady_seconds
    );
    let before = latency_buckets(port);
    let writes_before = (
        metric(port, "sensorhub_batch_write_duration_seconds_sum"),
        metric(port, "sensorhub_batch_write_duration_seconds_count"),
    );
    let steady_started = Instant::now();
    let sampler = Sampler::start(port, Instant::now());
    let steady_base = chrono::Utc::now();
    let steady_total = args.steady_rate * args.steady_seconds;
    let tick = Duration::from_millis(10);
    let per_tick = (args.steady_rate / 100).max(1);
    let mut sent = 0;
    let mut next = tokio::time::interval(tick);
    while sent < steady_total {
        next.tick().await;
        let payloads = (sent..(sent + per_tick).min(steady_total)).map(|k| {
            format!(
                r#"{{"sensor":"meter-{}","value":{},"timestamp":"{}"}}"#,
                k % args.sensors,
                k % 100,
                (steady_base + chrono::Duration::milliseconds((k / args.sensors) as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        });
        let payloads = grouped(payloads, args.per_entry);
        entries += payloads.len() as u64;
        sensorhub::stream::append::append_payloads(&mut redis, &stream, payloads)
            .await
            .unwrap();
        sent = (sent + per_tick).min(steady_total);
    }
    wait_drained(&mut redis, &stream, entries, restarted).await;
    let after = latency_buckets(port);
    let steady_elapsed = steady_started.elapsed().as_secs_f64();
    let busy = metric(port, "sensorhub_batch_write_duration_seconds_sum") - writes_before.0;
    let batches = metric(port, "sensorhub_batch_write_duration_seconds_count") - writes_before.1;
    println!(
        "  {batches} batches of {:.0} readings on average, {:.1} ms each from hand-off to the write lanes to the last commit; {:.0}% of the phase in sum",
        steady_total as f64 / batches,
        1000.0 * busy / batches,
        100.0 * busy / steady_elapsed
    );
    let steady_samples = sampler.finish();
    let (p50, p99) = (
        quantile(&before, &after, 0.5),
        quantile(&before, &after, 0.99),
    );
    answers::answers_phase(&db_url, port, args.sensors).await;
    drop(hub);

    println!(
        "Redis's own share: the same {entries_preloaded} entries delivered to a consumer group that does nothing else"
    );
    let share_stream = format!("{stream}:share");
    let mut allowed_without_sensorhub = [0.0; 2];
    for (noack, what) in [
        (
            false,
            "XREADGROUP + XACK per batch (the pending-entries list sensorhub no longer uses)",
        ),
        (true, "XREADGROUP NOACK, as sensorhub reads"),
    ] {
        let cpu = redis_share(&mut redis, &share_stream, &args, base, noack).await;
        let bound = (reference_elapsed * cores / (reference_pg_cpu + cpu)).min(1.0);
        allowed_without_sensorhub[usize::from(noack)] = bound;
        println!(
            "  {what}: Redis used {cpu:.2} CPU s; with the reference's PostgreSQL CPU, \
             a sensorhub that cost nothing could reach a ratio of at most {bound:.2}"
        );
    }

    let mqtt = mqtt_phase(&args, &admin, &mut redis, &format!("{name}_mqtt"), base).await;
    if let Some(rate) = mqtt {
        println!(
            "  {:.2} of the stream phase's {:.0} readings/s in the same run",
            rate / median.rate,
            median.rate
        );
    }

    let line_rate =
        line_protocol_phase(&args, &admin, &mut redis, &format!("{name}_lp"), base).await;
    println!(
        "  {:.2} of the stream phase's {:.0} readings/s in the same run",
        line_rate / median.rate,
        median.rate
    );

    let cluster_rates =
        cluster::cluster_phase(&args, &admin, &mut redis, &format!("{name}_cl"), base).await;

    let (rows, mismatches) = exactness(&db_url).await;
    drop_run(&admin, &mut redis, &name).await;
    let exact = rows as u64 == distinct_rows(&args) + steady_total && mismatches == 0;

    println!();
    println!(
        "| readings | per entry | batch | readings/s | reference rows/s | ratio | CPU allows: this run / sensorhub free / free, had it XACKed | p50 / p99 latency at {}/s | startup to ready | peak RSS | CPU s sensorhub / redis / postgres | exact |",
        args.steady_rate
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    // The median round's figures; the ratio with the range over all rounds, the peak RSS the
    // highest of any round.
    let ratio = if rounds.len() > 1 {
        format!(
            "{:.2} ({:.2}–{:.2}, {} rounds)",
            median.ratio(),
            by_ratio[0].ratio(),
            by_ratio[by_ratio.len() - 1].ratio(),
            rounds.len()
        )
    } else {
        format!("{:.2}", median.ratio())
    };
    let rss = rounds.iter().map(|r| r.rss).fold(0.0, f64::max);
    println!(
        "| {} | {} | {} | {:.0} | {reference_rate:.0} | {ratio} | {:.2} / {:.2} / {:.2} | ≤ {:.0} ms / ≤ {:.0} ms | {:.0} ms | {rss:.1} MiB | {:.2} / {:.2} / {:.2} | {exact} |",
        args.readings,
        args.per_entry,
        args.batch_size,
        median.rate,
        median.allowed,
        allowed_without_sensorhub[1],
        allowed_without_sensorhub[0],
        p50 * 1000.0,
        p99 * 1000.0,
        startup * 1000.0,
        median.sensorhub_cpu,
        median.redis_cpu,
        median.pg_cpu,
    );
    if let Some(rates) = &cluster_rates {
        println!();
        println!("| one stream, local Redis | 16 shards, 3-master Redis Cluster | ratio |");
        println!("| --- | --- | --- |");
        println!(
            "| {:.0} | {:.0} | {:.2} |",
            rates.one_stream,
            rates.cluster,
            rates.cluster / rates.one_stream
        );
    }
    match plot(
        &args.plot,
        &median.samples,
        &steady_samples,
        reference_rate,
        args.steady_rate,
    ) {
        Ok(()) => println!("\nplot: {}", args.plot),
        Err(error) => println!("\nno plot: {error}"),
    }
    assert_eq!(
        rows as u64,
        args.readings + steady_total,
        "row count differs from readings published"
    );
    assert_eq!(
        mismatches, 0,
        "aggregates differ from GROUP BY over readings"
    );
}
