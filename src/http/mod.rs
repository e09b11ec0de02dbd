//! HTTP: health for orchestrators, metrics for Prometheus, the read API ([`api`]), HTTP ingest
//! ([`ingest`]), the OpenAPI document ([`openapi`]) and a status page at `/`.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /` | status page: sensors with last value, chart of a sensor's aggregates |
//! | `GET /healthz` | 200 while the process and its actors are alive |
//! | `GET /readyz`, `GET /healthcheck` | 200 when Redis and PostgreSQL answer, batches commit, Redis does not evict, the pipeline runs and the configured sources consume (the bridge appends, MQTT is subscribed); 503 with a JSON body naming the failing checks |
//! | `GET /metrics` | Prometheus text exposition |
//! | `POST /api/v2/write`, `POST /write`, `GET /ping` | InfluxDB line protocol ([`line_protocol`]) |
//! | `/api/v1/dead-letters[...]` | list, count, replay and purge dead letters ([`dead_letters`]) |

pub mod api;
pub mod auth;
pub mod body;
pub mod dead_letters;
pub mod delete;
pub mod error;
pub mod export;
pub mod ingest;
pub mod line_protocol;
pub mod openapi;
pub mod params;
pub mod status;
pub mod windows;

use crate::config::Secret;
use crate::domain::{Limits, Resolution};
use crate::redis::connection::Connection;
use crate::sources::http::Ingest;
use crate::sources::mqtt::MqttHealth;
use crate::sources::pubsub::BridgeHealth;
use crate::telemetry::Metrics;
use actix_web::{HttpResponse, web};
use deadpool_postgres::Pool;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

use std::time::Duration;

/// How long a client may take to send a request's head (line and headers).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What the API needs from the configuration.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// The read API's token.
    pub token: Option<Secret>,
    /// The token of ingest and the line-protocol endpoints.
    pub ingest_token: Option<Secret>,
    /// `SENSORHUB_ADMIN_TOKEN`: dead-letter replay and purge.
    pub admin_token: Option<Secret>,
    /// Longest a client may take to send a request body.
    pub body_timeout: Duration,
    pub active_within: Duration,
    pub resolutions: Vec<Resolution>,
    /// The stream (the dead-letter routes' `<stream>:dead`).
    pub stream: String,
    /// Where ingest appends: the stream, or the shard of the body's first sensor.
    pub streams: crate::stream::shards::Streams,
    pub limits: Limits,
}

/// The servers sensorhub talks to, as `/readyz` names them (passwords masked).
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub redis: String,
    pub postgres: String,
    pub postgres_read: String,
}

/// What the handlers need.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    /// Where the read API reads: `SENSORHUB_DATABASE_READ_URL` (a replica) when set, else `pool`.
    pub read_pool: Pool,
    /// Whether `read_pool` is a server of its own, checked by `/readyz` as `postgres_read`.
    pub separate_reads: bool,
    pub redis: Connection,
    /// True while the pipeline's reader runs.
    pub pipeline_running: crate::health::ReadersRunning,
    /// Whether the Pub/Sub bridge can append, when a channel is bridged.
    pub bridge: Option<Arc<BridgeHealth>>,
    /// Whether the MQTT source consumes, when MQTT is configured.
    pub mqtt: Option<Arc<MqttHealth>>,
    /// Whether batches commit: PostgreSQL may answer `SELECT 1` and still take no batch (a
    /// full disk, a read-only server).
    pub writes: Arc<crate::health::WriteHealth>,
    /// The Redis and PostgreSQL URLs, passwords masked: a failing check names its server.
    pub targets: Targets,
    /// The counters' recent snapshots, for the status page's rates.
    pub snapshots: Arc<status::Snapshots>,
    pub api: Arc<ApiSettings>,
}

impl HttpState {
    /// What the ingest handlers append with.
    pub(crate) fn ingest(&self) -> Ingest<'_> {
        Ingest {
            conn: &self.redis,
            streams: &self.api.streams,
            limits: &self.api.limits,
            metrics: &self.metrics,
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(api::routes)
        .configure(windows::routes)
        .configure(export::routes)
        .configure(ingest::routes)
        .configure(dead_letters::routes)
        .configure(delete::routes)
        .service(web::resource("/api/v1/pipeline").route(web::get().to(status::pipeline)))
        .configure(line_protocol::routes)
        .configure(openapi::routes)
        .service(web::resource("/").route(web::get().to(status_page)))
        .service(web::resource("/healthz").route(web::get().to(healthz)))
        .service(web::resource("/readyz").route(web::get().to(readyz)))
        .service(web::resource("/healthcheck").route(web::get().to(readyz)))
        .service(web::resource("/metrics").route(web::get().to(metrics)));
}

#[derive(Serialize)]
pub(crate) struct Health {
    status: &'static str,
    pub checks: BTreeMap<&'static str, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<&'static str>,
}

/// The status page: plain HTML and JavaScript on top of the read API, no build step.
async fn status_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("status.html"))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "alive" }))
}

async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    let health = health_checks(&state).await;
    if health.failing.is_empty() {
        HttpResponse::Ok().json(health)
    } else {
        HttpResponse::ServiceUnavailable().json(health)
    }
}

/// The readiness checks: Redis and PostgreSQL answer, the pipeline runs, the bridge can append.
pub(crate) async fn health_checks(state: &HttpState) -> Health {
    let mut redis = state.redis.clone();
    let redis_check = checked(&state.targets.redis, async move {
        redis.ping().await.map_err(|e| e.to_string())
    });
    let postgres_check = checked(&state.targets.postgres, answers(state.pool.clone()));
    let read_check = async {
        if state.separate_reads {
            let check = answers(state.read_pool.clone());
            Some(checked(&state.targets.postgres_read, check).await)
        } else {
            None
        }
    };
    // A Redis set to evict since the start (checked on one server: see `app`).
    let memory_check = async {
        let crate::redis::connection::Connection::Single(single) = &state.redis else {
            return None;
        };
        let mut single = single.clone();
        let read = crate::redis::memory::memory(&mut single);
        match tokio::time::timeout(CHECK_TIMEOUT, read).await {
            Ok(Ok(memory)) => Some(match memory.eviction_risk() {
                Some(risk) => Err(format!("error: {risk}")),
                None => Ok(()),
            }),
            // Not answering is the redis check's to report.
            _ => None,
        }
    };
    let (redis_result, postgres_result, read_result, memory_result) =
        tokio::join!(redis_check, postgres_check, read_check, memory_check);
    let pipeline_result = if state.pipeline_running.all() {
        Ok(())
    } else {
        Err("error: pipeline is not running".to_owned())
    };
    let mut health = Health {
        status: "ready",
        checks: BTreeMap::new(),
        failing: Vec::new(),
    };
    let mut checks = vec![
        ("redis", redis_result),
        ("postgres", postgres_result),
        ("pipeline", pipeline_result),
        (
            "writes",
            state.writes.check().map_err(|e| format!("error: {e}")),
        ),
    ];
    if let Some(result) = read_result {
        checks.push(("postgres_read", result));
    }
    if let Some(result) = memory_result {
        checks.push(("redis_memory_policy", result));
    }
    if let Some(bridge) = &state.bridge {
        checks.push(("bridge", bridge.check().map_err(|e| format!("error: {e}"))));
    }
    if let Some(mqtt) = &state.mqtt {
        checks.push(("mqtt", mqtt.check().map_err(|e| format!("error: {e}"))));
    }
    for (name, result) in checks {
        match result {
            Ok(()) => {
                health.checks.insert(name, "ok".to_owned());
            }
            Err(error) => {
                health.checks.insert(name, error);
                health.failing.push(name);
            }
        }
    }
    if !health.failing.is_empty() {
        health.status = "unavailable";
    }
    health
}

/// The outcome of one readiness check, within [`CHECK_TIMEOUT`]; a failure names the server
/// by its URL (password masked).
async fn checked(
    target: &str,
    check: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(format!("error: {error} ({target})")),
        Err(_) => Err(format!("error: no answer within 1s ({target})")),
    }
}

/// Whether a connection of `pool` answers a query.
async fn answers(pool: Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn metrics(state: web::Data<HttpState>) -> HttpResponse {
    // How full Redis is, read now (one server: a cluster's nodes answer each for itself).
    if let crate::redis::connection::Connection::Single(single) = &state.redis {
        let mut single = single.clone();
        let read = crate::redis::memory::memory(&mut single);
        if let Ok(Ok(memory)) = tokio::time::timeout(CHECK_TIMEOUT, read).await {
            state
                .metrics
                .redis_memory_used_ratio
                .set(memory.used_ratio());
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
