//! Logging setup and the metrics, declared once.
//!
//! Each [`Application`](crate::app::Application) owns one [`Metrics`] with its own registry, so
//! several applications in one process (the integration tests) keep separate counters. Stages
//! update metrics once per batch, not once per record, except the latency histogram which observes
//! each stream entry (a few atomic adds).

use crate::domain::Reason;
use crate::domain::reading::Skip;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tracing_subscriber::EnvFilter;

/// Installs the global `tracing` subscriber (once per process).
pub fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// The pipeline stages, as they appear in `actor` labels.
pub const ACTORS: [&str; 7] = [
    "read", "validate", "window", "write", "ack", "bridge", "mqtt",
];

/// Every metric sensorhub exports (prefix `sensorhub_`).
pub struct Metrics {
    registry: Registry,
    /// Stream entries read, and messages bridged from Pub/Sub, by `source`.
    pub messages_received: IntCounterVec,
    /// Rejected messages or readings, by `reason`.
    pub readings_rejected: IntCounterVec,
    /// Readings newly stored in `readings`.
    pub readings_written: IntCounter,
    /// Messages received and not appended to the stream, by `source` (the bridge's lease lost
    /// before the append, or Redis refusing it past the retries).
    pub messages_dropped: IntCounterVec,
    /// Partitions of `readings` dropped by retention.
    pub retention_partitions_dropped: IntCounter,
    /// Aggregate rows deleted by retention, by `resolution`.
    pub retention_aggregates_deleted: IntCounterVec,
    /// The retention horizon, Unix seconds: raw readings before it are gone (0: none dropped).
    pub retention_horizon: Gauge,
    /// Partitions of `readings` compacted.
    pub compacted_partitions: IntCounter,
    /// Readings moved into compacted rows.
    pub compacted_readings: IntCounter,
    /// Requests refused for a missing or wrong token, by `scope` (`api`, `ingest`).
    pub unauthorized_requests: IntCounterVec,
    /// Readings skipped because `(sensor_id, ts)` was already stored or repeated in the batch.
    pub readings_duplicate: IntCounter,
    /// Readings whose `(sensor_id, ts)` is stored with another value: dead-lettered.
    pub readings_conflicting: IntCounter,
    /// Values replaced by one from a later stream position (`keep_last`).
    pub readings_replaced: IntCounter,
    /// Readings removed by deletions.
    pub readings_deleted: IntCounter,
    /// Aggregate rows inserted or merged into.
    pub aggregate_rows_upserted: IntCounter,
    /// Time of one batch transaction, retries included.
    pub batch_write_duration: Histogram,
    /// Stream entry time to commit.
    pub end_to_end_latency: Histogram,
    /// Restarts of supervised actors, by `actor`.
    pub actor_restarts: IntCounterVec,
    /// Batches read and not yet committed.
    pub batches_in_flight: IntGauge,
    /// Entries this instance read and has not yet committed (reads are `NOACK`: Redis keeps no
    /// pending list to count).
    pub group_pending: IntGauge,
    /// Entries in the stream not yet delivered to the consumer group.
    pub group_lag: IntGauge,
    /// Entries delivered to the consumer group (by any instance) and not yet committed.
    pub ledger_uncommitted: IntGauge,
    /// Age of the newest committed entry at the ledger's watermark, by its id's time.
    pub ledger_watermark_age: Gauge,
    /// Failed database operations, retried.
    pub database_errors: IntCounter,
    /// Failed Redis operations, retried.
    pub redis_errors: IntCounterVec,
    /// Failed batch transactions, by SQLSTATE (`53100`: disk full) or `connection`.
    pub write_errors: IntCounterVec,
    /// Recoveries after an outage, by `target` (`redis`, `postgres`).
    pub reconnects: IntCounterVec,
    /// Batch transactions retried after an error.
    pub write_retries: IntCounter,
    /// Unix time of the last committed batch.
    pub last_commit_time: Gauge,
    /// Entries whose commit is recorded in the ledger.
    pub entries_acked: IntCounter,
    /// Delivered entries re-read because no commit covered them.
    pub entries_reread: IntCounter,
    /// 1 while this instance holds the Pub/Sub bridge lease.
    pub bridge_leader: IntGauge,
    /// This instance's MQTT connections subscribed: 1 while it holds the lease's session, or its
    /// members of the shared subscription.
    pub mqtt_connected: IntGauge,
    /// MQTT messages received and not yet acknowledged to the broker (being appended).
    pub mqtt_awaiting_ack: IntGauge,
    /// HTTP ingest requests refused because their `Idempotency-Key` was used for another body.
    pub idempotency_keys_reused: IntCounter,
    /// Redis's used memory over its `maxmemory` (0 without a limit), read at each scrape.
    pub redis_memory_used_ratio: Gauge,
    /// Retained MQTT messages sent again for a new subscription and not appended again.
    pub mqtt_retained_skipped: IntCounter,
    /// Values of MQTT payloads that are not readings (a state meaning "no value", text, an
    /// array), by reason.
    pub mqtt_values_skipped: IntCounterVec,
    /// MQTT messages of topics a rule ignores (a device's control and availability topics).
    pub mqtt_messages_ignored: IntCounter,
    /// Build information, value 1.
    pub build_info: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let register = |metric: Box<dyn prometheus::core::Collector>| {
            registry.register(metric).expect("unique metric");
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let metric = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
        let float_gauge = |name: &str, help: &str| {
            let metric = Gauge::new(name, help).expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            register(Box::new(metric.clone()));
            metric
        };
        // Finer between 10 and 150 ms, where a healthy pipeline commits: a p99 read off the
        // histogram can then be told apart from the 100 ms latency target.
        let seconds_buckets = vec![
            0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0, 60.0,
        ];
        let metrics = Metrics {
            messages_received: counter_vec(
                "sensorhub_messages_received_total",
                "Messages received, by source (stream entries read, Pub/Sub messages bridged, HTTP ingest requests, line-protocol requests, MQTT messages).",
                "source",
            ),
            readings_rejected: counter_vec(
                "sensorhub_readings_rejected_total",
                "Messages or readings rejected into the dead-letter stream, by reason.",
                "reason",
            ),
            readings_written: counter("sensorhub_readings_written_total", "Readings newly stored."),
            messages_dropped: counter_vec(
                "sensorhub_messages_dropped_total",
                "Messages received and not appended to the stream (the bridge lost its lease first, or Redis kept refusing), by source.",
                "source",
            ),
            retention_partitions_dropped: counter(
                "sensorhub_retention_partitions_dropped_total",
                "Partitions of readings dropped by retention (SENSORHUB_RETENTION_RAW).",
            ),
            retention_aggregates_deleted: counter_vec(
                "sensorhub_retention_aggregate_rows_deleted_total",
                "Aggregate rows deleted by retention (SENSORHUB_RETENTION_AGGREGATES), by resolution.",
                "resolution",
            ),
            retention_horizon: float_gauge(
                "sensorhub_retention_horizon_timestamp_seconds",
                "The retention horizon: raw readings before it were dropped and are refused (0: nothing dropped).",
            ),
            compacted_partitions: counter(
                "sensorhub_compaction_partitions_total",
                "Partitions of readings compacted into one row per sensor and day (SENSORHUB_COMPACT_AFTER).",
            ),
            compacted_readings: counter(
                "sensorhub_compaction_readings_total",
                "Readings moved into compacted rows.",
            ),
            unauthorized_requests: counter_vec(
                "sensorhub_http_unauthorized_total",
                "HTTP requests refused for a missing or wrong token, by scope (api, ingest, admin).",
                "scope",
            ),
            readings_duplicate: counter(
                "sensorhub_readings_duplicate_total",
                "Readings skipped as duplicates of a stored (sensor_id, ts) with the same value.",
            ),
            readings_conflicting: counter(
                "sensorhub_readings_conflicting_total",
                "Readings whose (sensor_id, ts) is stored with a different value: dead-lettered as conflicting_value.",
            ),
            readings_replaced: counter(
                "sensorhub_readings_replaced_total",
                "Values of a (sensor_id, ts) replaced by one from a later stream position (SENSORHUB_ON_CONFLICT=keep_last).",
            ),
            readings_deleted: counter(
                "sensorhub_readings_deleted_total",
                "Readings removed by deletions (POST /api/v1/delete, /api/v2/delete, sensorhub delete).",
            ),
            aggregate_rows_upserted: counter(
                "sensorhub_aggregate_rows_upserted_total",
                "Aggregate rows inserted or merged into.",
            ),
            batch_write_duration: histogram(
                "sensorhub_batch_write_duration_seconds",
                "Duration of one batch's write, from handing its shards to the write lanes to the last commit, retries included.",
                seconds_buckets.clone(),
            ),
            end_to_end_latency: histogram(
                "sensorhub_end_to_end_latency_seconds",
                "Time from a stream entry's id time to the commit of its readings.",
                seconds_buckets,
            ),
            actor_restarts: counter_vec(
                "sensorhub_actor_restarts_total",
                "Restarts of supervised actors after a crash, by actor.",
                "actor",
            ),
            batches_in_flight: gauge(
                "sensorhub_batches_in_flight",
                "Batches read from the stream and not yet committed.",
            ),
            group_pending: gauge(
                "sensorhub_consumer_group_pending",
                "Stream entries this instance has read and not yet committed.",
            ),
            group_lag: gauge(
                "sensorhub_consumer_group_lag",
                "Entries in the stream not yet delivered to the consumer group.",
            ),
            ledger_uncommitted: gauge(
                "sensorhub_ledger_uncommitted_entries",
                "Stream entries delivered to the consumer group, by any instance, and not yet committed.",
            ),
            ledger_watermark_age: float_gauge(
                "sensorhub_ledger_watermark_age_seconds",
                "Age of the entry at the ledger's watermark (every entry up to it is committed), by its id's time.",
            ),
            database_errors: counter(
                "sensorhub_database_errors_total",
                "Failed PostgreSQL operations (each is retried).",
            ),
            redis_errors: counter_vec(
                "sensorhub_redis_errors_total",
                "Failed Redis operations (each is retried), by the actor that saw it.",
                "actor",
            ),
            write_errors: counter_vec(
                "sensorhub_write_errors_total",
                "Failed batch transactions (each is retried), by SQLSTATE (53100: disk full) or connection.",
                "sqlstate",
            ),
            reconnects: counter_vec(
                "sensorhub_reconnects_total",
                "Recoveries after an outage: the first success after failures, by target.",
                "target",
            ),
            write_retries: counter(
                "sensorhub_write_retries_total",
                "Batch transactions retried after an error.",
            ),
            last_commit_time: float_gauge(
                "sensorhub_last_commit_timestamp_seconds",
                "Unix time of the last committed batch, to the microsecond (0: none yet).",
            ),
            entries_acked: counter(
                "sensorhub_entries_acked_total",
                "Stream entries recorded as done after their readings were committed or dead-lettered.",
            ),
            entries_reread: counter(
                "sensorhub_entries_reread_total",
                "Delivered stream entries re-read because no commit covered them (lost in flight, or left by a stopped instance).",
            ),
            bridge_leader: gauge(
                "sensorhub_bridge_leader",
                "1 while this instance holds the lease to bridge Pub/Sub into the stream.",
            ),
            mqtt_connected: gauge(
                "sensorhub_mqtt_connected",
                "This instance's subscribed MQTT connections: 1 while it holds the lease's session, or its members of the shared subscription.",
            ),
            mqtt_awaiting_ack: gauge(
                "sensorhub_mqtt_awaiting_ack",
                "MQTT messages received and not yet acknowledged to the broker (their append in progress).",
            ),
            idempotency_keys_reused: counter(
                "sensorhub_idempotency_keys_reused_total",
                "HTTP ingest requests refused (422) because their Idempotency-Key was used before for another body.",
            ),
            redis_memory_used_ratio: {
                let metric = Gauge::new(
                    "sensorhub_redis_memory_used_ratio",
                    "Redis's used memory over its maxmemory (0 without a limit), read at each scrape; at 1 new readings are refused.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(metric.clone()))
                    .expect("unique metric");
                metric
            },
            mqtt_retained_skipped: counter(
                "sensorhub_mqtt_retained_skipped_total",
                "Retained MQTT messages the broker sent again for a new subscription, skipped as already appended.",
            ),
            mqtt_values_skipped: counter_vec(
                "sensorhub_mqtt_values_skipped_total",
                "Values of MQTT payloads that are not readings, skipped rather than dead-lettered: no_value (unavailable, unknown, None, null, nan), text, array, unsupported (Sparkplug B datasets, templates, bytes).",
                "reason",
            ),
            mqtt_messages_ignored: counter(
                "sensorhub_mqtt_messages_ignored_total",
                "MQTT messages of topics an ignore rule matches, not appended.",
            ),
            build_info: {
                let metric = IntGaugeVec::new(
                    Opts::new("sensorhub_build_info", "Build information; the value is 1."),
                    &["version"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(metric.clone()))
                    .expect("unique metric");
                metric
            },
            registry,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Pre-register every label so dashboards see zeros rather than missing series.
        for reason in Reason::ALL {
            metrics
                .readings_rejected
                .with_label_values(&[reason.as_str()]);
        }
        for actor in ACTORS {
            metrics.actor_restarts.with_label_values(&[actor]);
            metrics.redis_errors.with_label_values(&[actor]);
        }
        for target in ["redis", "postgres"] {
            metrics.reconnects.with_label_values(&[target]);
        }
        for scope in ["api", "ingest", "admin"] {
            metrics.unauthorized_requests.with_label_values(&[scope]);
        }
        for source in ["stream", "pubsub", "http", "line_protocol", "mqtt"] {
            metrics.messages_received.with_label_values(&[source]);
        }
        metrics.messages_dropped.with_label_values(&["pubsub"]);
        for skip in Skip::ALL {
            metrics
                .mqtt_values_skipped
                .with_label_values(&[skip.as_str()]);
        }
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
