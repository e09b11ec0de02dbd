//! The test harness, by job: every test boots the real application against the real Redis and
//! PostgreSQL on 127.0.0.1, on its own database and stream key.
//!
//! - [`app`]: a test's own resources and the running application.
//! - [`stream`]: Redis connections and the group's state as a test inspects them.
//! - [`db`]: the aggregates checked against the raw rows; counts awaited.
//! - [`http`]: a minimal HTTP client.
//! - [`data`]: reproducible random data and readings as JSON.
//! - [`servers`]: private PostgreSQL, Redis and Mosquitto servers a test may stop, restart or
//!   place behind a network it silences.
//! - [`certs`]: certificates made for a test.
//! - [`hub`]: sensorhub as a child process, to kill, restart and read.
//! - [`netns`]: a network namespace whose link a test can silence, slow or make lossy.
//! - [`cluster`]: a private Redis Cluster.

mod app;
mod certs;
pub mod cluster;
mod data;
mod db;
mod http;
mod hub;
pub mod netns;
pub use netns::Netns;
mod servers;
mod stream;

pub use app::*;
pub use certs::*;
pub use data::*;
pub use db::*;
pub use http::*;
pub use hub::*;
pub use servers::*;
pub use stream::*;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The Python of the test tools (InfluxDB's client library, schemathesis), which
/// `scripts/services.sh --tools` installs into the checkout's `.tools/python`;
/// `SENSORHUB_TEST_PYTHON` names another.
pub fn tools_python() -> std::path::PathBuf {
    match std::env::var_os("SENSORHUB_TEST_PYTHON") {
        Some(path) => path.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/python/bin/python"),
    }
}
