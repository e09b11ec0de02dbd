//! Phase 6, MQTT: one connection under the lease, several connections of one instance and three
//! instances in a shared subscription, each beside what the broker delivers to subscribers that do
//! nothing with the messages.

use super::*;
use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Readings in the MQTT phase: enough for a few seconds of publishing.
pub(crate) const MQTT_READINGS: u64 = 200_000;

/// Connections of the one instance in the second variant.
const CONNECTIONS: usize = 3;
/// Instances of the third variant.
const INSTANCES: usize = 3;

/// How sensorhub subscribes in one variant of the phase.
struct Variant {
    label: &'static str,
    instances: usize,
    connections: usize,
}

impl Variant {
    fn shared(&self) -> bool {
        self.instances * self.connections > 1
    }

    /// Subscribers that do nothing, as many as sensorhub's connections.
    fn subscribers(&self) -> usize {
        self.instances * self.connections
    }
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "one connection (lease)",
        instances: 1,
        connections: 1,
    },
    Variant {
        label: "one instance, 3 connections (shared)",
        instances: 1,
        connections: CONNECTIONS,
    },
    Variant {
        label: "3 instances (shared)",
        instances: INSTANCES,
        connections: 1,
    },
];

/// The MQTT phase: readings published at QoS 1 (one per message, sensorhub's JSON) by four
/// `mosquitto_pub` processes to a Mosquitto of the run's own (no cap on queued messages). For each
/// variant, first the broker's own rate: the same publishers to as many `mosquitto_sub -q 1`
/// (in a shared subscription when more than one) whose output is only counted, from the first
/// publish to the last message delivered; then fresh sensorhub instances subscribed the variant's
/// way: readings/s from the first publish to the last commit. Returns the one-connection rate;
/// `None` (skipped) without Mosquitto's programs (Debian's mosquitto and mosquitto-clients).
pub(crate) async fn mqtt_phase(
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
    if !available("mosquitto") || !available("mosquitto_pub") || !available("mosquitto_sub") {
        println!(
            "MQTT phase skipped: it needs mosquitto, mosquitto_pub and mosquitto_sub (mosquitto-clients)"
        );
        return None;
    }
    let readings = args.readings.min(MQTT_READINGS);
    println!("MQTT: {readings} readings published at QoS 1 by 4 publishers");
    let dir = std::env::temp_dir().join(format!("sensorhub-bench-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
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

    println!(
        "  | variant | sensorhub readings/s | broker to idle subscribers msg/s | ratio | exact |"
    );
    println!("  | --- | --- | --- | --- | --- |");
    let mut one_connection = None;
    for (n, variant) in VARIANTS.iter().enumerate() {
        let broker = Broker::start(&dir);
        let delivered = broker_rate(&broker, &parts, readings, variant.subscribers()).await;
        drop(broker);
        let broker = Broker::start(&dir);
        let run = format!("{name}{n}");
        let (rate, exact) = sensorhub_rate(args, &broker, &run, &parts, readings, variant).await;
        drop(broker);
        drop_run(admin, redis, &run).await;
        forget_mqtt_keys(redis, &format!("bench:{run}")).await;
        println!(
            "  | {} | {rate:.0} | {delivered:.0} | {:.2} | {exact} |",
            variant.label,
            rate / delivered
        );
        one_connection.get_or_insert(rate);
    }
    one_connection
}

/// A Mosquitto of the run's own on a free port: no persistence, no cap on queued messages.
struct Broker {
    port: u16,
    _process: Guard,
}

impl Broker {
    fn start(dir: &std::path::Path) -> Self {
        let port = free_port();
        let conf = dir.join(format!("mosquitto-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\n"
            ),
        )
        .unwrap();
        let process = Guard(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto"),
        );
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            port,
            _process: process,
        }
    }

    /// Starts the four publishers, each with its part of the readings.
    fn publish(&self, parts: &[std::path::PathBuf]) -> Vec<Child> {
        parts
            .iter()
            .map(|part| {
                Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["-q", "1", "-t", "bench/x", "-l"])
                    .stdin(std::fs::File::open(part).unwrap())
                    .spawn()
                    .expect("mosquitto_pub")
            })
            .collect()
    }
}

/// Messages per second the broker delivers to `subscribers` `mosquitto_sub` at QoS 1 that do
/// nothing but print (counted here, one message a line), from the first publish to the last
/// delivery.
async fn broker_rate(
    broker: &Broker,
    parts: &[std::path::PathBuf],
    readings: u64,
    subscribers: usize,
) -> f64 {
    let topic = match subscribers {
        1 => "bench/#".to_owned(),
        _ => "$share/idle/bench/#".to_owned(),
    };
    let delivered = Arc::new(AtomicU64::new(0));
    let subs: Vec<Guard> = (0..subscribers)
        .map(|n| {
            let mut child = Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
                .args(["-q", "1", "-i", &format!("idle-{n}"), "-t", &topic])
                .stdout(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub");
            let mut out = child.stdout.take().unwrap();
            let delivered = Arc::clone(&delivered);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(read) = out.read(&mut buf) {
                    if read == 0 {
                        break;
                    }
                    let lines = buf[..read].iter().filter(|b| **b == b'\n').count();
                    delivered.fetch_add(lines as u64, Ordering::Relaxed);
                }
            });
            Guard(child)
        })
        .collect();
    // The subscriptions are in place before the first publish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let publishers = broker.publish(parts);
    while delivered.load(Ordering::Relaxed) < readings {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the idle subscribers did not receive every message"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    for mut publisher in publishers {
        let _ = publisher.wait();
    }
    drop(subs);
    readings as f64 / elapsed
}

/// Readings per second through fresh sensorhub instances subscribed as `variant` says, from the
/// first publish to the last commit, and whether the stored rows are exactly the readings.
async fn sensorhub_rate(
    args: &Args,
    broker: &Broker,
    name: &str,
    parts: &[std::path::PathBuf],
    readings: u64,
    variant: &Variant,
) -> (f64, bool) {
    let db_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let stream = format!("bench:{name}");
    let ports: Vec<u16> = (0..variant.instances).map(|_| free_port()).collect();
    let mut hubs = Vec::new();
    for (n, port) in ports.iter().enumerate() {
        hubs.push(Guard(
            Command::new(args.binary.as_deref().expect("binary resolved in main"))
                .envs(connections_env(args, &db_url))
                .env("SENSORHUB_STREAM", &stream)
                .env("SENSORHUB_CHANNEL", "")
                .env("SENSORHUB_CONSUMER", format!("bench-{n}"))
                .env("SENSORHUB_HTTP_ADDR", format!("127.0.0.1:{port}"))
                .env("SENSORHUB_BATCH_SIZE", args.batch_size.to_string())
                .env("SENSORHUB_LOG", "warn")
                .env(
                    "SENSORHUB_MQTT_URL",
                    format!("mqtt://127.0.0.1:{}", broker.port),
                )
                .env("SENSORHUB_MQTT_TOPICS", "bench/#=json")
                .env("SENSORHUB_MQTT_CLIENT_ID", format!("sensorhub-{name}"))
                .env("SENSORHUB_MQTT_SHARED", variant.shared().to_string())
                .env(
                    "SENSORHUB_MQTT_CONNECTIONS",
                    variant.connections.to_string(),
                )
                .envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::null())
                .spawn()
                .expect("sensorhub binary"),
        ));
        // One at a time: the first creates the database and migrates it.
        wait_ready(*port).await;
    }
    let total = |metric_name: &str| -> f64 { ports.iter().map(|p| metric(*p, metric_name)).sum() };
    let started = Instant::now();
    while total("sensorhub_mqtt_connected") != variant.subscribers() as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sensorhub did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let start = Instant::now();
    let publishers = broker.publish(parts);
    for mut publisher in publishers {
        assert!(publisher.wait().unwrap().success(), "mosquitto_pub failed");
    }
    while total("sensorhub_readings_written_total") < readings as f64 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the readings were not all stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(hubs);
    let (rows, mismatches) = exactness(&db_url).await;
    (
        readings as f64 / elapsed,
        rows as u64 == readings && mismatches == 0,
    )
}

/// Removes what the MQTT source kept beside `stream` (sessions' subscriptions, members, leases).
async fn forget_mqtt_keys(redis: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> =
            redis::AsyncCommands::scan_match(redis, format!("{stream}:*"))
                .await
                .expect("SCAN");
        let mut keys = Vec::new();
        while let Some(Ok(key)) = iter.next_item().await {
            keys.push(key);
        }
        keys
    };
    if !keys.is_empty() {
        let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query_async(redis).await;
    }
}
