//! The application under test: its own database and stream key, removed when the test ends (also
//! when it fails: `Drop`), and the running application with what a test does to it.

use crate::helpers::{assert_aggregates_exact, http_get, redis_conn, wait_drained};
use redis::aio::MultiplexedConnection;
use sensorhub::pipeline::faults::Faults;
use sensorhub::telemetry::Metrics;
use sensorhub::{Application, Config};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

use crate::helpers::{PG_ADMIN_URL, REDIS_URL};

/// A unique, SQL- and Redis-safe name for this test's database and stream.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The configuration a test starts from: defaults, a free HTTP port, its own database and stream.
pub fn test_config(name: &str) -> Config {
    let mut config = Config::from_lookup(|_| None).expect("defaults are valid");
    config.database_url =
        sensorhub::config::Secret::new(format!("postgres://postgres@127.0.0.1:5432/{name}"));
    config.redis_url = sensorhub::config::Secret::new(REDIS_URL);
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.stream = format!("test:{name}");
    config.channel = Some(format!("test:{name}"));
    config.consumer = "test-consumer".into();
    config.batch_size = 500;
    config.shutdown_timeout = Duration::from_secs(20);
    config
}

/// A test's own database and stream keys, removed on drop (also when the test fails).
pub struct Resources {
    pub name: String,
    pub database_url: String,
    pub stream: String,
}

impl Resources {
    pub fn new() -> Self {
        let name = unique_name("sh_test");
        Self {
            database_url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            stream: format!("test:{name}"),
            name,
        }
    }
}

impl Resources {
    /// The environment of a sensorhub process on these resources: the shared Redis, this test's
    /// database and stream, no Pub/Sub channel.
    pub fn hub_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SENSORHUB_REDIS_URL", REDIS_URL.to_owned()),
            ("SENSORHUB_DATABASE_URL", self.database_url.clone()),
            ("SENSORHUB_STREAM", self.stream.clone()),
            ("SENSORHUB_CHANNEL", String::new()),
        ]
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        let name = self.name.clone();
        let keys = vec![
            self.stream.clone(),
            format!("{}:dead", self.stream),
            format!("{}:bridge-lease", self.stream),
            format!("{}:mqtt-lease", self.stream),
            sensorhub::stream::ledger::in_flight_key(&self.stream, "sensorhub"),
            sensorhub::stream::ledger::ranges_key(&self.stream, "sensorhub"),
            sensorhub::stream::ledger::through_key(&self.stream, "sensorhub"),
        ];
        // Every application on these resources has stopped by now (`TestApp` stops its own, and
        // a stopped or dropped application has joined its stages' threads; processes are killed
        // and waited for), so nothing writes to them any more: one pass removes them.
        if let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
            // The shards `{<stream>:i}` and the keys beside them (braces are literal in a match),
            // and the keys beside the stream (the MQTT session's, idempotency keys).
            for pattern in [format!("{{{}:*", self.stream), format!("{}:*", self.stream)] {
                let beside: Vec<String> = redis::cmd("KEYS")
                    .arg(pattern)
                    .query(&mut conn)
                    .unwrap_or_default();
                if !beside.is_empty() {
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&beside).query(&mut conn);
                }
            }
        }
        drop_database(&name);
    }
}

/// Drops a test's database, from a thread of its own: callable from `Drop`, inside or outside
/// a runtime, also when the test failed.
pub fn drop_database(name: &str) {
    let name = name.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            if let Ok((client, connection)) = tokio_postgres::connect(PG_ADMIN_URL, NoTls).await {
                tokio::spawn(connection);
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            }
        });
    })
    .join()
    .ok();
}

pub struct TestApp {
    pub app: Option<Application>,
    pub config: Config,
    pub redis: MultiplexedConnection,
    pub pg: tokio_postgres::Client,
    /// Declared last: dropped after the application has stopped.
    _resources: Resources,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}, Arc::new(Faults::default())).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config), faults: Arc<Faults>) -> TestApp {
    spawn_app_on(Resources::new(), tweak, faults).await
}

/// Starts the application on resources the test has prepared.
pub async fn spawn_app_on(
    resources: Resources,
    tweak: impl FnOnce(&mut Config),
    faults: Arc<Faults>,
) -> TestApp {
    let mut config = test_config(&resources.name);
    tweak(&mut config);
    let app = Application::build_with_faults(config.clone(), faults)
        .await
        .expect("application starts");
    let redis = redis_conn(REDIS_URL).await;
    let (pg, connection) = tokio_postgres::connect(config.database_url.expose(), NoTls)
        .await
        .expect("postgres connection");
    tokio::spawn(connection);
    TestApp {
        app: Some(app),
        config,
        redis,
        pg,
        _resources: resources,
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl TestApp {
    pub fn app(&self) -> &Application {
        self.app.as_ref().expect("application is running")
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.app().metrics()
    }

    pub fn stream(&self) -> &str {
        &self.config.stream
    }

    pub fn dead_stream(&self) -> String {
        self.config.dead_letter_stream()
    }

    /// `XADD <stream> * data <payload>`; returns the entry id.
    pub async fn xadd_data(&mut self, payload: &[u8]) -> String {
        redis::cmd("XADD")
            .arg(&self.config.stream)
            .arg("*")
            .arg("data")
            .arg(payload)
            .query_async(&mut self.redis)
            .await
            .expect("XADD")
    }

    /// `XADD <stream> * <field> <value> ...`; returns the entry id.
    pub async fn xadd_fields(&mut self, fields: &[(&str, &[u8])]) -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.config.stream).arg("*");
        for (name, value) in fields {
            cmd.arg(*name).arg(*value);
        }
        cmd.query_async(&mut self.redis).await.expect("XADD")
    }

    /// The id of the stream's oldest entry.
    pub async fn first_entry(&mut self) -> String {
        self.end_entry("XRANGE", "-", "+").await
    }

    /// The id of the stream's newest entry.
    pub async fn last_entry(&mut self) -> String {
        self.end_entry("XREVRANGE", "+", "-").await
    }

    /// The first entry `command` reads from `start` to `end`.
    async fn end_entry(&mut self, command: &str, start: &str, end: &str) -> String {
        let reply: redis::streams::StreamRangeReply = redis::cmd(command)
            .arg(&self.config.stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.redis)
            .await
            .expect(command);
        reply.ids.first().expect("an entry").id.clone()
    }

    /// Appends many payloads in one pipeline; returns the last entry id.
    pub async fn xadd_many(&mut self, payloads: &[Vec<u8>]) -> String {
        let mut pipe = redis::pipe();
        for payload in payloads {
            pipe.cmd("XADD")
                .arg(&self.config.stream)
                .arg("*")
                .arg("data")
                .arg(payload.as_slice());
        }
        let ids: Vec<String> = pipe.query_async(&mut self.redis).await.expect("XADD");
        ids.last().cloned().unwrap_or_default()
    }

    /// `PUBLISH <channel> <payload>`; returns the number of subscribers that got it.
    pub async fn publish(&mut self, payload: &[u8]) -> i64 {
        let channel = self.config.channel.clone().expect("bridge is on");
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async(&mut self.redis)
            .await
            .expect("PUBLISH")
    }

    /// Waits until this instance bridges the channel.
    pub async fn wait_for_bridge(&self) {
        let metrics = self.metrics();
        wait_for("the pub/sub bridge", Duration::from_secs(10), || {
            let leader = metrics.bridge_leader.get();
            async move { (leader == 1).then_some(()) }
        })
        .await;
    }

    /// Waits until every entry up to `last_id` is delivered and acknowledged.
    pub async fn wait_drained(&self, last_id: &str) {
        wait_drained(
            &self.redis,
            &self.config.stream,
            &self.config.group,
            last_id,
        )
        .await;
    }

    /// Every entry of the dead-letter stream.
    pub async fn dead_letters(&mut self) -> redis::streams::StreamRangeReply {
        redis::cmd("XRANGE")
            .arg(self.dead_stream())
            .arg("-")
            .arg("+")
            .query_async(&mut self.redis)
            .await
            .unwrap()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.pg.query_one(sql, &[]).await.expect(sql).get(0)
    }

    pub async fn readings(&self) -> i64 {
        self.count("SELECT count(*) FROM readings").await
    }

    /// Asserts that every aggregate row equals the `GROUP BY` recomputation over `readings`.
    pub async fn assert_aggregates_exact(&self) {
        assert_aggregates_exact(&self.pg, &self.config.resolutions).await;
    }

    /// `GET path` against the running application: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.app().port(), path).await
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    /// Starts the application again on the same database and stream.
    pub async fn restart(&mut self, faults: Arc<Faults>) {
        self.stop().await;
        let app = Application::build_with_faults(self.config.clone(), faults)
            .await
            .expect("application restarts");
        self.app = Some(app);
    }
}

impl Drop for TestApp {
    /// Stops the application before its resources go.
    fn drop(&mut self) {
        drop(self.app.take());
    }
}
