//! Phase 6, MQTT.

use super::*;

/// Readings in the MQTT phase: enough for a few seconds of publishing.
pub(crate) const MQTT_READINGS: u64 = 200_000;

/// The MQTT phase: readings published at QoS 1 (one per message, sensorhub's JSON) by four
/// `mosquitto_pub` processes to a Mosquitto of the run's own (no cap on queued messages), through
/// a fresh sensorhub subscribed to them: readings/s from the first publish to the last commit.
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
