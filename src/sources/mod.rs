//! Sources that bring readings into the stream from elsewhere. Each only appends to the stream, or
//! to its sensor's shard ([`append`]); from there every reading takes the same path
//! through the pipeline, with the same guarantee.
//!
//! - [`pubsub`]: the Pub/Sub bridge, `PUBLISH sensor_stream '{...}'` appended at once.
//! - [`mqtt`]: MQTT subscriptions, each message appended with its topic and payload form, and
//!   acknowledged to the broker once appended.
//!
//! HTTP ingest (JSON and line protocol, [`crate::http`]) appends through [`append::append_once`]:
//! routed as the sources route, each message once under its request's key.

pub mod append;
mod leased;
pub mod mqtt;
pub mod pubsub;

use crate::config::Config;
use crate::redis::connection::Connection;
use crate::telemetry::Metrics;
use actix::{ArbiterHandle, Supervisor};
use mqtt::{MqttHealth, MqttSource, MqttSourceSettings};
use pubsub::{Bridge, BridgeHealth, BridgeSettings};
use std::sync::Arc;
use tokio::sync::watch;

/// What the sources are started with.
pub struct SourceParts {
    /// A client of every Redis node the URL names: a Pub/Sub subscription moves between them.
    pub nodes: Vec<redis::Client>,
    /// The pooled connection the appends go through.
    pub conn: Connection,
    pub metrics: Arc<Metrics>,
    /// Whether the bridge can append, shared with `/readyz`.
    pub bridge_health: Arc<BridgeHealth>,
    /// Whether the MQTT source consumes, shared with `/readyz`.
    pub mqtt_health: Arc<MqttHealth>,
    /// Becomes true when the application stops.
    pub stop: watch::Receiver<bool>,
}

/// Starts every configured source under a `Supervisor` on `thread`: the MQTT source when a broker
/// is configured, the Pub/Sub bridge when a channel is.
pub fn start(config: &Config, parts: SourceParts, thread: &ArbiterHandle) {
    let SourceParts {
        nodes,
        conn,
        metrics,
        bridge_health,
        mqtt_health,
        stop,
    } = parts;
    if let Some(mqtt) = &config.mqtt {
        let settings = MqttSourceSettings {
            mqtt: mqtt.clone(),
            streams: config.streams(),
            limits: config.limits.clone(),
            consumer: config.consumer.clone(),
            lease_ttl: config.bridge_lease,
            liveness: config.liveness,
        };
        let (conn, metrics, stop) = (conn.clone(), Arc::clone(&metrics), stop.clone());
        Supervisor::start_in_arbiter(thread, move |_| {
            MqttSource::new(settings, conn, metrics, mqtt_health, stop)
        });
    }
    if let Some(channel) = &config.channel {
        let settings = BridgeSettings {
            channel: channel.clone(),
            streams: config.streams(),
            limits: config.limits.clone(),
            consumer: config.consumer.clone(),
            lease_ttl: config.bridge_lease,
        };
        Supervisor::start_in_arbiter(thread, move |_| {
            Bridge::new(settings, nodes, conn, metrics, bridge_health, stop)
        });
    }
}
