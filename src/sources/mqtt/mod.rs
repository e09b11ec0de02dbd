//! The MQTT source: subscribes to the configured topic filters and appends every message to the
//! stream, with its topic and the payload form its topic's rule names, so it takes the stream's
//! path and guarantee.
//!
//! - **Acknowledged after the append.** The session is persistent (a fixed client id, no clean
//!   start) and acknowledgements are manual: a QoS 1 or 2 message is acknowledged to the broker
//!   (PUBACK / PUBREC) only once its `XADD` has succeeded, one message after another in the order
//!   received. A crash, or Redis down, leaves the message with the broker, which delivers it again.
//! - **One instance subscribes,** by default. Only the holder of the lease `<stream>:mqtt-lease`
//!   connects, and every instance uses the same client id, so the session (and what it holds
//!   unacknowledged) moves with the lease; the broker also drops an older connection of the same
//!   client id. Each append checks the lease in the same script that appends. The client id names
//!   the deployment (made once, kept in PostgreSQL: [`crate::store::deployment`]), so two
//!   deployments on one broker never share a session. A lease left by this instance's previous
//!   process (a kill -9) is taken at once ([`crate::stream::lease`]).
//! - **Or every instance, through a shared subscription** (`SENSORHUB_MQTT_SHARED`): each
//!   connection (`SENSORHUB_MQTT_CONNECTIONS` per instance) is a member `<consumer>-<n>` with a
//!   persistent session of its own (client id `<deployment's>-<member>`), subscribed to
//!   `$share/<deployment's client id>/<filter>`, and the broker spreads the messages over the
//!   members. Each member still holds a lease of its own (`<stream>:mqtt-lease:<member>`) that
//!   fences its appends, so two processes of one instance never both consume its session. A member
//!   stopped while another remains unsubscribes and settles what it holds before it leaves
//!   ([`Leaving`]): the broker sends its share elsewhere from then on. The last member keeps its
//!   subscription, so that the broker queues for it while every instance is down.
//! - **The session's subscriptions follow the configuration.** A resumed session subscribes only to
//!   filters it does not hold yet and unsubscribes from filters no longer configured; it does not
//!   subscribe again to what it holds, which would make the broker send every retained message
//!   again.
//! - **A retained message is the last known value, not a new reading.** The broker sends it (with
//!   the retain flag) when a subscription is made; it is appended once per topic and payload, so a
//!   new session or a new filter does not store it again.
//! - **Every message the broker may send is taken.** The client accepts packets up to MQTT's own
//!   limit; a payload over `SENSORHUB_MAX_MESSAGE_BYTES` is appended cut just past the limit, so
//!   it is refused as `too_large` and kept as a bounded dead letter instead of stopping the
//!   session (a client refusing a packet drops the connection, and the broker resends it forever).
//! - **QoS 2 resumes.** A PUBREL the broker resends for an exchange an earlier connection began is
//!   completed (the patched client: vendor/rumqttc/PATCHES.md).
//! - **At least once into the stream.** A message appended whose acknowledgement was lost (a crash
//!   between the two) is delivered and appended again: a reading with its own timestamp is then a
//!   duplicate the store skips; one without a timestamp gets a second receipt time and is stored
//!   twice.
//!
//! Here the source loop; [`append`] appends a batch of messages; [`members`] says who each
//! connection is and how a member leaves or a session is retired; [`health`] is `/readyz`'s view
//! per connection; [`session`] brings the session's subscriptions to the configured ones;
//! [`topics`] reads a topic by its rule.

mod append;
mod health;
mod members;
mod presets;
mod session;
mod sparkplug;
mod topics;

use crate::actor::{count_restart, guarded};
use crate::config::MqttSettings;
use crate::domain::Limits;
use crate::domain::reading::sparkplug::Topic;
use crate::redis::connection::Connection;
use crate::sources::append::Appender;
use crate::sources::leased::{self, Ended, Leased, LoopParts};
use crate::stream::lease::{Leases, holder_token};
use crate::stream::mqtt_session::SessionKeys;
use crate::stream::shards::Streams;
use crate::telemetry::Metrics;
use actix::prelude::*;
use append::{AppendJob, append};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
pub use health::MqttHealth;
use members::{Leaving, Member};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use session::{SessionChange, filter_of};
use sparkplug::Nodes;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
pub use topics::{Route, Routes, matches, topic_prefix};

/// Requests (acknowledgements, subscriptions) queued for the MQTT connection at once.
const REQUESTS: usize = 256;
/// Appends (each of up to [`BATCH`] messages) under way at once.
const APPENDS_IN_FLIGHT: usize = 16;
/// Most messages appended by one script: the messages that have arrived when the connection has
/// nothing more at once. The broker bounds what it sends unacknowledged anyway (Mosquitto:
/// `max_inflight_messages`, 20 by default).
const BATCH: usize = 256;
/// Longest wait for one message's append: the connection to the broker is not served meanwhile,
/// so it stays within the keep-alive (at least 2 s, [`crate::liveness`]). An append that times out is left unacknowledged (it
/// may still have happened: the broker's redelivery then appends it again).
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest packet the client reads: MQTT's own limit (a remaining length of at most
/// 268,435,455 bytes, and its header). Any smaller limit would make the client refuse a message
/// the broker may send, and the broker would resend it on every connection; payloads over
/// `SENSORHUB_MAX_MESSAGE_BYTES` are cut and dead-lettered instead. Brokers bound it lower
/// (Mosquitto: `message_size_limit`), which also bounds the memory one message takes here.
const MAX_INCOMING_PACKET: usize = 268_435_455 + 5;
/// The largest packet the client sends: subscriptions and acknowledgements only.
const MAX_OUTGOING_PACKET: usize = 256 * 1024;

/// What the MQTT source needs besides the connections.
#[derive(Clone, Debug)]
pub struct MqttSourceSettings {
    pub mqtt: MqttSettings,
    /// The stream, or its shards: each message goes to its sensor's.
    pub streams: Streams,
    /// The validator's limits, which the shard of a message is picked by.
    pub limits: Limits,
    /// This instance's name, the start of its lease token.
    pub consumer: String,
    /// How long the lease lasts without a renewal.
    pub lease_ttl: Duration,
    /// How soon a silent broker is given up (the keepalive).
    pub liveness: crate::liveness::Liveness,
    /// The client configuration of an `mqtts://` broker, built from `mqtt.tls` at start.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `mqtt.rules`, ready to route topics.
    pub routes: Routes,
}

pub struct MqttSource {
    /// What every connection's loop is made of.
    loops: Loops,
    /// Each connection's lease token, kept across restarts of the actor.
    tokens: Vec<String>,
    health: Arc<MqttHealth>,
}

impl MqttSource {
    /// `running` counts the connections' loops until each has ended, so that a stop can wait
    /// for the members leaving a shared subscription.
    pub fn new(
        settings: MqttSourceSettings,
        conn: Connection,
        metrics: Arc<Metrics>,
        health: Arc<MqttHealth>,
        stop: watch::Receiver<bool>,
        running: Arc<AtomicUsize>,
    ) -> Self {
        Self {
            tokens: (0..settings.mqtt.connections.max(1))
                .map(|_| holder_token(&settings.consumer))
                .collect(),
            loops: Loops {
                settings: Arc::new(settings),
                conn,
                metrics,
                stop,
                running,
            },
            health,
        }
    }
}

impl Actor for MqttSource {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let settings = &self.loops.settings;
        let mqtt = &settings.mqtt;
        tracing::info!(
            broker = %mqtt.host,
            shared = mqtt.shared,
            connections = self.tokens.len(),
            "mqtt source starting; while no connection of this deployment is subscribed, the \
             broker queues at most its limit of messages per session and drops the rest \
             (Mosquitto: max_queued_messages, 1000 by default): that limit bounds what a crash \
             or an outage can lose (docs/mqtt.md)"
        );
        for (member, token) in Member::all(settings).into_iter().zip(&self.tokens) {
            let lp = self
                .loops
                .source_loop(member, token.clone(), Arc::clone(&self.health));
            ctx.spawn(guarded("mqtt", lp.run()));
        }
        ctx.spawn(guarded("mqtt", self.loops.clone().retire_unused_sessions()));
    }
}

/// What the loops of the connections are made of.
#[derive(Clone)]
struct Loops {
    settings: Arc<MqttSourceSettings>,
    conn: Connection,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    running: Arc<AtomicUsize>,
}

impl Loops {
    /// The loop of one connection.
    fn source_loop(&self, member: Member, token: String, health: Arc<MqttHealth>) -> SourceLoop {
        let first = self.settings.streams.first();
        let session = match &member.name {
            Some(name) => SessionKeys::of_member(first, name),
            None => SessionKeys::beside(first),
        };
        SourceLoop {
            appender: Arc::new(Appender::new(
                self.settings.streams.clone(),
                Leases::new(
                    &self.settings.streams,
                    &member.lease,
                    token,
                    self.settings.lease_ttl,
                ),
                self.settings.limits.clone(),
            )),
            session,
            member,
            connected: false,
            sparkplug: Nodes::default(),
            settings: Arc::clone(&self.settings),
            conn: self.conn.clone(),
            metrics: Arc::clone(&self.metrics),
            health,
            stop: self.stop.clone(),
            _running: RunningGuard::new(&self.running),
        }
    }
}

impl Supervised for MqttSource {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.loops.metrics, "mqtt");
        self.loops.metrics.mqtt_connected.set(0);
    }
}

/// Counts a connection's loop as running until it is dropped (ended, or cancelled).
struct RunningGuard(Arc<AtomicUsize>);

impl RunningGuard {
    fn new(running: &Arc<AtomicUsize>) -> Self {
        running.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(running))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct SourceLoop {
    settings: Arc<MqttSourceSettings>,
    member: Member,
    /// Appends under the connection's lease (beside each shard).
    appender: Arc<Appender>,
    /// Where the session's subscriptions, retained digests and members are kept.
    session: SessionKeys,
    /// Whether this connection counts in `sensorhub_mqtt_connected`.
    connected: bool,
    /// The Sparkplug B edge nodes seen: their alias names and next `seq`.
    sparkplug: Nodes,
    conn: Connection,
    metrics: Arc<Metrics>,
    health: Arc<MqttHealth>,
    stop: watch::Receiver<bool>,
    _running: RunningGuard,
}

impl Leased for SourceLoop {
    const NAME: &'static str = "mqtt";

    fn parts(&mut self) -> LoopParts<'_> {
        LoopParts {
            leases: self.appender.leases(),
            conn: &mut self.conn,
            stop: &mut self.stop,
            metrics: &self.metrics,
            lease_ttl: self.settings.lease_ttl,
        }
    }

    fn target(&self) -> String {
        format!("broker {}", self.settings.mqtt.host)
    }

    async fn hold(&mut self) -> Ended {
        let ended = self.subscribed().await;
        self.sparkplug.session_ended();
        ended
    }

    fn others_hold(&mut self) {
        self.health.connection(self.member.index).consuming();
    }

    fn failed(&mut self, why: &str) {
        self.health
            .connection(self.member.index)
            .not_consuming(why.to_owned());
    }

    fn turn_ended(&mut self) {
        if std::mem::take(&mut self.connected) {
            self.metrics.mqtt_connected.dec();
        }
    }
}

impl SourceLoop {
    async fn run(mut self) {
        leased::run(&mut self).await;
    }

    /// Connects, subscribes and appends messages while this connection holds its lease.
    async fn subscribed(&mut self) -> Ended {
        let settings = Arc::clone(&self.settings);
        let mqtt = &settings.mqtt;
        let client_id = self.member.client_id.clone();
        let health = Arc::clone(&self.health);
        let health = health.connection(self.member.index);
        health.not_consuming(format!("connecting to {}:{}", mqtt.host, mqtt.port));
        let mut options = MqttOptions::new(&client_id, &mqtt.host, mqtt.port);
        options
            .set_keep_alive(settings.liveness.mqtt_keep_alive())
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
        if let Some((user, password)) = &mqtt.credentials {
            options.set_credentials(user, password.expose());
        }
        if let Some(tls) = &settings.tls {
            options.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)),
            ));
        }
        let qos = if mqtt.qos == 2 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        // What the session must hold: `<qos> <filter>` per rule, as recorded in Redis.
        let wanted: BTreeSet<String> = mqtt
            .rules
            .iter()
            .filter(|rule| rule.subscribes())
            .map(|rule| format!("{} {}{}", mqtt.qos, self.member.share, rule.filter))
            .collect();
        let (client, mut events) = AsyncClient::new(options, REQUESTS);
        // The lease was just taken: the first renewal is due a third of its time from now.
        let every = self.settings.lease_ttl / 3;
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        let mut stop = self.stop.clone();
        // Subscription changes sent and not yet acknowledged by the broker, recorded once they are.
        let mut changing: Option<SessionChange> = None;
        // Appends in flight, in the order the messages arrived: they run side by side (the
        // connection to Redis pipelines them), and each message is acknowledged once its append
        // and every earlier one have succeeded, so acknowledgements keep the order of arrival.
        let mut appending = FuturesOrdered::new();
        // Messages received and not yet handed to an append: appended together once the
        // connection has no more at once, or the batch is full.
        let mut batch: Vec<Publish> = Vec::new();
        // Per message of `batch`: what its Sparkplug B entry carries, for that form.
        let mut extras: Vec<Option<sparkplug::Read>> = Vec::new();
        // Acknowledgements not yet handed to the connection. Handed over without waiting: this
        // task also drives the connection, so waiting for room in its request queue would wait
        // for itself.
        let mut acks: VecDeque<Publish> = VecDeque::new();
        // Messages received and not yet acknowledged, as counted in `mqtt_awaiting_ack`.
        let mut awaiting: i64 = 0;
        // Set once a stopped member of a shared subscription has unsubscribed.
        let mut leaving: Option<Leaving> = None;
        let ended = loop {
            while let Some(publish) = acks.front() {
                // Full: the connection takes requests at its next poll, and this runs again then.
                // Closed: the next poll reports why.
                if client.try_ack(publish).is_err() {
                    break;
                }
                acks.pop_front();
            }
            if batch.len() >= BATCH && appending.len() < APPENDS_IN_FLIGHT {
                let extras = std::mem::take(&mut extras);
                appending.push_back(append(self.job(), std::mem::take(&mut batch), extras));
            }
            tokio::select! {
                biased;
                _ = stop.changed(), if leaving.is_none() => {
                    // Subscriptions half changed, or a member to retire not yet connected: the
                    // session stays as it is, and the next start carries on.
                    if changing.is_some() || self.member.retire {
                        break Ended::Done;
                    }
                    match self.leave(&client, &wanted).await {
                        Ok(Some(left)) => leaving = Some(left),
                        Ok(None) => break Ended::Done,
                        Err(error) => break Ended::redis(error),
                    }
                }
                Some((publishes, appended)) = appending.next() => {
                    self.metrics.mqtt_awaiting_ack.sub(publishes.len() as i64);
                    awaiting -= publishes.len() as i64;
                    match appended {
                        Ok(true) => acks.extend(publishes),
                        // The lease went elsewhere: unacknowledged, the messages stay in the
                        // session, which the new holder resumes.
                        Ok(false) => break Ended::Done,
                        // Counted where it failed.
                        Err(error) => break Ended::other(error),
                    }
                }
                event = events.poll(), if batch.len() < BATCH => match event {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        if let Err(error) = self.sparkplug_resume(connack.session_present).await {
                            break Ended::redis(error);
                        }
                        let held = if connack.session_present {
                            match self.session.subscriptions(&mut self.conn).await {
                                Ok(held) => held,
                                Err(error) => break Ended::redis(error),
                            }
                        } else {
                            BTreeSet::new()
                        };
                        if self.member.retire {
                            match self.retire(&client, &held).await {
                                Ok(retiring) => leaving = Some(retiring),
                                Err(error) => break Ended::redis(error),
                            }
                            continue;
                        }
                        let change = SessionChange::between(held, &wanted, !connack.session_present);
                        match change.send(&client, qos).await {
                            Ok(change) => changing = Some(change),
                            Err(error) => break Ended::other(format!("subscribing: {error}")),
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(suback)))
                        if suback.return_codes.contains(&rumqttc::SubscribeReasonCode::Failure) =>
                    {
                        // Refused (an ACL, say, or a broker without shared subscriptions): not
                        // consuming, and /readyz says why.
                        let filters = changing.as_ref().map(|c| c.subscribe.iter().map(|e| filter_of(e)).collect::<Vec<_>>().join(", ")).unwrap_or_default();
                        break Ended::other(format!("the broker refused the subscription to {filters}"));
                    }
                    Ok(Event::Incoming(Packet::UnsubAck(_))) if leaving.is_some() => {
                        if let Some(left) = &mut leaving {
                            left.unsubscribing = left.unsubscribing.saturating_sub(1);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_) | Packet::UnsubAck(_))) => {
                        if let Some(change) = &mut changing {
                            change.awaiting = change.awaiting.saturating_sub(1);
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        self.metrics.mqtt_awaiting_ack.inc();
                        awaiting += 1;
                        if let Some(left) = &mut leaving {
                            left.last_message = Instant::now();
                        }
                        extras.push(self.sparkplug_read(&client, &publish));
                        batch.push(publish);
                    }
                    Ok(_) => {}
                    Err(error) => break Ended::other(format!("broker: {error}")),
                },
                // Nothing more from the broker at once: append what has arrived.
                _ = std::future::ready(()), if !batch.is_empty() && appending.len() < APPENDS_IN_FLIGHT => {
                    let extras = std::mem::take(&mut extras);
                    appending.push_back(append(self.job(), std::mem::take(&mut batch), extras));
                }
                _ = renew.tick() => match self.appender.leases().renew(&mut self.conn).await {
                    Ok(true) => {}
                    Ok(false) => break Ended::Done,
                    Err(error) => break Ended::redis(error),
                },
                // While leaving, the checks below run even when the broker is silent.
                _ = tokio::time::sleep(Leaving::QUIET / 4), if leaving.is_some() => {}
            }
            // Every subscription change acknowledged: recorded, and the source consumes.
            if let Some(change) = changing.take_if(|change| change.awaiting == 0) {
                if let Err(error) = change.record(&self.session, &mut self.conn).await {
                    break Ended::redis(error);
                }
                if let Some(name) = &self.member.name
                    && let Err(error) = self.session.join(&mut self.conn, name).await
                {
                    break Ended::redis(error);
                }
                if !std::mem::replace(&mut self.connected, true) {
                    self.metrics.mqtt_connected.inc();
                }
                health.consuming();
                match &self.member.name {
                    None => {
                        tracing::info!(broker = %mqtt.host, client_id = %client_id, "holding the mqtt lease; subscribed")
                    }
                    Some(member) => {
                        tracing::info!(broker = %mqtt.host, client_id = %client_id, %member, "subscribed to the shared subscription")
                    }
                }
            }
            if let Some(left) = &leaving {
                let settled = left.unsubscribing == 0
                    && batch.is_empty()
                    && appending.is_empty()
                    && acks.is_empty()
                    && left.last_message.elapsed() >= Leaving::QUIET;
                if settled || left.since.elapsed() >= Leaving::AT_MOST {
                    match settled {
                        true => {
                            tracing::info!(client_id = %client_id, "left the shared subscription; every message received is appended and acknowledged")
                        }
                        false => {
                            tracing::warn!(client_id = %client_id, awaiting, "left the shared subscription with messages unacknowledged: they stay in the session until it connects again")
                        }
                    }
                    break match self.member.retire {
                        true => Ended::Finished,
                        false => Ended::Done,
                    };
                }
            }
        };
        // What is still appending or batched is left unacknowledged: the broker delivers it
        // again, to whichever connection holds the session next.
        self.metrics.mqtt_awaiting_ack.sub(awaiting);
        drop(appending);
        // The acknowledgements handed over reach the broker before the connection closes, so
        // that a stop does not have it deliver them again.
        if client.try_disconnect().is_ok() {
            let sent = async {
                while let Ok(event) = events.poll().await {
                    if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = event {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), sent).await;
        }
        ended
    }

    /// A Sparkplug B message, read in the order it arrived: the names its entry carries, and a
    /// rebirth request published when it cannot be read. `None` for other messages.
    fn sparkplug_read(
        &mut self,
        client: &AsyncClient,
        publish: &Publish,
    ) -> Option<sparkplug::Read> {
        if !self.settings.routes.reads_sparkplug() {
            return None;
        }
        let Route::Read {
            form: "sparkplug", ..
        } = self.settings.routes.route(&publish.topic)
        else {
            return None;
        };
        let topic = Topic::parse(&publish.topic)?;
        let (read, rebirth) = self.sparkplug.read(&topic, &publish.payload);
        if let Some((topic, payload)) = rebirth {
            tracing::warn!(%topic, why = read.unread.as_deref().unwrap_or_default(), "asking a Sparkplug B node for a rebirth");
            // Not waited for: the connection's request queue is served by this same task. A
            // full queue drops the request; the next unreadable message asks again.
            if client
                .try_publish(&topic, QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                self.sparkplug.rebirth_not_sent(&topic);
            }
        }
        Some(read)
    }

    /// What the Sparkplug B nodes' names are worth on a new connection: a session the broker
    /// kept delivers what came after the BIRTHs recorded (taken when this instance knows none);
    /// a lost one may have lost a BIRTH, so every node is asked again at its next DATA.
    async fn sparkplug_resume(&mut self, session_present: bool) -> redis::RedisResult<()> {
        if !session_present {
            self.sparkplug.clear();
        } else if self.sparkplug.is_empty() {
            let recorded = self.session.all_sparkplug_names(&mut self.conn).await?;
            self.sparkplug.restore(&recorded);
        }
        Ok(())
    }

    /// What one append needs, cloned for it.
    fn job(&self) -> AppendJob {
        AppendJob {
            conn: self.conn.clone(),
            settings: Arc::clone(&self.settings),
            appender: Arc::clone(&self.appender),
            session: self.session.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}
