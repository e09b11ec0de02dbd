//! `Application::build(config)`: connects, migrates, starts the pipeline and the HTTP server.
//! `main` and the integration tests start sensorhub exactly the same way.

use crate::config::{Config, mask_password};
use crate::health::WriteHealth;
use crate::http::{self, ApiSettings, HttpState, Targets};
use crate::liveness::Liveness;
use crate::pipeline::assemble::{Pipeline, PipelineParts};
use crate::pipeline::faults::Faults;
use crate::pipeline::read::READ_BLOCK;
use crate::redis::connection::Connection;
use crate::redis::target as redis_target;
use crate::sources::mqtt::MqttHealth;
use crate::sources::pubsub::BridgeHealth;
use crate::sources::{self, SourceParts};
use crate::store;
use crate::store::deployment;
use crate::store::partition::Partitions;
use crate::stream::group;
use crate::stream::shards::Streams;
use crate::stream::shards::has_hash_tag;
use crate::telemetry::Metrics;
use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};
use anyhow::Context as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long start-up waits for Redis and PostgreSQL to answer (a compose stack starts them
/// together) before giving up with the last error.
const STARTUP_WAIT: Duration = Duration::from_secs(60);
/// Redis answers slower than this count as failures; the reader's blocking reads get more.
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A running sensorhub.
pub struct Application {
    addr: SocketAddr,
    server: ServerHandle,
    pipeline: Pipeline,
    metrics: Arc<Metrics>,
    shutdown_timeout: Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::start(config, Arc::new(Faults::default())).await
    }

    /// As [`build`](Self::build), with a fault switch armed (the tests of supervision).
    #[cfg(feature = "fault-injection")]
    pub async fn build_with_faults(config: Config, faults: Arc<Faults>) -> anyhow::Result<Self> {
        Self::start(config, faults).await
    }

    async fn start(mut config: Config, faults: Arc<Faults>) -> anyhow::Result<Self> {
        let started = Instant::now();
        let metrics = Arc::new(Metrics::new());
        let mqtt_tls = mqtt_tls(&config)?;

        let Database {
            pool,
            write_pool,
            read_pool,
            partitions,
        } = open_database(&mut config, &metrics).await?;
        let Redis {
            target: redis,
            conn,
            read_conn,
        } = open_redis(&config).await?;

        // A takeover after the holder died takes up to about 4/3 of the lease.
        let bridge_health = Arc::new(BridgeHealth::new(config.bridge_lease * 3));
        let mqtt_health = Arc::new(match &config.mqtt {
            Some(mqtt) => MqttHealth::new(mqtt.ready_grace, mqtt.connections),
            None => MqttHealth::new(Duration::ZERO, 1),
        });
        let write_health = Arc::new(WriteHealth::default());
        let (history_tx, history) = tokio::sync::watch::channel(None);
        actix_web::rt::spawn(store::history::watch(pool.clone(), history_tx));
        let nodes = redis.nodes.clone();
        let pipeline = Pipeline::start(
            &config,
            PipelineParts {
                write_pool,
                partitions,
                redis,
                conn: conn.clone(),
                read_conn,
                metrics: Arc::clone(&metrics),
                write_health: Arc::clone(&write_health),
                history,
                faults,
            },
        );
        sources::start(
            &config,
            SourceParts {
                nodes,
                conn: conn.clone(),
                metrics: Arc::clone(&metrics),
                bridge_health: Arc::clone(&bridge_health),
                mqtt_health: Arc::clone(&mqtt_health),
                stop: pipeline.stop_signal(),
                mqtt_tls,
                running: pipeline.sources_running(),
            },
            &pipeline.io_thread(),
        );

        let state = HttpState {
            metrics: Arc::clone(&metrics),
            pool,
            read_pool,
            separate_reads: config.database_read_url.is_some(),
            redis: conn,
            pipeline_running: pipeline.running_flag(),
            bridge: config.channel.is_some().then_some(bridge_health),
            mqtt: config.mqtt.is_some().then_some(mqtt_health),
            writes: write_health,
            snapshots: Arc::new(http::status::Snapshots::new(started)),
            targets: Targets {
                redis: mask_password(config.redis_url.expose()),
                postgres: mask_password(config.database_url.expose()),
                postgres_read: config
                    .database_read_url
                    .as_ref()
                    .map(|url| mask_password(url.expose()))
                    .unwrap_or_default(),
            },
            api: Arc::new(ApiSettings {
                token: config.api_token.clone(),
                ingest_token: config.ingest_token.clone(),
                admin_token: config.admin_token.clone(),
                body_timeout: config.http_body_timeout,
                active_within: config.active_within,
                resolutions: config.resolutions.clone(),
                stream: config.stream.clone(),
                streams: Streams::of(&config),
                limits: config.limits.clone(),
            }),
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .wrap(actix_web::middleware::Compress::default())
                .configure(http::routes)
        })
        .workers(2)
        // Slow clients are cut off: a head must arrive within HEAD_TIMEOUT, a body within
        // SENSORHUB_HTTP_BODY_TIMEOUT (checked by the ingest routes as they read it).
        .client_request_timeout(http::HEAD_TIMEOUT)
        .keep_alive(Duration::from_secs(30))
        .disable_signals()
        .bind(config.http_addr)
        .with_context(|| format!("binding SENSORHUB_HTTP_ADDR={}", config.http_addr))?;
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);

        tracing::info!(
            http = %addr,
            redis = %mask_password(config.redis_url.expose()),
            postgres = %mask_password(config.database_url.expose()),
            stream = %config.stream,
            group = %config.group,
            consumer = %config.consumer,
            channel = config.channel.as_deref().unwrap_or("(none)"),
            startup_ms = started.elapsed().as_millis() as u64,
            "sensorhub started"
        );
        Ok(Self {
            addr,
            server: handle,
            pipeline,
            metrics,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// The HTTP address actually bound (port 0 in tests picks a free one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Runs until SIGTERM or Ctrl-C, then stops gracefully.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        wait_for_signal().await?;
        tracing::info!("stop requested; finishing the batches in flight");
        self.shutdown().await;
        Ok(())
    }

    /// Stops reading, lets the batches in flight commit and be acknowledged, then stops HTTP.
    pub async fn shutdown(mut self) {
        let drained = self.pipeline.shutdown(self.shutdown_timeout).await;
        if drained {
            tracing::info!("all batches in flight committed and acknowledged");
        } else {
            tracing::warn!(timeout = ?self.shutdown_timeout, "stopped before every batch in flight was acknowledged; they stay pending in Redis and are re-read on the next start");
        }
        self.server.stop(true).await;
    }
}

/// The PostgreSQL side, ready: the shared pool, the writer's and the read API's, the partitions.
struct Database {
    pool: deadpool_postgres::Pool,
    write_pool: deadpool_postgres::Pool,
    read_pool: deadpool_postgres::Pool,
    partitions: Arc<Partitions>,
}

/// Connects to PostgreSQL (retrying while it does not answer), migrates, agrees the resolution
/// set and the MQTT client id with other instances, prepares the partitions and starts the
/// backfill and retention loops.
async fn open_database(config: &mut Config, metrics: &Arc<Metrics>) -> anyhow::Result<Database> {
    // SENSORHUB_DB_POOL_SIZE counts every connection: the writer's own, and the rest shared
    // by the API, readiness and migrations.
    let shared = config
        .db_pool_size
        .saturating_sub(config.write_connections)
        .max(1);
    // A URL that cannot be used as written stops the start at once; only connecting is
    // retried.
    let mut database = store::connection_target(
        config.database_url.expose(),
        "SENSORHUB_DATABASE_URL",
        Liveness::new(config.network_timeout),
    )?;
    // A name of this instance's own: another instance's connections tell it apart from ours
    // (the resolution set is changed only with no other instance connected).
    let application_name = deployment::instance_name();
    database.config.application_name(&application_name);
    let pool = retry_startup("PostgreSQL", || store::connect_to(&database, shared)).await?;
    store::migrate(&pool).await?;
    store::backfill::agree(&pool, &config.resolutions, &application_name).await?;
    actix_web::rt::spawn(store::backfill::run(
        pool.clone(),
        config.resolutions.clone(),
        config.limits.max_future_skew,
    ));
    let first_stream = Streams::of(config).first().to_owned();
    if let Some(mqtt) = &mut config.mqtt
        && mqtt.client_id.is_none()
    {
        let candidate = deployment::new_mqtt_client_id(&first_stream);
        let id = deployment::value_or_insert(&pool, deployment::MQTT_CLIENT_ID, &candidate);
        mqtt.client_id = Some(id.await?);
    }
    let partitions = Arc::new(Partitions::new(config.partition));
    {
        let mut client = pool.get().await.context("connecting to PostgreSQL")?;
        partitions
            .prepare(&mut client)
            .await
            .context("creating the partitions of readings")?;
    }
    let write_pool = store::lazy_pool(&database, config.write_connections)?;
    // The read API's connections: a replica's when one is named (opened as queries need
    // them, as a replica may come up after sensorhub), else the shared pool.
    let read_pool = match &config.database_read_url {
        Some(url) => store::lazy_pool(
            &store::connection_target(
                url.expose(),
                "SENSORHUB_DATABASE_READ_URL",
                Liveness::new(config.network_timeout),
            )?,
            shared,
        )?,
        None => pool.clone(),
    };
    if !config.retention.is_forever() {
        actix_web::rt::spawn(retention_loop(
            pool.clone(),
            config.retention.clone(),
            Arc::clone(&partitions),
            Arc::clone(metrics),
        ));
    }
    if let Some(after) = config.compact_after {
        actix_web::rt::spawn(compaction_loop(pool.clone(), after, Arc::clone(metrics)));
    }
    Ok(Database {
        pool,
        write_pool,
        read_pool,
        partitions,
    })
}

/// The Redis side, ready: the target, the pooled connection and the reader's.
struct Redis {
    target: crate::redis::target::Target,
    conn: Connection,
    read_conn: Connection,
}

/// Connects to Redis (retrying while it does not answer), refuses an evicting one and stream
/// names a cluster would scatter, and creates the consumer groups.
/// The MQTT broker's TLS client configuration: a CA or client file that cannot be used stops
/// start-up, naming it.
pub(crate) fn mqtt_tls(config: &Config) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    let tls = config.mqtt.as_ref().and_then(|mqtt| mqtt.tls.as_ref());
    Ok(tls.map(|tls| tls.client_config()).transpose()?)
}

async fn open_redis(config: &Config) -> anyhow::Result<Redis> {
    let redis = redis_target::parse_live(
        config.redis_url.expose(),
        &config.redis_tls,
        Liveness::new(config.network_timeout),
    )
    .map_err(|why| anyhow::anyhow!("SENSORHUB_REDIS_URL: {why}"))?;
    let redis_at = match &redis.cluster {
        Some(_) => format!(
            "Redis Cluster at {}",
            redis
                .reader
                .seeds
                .iter()
                .map(redis_target::describe)
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => format!("Redis at {}", redis_target::describe(&redis.reader.info)),
    };
    let conn = retry_startup(&redis_at, || {
        Connection::open(&redis, REDIS_RESPONSE_TIMEOUT)
    })
    .await?;
    let read_conn = Connection::open(&redis, REDIS_RESPONSE_TIMEOUT + READ_BLOCK).await?;
    crate::redis::memory::note_version(&mut conn.clone())
        .await
        .with_context(|| format!("reading the version of {redis_at}"))?;
    // A Redis that evicts at its limit could drop the stream, the ledger or a lease. (A
    // cluster's nodes answer INFO each for itself: checked on one server only.)
    if let Connection::Single(single) = &conn {
        let memory = crate::redis::memory::memory(&mut single.clone())
            .await
            .with_context(|| format!("reading the memory settings of {redis_at}"))?;
        if let Some(risk) = memory.eviction_risk() {
            anyhow::bail!("{redis_at}: {risk}");
        }
    }
    let streams = Streams::of(config);
    if redis.cluster.is_some()
        && let Some(bare) = streams.all().iter().find(|s| !has_hash_tag(s))
    {
        anyhow::bail!(
            "SENSORHUB_STREAM={bare} has no hash tag: in a Redis Cluster the keys beside it \
             (ledger, dead letters, leases) would land in other slots than the stream. Name it \
             {{{bare}}} (`sensorhub rename-stream --to '{{{bare}}}'` renames an existing one \
             with its keys) or use SENSORHUB_STREAM_SHARDS, whose shards have hash tags"
        );
    }
    for stream in streams.all() {
        group::ensure_group(&mut conn.clone(), stream, &config.group, true)
            .await
            .with_context(|| format!("creating the consumer group on {stream}"))?;
    }
    Ok(Redis {
        target: redis,
        conn,
        read_conn,
    })
}

/// Retries a start-up connection for up to [`STARTUP_WAIT`], logging each failure.
async fn retry_startup<T, E, F, Fut>(what: &str, mut connect: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let deadline = Instant::now() + STARTUP_WAIT;
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(error) => {
                let error: anyhow::Error = error.into();
                // A certificate the configuration does not trust will not become trusted by
                // waiting: stop at once, saying so.
                if refused_certificate(&error) {
                    return Err(error.context(format!(
                        "{what}: the TLS handshake failed on a certificate (check the CA file, \
                         the host name in the URL, the sslmode, or the client certificate)"
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(error.context(format!(
                        "{what} did not answer within {}s",
                        STARTUP_WAIT.as_secs()
                    )));
                }
                tracing::warn!(
                    error = format!("{error:#}"),
                    "{what} not reachable yet, retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How often retention runs: often enough that a partition goes soon after it expires.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

/// Applies the retention now and every [`RETENTION_EVERY`] (one instance at a time: the
/// others skip), logging what it removed.
async fn retention_loop(
    pool: deadpool_postgres::Pool,
    retention: store::retention::Retention,
    partitions: Arc<Partitions>,
    metrics: Arc<Metrics>,
) {
    let mut every = tokio::time::interval(RETENTION_EVERY);
    loop {
        every.tick().await;
        let run = async {
            let mut client = pool.get().await?;
            store::retention::run_once(&mut client, &retention, chrono::Utc::now()).await
        };
        match run.await {
            Ok(None) => tracing::debug!("retention runs on another instance"),
            Ok(Some(report)) => {
                record_retention(&report, &partitions, &metrics);
            }
            Err(error) => tracing::warn!(%error, "retention failed; it runs again later"),
        }
    }
}

/// How often compaction looks for closed partitions: a partition is compacted soon after it
/// becomes old enough.
const COMPACTION_EVERY: Duration = Duration::from_secs(600);

/// Compacts closed partitions now and every [`COMPACTION_EVERY`] (one instance at a time).
async fn compaction_loop(pool: deadpool_postgres::Pool, after: Duration, metrics: Arc<Metrics>) {
    let mut every = tokio::time::interval(COMPACTION_EVERY);
    loop {
        every.tick().await;
        let run = async {
            let mut client = pool.get().await?;
            store::compaction::run_once(&mut client, after, chrono::Utc::now()).await
        };
        match run.await {
            Ok(None) => tracing::debug!("compaction runs on another instance"),
            Ok(Some(done)) => {
                for compacted in &done {
                    metrics.compacted_partitions.inc();
                    metrics.compacted_readings.inc_by(compacted.readings);
                }
            }
            Err(error) => tracing::warn!(%error, "compaction failed; it runs again later"),
        }
    }
}

/// Logs and counts what a retention run removed.
fn record_retention(report: &store::retention::Report, partitions: &Partitions, metrics: &Metrics) {
    if !report.dropped.is_empty() {
        partitions.forget();
        tracing::info!(partitions = ?report.dropped, horizon = ?report.horizon, "retention dropped partitions of readings");
    }
    metrics
        .retention_partitions_dropped
        .inc_by(report.dropped.len() as u64);
    if let Some(horizon) = report.horizon.filter(|h| h.timestamp() > -62_000_000_000) {
        metrics.retention_horizon.set(horizon.timestamp() as f64);
    }
    for (resolution, deleted) in &report.aggregates_deleted {
        if *deleted > 0 {
            tracing::info!(%resolution, rows = deleted, "retention deleted aggregates");
        }
        metrics
            .retention_aggregates_deleted
            .with_label_values(&[resolution])
            .inc_by(*deleted);
    }
}

/// Whether `error` is a TLS handshake that failed on a certificate: the server's, or the one the
/// server asked of sensorhub.
fn refused_certificate(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let tls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        // The server's certificate refused here, or ours (or none) refused by the server.
        matches!(
            tls,
            Some(
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(_)
            )
        ) || {
            let text = cause.to_string();
            text.contains("invalid peer certificate") || text.contains("received fatal alert")
        }
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => {}
            result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
