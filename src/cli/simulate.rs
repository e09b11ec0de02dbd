//! `sensorhub simulate`: demo sensors for a first run and for load tests.
//!
//! Sensors take turns being a thermometer (a daily sine with noise), a hygrometer and an energy
//! meter (a monotonically increasing kWh counter). Readings go to the stream with `XADD`, to the
//! channel with `PUBLISH`, to the MQTT broker, or as InfluxDB line protocol to sensorhub's own
//! `/api/v2/write`, at a steady rate, with a progress line every second.

use crate::config::{Config, MqttSettings, Secret};
use crate::liveness::Liveness;
use crate::redis::channel::publish_payloads;
use crate::redis::connection::Connection;
use crate::stream::append::append_payloads;
use crate::stream::shards::{Streams, shard_of};
use anyhow::{Context as _, bail};
use chrono::{DateTime, TimeDelta, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::f64::consts::TAU;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How readings reach Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// `XADD <stream> * data <json>`
    Xadd,
    /// `PUBLISH <channel> <json>` (bridged into the stream by sensorhub)
    Publish,
    /// MQTT, QoS 1, to `sensors/<sensor id>` on `SENSORHUB_MQTT_URL` (sensorhub's default rule)
    Mqtt,
    /// InfluxDB line protocol, `POST /api/v2/write` on `SENSORHUB_HTTP_ADDR` with the ingest
    /// token: `<sensor id> value=<v> <µs>`, stored as `<sensor id>.value`
    LineProtocol,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub sensors: u32,
    /// Readings per second, over all sensors.
    pub rate: f64,
    /// Stop after this many readings (`None`: until Ctrl-C).
    pub count: Option<u64>,
    pub via: Via,
    /// Sensor ids are `<prefix>-<kind>-<n>`.
    pub prefix: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Temperature,
    Humidity,
    Energy,
}

/// One simulated device and its state.
struct Device {
    id: String,
    kind: Kind,
    /// The energy meter's counter, kWh.
    counter: f64,
    /// Last timestamp used, so a sensor's timestamps strictly increase.
    last_ts: DateTime<Utc>,
    phase: f64,
}

impl Device {
    fn new(prefix: &str, n: u32) -> Self {
        let kind = [Kind::Temperature, Kind::Humidity, Kind::Energy][n as usize % 3];
        let name = match kind {
            Kind::Temperature => "temperature",
            Kind::Humidity => "humidity",
            Kind::Energy => "energy",
        };
        Self {
            id: format!("{prefix}-{name}-{n}"),
            kind,
            counter: 1000.0 + f64::from(n) * 37.0,
            last_ts: DateTime::<Utc>::MIN_UTC,
            phase: f64::from(n) * 0.7,
        }
    }

    /// The next reading.
    fn sample(&mut self, now: DateTime<Utc>, noise: f64) -> Sample {
        let ts = now.max(self.last_ts + TimeDelta::microseconds(1));
        self.last_ts = ts;
        let day = (ts.timestamp() % 86_400) as f64 / 86_400.0;
        let (value, unit) = match self.kind {
            Kind::Temperature => (
                15.0 + 8.0 * (TAU * day + self.phase).sin() + 0.3 * noise,
                "C",
            ),
            Kind::Humidity => (55.0 + 15.0 * (TAU * day + self.phase).cos() + noise, "%"),
            Kind::Energy => {
                self.counter += 0.001 + 0.002 * noise.abs();
                (self.counter, "kWh")
            }
        };
        Sample { value, unit, ts }
    }

    /// The next reading as sensorhub's JSON.
    fn reading(&mut self, now: DateTime<Utc>, noise: f64) -> String {
        let Sample { value, unit, ts } = self.sample(now, noise);
        format!(
            r#"{{"sensor":"{}","value":{:.4},"unit":"{unit}","timestamp":"{}"}}"#,
            self.id,
            value,
            ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    }

    /// The next reading as a line of line protocol, its timestamp in microseconds.
    /// The sensor id a line of [`Device::line`] is stored by: `<measurement>.<field>`.
    fn line_sensor_id(&self) -> String {
        format!("{}.value", self.id)
    }

    fn line(&mut self, now: DateTime<Utc>, noise: f64) -> String {
        let Sample { value, ts, .. } = self.sample(now, noise);
        format!("{} value={:.4} {}\n", self.id, value, ts.timestamp_micros())
    }
}

/// One reading of a device.
struct Sample {
    value: f64,
    unit: &'static str,
    ts: DateTime<Utc>,
}

/// A small deterministic noise source in [-1, 1) (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
        bits as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// How often readings are sent, in pipelined round trips.
const TICK: Duration = Duration::from_millis(10);

/// Runs the simulation until `count` readings are sent or Ctrl-C.
pub async fn run(config: &Config, sim: &Simulation) -> anyhow::Result<u64> {
    if sim.sensors == 0 || !sim.rate.is_finite() || sim.rate <= 0.0 {
        bail!("--sensors and --rate must be greater than zero");
    }
    let streams = Streams::of(config);
    let target = match sim.via {
        Via::Xadd if streams.len() > 1 => format!("{} shards of {}", streams.len(), config.stream),
        Via::Xadd => config.stream.clone(),
        Via::Publish => match &config.channel {
            Some(channel) => channel.clone(),
            None => bail!("--via publish needs SENSORHUB_CHANNEL (it is empty)"),
        },
        Via::Mqtt => match &config.mqtt {
            Some(mqtt) => format!("mqtt://{}:{} sensors/<sensor>", mqtt.host, mqtt.port),
            None => bail!("--via mqtt needs SENSORHUB_MQTT_URL (it is empty)"),
        },
        Via::LineProtocol => {
            let mut addr = config.http_addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/api/v2/write?precision=us")
        }
    };
    let mut sink = match (&config.mqtt, sim.via) {
        (Some(mqtt), Via::Mqtt) => {
            Sink::Mqtt(MqttPublisher::connect(mqtt, crate::app::mqtt_tls(config)?))
        }
        (_, Via::LineProtocol) => Sink::Http {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
            token: config.ingest_token.clone(),
        },
        _ => {
            let target = crate::redis::target::parse_live(
                config.redis_url.expose(),
                &config.redis_tls,
                Liveness::new(config.network_timeout),
            )
            .map_err(|why| anyhow::anyhow!("SENSORHUB_REDIS_URL: {why}"))?;
            let conn = Connection::open(&target, crate::redis::connection::TOOL_RESPONSE_TIMEOUT)
                .await
                .context("connecting to Redis")?;
            Sink::Redis(conn)
        }
    };
    let mut devices: Vec<Device> = (0..sim.sensors)
        .map(|n| Device::new(&sim.prefix, n))
        .collect();
    let mut noise = Noise(0x5eed_1234_abcd_0001);
    let verb = match sim.via {
        Via::Xadd => "XADD",
        Via::Publish => "PUBLISH",
        Via::Mqtt => "MQTT publish",
        Via::LineProtocol => "POST",
    };
    eprintln!(
        "simulate: {} sensors, {} readings/s, {verb} to {target}",
        sim.sensors, sim.rate
    );

    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut next_device = 0usize;
    let mut last_progress = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break,
        }
        let due = (started.elapsed().as_secs_f64() * sim.rate) as u64;
        let due = sim.count.map_or(due, |count| due.min(count));
        if due > sent {
            let now = Utc::now();
            let readings: Vec<(String, String)> = (sent..due)
                .map(|_| {
                    let device = &mut devices[next_device];
                    // The id a reading is stored (and sharded) by.
                    let (id, text) = match sim.via {
                        Via::LineProtocol => {
                            (device.line_sensor_id(), device.line(now, noise.next()))
                        }
                        _ => (device.id.clone(), device.reading(now, noise.next())),
                    };
                    next_device = (next_device + 1) % devices.len();
                    (id, text)
                })
                .collect();
            sink.send(sim.via, &target, &streams, readings)
                .await
                .with_context(|| format!("{verb} to {target}"))?;
            sent = due;
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "simulate: {sent} readings sent ({:.0}/s)",
                sent as f64 / started.elapsed().as_secs_f64()
            );
            last_progress = Instant::now();
        }
        if sim.count.is_some_and(|count| sent >= count) {
            break;
        }
    }
    if let Sink::Mqtt(publisher) = sink {
        publisher.finish(sent).await?;
    }
    eprintln!(
        "simulate: done, {sent} readings sent in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(sent)
}

/// Where the readings go.
enum Sink {
    Redis(Connection),
    Mqtt(MqttPublisher),
    /// sensorhub's line-protocol endpoint (awc: the HTTP client of actix, already built for the
    /// server).
    Http {
        client: awc::Client,
        token: Option<Secret>,
    },
}

impl Sink {
    /// Sends `(sensor id, text)` readings as `via` says: one message each, or the lines of a
    /// tick in one request.
    async fn send(
        &mut self,
        via: Via,
        target: &str,
        streams: &Streams,
        readings: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        match self {
            Sink::Mqtt(publisher) => publisher.publish(readings).await,
            Sink::Http { .. } | Sink::Redis(_) if streams.len() > 1 && via != Via::Publish => {
                // One request or append per shard, so each goes where its sensors' shard is.
                let mut by_shard: Vec<Vec<(String, String)>> = vec![Vec::new(); streams.len()];
                for reading in readings {
                    by_shard[shard_of(&reading.0, streams.len())].push(reading);
                }
                for (shard, readings) in by_shard.into_iter().enumerate() {
                    if !readings.is_empty() {
                        let target = match via {
                            Via::Xadd => &streams.all()[shard],
                            _ => target,
                        };
                        Box::pin(self.send(via, target, &Streams::new(target, 1), readings))
                            .await?;
                    }
                }
                Ok(())
            }
            Sink::Http { client, token } => {
                let body: String = readings.into_iter().map(|(_, line)| line).collect();
                let mut request = client.post(target);
                if let Some(token) = token {
                    request = request
                        .insert_header(("Authorization", format!("Token {}", token.expose())));
                }
                let mut response = request
                    .send_body(body)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if response.status() != awc::http::StatusCode::NO_CONTENT {
                    let answer = response.body().await.unwrap_or_default();
                    bail!(
                        "answered {}: {}",
                        response.status(),
                        String::from_utf8_lossy(&answer)
                    );
                }
                Ok(())
            }
            Sink::Redis(conn) => {
                let payloads = readings.into_iter().map(|(_, json)| json);
                if via == Via::Publish {
                    publish_payloads(conn, target, payloads).await?;
                } else {
                    append_payloads(conn, target, payloads).await?;
                }
                Ok(())
            }
        }
    }
}

/// Publishes readings at QoS 1 to `sensors/<sensor id>`; the connection is driven by a task of
/// its own, which counts the broker's acknowledgements.
struct MqttPublisher {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    driver: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl MqttPublisher {
    fn connect(mqtt: &MqttSettings, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let id = format!("sensorhub-simulate-{}", std::process::id());
        let mut options = MqttOptions::new(id, &mqtt.host, mqtt.port);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = &mqtt.credentials {
            options.set_credentials(user, password.expose());
        }
        if let Some(tls) = tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls),
            ));
        }
        let (client, mut events) = AsyncClient::new(options, 1024);
        let acked = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&acked);
        let driver = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(anyhow::anyhow!("MQTT connection: {error}")),
                }
            }
        });
        Self {
            client,
            acked,
            driver,
        }
    }

    async fn publish(&mut self, readings: Vec<(String, String)>) -> anyhow::Result<()> {
        for (sensor, json) in readings {
            self.client
                .publish(format!("sensors/{sensor}"), QoS::AtLeastOnce, false, json)
                .await?;
        }
        Ok(())
    }

    /// Waits (up to 30 s) for the broker to acknowledge all `sent` messages, then disconnects.
    async fn finish(self, sent: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acked.load(Ordering::Relaxed) < sent {
            if self.driver.is_finished() {
                return match self.driver.await {
                    Ok(Err(error)) => Err(error),
                    _ => Err(anyhow::anyhow!("the MQTT connection closed")),
                };
            }
            if Instant::now() > deadline {
                bail!(
                    "the broker acknowledged {} of {sent} messages within 30 s",
                    self.acked.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.client.disconnect().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_increase_and_timestamps_strictly_increase() {
        let mut meter = Device::new("sim", 2);
        assert!(meter.id.contains("energy"));
        let now = Utc::now();
        let mut noise = Noise(7);
        let readings: Vec<serde_json::Value> = (0..50)
            .map(|_| serde_json::from_str(&meter.reading(now, noise.next())).unwrap())
            .collect();
        for pair in readings.windows(2) {
            assert!(pair[1]["value"].as_f64() > pair[0]["value"].as_f64());
            assert!(pair[1]["timestamp"].as_str() > pair[0]["timestamp"].as_str());
        }
    }

    #[test]
    fn line_protocol_lines_name_the_sensor_and_its_time_in_microseconds() {
        let mut thermometer = Device::new("sim", 0);
        let now = "2026-12-01T12:00:00.000001Z".parse().unwrap();
        let line = thermometer.line(now, 0.5);
        let limits = crate::domain::Limits::default();
        let ctx = crate::domain::ParseContext::new(&limits, now, now);
        let readings = crate::domain::reading::parse_line_protocol(
            &line,
            crate::domain::reading::Precision::Microseconds,
            &ctx,
        );
        let reading = readings[0].as_ref().unwrap();
        assert_eq!(&*reading.sensor_id, "sim-temperature-0.value");
        assert_eq!(*reading.sensor_id, thermometer.line_sensor_id());
        assert_eq!(reading.ts, now);
    }

    #[test]
    fn noise_stays_in_range() {
        let mut noise = Noise(42);
        assert!(
            (0..10_000)
                .map(|_| noise.next())
                .all(|n| (-1.0..1.0).contains(&n))
        );
    }
}
