//! Everything that speaks to Redis, by what it does for the pipeline:
//!
//! - [`entry`]: stream entry ids and fields, and appending payloads to the stream (the one way a
//!   payload enters it: the bridges, HTTP ingest and `sensorhub simulate`).
//! - [`reader`]: the reader's own connection for `XREADGROUP`, whose reply [`resp`] parses as it
//!   arrives; every other reply is parsed from the `redis` crate's values by [`reply`].
//! - [`group`]: the consumer group, its state, and trimming the stream behind it.
//! - [`ledger`]: which delivered entries are committed (reads are `NOACK`), and re-reading those
//!   that are not.
//! - [`dead_letter`]: the dead-letter stream of rejected messages and readings.
//! - [`lease`]: the lease that lets one instance of several do a job (bridging a channel), one
//!   beside each shard of a sharded stream.
//! - [`mqtt_session`]: what the MQTT source records of its broker session (its
//!   subscriptions, the retained messages appended).
//! - [`memory`]: Redis's memory limit and eviction policy, as sensorhub needs them.
//! - [`channel`]: Pub/Sub subscribe and publish.
//! - [`target`]: the Redis a URL names, TLS included, for the pooled connections and the reader.
//! - [`rename`]: a stream renamed with every key beside it (to give it a hash tag).
//! - [`shards`]: sharded streams and the rule producers pick a shard by.
//! - [`connection`]: the pooled connection, to one server or a Redis Cluster.
//!
//! Inside this module `redis::` names the `redis` crate; elsewhere `crate::redis` names this one.

pub mod channel;
pub mod connection;
pub mod dead_letter;
pub mod entry;
pub mod group;
pub mod lease;
pub mod ledger;
pub mod memory;
pub mod mqtt_session;
pub mod reader;
pub mod rename;
pub mod reply;
pub mod resp;
pub mod shards;
pub mod target;
