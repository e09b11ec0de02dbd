//! The test harness: every test boots the real application against the real Redis and PostgreSQL
//! on 127.0.0.1, on its own database and stream key, and removes both when it ends (also when it
//! fails: `Drop`).

use redis::aio::MultiplexedConnection;
use sensorhub::pipeline::faults::Faults;
use sensorhub::telemetry::Metrics;
use sensorhub::{Application, Config};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_postgres::NoTls;

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

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

impl Drop for Resources {
    fn drop(&mut self) {
        let name = self.name.clone();
        let keys = vec![
            self.stream.clone(),
            format!("{}:dead", self.stream),
            format!("{}:bridge-lease", self.stream),
            sensorhub::redis::ledger::ranges_key(&self.stream, "sensorhub"),
            sensorhub::redis::ledger::through_key(&self.stream, "sensorhub"),
        ];
        std::thread::spawn(move || {
            // A stage of a just-stopped application may still land a last command (re-creating
            // the group recreates the stream): delete, let stragglers land, delete again.
            if let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) {
                for pause in [300, 700] {
                    std::thread::sleep(Duration::from_millis(pause));
                    let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut conn);
                }
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok((client, connection)) = tokio_postgres::connect(PG_ADMIN_URL, NoTls).await
                {
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

/// Waits until every entry up to `last_id` is delivered to the group and its commit recorded.
pub async fn wait_drained(redis: &MultiplexedConnection, stream: &str, group: &str, last_id: &str) {
    let last: sensorhub::redis::entry::EntryId = last_id.parse().unwrap();
    wait_for(
        "the stream to be processed",
        Duration::from_secs(90),
        || {
            let mut redis = redis.clone();
            async move {
                let (pending, delivered) = group_state(&mut redis, stream, group).await;
                (pending == 0 && delivered >= last).then_some(())
            }
        },
    )
    .await;
}

/// Asserts that every aggregate row equals the `GROUP BY` recomputation over `readings`,
/// and that no window is missing or extra.
pub async fn assert_aggregates_exact(
    pg: &tokio_postgres::Client,
    resolutions: &[sensorhub::domain::Resolution],
) {
    let resolutions: Vec<(String, i64)> = resolutions
        .iter()
        .map(|r| (r.to_string(), i64::from(r.seconds())))
        .collect();
    let values: Vec<String> = resolutions
        .iter()
        .map(|(label, secs)| format!("('{label}', {secs})"))
        .collect();
    let sql = format!(
        "WITH expected AS (
           SELECT sensor_id, r.label AS resolution,
                  to_timestamp(floor(extract(epoch FROM ts) / r.secs) * r.secs) AS bucket,
                  count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
                  (array_agg(ts ORDER BY ts))[1] AS first_ts,
                  (array_agg(value ORDER BY ts))[1] AS first_value,
                  (array_agg(ts ORDER BY ts DESC))[1] AS last_ts,
                  (array_agg(value ORDER BY ts DESC))[1] AS last_value
           FROM readings CROSS JOIN (VALUES {}) AS r(label, secs)
           GROUP BY 1, 2, 3)
         SELECT coalesce(e.sensor_id, a.sensor_id) || ' ' || coalesce(e.resolution, a.resolution)
                || ' ' || coalesce(e.bucket, a.bucket)::text
                || ' expected ' || coalesce(e.count::text, 'none') || '/' || coalesce(e.sum::text, '-')
                || ' got ' || coalesce(a.count::text, 'none') || '/' || coalesce(a.sum::text, '-')
         FROM expected e FULL OUTER JOIN aggregate_windows a USING (sensor_id, resolution, bucket)
         WHERE a.count IS DISTINCT FROM e.count
            OR abs(a.sum - e.sum) > 1e-9 * greatest(1, abs(e.sum))
            OR a.min IS DISTINCT FROM e.min OR a.max IS DISTINCT FROM e.max
            OR a.first_ts IS DISTINCT FROM e.first_ts OR a.first_value IS DISTINCT FROM e.first_value
            OR a.last_ts IS DISTINCT FROM e.last_ts OR a.last_value IS DISTINCT FROM e.last_value
            OR a.diff IS DISTINCT FROM e.last_value - e.first_value
         LIMIT 10",
        values.join(", ")
    );
    let rows = pg.query(&sql, &[]).await.expect("aggregate check");
    let mismatches: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(
        mismatches.is_empty(),
        "aggregates differ from GROUP BY over readings:\n{}",
        mismatches.join("\n")
    );
    let windows: i64 = pg
        .query_one("SELECT count(*) FROM aggregates", &[])
        .await
        .unwrap()
        .get(0);
    assert!(windows > 0, "no aggregate rows at all");
}

/// Waits until the single-number query `sql` answers `expected`.
pub async fn wait_for_count(
    pg: &tokio_postgres::Client,
    sql: &str,
    expected: i64,
    timeout: Duration,
) {
    wait_for(&format!("{sql} = {expected}"), timeout, || async move {
        let n: i64 = pg.query_one(sql, &[]).await.unwrap().get(0);
        (n == expected).then_some(())
    })
    .await;
}

/// Most entries [`group_state`] counts.
const UNCOMMITTED_COUNTED: usize = 1000;

/// (entries delivered to the group whose commit is not recorded, up to [`UNCOMMITTED_COUNTED`];
/// last delivered id) of a consumer group. sensorhub reads with `NOACK`: this is what the
/// group's pending count was, read from sensorhub's ledger instead.
pub async fn group_state(
    redis: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> (u64, sensorhub::redis::entry::EntryId) {
    let last_delivered = last_delivered(redis, stream, group).await;
    let through = sensorhub::redis::ledger::through(redis, stream, group)
        .await
        .expect("the ledger's watermark");
    if last_delivered <= through {
        return (0, last_delivered);
    }
    let uncommitted: Vec<redis::Value> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(format!("({through}"))
        .arg(last_delivered.to_string())
        .arg("COUNT")
        .arg(UNCOMMITTED_COUNTED)
        .query_async(redis)
        .await
        .expect("XRANGE");
    (uncommitted.len() as u64, last_delivered)
}

/// The last id delivered to a consumer group.
async fn last_delivered(
    redis: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> sensorhub::redis::entry::EntryId {
    let reply: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(redis)
        .await
        .expect("XINFO GROUPS");
    let redis::Value::Array(groups) = reply else {
        panic!("unexpected XINFO reply {reply:?}")
    };
    for g in groups {
        let redis::Value::Array(flat) = g else {
            continue;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::Int(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        let map: std::collections::HashMap<String, String> = flat
            .chunks(2)
            .map(|pair| (text(&pair[0]), text(&pair[1])))
            .collect();
        if map.get("name").map(String::as_str) == Some(group) {
            return map["last-delivered-id"].parse().unwrap();
        }
    }
    panic!("group {group} not found on {stream}");
}

/// A minimal HTTP/1.0 GET, enough for health, metrics and API checks.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    http_request(port, "GET", path, &[], b"").await
}

/// A minimal HTTP/1.0 request: (status, body).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to sensorhub");
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // A server may answer (413) before reading a large body; a write error then is fine.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

impl Drop for TestApp {
    /// Stops the application before its resources go.
    fn drop(&mut self) {
        drop(self.app.take());
    }
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// A reading as JSON, with an RFC 3339 timestamp.
/// A Redis connection for a test's own commands (producing, inspecting).
pub async fn redis_conn(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis answers (scripts/services.sh)")
}

/// A connection manager to the shared Redis, as the application's own Redis code takes.
pub async fn redis_manager() -> redis::aio::ConnectionManager {
    redis::Client::open(REDIS_URL)
        .unwrap()
        .get_connection_manager()
        .await
        .expect("Redis answers (scripts/services.sh)")
}

/// `XREADGROUP GROUP <group> <consumer> COUNT <count> [NOACK] STREAMS <stream> >`: a read by a
/// consumer other than the application under test (or by its previous life).
pub async fn read_as(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    (group, consumer): (&str, &str),
    count: usize,
    noack: bool,
) -> redis::Value {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if noack {
        cmd.arg("NOACK");
    }
    cmd.arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap()
}

/// Appends `n` entries (`data` = 0, 1, ...) to `stream` and returns their ids.
pub async fn xadd_numbered(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    n: usize,
) -> Vec<sensorhub::redis::entry::EntryId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("data")
            .arg(i)
            .query_async(conn)
            .await
            .unwrap();
        ids.push(id.parse().unwrap());
    }
    ids
}

pub fn reading_json(sensor: &str, value: f64, ts: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        r#"{{"sensor":"{sensor}","value":{value},"timestamp":"{}"}}"#,
        ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}
