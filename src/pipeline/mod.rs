//! The actors, one file per stage, in flow order:
//!
//! ```text
//!  read ──RawBatch──► validate ──Readings──► window ──WriteBatch──► write ──Committed──► ack
//!   ▲  XREADGROUP NOACK  │ rejects             fold into               one transaction      ledger, XTRIM
//!   │  XRANGE (re-read)  ▼                     partial aggregates      per shard
//!   │              <stream>:dead
//!   └──────────── Ticket returned (permit back) when the batch is acknowledged ◄──────────────┘
//! ```
//!
//! - [`read`]: `XREADGROUP ... NOACK` batches, and re-reads of what the ledger does not show
//!   committed. Sends [`RawBatch`](messages::RawBatch).
//! - [`validate`]: entries into readings; rejections to the dead-letter stream. Sends
//!   [`Readings`](messages::Readings).
//! - [`aggregate`]: drops repeats within the batch, folds partial aggregates, shards by sensor
//!   ([`lanes`]). Sends [`WriteBatch`](messages::WriteBatch).
//! - [`write`]: one lane per write connection, one transaction per shard. Sends
//!   [`Committed`](messages::Committed).
//! - [`ack`]: the committed ranges into the ledger; the trim.
//!
//! How the stages hold together:
//! - Stages know only the message type of the next one (`Recipient<…>`, wired in
//!   [`assemble`]), never the stage itself. Every hop is bounded: each stage's mailbox
//!   holds one message and upstream waits with `send().await`; the reader admits at most
//!   `max_in_flight` batches ([`flow`]), so a slow database leaves the backlog in Redis.
//! - Every batch carries a [`Ticket`](flow::Ticket); a batch that is lost is re-read, and the
//!   store skips what was already stored, so nothing is stored twice.
//! - The pure, CPU-heavy parts of a batch run off the actor thread, and every stage runs its work
//!   guarded against panics, which become a counted restart ([`crate::actor`]).
//! - [`faults`] makes stages panic on purpose, in the tests of supervision only.

pub mod ack;
pub mod aggregate;
pub mod assemble;
pub mod faults;
pub mod flow;
pub mod lanes;
pub mod messages;
pub mod read;
pub mod validate;
pub mod write;
