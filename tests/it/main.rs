//! Integration tests: the real application against the real Redis and PostgreSQL on 127.0.0.1
//! (`scripts/services.sh` brings them up). Each test has its own database and stream key.

mod aggregates;
mod api;
mod cluster;
mod corrections;
mod dashboard;
mod dead_letters;
mod deletions;
mod devices;
mod disk_full;
mod edges;
mod export;
mod failover;
mod helpers;
mod hostile;
mod ingest;
mod ledger;
mod line_protocol;
mod line_protocol_clients;
mod memory;
mod mqtt;
mod mqtt_session;
mod operations;
mod partitions;
mod poison;
mod rejections;
mod resilience;
mod retention;
mod retries;
mod security;
mod shards;
mod silent_network;
mod sparkplug;
mod supervision;
mod tls;
mod windows;
