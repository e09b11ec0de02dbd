//! The Pub/Sub bridge: appends every message published on the channel to the stream at once, so
//! published readings get the stream's delivery guarantee.
//!
//! It never waits on the pipeline (Redis disconnects a subscriber that falls behind, and the
//! messages in between are lost): it only `XADD`s, pipelining whatever has arrived. With several
//! instances, only the holder of a lease in Redis bridges, so each message enters the stream once;
//! when the holder dies, another takes over within about 4/3 of the lease time. Messages published
//! while no instance holds the lease are not bridged.
//!
//! The lease is held by a token unique to this process, not by the consumer name (two processes
//! may share one), and every append checks that token in the same script that appends
//! ([`crate::stream::append::append_entries_fenced`]): a holder paused past its lease and resumed cannot append what the
//! new holder bridges too. What the bridge received and could not append is counted in
//! `sensorhub_messages_dropped_total{source="pubsub"}`.

use crate::actor::{count_restart, guarded};
use crate::domain::Limits;
use crate::domain::fields;
use crate::health::Consuming;
use crate::redis::channel;
use crate::redis::connection::Connection;
use crate::retry::Backoff;
use crate::sources::append::Appender;
use crate::sources::leased::{self, Ended, Leased, LoopParts};
use crate::stream::append::FencedError;
use crate::stream::lease::{Leases, holder_token};
use crate::stream::shards::Streams;
use crate::telemetry::Metrics;
use actix::prelude::*;
use futures_util::{FutureExt as _, StreamExt as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Most messages appended in one pipelined round trip.
const MAX_APPEND: usize = 1000;

#[derive(Clone, Debug)]
pub struct BridgeSettings {
    pub channel: String,
    /// The stream, or its shards: each message goes to its sensor's.
    pub streams: Streams,
    /// The validator's limits, which the shard of a message is picked by.
    pub limits: Limits,
    /// This instance's name, the start of its lease token.
    pub consumer: String,
    /// How long the lease lasts without a renewal.
    pub lease_ttl: Duration,
}

impl BridgeSettings {
    /// The lease that lets one instance bridge, `<stream>:bridge-lease` beside each shard, held
    /// by `token`, and the appends checking it.
    fn appender(&self, token: String) -> Appender {
        let leases = Leases::new(&self.streams, "bridge-lease", token, self.lease_ttl);
        Appender::new(self.streams.clone(), leases, self.limits.clone())
    }
}

/// Whether the channel is bridged, for `/readyz`: the last append's error while appends fail,
/// and whether any instance has bridged it within the grace period (this one, subscribed, or
/// another, holding the lease).
#[derive(Debug)]
pub struct BridgeHealth {
    /// The last append error, while the bridge cannot append to the stream.
    error: Mutex<Option<String>>,
    bridged: Consuming,
}

impl BridgeHealth {
    /// `grace`: how long the channel may go without a known bridge before `/readyz` says so,
    /// longer than a takeover after the holder died takes.
    pub fn new(grace: Duration) -> Self {
        Self {
            error: Mutex::new(None),
            bridged: Consuming::new(
                grace,
                "the channel has not been bridged",
                "no instance holds the bridge lease",
            ),
        }
    }

    /// `Err` with the last error while the bridge cannot append to the stream, or while no
    /// instance has been known to bridge the channel for longer than the grace period.
    pub fn check(&self) -> Result<(), String> {
        if let Some(error) = &*self.error.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(error.clone());
        }
        self.bridged.check()
    }

    fn set(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// The channel is bridged now, here or by another instance.
    fn bridged(&self) {
        self.bridged.consuming();
    }

    fn failed(&self, why: String) {
        self.bridged.not_consuming(why);
    }
}

pub struct Bridge {
    settings: Arc<BridgeSettings>,
    /// The lease token, made once per bridge: a restart of the actor keeps holding its lease.
    token: String,
    health: Arc<BridgeHealth>,
    nodes: Vec<redis::Client>,
    conn: Connection,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Bridge {
    pub fn new(
        settings: BridgeSettings,
        nodes: Vec<redis::Client>,
        conn: Connection,
        metrics: Arc<Metrics>,
        health: Arc<BridgeHealth>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            token: holder_token(&settings.consumer),
            health,
            settings: Arc::new(settings),
            nodes,
            conn,
            metrics,
            stop,
        }
    }
}

impl Actor for Bridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let lp = BridgeLoop {
            appender: self.settings.appender(self.token.clone()),
            health: Arc::clone(&self.health),
            settings: Arc::clone(&self.settings),
            nodes: self.nodes.clone(),
            next_node: 0,
            conn: self.conn.clone(),
            metrics: Arc::clone(&self.metrics),
            stop: self.stop.clone(),
        };
        ctx.spawn(guarded("bridge", lp.run()));
    }
}

impl Supervised for Bridge {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        count_restart(&self.metrics, "bridge");
        self.metrics.bridge_leader.set(0);
    }
}

struct BridgeLoop {
    settings: Arc<BridgeSettings>,
    appender: Appender,
    health: Arc<BridgeHealth>,
    /// The nodes a subscription can be made on: one server, or every node a cluster URL names
    /// (a cluster forwards every `PUBLISH` to every node, so one node's subscription hears them
    /// all).
    nodes: Vec<redis::Client>,
    /// The node the next subscription is made on: the next one after a node failed.
    next_node: usize,
    conn: Connection,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Leased for BridgeLoop {
    const NAME: &'static str = "bridge";

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
        format!("channel {}", self.settings.channel)
    }

    async fn hold(&mut self) -> Ended {
        match self.bridge().await {
            Ok(()) => Ended::Done,
            Err(error) => Ended::redis(error),
        }
    }

    fn others_hold(&mut self) {
        self.health.bridged();
    }

    fn failed(&mut self, why: &str) {
        self.health.failed(why.to_owned());
    }

    fn turn_ended(&mut self) {
        self.metrics.bridge_leader.set(0);
    }
}

impl BridgeLoop {
    async fn run(mut self) {
        leased::run(&mut self).await;
    }

    /// Bridges while this instance holds the lease; returns when it is lost or on stop.
    async fn bridge(&mut self) -> redis::RedisResult<()> {
        let node = &self.nodes[self.next_node % self.nodes.len()];
        let mut pubsub = match channel::subscribe(node, &self.settings.channel).await {
            Ok(pubsub) => pubsub,
            Err(error) => {
                self.next_node += 1;
                return Err(error);
            }
        };
        self.metrics.bridge_leader.set(1);
        self.health.bridged();
        tracing::info!(channel = %self.settings.channel, stream = %self.appender.stream(), "holding the bridge lease; bridging pub/sub into the stream");
        let mut messages = pubsub.on_message();
        let mut renew = tokio::time::interval(self.settings.lease_ttl / 3);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(first) = message else {
                        self.next_node += 1;
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connection closed")));
                    };
                    let mut payloads = vec![first.get_payload_bytes().to_vec()];
                    while payloads.len() < MAX_APPEND {
                        match messages.next().now_or_never() {
                            Some(Some(more)) => payloads.push(more.get_payload_bytes().to_vec()),
                            _ => break,
                        }
                    }
                    if !self.append(&payloads).await? {
                        return Ok(());
                    }
                }
                _ = renew.tick() => {
                    self.health.bridged();
                    if !self.appender.leases().renew(&mut self.conn).await? {
                        tracing::info!(channel = %self.settings.channel, "bridge lease lost to another instance");
                        return Ok(());
                    }
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Appends the payloads while this bridge holds the lease, retrying briefly: these messages
    /// exist nowhere else. `Ok(false)` when the lease turned out to be lost: nothing was
    /// appended, and the messages are counted as dropped (the new holder bridges what was
    /// published after it subscribed).
    async fn append(&mut self, payloads: &[Vec<u8>]) -> redis::RedisResult<bool> {
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        // One id for every attempt: an attempt that timed out may have appended, and a retry
        // of it then appends nothing.
        let append_id = self.appender.next_append_id();
        let entries: Vec<Vec<(&str, &[u8])>> = payloads
            .iter()
            .map(|payload| vec![(fields::DATA, payload.as_slice())])
            .collect();
        loop {
            let appended = self.appender.append(&self.conn, &append_id, &entries).await;
            match appended {
                Ok(_) => {
                    self.health.set(None);
                    self.metrics
                        .messages_received
                        .with_label_values(&["pubsub"])
                        .inc_by(payloads.len() as u64);
                    return Ok(true);
                }
                Err(FencedError::NotHolder) => {
                    self.dropped(payloads.len());
                    tracing::warn!(channel = %self.settings.channel, messages = payloads.len(), "bridge lease lost before these messages were appended; they are dropped (another instance bridges from now on)");
                    return Ok(false);
                }
                Err(FencedError::Redis(error)) if attempts < 5 => {
                    attempts += 1;
                    self.health
                        .set(Some(format!("cannot append to the stream: {error}")));
                    self.metrics
                        .redis_errors
                        .with_label_values(&["bridge"])
                        .inc();
                    tracing::warn!(%error, messages = payloads.len(), "appending published messages failed, retrying");
                    backoff.wait().await;
                }
                Err(FencedError::Redis(error)) => {
                    self.health
                        .set(Some(format!("cannot append to the stream: {error}")));
                    self.dropped(payloads.len());
                    tracing::error!(%error, messages = payloads.len(), "published messages could not be appended to the stream and are lost");
                    return Err(error);
                }
            }
        }
    }

    fn dropped(&self, messages: usize) {
        self.metrics
            .messages_dropped
            .with_label_values(&["pubsub"])
            .inc_by(messages as u64);
    }
}
