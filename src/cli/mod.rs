//! The `sensorhub` subcommands besides `serve`: demo sensors ([`simulate`]), dead-letter operations
//! ([`dead_letters`]), deletions ([`delete`]), exports ([`export`]), the container healthcheck and renaming the stream ([`ops`]).

pub mod dead_letters;
pub mod delete;
pub mod export;
pub mod ops;
pub mod simulate;
