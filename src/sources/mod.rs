//! Sources that bring readings into the stream from elsewhere. Each only appends to the stream, or
//! to its sensor's shard ([`append`]); from there every reading takes the same path
//! through the pipeline, with the same guarantee.
//!
//! - [`pubsub`]: the Pub/Sub bridge, `PUBLISH sensor_stream '{...}'` appended at once.
//! - [`mqtt`]: MQTT subscriptions, each message appended with its topic and payload form, and
//!   acknowledged to the broker once appended.
//! - [`health`]: whether a source consumes, for `/readyz`.
//!
//! HTTP ingest (`POST /api/v1/readings`) appends the same way, from [`crate::http::ingest`].

pub mod append;
pub mod health;
pub mod mqtt;
pub mod pubsub;
