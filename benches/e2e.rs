//! End-to-end load run against the real local Redis and PostgreSQL.
//!
//!     cargo bench --bench e2e -- [--readings N] [--sensors N] [--batch-size N]
//!
//! Preloads N readings (default 1,000,000 over 1,000 sensors, each reporting once a second) into a
//! fresh stream, starts the `sensorhub` binary as its own process on a fresh database, and reports
//! readings/s from start to the last commit, sensorhub's peak RSS, and the CPU seconds of
//! sensorhub, Redis and PostgreSQL. It ends by checking the result is exact (row count and
//! aggregate equality with a GROUP BY), so a fast wrong run cannot pass for a fast run.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

struct Args {
    readings: u64,
    sensors: u64,
    batch_size: u64,
}

fn args() -> Args {
    let mut args = Args {
        readings: 1_000_000,
        sensors: 1_000,
        batch_size: 5_000,
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
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// CPU seconds (user + system) of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of every process whose command name is `name`.
fn cpu_of(name: &str) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name) {
            total += cpu_seconds(pid);
        }
    }
    total
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    let name = format!("sensorhub_bench_{}", std::process::id());
    let stream = format!("bench:{name}");
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let (admin, conn) =
        tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh)");
    tokio::spawn(conn);
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (scripts/services.sh)");

    println!(
        "preloading {} readings over {} sensors into {stream}",
        args.readings, args.sensors
    );
    let base =
        chrono::Utc::now() - chrono::Duration::seconds((args.readings / args.sensors) as i64 + 60);
    let mut i = 0;
    while i < args.readings {
        let mut pipe = redis::pipe();
        for n in i..(i + 10_000).min(args.readings) {
            let ts = base + chrono::Duration::seconds((n / args.sensors) as i64);
            let payload = format!(
                r#"{{"sensor":"meter-{}","value":{},"timestamp":"{}"}}"#,
                n % args.sensors,
                (n % 9973) as f64 * 0.25,
                ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("data")
                .arg(payload)
                .ignore();
        }
        let () = pipe.query_async(&mut redis).await.unwrap();
        i += 10_000;
    }

    let redis_cpu = cpu_of("redis-server");
    let pg_cpu = cpu_of("postgres");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_sensorhub"))
        .env("SENSORHUB_DATABASE_URL", &db_url)
        .env("SENSORHUB_STREAM", &stream)
        .env("SENSORHUB_CHANNEL", "")
        .env("SENSORHUB_HTTP_ADDR", "127.0.0.1:0")
        .env("SENSORHUB_BATCH_SIZE", args.batch_size.to_string())
        .env("SENSORHUB_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("sensorhub binary");
    let child = Guard(child);
    let pid = child.0.id();

    // Drained: every entry delivered and acknowledged.
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let info: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&stream)
            .query_async(&mut redis)
            .await;
        let Ok(redis::Value::Array(groups)) = info else {
            continue;
        };
        let Some(redis::Value::Array(group)) = groups.into_iter().next() else {
            continue;
        };
        let field = |name: &str| -> i64 {
            group
                .chunks(2)
                .find(|kv| matches!(&kv[0], redis::Value::BulkString(k) if k == name.as_bytes()))
                .and_then(|kv| match &kv[1] {
                    redis::Value::Int(n) => Some(*n),
                    _ => None,
                })
                .unwrap_or(-1)
        };
        let (read, pending, lag) = (field("entries-read"), field("pending"), field("lag"));
        if read as u64 >= args.readings && pending == 0 && lag == 0 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(2) {
            println!(
                "  read {read}, pending {pending}, {:.1}s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "load run did not finish in 30 min"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rss = peak_rss_mib(pid);
    let sensorhub_cpu = cpu_seconds(pid);
    let redis_cpu = cpu_of("redis-server") - redis_cpu;
    let pg_cpu = cpu_of("postgres") - pg_cpu;
    drop(child);

    let (db, conn) = tokio_postgres::connect(&db_url, NoTls).await.unwrap();
    tokio::spawn(conn);
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
    drop(db);
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await;
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{stream}:dead"))
        .query_async(&mut redis)
        .await;

    println!();
    println!(
        "| readings | sensors | batch | wall s | readings/s | peak RSS MiB | CPU s sensorhub | CPU s redis | CPU s postgres | exact |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {} | {elapsed:.2} | {:.0} | {rss:.1} | {sensorhub_cpu:.2} | {redis_cpu:.2} | {pg_cpu:.2} | {} |",
        args.readings,
        args.sensors,
        args.batch_size,
        args.readings as f64 / elapsed,
        rows as u64 == args.readings && mismatches == 0
    );
    assert_eq!(
        rows as u64, args.readings,
        "row count differs from readings published"
    );
    assert_eq!(
        mismatches, 0,
        "aggregates differ from GROUP BY over readings"
    );
}
