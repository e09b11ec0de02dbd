//! Starts the stages sink-first, each under an actix `Supervisor` on its own arbiter (thread), and
//! stops them in flow order: reader first, then the batches in flight drain through commit and
//! acknowledgement.
//!
//! A stage that panics is stopped by [`guarded`](crate::actor::guarded) and restarted by its
//! `Supervisor` with the same mailbox; its restart is counted in `sensorhub_actor_restarts_total`.
//! Giving each stage its own thread keeps a CPU-heavy batch in one stage (parsing, folding) from
//! stalling the others, and lets the pipeline use both cores.

use crate::config::Config;
use crate::domain::shard::StreamShard;
use crate::health::{ReadersRunning, WriteHealth};
use crate::pipeline::ack::{AckSettings, Acker, ShardGauges};
use crate::pipeline::aggregate::Aggregator;
use crate::pipeline::faults::Faults;
use crate::pipeline::flow::Flow;
use crate::pipeline::read::{ReadSettings, Reader};
use crate::pipeline::validate::Validator;
use crate::pipeline::write::{WriteStore, Writer};
use crate::redis::connection::Connection;
use crate::stream::dead_letter::DeadLetters;
use crate::stream::lease::unique_token;
use crate::stream::shards::Streams;
use crate::telemetry::Metrics;
use actix::{Arbiter, ArbiterHandle, Supervisor};
use deadpool_postgres::Pool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// What the stages are built from.
pub struct PipelineParts {
    /// The writer's own connections ([`crate::store::lazy_pool`], not yet opened): opened on the
    /// writer's thread, so their I/O runs there.
    pub write_pool: Pool,
    /// The time partitions of `readings`, shared with the writer.
    pub partitions: Arc<crate::store::partition::Partitions>,
    /// The client of the pooled connections and what the reader's own connection needs.
    pub redis: crate::redis::target::Target,
    /// Shared multiplexed connection: acks, dead letters, bridge appends.
    pub conn: Connection,
    /// The reader's own connection for blocking reads.
    pub read_conn: Connection,
    pub metrics: Arc<Metrics>,
    /// Whether batches commit, shared by every stream's writer and with `/readyz`.
    pub write_health: Arc<WriteHealth>,
    /// The database's identity ([`crate::store::history`]), watched by every reader.
    pub history: watch::Receiver<Option<String>>,
    pub faults: Arc<Faults>,
}

/// The running pipeline.
pub struct Pipeline {
    arbiters: Vec<Arbiter>,
    io: ArbiterHandle,
    /// The flow of each stream read; they share one set of permits.
    flows: Vec<Arc<Flow>>,
    stop: watch::Sender<bool>,
    readers_running: ReadersRunning,
    /// The sources' loops that have not ended: a stop waits for them (a member leaving a shared
    /// subscription settles its messages) before it stops the threads.
    sources_running: Arc<AtomicUsize>,
}

/// The threads the stages run on: each stage of every stream read on its stage's thread.
struct Threads {
    ack: ArbiterHandle,
    write: ArbiterHandle,
    window: ArbiterHandle,
    validate: ArbiterHandle,
    /// The readers and the bridges spend their time waiting on Redis: they share a thread.
    io: ArbiterHandle,
}

impl Pipeline {
    pub fn start(config: &Config, parts: PipelineParts) -> Self {
        let PipelineParts {
            write_pool,
            partitions,
            redis: redis_target,
            conn,
            read_conn,
            metrics,
            write_health,
            history,
            faults,
        } = parts;
        let (stop, stop_rx) = watch::channel(false);
        let mut arbiters = Vec::new();
        let mut arbiter = || {
            let arbiter = Arbiter::new();
            let handle = arbiter.handle();
            arbiters.push(arbiter);
            handle
        };
        let threads = Threads {
            ack: arbiter(),
            write: arbiter(),
            window: arbiter(),
            validate: arbiter(),
            io: arbiter(),
        };
        let streams = Streams::of(config);
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let gauges = Arc::new(ShardGauges::new(streams.len()));
        let instance = unique_token(&config.consumer);
        let mut flows = Vec::new();
        let mut running = Vec::new();
        for &shard in &config.read_shards {
            let flow = Flow::sharing(
                Arc::clone(&permits),
                config.max_in_flight,
                Arc::clone(&metrics),
            );
            let reader_running = Arc::new(AtomicBool::new(false));
            let stages = StreamStages {
                stream: streams.all()[shard].clone(),
                shard,
                instance: instance.clone(),
                write_pool: write_pool.clone(),
                partitions: Arc::clone(&partitions),
                write_health: Arc::clone(&write_health),
                history: history.clone(),
                reader: redis_target.reader.clone(),
                conn: conn.clone(),
                read_conn: read_conn.clone(),
                flow: Arc::clone(&flow),
                gauges: Arc::clone(&gauges),
                metrics: Arc::clone(&metrics),
                faults: Arc::clone(&faults),
                stop: stop_rx.clone(),
                running: Arc::clone(&reader_running),
            };
            stages.start(config, &threads);
            flows.push(flow);
            running.push(reader_running);
        }

        Self {
            arbiters,
            io: threads.io,
            flows,
            stop,
            readers_running: ReadersRunning::new(running),
            sources_running: Arc::default(),
        }
    }

    /// The thread the readers wait on Redis on: the sources, which wait on Redis and their
    /// brokers too, share it.
    pub fn io_thread(&self) -> ArbiterHandle {
        self.io.clone()
    }

    /// Becomes true when the pipeline stops: the sources stop with it.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// The count of the sources' loops still running, for a stop to wait for.
    pub fn sources_running(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.sources_running)
    }

    /// The readers' running flags, for readiness.
    pub fn running_flag(&self) -> ReadersRunning {
        self.readers_running.clone()
    }

    /// True while a reader's loop runs.
    pub fn is_running(&self) -> bool {
        self.readers_running.any()
    }

    /// Stops reading, waits (up to `timeout`) for the batches in flight to commit and be
    /// acknowledged, then stops the stages and waits for their threads to end, so that nothing of
    /// the pipeline runs once it returns. Returns false if the timeout struck first; what was not
    /// acknowledged is re-read on the next start.
    pub async fn shutdown(&mut self, timeout: Duration) -> bool {
        let _ = self.stop.send(true);
        let deadline = Instant::now() + timeout;
        while (self.is_running() || self.sources_running.load(Ordering::Acquire) > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // The flows share their permits: one has drained when all have.
        let drained = match self.flows.first() {
            Some(flow) => tokio::time::timeout(left, flow.all_drained()).await.is_ok(),
            None => true,
        };
        let arbiters = std::mem::take(&mut self.arbiters);
        let _ = tokio::task::spawn_blocking(move || stop_and_join(arbiters)).await;
        drained
    }
}

impl Drop for Pipeline {
    /// A pipeline dropped without [`Pipeline::shutdown`] (a test that failed, a start-up that
    /// failed half way) stops its stages too, rather than leaving their threads running.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        stop_and_join(std::mem::take(&mut self.arbiters));
    }
}

/// Stops every stage's thread and waits for it to end: each ends at its next await, dropping the
/// futures it was running.
fn stop_and_join(arbiters: Vec<Arbiter>) {
    for arbiter in &arbiters {
        arbiter.stop();
    }
    for arbiter in arbiters {
        let _ = arbiter.join();
    }
}

/// One stream's stages and what they are built from.
struct StreamStages {
    stream: String,
    shard: usize,
    instance: String,
    write_pool: Pool,
    partitions: Arc<crate::store::partition::Partitions>,
    write_health: Arc<WriteHealth>,
    history: watch::Receiver<Option<String>>,
    reader: crate::redis::target::ReaderTarget,
    conn: Connection,
    read_conn: Connection,
    flow: Arc<Flow>,
    gauges: Arc<ShardGauges>,
    metrics: Arc<Metrics>,
    faults: Arc<Faults>,
    stop: watch::Receiver<bool>,
    running: Arc<AtomicBool>,
}

impl StreamStages {
    /// Starts the stages sink first: each is started with the address of the one after it.
    fn start(self, config: &Config, threads: &Threads) {
        let Self {
            stream,
            shard,
            instance,
            write_pool,
            partitions,
            write_health,
            history,
            reader,
            conn,
            read_conn,
            flow,
            gauges,
            metrics,
            faults,
            stop,
            running,
        } = self;
        let ack_settings = AckSettings {
            stream: stream.clone(),
            shard,
            group: config.group.clone(),
            instance,
            tail: config.stream_tail,
        };
        let acker = {
            let (conn, flow, metrics) = (conn.clone(), Arc::clone(&flow), Arc::clone(&metrics));
            Supervisor::start_in_arbiter(&threads.ack, move |_| {
                Acker::new(ack_settings, conn, flow, gauges, metrics)
            })
        };

        let dead_letters = DeadLetters {
            key: format!("{stream}:dead"),
            maxlen: config.dead_letter_maxlen,
            max_bytes: config.dead_letter_max_bytes,
        };
        let writer = {
            let resolutions = config.resolutions.clone();
            let dead_letters = dead_letters.clone();
            let (conn, metrics, faults) = (conn.clone(), Arc::clone(&metrics), Arc::clone(&faults));
            let committed = acker.recipient();
            let keep_origins = config.policies().keeps_origins();
            Supervisor::start_in_arbiter(&threads.write, move |_| {
                Writer::new(
                    WriteStore {
                        pool: write_pool,
                        partitions,
                        health: write_health,
                        keep_origins,
                    },
                    &resolutions,
                    dead_letters,
                    conn,
                    committed,
                    metrics,
                    faults,
                )
            })
        };

        let aggregator = {
            let resolutions = config.resolutions.clone();
            let write_connections = config.write_connections;
            let policies = config.policies();
            let (metrics, faults) = (Arc::clone(&metrics), Arc::clone(&faults));
            let write_batches = writer.recipient();
            Supervisor::start_in_arbiter(&threads.window, move |_| {
                Aggregator::new(
                    &resolutions,
                    write_connections,
                    policies,
                    write_batches,
                    metrics,
                    faults,
                )
            })
        };

        let validator = {
            let limits = config.limits.clone();
            let reads = StreamShard {
                index: shard,
                of: config.shards,
            };
            let (conn, metrics, faults) = (conn.clone(), Arc::clone(&metrics), Arc::clone(&faults));
            let readings = aggregator.recipient();
            Supervisor::start_in_arbiter(&threads.validate, move |_| {
                Validator::new(limits, reads, dead_letters, conn, readings, metrics, faults)
            })
        };

        let read_settings = ReadSettings {
            redis: reader,
            stream,
            group: config.group.clone(),
            consumer: config.consumer.clone(),
            batch_size: config.batch_size,
            batch_delay: config.batch_delay,
            claim_idle: config.claim_idle,
            shares_permits: config.read_shards.len() > 1,
            history,
        };
        let raw_batches = validator.recipient();
        Supervisor::start_in_arbiter(&threads.io, move |_| {
            Reader::new(
                read_settings,
                read_conn,
                raw_batches,
                flow,
                metrics,
                stop,
                running,
            )
        });
    }
}
