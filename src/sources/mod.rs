//! Sources that bring readings into the stream from elsewhere. Each only appends to the stream, or
//! to its sensor's shard ([`append`]); from there every reading takes the same path
//! through the pipeline, with the same guarantee.
//!
//! - [`pubsub`]: the Pub/Sub bridge, `PUBLISH sensor_stream '{...}'` appended at once.
//! - [`mqtt`]: MQTT subscriptions, each message appended with its topic and payload form, and
//!   acknowledged to the broker once appended.
//!
//! - [`http`] and [`line_protocol`]: a JSON or line-protocol body posted over HTTP, appended once
//!   ([`append::append_once`]) under its request's key; [`crate::http`] only reads the request and
//!   answers.

pub mod append;
pub mod http;
mod leased;
pub mod line_protocol;
pub mod mqtt;
pub mod pubsub;

use crate::config::Config;
use crate::liveness::Liveness;
use crate::redis::connection::Connection;
use crate::stream::shards::Streams;
use crate::telemetry::Metrics;
use actix::{ArbiterHandle, Supervisor};
use mqtt::{MqttHealth, MqttSource, MqttSourceSettings};
use pubsub::{Bridge, BridgeHealth, BridgeSettings};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
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
    /// The MQTT broker's TLS client configuration, built (and its files checked) before anything
    /// else starts.
    pub mqtt_tls: Option<Arc<rustls::ClientConfig>>,
    /// Counts the sources' loops until they end, for a stop to wait for.
    pub running: Arc<AtomicUsize>,
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
        mqtt_tls,
        running,
    } = parts;
    if let Some(mqtt) = &config.mqtt {
        let settings = MqttSourceSettings {
            mqtt: mqtt.clone(),
            streams: Streams::of(config),
            limits: config.limits.clone(),
            consumer: config.consumer.clone(),
            lease_ttl: config.bridge_lease,
            liveness: Liveness::new(config.network_timeout),
            tls: mqtt_tls,
            routes: mqtt::Routes::new(&mqtt.rules),
        };
        let (conn, metrics, stop) = (conn.clone(), Arc::clone(&metrics), stop.clone());
        Supervisor::start_in_arbiter(thread, move |_| {
            MqttSource::new(settings, conn, metrics, mqtt_health, stop, running)
        });
    }
    if let Some(channel) = &config.channel {
        let settings = BridgeSettings {
            channel: channel.clone(),
            streams: Streams::of(config),
            limits: config.limits.clone(),
            consumer: config.consumer.clone(),
            lease_ttl: config.bridge_lease,
        };
        Supervisor::start_in_arbiter(thread, move |_| {
            Bridge::new(settings, nodes, conn, metrics, bridge_health, stop)
        });
    }
}
