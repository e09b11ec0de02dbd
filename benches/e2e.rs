//! End-to-end load run against the real local Redis and PostgreSQL.
//!
//!     cargo bench --bench e2e -- [--readings N] [--sensors N] [--batch-size N]
//!                                [--steady-rate R] [--steady-seconds S] [--per-entry N]
//!                                [--env SENSORHUB_X=V ...] [--plot PATH] [--rounds N]
//!                                [--binary PATH] [--tls]
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
//! 5. **Redis's own share**: the same entries preloaded anew and delivered to a consumer group that
//!    does nothing else (`XREADGROUP` + `XACK` per batch, as sensorhub read before its ledger, then
//!    `XREADGROUP NOACK`, as it reads now): Redis's CPU for that alone, with the reference's
//!    PostgreSQL CPU, bounds the ratio even a sensorhub that cost nothing could reach on these
//!    cores.
//!
//! 6. **MQTT**: up to 200,000 of the readings published at QoS 1 (one per message) by four
//!    `mosquitto_pub` processes to a Mosquitto of the run's own, through a fresh sensorhub
//!    subscribed to it: readings/s from the first publish to the last commit, against the stream
//!    phase's rate (skipped without Debian's mosquitto and mosquitto-clients).
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
//! With `--tls`, sensorhub and the reference speak TLS: to a TLS-only Redis the run starts with
//! certificates of its own (verified), and to PostgreSQL with `sslmode=require`.
//!
//! While sensorhub runs, a thread samples `/metrics` every 100 ms; the run ends by drawing
//! throughput and latency over time into a PNG (`--plot PATH`, default `docs/e2e-load-run.png`).
//!
//! It ends by checking the result is exact (row count and aggregate equality with a GROUP BY), so a
//! fast wrong run cannot pass for a fast run.

#[path = "e2e/cluster.rs"]
mod cluster;

use sensorhub::domain::{Reading, Resolution};
use sensorhub::pipeline::aggregate::prepare;
use sensorhub::stream::entry::EntryId;
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
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// The release binary as `cargo build --release` makes it. The binary `cargo bench` builds beside
/// this benchmark links the library with the dev-dependencies' features (fault injection), so it
/// is not the one measured.
fn production_binary() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "sensorhub",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build --release");
    assert!(output.status.success(), "cargo build --release failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|message| message["executable"].as_str().map(str::to_owned))
        .expect("cargo reported the sensorhub executable")
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

/// The cumulative latency histogram: (upper bound, count) per bucket.
const LATENCY: &str = "sensorhub_end_to_end_latency_seconds";
const TRANSACTION: &str = "sensorhub_batch_write_duration_seconds";

fn latency_buckets(port: u16) -> Vec<(f64, f64)> {
    let (_, body) = http_get(port, "/metrics").unwrap_or_default();
    buckets_of(&body, LATENCY)
}

/// The cumulative buckets `(le, count)` of the histogram `name` in a `/metrics` body.
fn buckets_of(body: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// Readings committed so far, from `/metrics`.
/// One unlabelled sample in a `/metrics` body.
fn value_of(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// One look at a running sensorhub: seconds since the phase began, readings committed, batch
/// transactions (seconds in them, how many, their histogram), latency histogram.
struct Sample {
    at: f64,
    written: f64,
    transactions: (f64, f64),
    transaction_buckets: Vec<(f64, f64)>,
    buckets: Vec<(f64, f64)>,
}

/// Samples `/metrics` every `SAMPLE_EVERY` on its own thread until stopped, for the plot.
struct Sampler {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

/// Often enough that a drain of under two seconds still gives a curve.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples per half second, the interval every curve of the plot is drawn over.
fn half_second() -> usize {
    (0.5 / SAMPLE_EVERY.as_secs_f64()).round().max(1.0) as usize
}

impl Sampler {
    fn start(port: u16, started: Instant) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut next = Instant::now();
            loop {
                if let Some((200, body)) = http_get(port, "/metrics") {
                    let value = |name: &str| value_of(&body, name).unwrap_or(0.0);
                    samples.push(Sample {
                        at: started.elapsed().as_secs_f64(),
                        written: value("sensorhub_readings_written_total"),
                        transactions: (
                            value(&format!("{TRANSACTION}_sum")),
                            value(&format!("{TRANSACTION}_count")),
                        ),
                        transaction_buckets: buckets_of(&body, TRANSACTION),
                        buckets: buckets_of(&body, LATENCY),
                    });
                }
                next += SAMPLE_EVERY;
                let wait = next.saturating_duration_since(Instant::now());
                if stopped.recv_timeout(wait) != Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    return samples;
                }
            }
        });
        Self { stop, thread }
    }

    /// Stops sampling at once and returns the samples.
    fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.thread.join().expect("sampler thread")
    }
}

/// Midpoint seconds, readings/s, p50 ms, p99 ms, mean batch transaction ms, slowest batch
/// transaction ms (the upper bound of its histogram bucket) of one interval.
type Interval = (f64, f64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// Per interval of `span` samples, sliding by one, an [`Interval`]; the quantiles interpolated
/// within the histogram bucket as Prometheus' `histogram_quantile` does, `None` for an interval
/// without commits.
fn series(samples: &[Sample], span: usize) -> Vec<Interval> {
    samples
        .windows(span + 1)
        .map(|w| {
            let (a, b) = (&w[0], &w[span]);
            let dt = b.at - a.at;
            let rate = (b.written - a.written) / dt;
            let q = |q| interpolated_quantile(&a.buckets, &b.buckets, q).map(|s| s * 1000.0);
            let batches = b.transactions.1 - a.transactions.1;
            let mean =
                (batches > 0.0).then(|| 1000.0 * (b.transactions.0 - a.transactions.0) / batches);
            let slowest = (batches > 0.0)
                .then(|| 1000.0 * quantile(&a.transaction_buckets, &b.transaction_buckets, 1.0));
            ((a.at + b.at) / 2.0, rate, q(0.5), q(0.99), mean, slowest)
        })
        .collect()
}

/// `histogram_quantile` over the observations between two snapshots.
fn interpolated_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let deltas = bucket_deltas(before, after);
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &deltas {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

fn bucket_deltas(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, m)| *m);
            (*le, n - earlier)
        })
        .collect()
}

/// Draws the run: throughput of the load phase, and latency and throughput of the steady phase.
fn plot(
    path: &str,
    load: &[Sample],
    steady: &[Sample],
    reference_rate: f64,
    steady_rate: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let font = std::fs::read(FONT)
        .map_err(|e| format!("{FONT}: {e} (Debian package fonts-dejavu-core)"))?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| format!("{FONT} is not a usable font"))?;
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(450);

    // The whole drain on the axis, though the rate per half second is drawn at each interval's
    // middle.
    let x_max = load.last().map_or(1.0, |s| s.at).max(1.0);
    let load = series(load, half_second());
    let y_max = load.iter().map(|p| p.1).fold(reference_rate, f64::max) * 1.1 / 1000.0;
    panel(
        &top,
        "load run: backlog drained, committed readings/s (thousands)".into(),
        (x_max, y_max, "k readings/s"),
        vec![
            Line::measured(
                "sensorhub, per 0.5 s",
                BLUE,
                load.iter().map(|p| (p.0, p.1 / 1000.0)).collect(),
            ),
            Line::level(
                "reference: write path alone",
                BLACK,
                reference_rate / 1000.0,
                x_max,
            ),
            Line::level("target 150k/s", RED, 150.0, x_max),
        ],
    )?;

    let steady = series(steady, half_second());
    let x_max = steady.last().map_or(1.0, |p| p.0).max(1.0);
    let y_max = steady.iter().filter_map(|p| p.3).fold(100.0, f64::max) * 1.1;
    let steady_line = |label, color, pick: fn(&Interval) -> Option<f64>| {
        let points = steady
            .iter()
            .filter_map(|p| pick(p).map(|v| (p.0, v)))
            .collect();
        Line::measured(label, color, points)
    };
    panel(
        &bottom,
        format!(
            "steady producer at {steady_rate} readings/s: latency stream entry → commit and batch transaction time, over the last 0.5 s"
        ),
        (x_max, y_max, "ms"),
        vec![
            steady_line("p50", GREEN, |p| p.2),
            steady_line("p99", MAGENTA, |p| p.3),
            steady_line("batch transaction, mean", BLUE, |p| p.4),
            steady_line("batch transaction, slowest (bucket bound)", CYAN, |p| p.5),
            Line::level("target p99 100 ms", RED, 100.0, x_max),
        ],
    )?;
    root.present()?;
    Ok(())
}

/// One line of a plot panel.
struct Line {
    label: &'static str,
    color: plotters::style::RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn measured(
        label: &'static str,
        color: plotters::style::RGBColor,
        points: Vec<(f64, f64)>,
    ) -> Self {
        Self {
            label,
            color,
            width: 2,
            points,
        }
    }

    /// A horizontal line: a target or the reference.
    fn level(label: &'static str, color: plotters::style::RGBColor, y: f64, x_max: f64) -> Self {
        Self {
            label,
            color,
            width: 1,
            points: vec![(0.0, y), (x_max, y)],
        }
    }
}

/// Draws one panel: axes from 0 to `(x_max, y_max)`, time on x, the lines with a legend.
fn panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    caption: String,
    (x_max, y_max, y_desc): (f64, f64, &str),
    lines: Vec<Line>,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc(y_desc)
        .draw()?;
    for line in lines {
        let style = line.color.stroke_width(line.width);
        chart
            .draw_series(LineSeries::new(line.points, style))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The bucket bound holding quantile `q` of the observations between two snapshots.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let deltas = bucket_deltas(before, after);
    let total = deltas.last().map_or(0.0, |(_, n)| *n);
    deltas
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| *le)
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The synthetic readings: sensor `n % sensors`, one per sensor per second.
fn synthetic(
    n: u64,
    sensors: u64,
    base: chrono::DateTime<chrono::Utc>,
) -> (String, chrono::DateTime<chrono::Utc>, f64) {
    (
        format!("meter-{}", n % sensors),
        base + chrono::Duration::seconds((n / sensors) as i64),
        (n % 9973) as f64 * 0.25,
    )
}

/// A reading as a device sends it: sensorhub's JSON.
fn reading_payload(sensor: &str, ts: chrono::DateTime<chrono::Utc>, value: f64) -> String {
    format!(
        r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{}"}}"#,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Reading objects as stream payloads: each on its own, or `per_entry` of them as one JSON array.
fn grouped(readings: impl Iterator<Item = String>, per_entry: u64) -> Vec<String> {
    if per_entry == 1 {
        return readings.collect();
    }
    let readings: Vec<String> = readings.collect();
    readings
        .chunks(per_entry as usize)
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .collect()
}

/// Preloads the synthetic readings into `stream`; returns the number of stream entries.
async fn preload(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    args: &Args,
    base: chrono::DateTime<chrono::Utc>,
) -> u64 {
    let mut i = 0;
    let mut entries = 0;
    while i < args.readings {
        let payloads = (i..(i + 10_000).min(args.readings)).map(|n| {
            let (sensor, ts, value) = synthetic(n, args.sensors, base);
            reading_payload(&sensor, ts, value)
        });
        let payloads = grouped(payloads, args.per_entry);
        entries += payloads.len() as u64;
        sensorhub::stream::entry::append_payloads(redis, stream, payloads)
            .await
            .unwrap();
        i += 10_000;
    }
    entries
}

/// Phase 5, Redis's own share: the same entries preloaded anew and delivered to a consumer group
/// that does nothing else with them, in reads of a batch each (`XREADGROUP COUNT`), then `XACK`
/// per batch as sensorhub does, or with `noack` (`XREADGROUP NOACK`: no pending-entries list and no
/// `XACK`, which gives up redelivery after a crash). Returns Redis's CPU seconds.
async fn redis_share(
    redis: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    args: &Args,
    base: chrono::DateTime<chrono::Utc>,
    noack: bool,
) -> f64 {
    let entries = preload(redis, stream, args, base).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("share")
        .arg("0")
        .query_async(redis)
        .await
        .unwrap();
    let count = (args.batch_size / args.per_entry).max(1);
    let before = cpu_of("redis-server");
    let mut delivered = 0;
    loop {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg("share")
            .arg("bench")
            .arg("COUNT")
            .arg(count);
        if noack {
            read.arg("NOACK");
        }
        let reply: redis::streams::StreamReadReply = read
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(redis)
            .await
            .unwrap();
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|key| key.ids)
            .map(|entry| entry.id)
            .collect();
        if ids.is_empty() {
            break;
        }
        delivered += ids.len() as u64;
        if !noack {
            let _: u64 = redis::cmd("XACK")
                .arg(stream)
                .arg("share")
                .arg(&ids)
                .query_async(redis)
                .await
                .unwrap();
        }
    }
    let cpu = cpu_of("redis-server") - before;
    let _: u64 = redis::cmd("DEL")
        .arg(stream)
        .query_async(redis)
        .await
        .unwrap();
    assert_eq!(
        delivered, entries,
        "the group was not delivered every entry"
    );
    cpu
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh)");
    tokio::spawn(conn);
    client
}

/// Phase 1: the write path alone, straight into PostgreSQL. Returns rows/s.
async fn reference(
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
    let mut batches = Vec::new();
    let mut n = 0;
    while n < args.readings {
        let end = (n + args.batch_size).min(args.readings);
        let readings: Vec<Reading> = (n..end)
            .map(|i| {
                let (sensor_id, ts, value) = synthetic(i, args.sensors, base);
                Reading {
                    sensor_id: sensor_id.into(),
                    ts,
                    value,
                    unit: None,
                }
            })
            .collect();
        let origins = vec![EntryId::ZERO; readings.len()];
        batches.push(prepare(readings, origins, &resolutions, connections).shards);
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
                sensorhub::store::write_batch(
                    &mut client,
                    &shard.readings,
                    &shard.partials,
                    &resolutions,
                )
                .await
                .unwrap();
            }
        }
    });
    futures_util::future::join_all(writes).await;
    args.readings as f64 / started.elapsed().as_secs_f64()
}

/// What `XINFO GROUPS` says of the stream's first group: entries read, lag and last-delivered id.
async fn group_info(
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
async fn first_read(redis: &mut redis::aio::MultiplexedConnection, stream: &str) -> SystemTime {
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
async fn wait_drained(
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

/// One unlabelled sample of sensorhub's `/metrics` (NaN when absent).
fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .and_then(|(_, body)| value_of(&body, name))
        .unwrap_or(f64::NAN)
}

fn spawn_sensorhub(args: &Args, db_url: &str, stream: &str, port: u16) -> Guard {
    spawn_sensorhub_with(args, db_url, stream, port, &[])
}

/// As [`spawn_sensorhub`], with `extra` settings over the run's connections (`--env` still last).
fn spawn_sensorhub_with(
    args: &Args,
    db_url: &str,
    stream: &str,
    port: u16,
    extra: &[(&str, String)],
) -> Guard {
    let child = Command::new(args.binary.as_deref().expect("binary resolved in main"))
        .envs(connections_env(args, db_url))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SENSORHUB_STREAM", stream)
        .env("SENSORHUB_CHANNEL", "")
        .env("SENSORHUB_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SENSORHUB_BATCH_SIZE", args.batch_size.to_string())
        .env("SENSORHUB_LOG", "warn")
        .envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .expect("sensorhub binary");
    Guard(child)
}

/// The database URL sensorhub and the reference use: with `--tls`, encrypted (the local server's
/// own certificate is not one a client can verify by name, so `require`: encryption, the cost
/// measured here, without verification).
fn measured_url(args: &Args, db_url: &str) -> String {
    if args.tls {
        format!("{db_url}?sslmode=require")
    } else {
        format!("{db_url}?sslmode=disable")
    }
}

/// The connection settings of a sensorhub of the run.
fn connections_env(args: &Args, db_url: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SENSORHUB_DATABASE_URL", measured_url(args, db_url)),
        ("SENSORHUB_REDIS_URL", args.redis_url.clone()),
    ];
    if let Some(ca) = &args.redis_ca {
        env.push(("SENSORHUB_REDIS_CA_FILE", ca.display().to_string()));
    }
    env
}

/// `--tls`: a TLS-only Redis of the run's own (certificates made for it), its CA file, and the
/// directory holding both, removed with the guard.
fn start_tls_redis() -> (Guard, u16, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("sensorhub-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    (Guard(child), port, dir.join("ca.pem"), dir)
}

/// `CHECKPOINT`: writes out what earlier phases left dirty, so a checkpoint they triggered does
/// not run during the next phase's clock.
async fn checkpoint(admin: &tokio_postgres::Client) {
    admin.batch_execute("CHECKPOINT").await.expect("CHECKPOINT");
}

/// One round's measurements: the reference, then sensorhub draining the same readings.
struct Round {
    name: String,
    db_url: String,
    stream: String,
    /// Stream entries preloaded.
    entries: u64,
    reference_rate: f64,
    reference_pg_cpu: f64,
    rate: f64,
    /// The ratio the CPU time of the three processes allows at all on these cores.
    allowed: f64,
    rss: f64,
    sensorhub_cpu: f64,
    redis_cpu: f64,
    pg_cpu: f64,
    samples: Vec<Sample>,
}

impl Round {
    fn ratio(&self) -> f64 {
        self.rate / self.reference_rate
    }
}

/// Phases 1 and 2 on databases and a stream named after `name`.
async fn throughput_round(
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
async fn exactness(db_url: &str) -> (i64, i64) {
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

/// Readings in the MQTT phase: enough for a few seconds of publishing.
const MQTT_READINGS: u64 = 200_000;

/// The MQTT phase: readings published at QoS 1 (one per message, sensorhub's JSON) by four
/// `mosquitto_pub` processes to a Mosquitto of the run's own (no cap on queued messages), through
/// a fresh sensorhub subscribed to them: readings/s from the first publish to the last commit.
/// `None` (skipped) without Mosquitto's programs (Debian's mosquitto and mosquitto-clients).
async fn mqtt_phase(
    args: &Args,
    admin: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    base: chrono::DateTime<chrono::Utc>,
) -> Option<f64> {
    let available = |program: &str| {
        Command::new(program)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !available("mosquitto") || !available("mosquitto_pub") {
        println!("MQTT phase skipped: it needs mosquitto and mosquitto_pub (mosquitto-clients)");
        return None;
    }
    let readings = args.readings.min(MQTT_READINGS);
    println!("MQTT: {readings} readings published at QoS 1 by 4 publishers");
    let dir = std::env::temp_dir().join(format!("sensorhub-bench-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let broker_port = free_port();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            "listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\n"
        ),
    )
    .unwrap();
    let broker = Guard(
        Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    let parts: Vec<std::path::PathBuf> = (0..4u64)
        .map(|part| {
            let lines: String = (0..readings)
                .filter(|n| n % 4 == part)
                .map(|n| {
                    let (sensor, ts, value) = synthetic(n, args.sensors, base);
                    format!(
                        "{{\"sensor\":\"{sensor}\",\"value\":{value},\"timestamp\":\"{}\"}}\n",
                        ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    )
                })
                .collect();
            let path = dir.join(format!("part{part}"));
            std::fs::write(&path, lines).unwrap();
            path
        })
        .collect();

    let stream = format!("bench:{name}");
    let port = free_port();
    let hub = Guard(
        Command::new(args.binary.as_deref().expect("binary resolved in main"))
            .envs(connections_env(
                args,
                &format!("postgres://postgres@127.0.0.1:5432/{name}"),
            ))
            .env("SENSORHUB_STREAM", &stream)
            .env("SENSORHUB_CHANNEL", "")
            .env("SENSORHUB_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("SENSORHUB_BATCH_SIZE", args.batch_size.to_string())
            .env("SENSORHUB_LOG", "warn")
            .env(
                "SENSORHUB_MQTT_URL",
                format!("mqtt://127.0.0.1:{broker_port}"),
            )
            .env("SENSORHUB_MQTT_TOPICS", "bench/#=json")
            .env("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{name}"))
            .envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .spawn()
            .expect("sensorhub binary"),
    );
    let started = Instant::now();
    while metric(port, "sensorhub_mqtt_connected") != 1.0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sensorhub did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let start = Instant::now();
    let publishers: Vec<Child> = parts
        .iter()
        .map(|part| {
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &broker_port.to_string()])
                .args(["-q", "1", "-t", "bench/x", "-l"])
                .stdin(std::fs::File::open(part).unwrap())
                .spawn()
                .expect("mosquitto_pub")
        })
        .collect();
    for mut publisher in publishers {
        assert!(publisher.wait().unwrap().success(), "mosquitto_pub failed");
    }
    let published = start.elapsed().as_secs_f64();
    let elapsed = until_stored(port, readings, start).await;
    drop(hub);
    drop(broker);
    let (rows, mismatches) = exactness(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await;
    drop_run(admin, redis, name).await;
    let _ = std::fs::remove_dir_all(&dir);
    let rate = readings as f64 / elapsed;
    println!(
        "  published in {published:.2} s; the last committed {elapsed:.2} s after the first \
         publish: {rate:.0} readings/s; exact: {}",
        rows as u64 == readings && mismatches == 0
    );
    Some(rate)
}

/// Seconds from `start` to the commit that stored the last of `readings` (the instance's first
/// readings): waits until they are all written, then reads the time of the last commit.
async fn until_stored(port: u16, readings: u64, start: Instant) -> f64 {
    while metric(port, "sensorhub_readings_written_total") < readings as f64 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the readings were not all stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed = metric(port, "sensorhub_last_commit_timestamp_seconds");
    let elapsed = start.elapsed().as_secs_f64();
    let last_commit = committed - (chrono::Utc::now().timestamp_micros() as f64 / 1e6) + elapsed;
    if last_commit.is_finite() && last_commit > 0.0 {
        last_commit.min(elapsed)
    } else {
        elapsed
    }
}

/// Waits until the sensorhub on `port` answers `/readyz` with 200.
async fn wait_ready(port: u16) {
    let started = Instant::now();
    while http_get(port, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sensorhub did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Readings in the line-protocol phase.
const LINE_PROTOCOL_READINGS: u64 = 500_000;
/// Lines per request: Telegraf sends `metric_batch_size` (1,000 by default) metrics of several
/// fields each; a few thousand readings per request.
const LINES_PER_REQUEST: u64 = 5_000;
/// Requests in flight at once, as from several Telegraf agents.
const LINE_PROTOCOL_WRITERS: usize = 4;

/// The line-protocol phase: readings as InfluxDB line protocol (one numeric field per line,
/// nanosecond timestamps), posted to `/api/v2/write` by four concurrent writers through a fresh
/// sensorhub: readings/s from the first request to the last commit.
async fn line_protocol_phase(
    args: &Args,
    admin: &tokio_postgres::Client,
    redis: &mut redis::aio::MultiplexedConnection,
    name: &str,
    base: chrono::DateTime<chrono::Utc>,
) -> f64 {
    let readings = args.readings.min(LINE_PROTOCOL_READINGS);
    println!(
        "line protocol: {readings} readings in requests of {LINES_PER_REQUEST} lines, \
         {LINE_PROTOCOL_WRITERS} writers"
    );
    let bodies: Vec<String> = (0..readings)
        .collect::<Vec<u64>>()
        .chunks(LINES_PER_REQUEST as usize)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&n| {
                    let (sensor, ts, value) = synthetic(n, args.sensors, base);
                    format!(
                        "{sensor},site=bench value={value} {}\n",
                        ts.timestamp_nanos_opt().unwrap()
                    )
                })
                .collect()
        })
        .collect();
    let stream = format!("bench:{name}");
    let port = free_port();
    let hub = spawn_sensorhub(
        args,
        &format!("postgres://postgres@127.0.0.1:5432/{name}"),
        &stream,
        port,
    );
    wait_ready(port).await;
    let url = format!("http://127.0.0.1:{port}/api/v2/write?org=bench&bucket=bench&precision=ns");
    let start = Instant::now();
    // awc, actix's client, runs on a local task set.
    tokio::task::LocalSet::new()
        .run_until(async {
            let client = awc::Client::builder()
                .timeout(Duration::from_secs(60))
                .finish();
            let next = std::cell::Cell::new(0usize);
            let writers = (0..LINE_PROTOCOL_WRITERS).map(|_| async {
                loop {
                    let i = next.get();
                    let Some(body) = bodies.get(i) else { break };
                    next.set(i + 1);
                    let response = client.post(&url).send_body(body.clone()).await;
                    let status = response.map(|r| r.status().as_u16());
                    assert_eq!(status.ok(), Some(204), "a write was refused");
                }
            });
            futures_util::future::join_all(writers).await;
        })
        .await;
    let posted = start.elapsed().as_secs_f64();
    let elapsed = until_stored(port, readings, start).await;
    drop(hub);
    let (rows, mismatches) = exactness(&format!("postgres://postgres@127.0.0.1:5432/{name}")).await;
    drop_run(admin, redis, name).await;
    let rate = readings as f64 / elapsed;
    println!(
        "  posted in {posted:.2} s; the last committed {elapsed:.2} s after the first \
         request: {rate:.0} readings/s; exact: {}",
        rows as u64 == readings && mismatches == 0
    );
    assert_eq!(rows as u64, readings, "line-protocol readings stored");
    assert_eq!(
        mismatches, 0,
        "line-protocol aggregates differ from GROUP BY"
    );
    rate
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
    let base =
        chrono::Utc::now() - chrono::Duration::seconds((args.readings / args.sensors) as i64 + 60);
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
                rows as u64, args.readings,
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
        sensorhub::stream::entry::append_payloads(&mut redis, &stream, payloads)
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
    let exact = rows as u64 == args.readings + steady_total && mismatches == 0;

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
