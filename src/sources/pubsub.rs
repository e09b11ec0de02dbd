//! The Pub/Sub bridge: appends every message published on the channel to the stream at once, so
//! published readings get the stream's delivery guarantee.
//!
//! It never waits on the pipeline (Redis disconnects a subscriber that falls behind, and the
//! messages in between are lost): it only `XADD`s, pipelining whatever has arrived. With several
//! instances, only the holder of a lease in Redis bridges, so each message enters the stream once;
//! when the holder dies, another takes over within about 4/3 of the lease time. Messages published
//! while no instance holds the lease are not bridged.

use crate::pipeline::stage::{count_restart, guarded, stop_requested};
use crate::redis::channel;
use crate::redis::entry::append_payloads;
use crate::redis::lease::Lease;
use crate::retry::Backoff;
use crate::telemetry::Metrics;
use actix::prelude::*;
use futures_util::{FutureExt as _, StreamExt as _};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Most messages appended in one pipelined round trip.
const MAX_APPEND: usize = 1000;

#[derive(Clone, Debug)]
pub struct BridgeSettings {
    pub channel: String,
    pub stream: String,
    /// This instance's name, the lease's value.
    pub consumer: String,
    /// How long the lease lasts without a renewal.
    pub lease_ttl: Duration,
}

impl BridgeSettings {
    /// The lease that lets one instance bridge: `<stream>:bridge-lease`, held in this instance's
    /// name.
    fn lease(&self) -> Lease {
        Lease {
            key: format!("{}:bridge-lease", self.stream),
            holder: self.consumer.clone(),
            ttl: self.lease_ttl,
        }
    }
}

pub struct Bridge {
    settings: Arc<BridgeSettings>,
    client: redis::Client,
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl Bridge {
    pub fn new(
        settings: BridgeSettings,
        client: redis::Client,
        conn: ConnectionManager,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            settings: Arc::new(settings),
            client,
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
            lease: self.settings.lease(),
            settings: Arc::clone(&self.settings),
            client: self.client.clone(),
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
    lease: Lease,
    client: redis::Client,
    conn: ConnectionManager,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
}

impl BridgeLoop {
    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let retry_every = self.settings.lease_ttl / 3;
        // One log line when the bridge starts failing, one when it works again.
        let mut failing = false;
        while !stop_requested(&self.stop) {
            let failure = match self.lease.acquire(&mut self.conn).await {
                Ok(true) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(channel = %self.settings.channel, "pub/sub bridge works again");
                    }
                    let result = self.bridge().await;
                    self.metrics.bridge_leader.set(0);
                    result.err()
                }
                Ok(false) => {
                    tokio::select! {
                        _ = tokio::time::sleep(retry_every) => {}
                        _ = self.stop.changed() => {}
                    }
                    None
                }
                Err(error) => Some(error),
            };
            match failure {
                None => backoff.reset(),
                Some(error) => {
                    self.metrics
                        .redis_errors
                        .with_label_values(&["bridge"])
                        .inc();
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(%error, channel = %self.settings.channel, "pub/sub bridge interrupted, retrying");
                    }
                    backoff.wait().await;
                }
            }
        }
        let _ = self.lease.release(&mut self.conn).await;
    }

    /// Bridges while this instance holds the lease; returns when it is lost or on stop.
    async fn bridge(&mut self) -> redis::RedisResult<()> {
        let mut pubsub = channel::subscribe(&self.client, &self.settings.channel).await?;
        self.metrics.bridge_leader.set(1);
        tracing::info!(channel = %self.settings.channel, stream = %self.settings.stream, "holding the bridge lease; bridging pub/sub into the stream");
        let mut messages = pubsub.on_message();
        let mut renew = tokio::time::interval(self.settings.lease_ttl / 3);
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(first) = message else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "pub/sub connection closed")));
                    };
                    let mut payloads = vec![first.get_payload_bytes().to_vec()];
                    while payloads.len() < MAX_APPEND {
                        match messages.next().now_or_never() {
                            Some(Some(more)) => payloads.push(more.get_payload_bytes().to_vec()),
                            _ => break,
                        }
                    }
                    self.append(&payloads).await?;
                }
                _ = renew.tick() => {
                    if !self.lease.renew(&mut self.conn).await? {
                        tracing::info!(channel = %self.settings.channel, "bridge lease lost to another instance");
                        return Ok(());
                    }
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Appends the payloads, retrying briefly: these messages exist nowhere else.
    async fn append(&mut self, payloads: &[Vec<u8>]) -> redis::RedisResult<()> {
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        loop {
            match append_payloads(
                &mut self.conn,
                &self.settings.stream,
                payloads.iter().map(Vec::as_slice),
            )
            .await
            {
                Ok(_) => {
                    self.metrics
                        .messages_received
                        .with_label_values(&["pubsub"])
                        .inc_by(payloads.len() as u64);
                    return Ok(());
                }
                Err(error) if attempts < 5 => {
                    attempts += 1;
                    self.metrics
                        .redis_errors
                        .with_label_values(&["bridge"])
                        .inc();
                    tracing::warn!(%error, messages = payloads.len(), "appending published messages failed, retrying");
                    backoff.wait().await;
                }
                Err(error) => {
                    tracing::error!(%error, messages = payloads.len(), "published messages could not be appended to the stream and are lost");
                    return Err(error);
                }
            }
        }
    }
}
