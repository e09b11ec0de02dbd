//! The Redis client: connections to one server or a Redis Cluster, and reading replies. What the
//! stream means (entries, the group, the ledger, leases, shards, dead letters) is in
//! [`crate::stream`], which speaks to Redis through this module.
//!
//! - [`connection`]: the pooled connection, to one server or a Redis Cluster.
//! - [`entry`]: stream entries as Redis holds them: ids and fields.
//! - [`target`]: the Redis a URL names, TLS included, for the pooled connections and the reader.
//! - [`reader`]: the reader's own connection for `XREADGROUP`, whose reply [`wire`] parses from
//!   the bytes as they arrive; every other reply is read from the `redis` crate's decoded values
//!   by [`values`].
//! - [`channel`]: Pub/Sub subscribe and publish.
//! - [`memory`]: Redis's memory limit and eviction policy, as sensorhub needs them.
//!
//! Inside this module `redis::` names the `redis` crate; elsewhere `crate::redis` names this one.

pub mod channel;
pub mod connection;
pub mod entry;
pub mod memory;
pub mod reader;
pub mod target;
pub mod values;
pub mod wire;
