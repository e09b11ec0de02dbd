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
//! - [`domain`]: pure parsing/validation of readings and window arithmetic.
//! - [`streams`]: the Redis stream commands and reply parsing.
//! - [`stream_reader`]: the reader's own `XREADGROUP` connection, with a parser for that reply.
//! - [`ledger`]: which delivered entries are committed, kept in Redis per read range (reads are
//!   `NOACK`), and the re-reads of those that are not.
//! - [`pipeline`]: the actors, one file per stage, and the in-flight tickets that bound them.
//! - [`supervisor`]: starts the stages sink-first under supervision, stops them in flow order.
//! - [`store`]: the PostgreSQL pool, migrations and the batch transaction.
//! - [`http`]: health, readiness and metrics endpoints.
//! - [`telemetry`]: logging setup and every metric, declared once.
//! - [`simulate`]: demo sensors for first runs and load tests (`sensorhub simulate`).

pub mod app;
pub mod config;
pub mod domain;
pub mod http;
pub mod ledger;
pub mod pipeline;
pub mod simulate;
pub mod store;
pub mod stream_reader;
pub mod streams;
pub mod supervisor;
pub mod telemetry;

pub use app::Application;
pub use config::Config;
