//! What the stream means, kept in Redis beside it (through [`crate::redis`]):
//!
//! - [`append`]: appending to the stream (payloads, entries under a source's lease, a message
//!   once under a request's key); the entries themselves are [`crate::redis::entry`].
//! - [`group`]: the consumer group, its state, and trimming the stream behind it.
//! - [`ledger`]: which delivered entries are committed (reads are `NOACK`), and re-reading those
//!   that are not; the database history the commits were made to.
//! - [`parse`]: how a batch of entries becomes readings and dead letters.
//! - [`deletion`]: deleting readings, recorded with the stream positions they came before.
//! - [`dead_letter`]: the dead-letter stream of rejected messages and readings, and what an
//!   operator does with it ([`dead_letter::operate`]).
//! - [`lease`]: the lease that lets one instance of several do a job (bridging a channel), one
//!   beside each shard of a sharded stream.
//! - [`mqtt_session`]: what the MQTT source records of its broker session (its subscriptions,
//!   the retained messages appended).
//! - [`shards`]: sharded streams and the rule producers pick a shard by.
//! - [`rename`]: a stream renamed with every key beside it (to give it a hash tag).

pub mod append;
pub mod dead_letter;
pub mod deletion;
pub mod group;
pub mod lease;
pub mod ledger;
pub mod mqtt_session;
pub mod parse;
pub mod rename;
pub mod shards;
