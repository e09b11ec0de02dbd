//! PostgreSQL: the pool, the migrations, errors by whether a retry helps, the batch transaction
//! ([`batch`], with the `increase` steps it works out in `increase`), the deployment's shared facts ([`deployment`]: the MQTT client id) and the
//! resolution set with the backfill of an added resolution ([`backfill`]).

pub mod backfill;
pub mod batch;
pub mod compaction;
pub mod deletion;
pub mod deployment;
mod encode;
pub mod export;
pub mod history;
mod increase;
pub mod partition;
mod replace;
pub mod retention;
pub mod sql;
pub mod target;

pub use batch::{Batch, BatchOutcome, Conflict, write_batch};

use crate::liveness::Liveness;
use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::time::Duration;
use target::Target;
use tokio_postgres::error::SqlState;

mod embedded {
    refinery::embed_migrations!("sql");
}

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pooled connection.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the store, split by whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{}", describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A reading is older than the retention horizon: its partition was dropped, and a repeat
    /// of a reading stored there could no longer be recognised.
    #[error("a reading is older than the retention horizon")]
    BeyondHorizon,
    /// A sensor of the batch was created by another transaction after this one took its locks.
    #[error("a sensor of the batch was created by another writer meanwhile")]
    Contended,
}

/// The server's own message and SQLSTATE when there is one (`Display` of the driver's error
/// says only "db error").
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!(
                "PostgreSQL {} {}: {}",
                db.severity(),
                db.code().code(),
                db.message()
            );
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            text
        }
        None => format!("database error: {error}"),
    }
}

impl StoreError {
    /// Connection loss, shutdown, overload, deadlock or serialization failure: retrying the whole
    /// transaction is right. Anything else is a refusal of the data or a bug.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::Contended => true,
            StoreError::BeyondHorizon => false,
            StoreError::Db(error) => match error.code() {
                None => true,
                Some(code) => {
                    let class = &code.code()[..2];
                    matches!(class, "08" | "53" | "57" | "58" | "40")
                        || *code == SqlState::LOCK_NOT_AVAILABLE
                        || *code == SqlState::QUERY_CANCELED
                }
            },
        }
    }
}

impl StoreError {
    /// The SQLSTATE of a server error (`53100` for a full disk, say), or what failed instead:
    /// `connection`, `horizon`.
    pub fn sqlstate(&self) -> &str {
        match self {
            StoreError::Db(error) => error.code().map_or("connection", |code| code.code()),
            StoreError::Pool(_) => "connection",
            StoreError::BeyondHorizon => "horizon",
            StoreError::Contended => "40001",
        }
    }

    /// Whether a reading found no partition of `readings` (one another instance dropped, or
    /// this one does not know of): the partitions are read again before the next attempt.
    pub fn is_missing_partition(&self) -> bool {
        matches!(self, StoreError::Db(error)
            if error.code() == Some(&SqlState::CHECK_VIOLATION)
                && error.as_db_error().is_some_and(|db| db.message().starts_with("no partition")))
    }
}

/// Parses the URL, creates the database if it is missing, and builds the pool.
pub async fn connect(url: &str, pool_size: usize) -> anyhow::Result<Pool> {
    connect_to(
        &connection_target(url, "SENSORHUB_DATABASE_URL", Liveness::default())?,
        pool_size,
    )
    .await
}

/// Creates the database of `target` if it is missing, and builds the pool.
pub async fn connect_to(target: &Target, pool_size: usize) -> anyhow::Result<Pool> {
    ensure_database(target).await?;
    build_pool(target.clone(), pool_size)
}

/// Builds a pool for a database [`connect`] has already checked, without connecting: each
/// connection is opened by the first `get` that needs it, and its I/O task runs on that caller's
/// thread. The writer builds its own this way, so that its connections' socket reads and writes
/// run on the writer's thread rather than hopping to another thread and back for every message.
pub fn lazy_pool(target: &Target, pool_size: usize) -> anyhow::Result<Pool> {
    build_pool(target.clone(), pool_size)
}

/// The URL read as libpq reads it (TLS included), its connections giving up a silent server as
/// `liveness` says; an error names the variable `var` and the problem.
pub fn connection_target(url: &str, var: &str, liveness: Liveness) -> anyhow::Result<Target> {
    let mut target = target::parse(url).map_err(|why| anyhow::anyhow!("{var}: {why}"))?;
    liveness.postgres(&mut target.config);
    target
        .config
        .connect_timeout(CONNECT_TIMEOUT)
        .application_name("sensorhub")
        // The guarantee needs every acknowledged batch durable: never inherit an `off`.
        .options(format!(
            "-c synchronous_commit=on {}",
            liveness.postgres_server_options()
        ));
    Ok(target)
}

fn build_pool(target: Target, pool_size: usize) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(
        target.config,
        target.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size)
        .wait_timeout(Some(POOL_WAIT_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .context("building the PostgreSQL pool")
}

/// `host:port` of the first host a configuration names, for messages.
pub fn describe_host(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Creates the configured database when the server says it does not exist.
async fn ensure_database(target: &Target) -> anyhow::Result<()> {
    let config = &target.config;
    let error = match config.connect(target.tls.clone()).await {
        Ok((_client, connection)) => {
            drop(connection);
            return Ok(());
        }
        Err(error) => error,
    };
    if error.code() != Some(&SqlState::INVALID_CATALOG_NAME) {
        return Err(error)
            .with_context(|| format!("connecting to PostgreSQL at {}", describe_host(config)));
    }
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(target.tls.clone())
        .await
        .context("connecting to the 'postgres' database to create the configured one")?;
    let driver = tokio::spawn(connection);
    let created = client
        .batch_execute(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))
        .await;
    drop(client);
    let _ = driver.await;
    match created {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(())
        }
        Err(error) if error.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(error) => Err(error).with_context(|| format!("creating database {name:?}")),
    }
}

/// Applies the migrations under `sql/`, one instance at a time.
pub async fn migrate(pool: &Pool) -> anyhow::Result<()> {
    migrate_to(pool, None).await
}

/// Applies the migrations up to `version` (all with `None`): the upgrade tests start from the
/// schema an older release left.
pub async fn migrate_to(pool: &Pool, version: Option<i32>) -> anyhow::Result<()> {
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    client.simple_query(sql::MIGRATION_LOCK).await?;
    let mut runner = embedded::migrations::runner();
    if let Some(version) = version {
        runner = runner.set_target(refinery::Target::Version(version));
    }
    let report = runner
        .run_async(&mut **client)
        .await
        .context("applying migrations");
    client.simple_query(sql::MIGRATION_UNLOCK).await?;
    for migration in report?.applied_migrations() {
        tracing::info!(migration = %migration, "applied migration");
    }
    Ok(())
}
