//! sensorhub: sensor readings from Redis into PostgreSQL, validated, aggregated in time windows and
//! stored exactly once.
//!
//! ```text
//!  XADD sensor_stream * data '{...}' ─┐
//!                                     ├─► read ──RawBatch──► validate ──Readings──► window ──WriteBatch──► write ──► PostgreSQL
//!  PUBLISH sensor_stream '{...}' ─────┘   (XREADGROUP)          │ rejects           (partial               (one transaction
//!    (bridge: XADD at once)                 ▲                   ▼                    aggregates)             per shard)
//!                                           │          sensor_stream:dead                                        │
//!                                           └─── ack: ranges into the ledger, XTRIM ◄──────────── Committed ─────┘
//! ```
//!
//! Modules, in the order data meets them:
//! - [`config`]: typed settings from `SENSORHUB_*` variables, validated at start.
//! - [`app`]: `Application::build(config)`, used by `main` and the tests alike.
//! - [`domain`]: pure parsing and validation of readings, the entry's field names, the shard rule,
//!   and window arithmetic.
//! - [`sources`]: every way into the stream besides producers' own `XADD`: the Pub/Sub bridge, the
//!   MQTT source, HTTP JSON and line protocol (their handlers are in [`http`]); each message to
//!   its sensor's shard through one append.
//! - [`stream`]: what the stream means, kept in Redis beside it: entries, how they are parsed into
//!   readings, the consumer group and trim, the ledger of committed entries, dead letters and
//!   their operations (list, count, replay, purge, for the API and the command line), leases,
//!   sharded streams.
//! - [`redis`]: the Redis client (one server or a Redis Cluster): connections, targets, the
//!   reader's own socket and its reply parser, Pub/Sub, memory.
//! - [`pipeline`]: the actors, one file per stage, the in-flight tickets that bound them, and
//!   [`pipeline::assemble`], which starts the stages sink-first under supervision and stops them
//!   in flow order.
//! - [`store`]: the PostgreSQL pool, migrations, the batch transaction, the deployment's agreed
//!   facts (MQTT client id, resolutions), the backfill of an added resolution, and the database's
//!   history (a failover).
//! - [`http`]: health, readiness, metrics, the read API, HTTP ingest (JSON and InfluxDB line
//!   protocol) and the status page.
//! - [`cli`]: the subcommands besides `serve`: demo sensors (`sensorhub simulate`), dead-letter
//!   operations, the healthcheck and renaming the stream.
//! - [`actor`]: what every actor shares: panics turned into counted restarts, work off the actor
//!   thread, stop requests.
//! - [`health`]: the readiness signals `/readyz` reads (readers running, batches committing,
//!   sources consuming).
//! - [`telemetry`]: logging setup and every metric, declared once.
//! - [`retry`]: the backoff every retry loop shares.
//! - [`tls`]: the TLS client configurations of the Redis, PostgreSQL and MQTT connections.
//! - [`liveness`]: how every connection notices a peer gone silent (keepalive, user timeout).

pub mod actor;
pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod health;
pub mod http;
pub mod liveness;
pub mod pipeline;
pub mod redis;
pub mod retry;
pub mod sources;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;

pub use app::Application;
pub use config::Config;
