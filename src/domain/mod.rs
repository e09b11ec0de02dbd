//! Pure types and logic: no actix, no I/O.
//!
//! - [`conflict`]: which value of a `(sensor_id, ts)` stays, and the stream positions that order
//!   them.
//! - [`fields`]: the names of a stream entry's fields.
//! - [`increase`]: the steps of a counter, and what a batch changes of them.
//! - [`reading`]: turning the bytes of a stream entry into [`Reading`]s, or a [`Rejection`] with a
//!   bounded reason code.
//! - [`shard`]: the shard a sensor's readings belong to, and messages split over shards.
//! - [`window`]: epoch-aligned tumbling windows and the mergeable partial [`Aggregate`].

pub mod conflict;
pub mod fields;
pub mod increase;
pub mod reading;
pub mod shard;
pub mod window;

pub use conflict::{OnConflict, Origin, Policies};
pub use reading::{Limits, ParseContext, Reading, Reason, Rejection, same_id};
pub use window::{AggKey, Aggregate, Resolution, Windows};

/// A fast hasher seeded per map, for maps keyed by sensor ids: ids come from devices, so a
/// fixed-seed hash would let one flood a bucket, and SipHash costs more for nothing more here.
pub type FastState = foldhash::fast::RandomState;
