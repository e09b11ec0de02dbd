//! Typed settings from the environment, validated at start.
//!
//! Every variable is declared once in [`VARIABLES`] (name, default, meaning); the parser reads its
//! defaults from there and docs/configuration.md's table is checked against it by a test, so the
//! documentation cannot drift. A bad value gives one line naming the variable, the value and what is
//! expected ([`ConfigError`]).

use crate::domain::{Limits, Resolution};
mod mqtt;

pub use mqtt::{MqttSettings, TopicRule};

use crate::liveness::Liveness;
use crate::store::retention::Retention;
use crate::tls::TlsFiles;
use chrono_tz::Tz;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::time::Duration;

/// One configuration variable, as documented in docs/configuration.md.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every variable sensorhub reads. `DATABASE_URL` and `REDIS_URL` are honoured as fallbacks of the
/// first two. The secrets ([`SECRET_VARIABLES`]) can also be read from a file named by
/// `<NAME>_FILE` (the Docker secrets convention), so they never sit in an image or a compose file.
pub const VARIABLES: &[Variable] = &[
    Variable {
        name: "SENSORHUB_REDIS_URL",
        default: "redis://127.0.0.1:6379",
        meaning: "Redis to read from (fallback: `REDIS_URL`)",
    },
    Variable {
        name: "SENSORHUB_DATABASE_URL",
        default: "postgres://postgres@127.0.0.1:5432/sensorhub",
        meaning: "PostgreSQL to write to; the database is created if missing (fallback: `DATABASE_URL`)",
    },
    Variable {
        name: "SENSORHUB_REDIS_CA_FILE",
        default: "(the system's roots)",
        meaning: "CA certificates (PEM) a `rediss://` server is verified against",
    },
    Variable {
        name: "SENSORHUB_REDIS_CERT_FILE",
        default: "(none)",
        meaning: "client certificate (PEM) for a `rediss://` server asking for one",
    },
    Variable {
        name: "SENSORHUB_REDIS_KEY_FILE",
        default: "(none)",
        meaning: "its key (PEM)",
    },
    Variable {
        name: "SENSORHUB_DATABASE_READ_URL",
        default: "(the database URL)",
        meaning: "PostgreSQL the read API reads from, e.g. a replica",
    },
    Variable {
        name: "SENSORHUB_HTTP_ADDR",
        default: "0.0.0.0:8080",
        meaning: "HTTP bind address (health, metrics, API)",
    },
    Variable {
        name: "SENSORHUB_STREAM",
        default: "sensor_stream",
        meaning: "stream key; dead letters go to `<stream>:dead`",
    },
    Variable {
        name: "SENSORHUB_STREAM_SHARDS",
        default: "1",
        meaning: "streams to spread readings over (docs/cluster.md)",
    },
    Variable {
        name: "SENSORHUB_READ_SHARDS",
        default: "(all)",
        meaning: "shards read here, e.g. `0-7`",
    },
    Variable {
        name: "SENSORHUB_CHANNEL",
        default: "sensor_stream",
        meaning: "Pub/Sub channel bridged into the stream (empty: none)",
    },
    Variable {
        name: "SENSORHUB_GROUP",
        default: "sensorhub",
        meaning: "consumer group",
    },
    Variable {
        name: "SENSORHUB_CONSUMER",
        default: "(host name)",
        meaning: "this instance's consumer name, unique per instance",
    },
    Variable {
        name: "SENSORHUB_MQTT_URL",
        default: "(none)",
        meaning: "MQTT broker, `mqtt://[user:password@]host[:port]` or `mqtts://` (empty: none)",
    },
    Variable {
        name: "SENSORHUB_MQTT_TOPICS",
        default: "sensors/#=json",
        meaning: "topic rules `filter=form`, `;`-separated (see MQTT)",
    },
    Variable {
        name: "SENSORHUB_MQTT_CLIENT_ID",
        default: "(made once per deployment)",
        meaning: "client id of the persistent MQTT session, shared by the instances; by default `sensorhub-<stream>-<random>`, made once and kept in PostgreSQL",
    },
    Variable {
        name: "SENSORHUB_MQTT_READY_GRACE",
        default: "30s",
        meaning: "how long MQTT may be unsubscribed before `/readyz` says so",
    },
    Variable {
        name: "SENSORHUB_MQTT_QOS",
        default: "1",
        meaning: "QoS of the subscriptions: 1 or 2",
    },
    Variable {
        name: "SENSORHUB_MQTT_CA_FILE",
        default: "(the system's roots)",
        meaning: "CA certificates (PEM) an `mqtts://` broker is verified against",
    },
    Variable {
        name: "SENSORHUB_MQTT_CERT_FILE",
        default: "(none)",
        meaning: "client certificate (PEM) for an `mqtts://` broker asking for one",
    },
    Variable {
        name: "SENSORHUB_MQTT_KEY_FILE",
        default: "(none)",
        meaning: "its key (PEM)",
    },
    Variable {
        name: "SENSORHUB_BATCH_SIZE",
        default: "20000",
        meaning: "most readings in one batch (one transaction)",
    },
    Variable {
        name: "SENSORHUB_BATCH_DELAY",
        default: "5ms",
        meaning: "longest wait for a partly filled batch to grow before it is written",
    },
    Variable {
        name: "SENSORHUB_MAX_IN_FLIGHT",
        default: "3",
        meaning: "batches read but not yet acknowledged; reading pauses at this bound",
    },
    Variable {
        name: "SENSORHUB_RESOLUTIONS",
        default: "1m,1h",
        meaning: "window resolutions, comma-separated (1s to 31d)",
    },
    Variable {
        name: "SENSORHUB_MAX_MESSAGE_BYTES",
        default: "1048576",
        meaning: "largest accepted message",
    },
    Variable {
        name: "SENSORHUB_MAX_SENSOR_ID_LEN",
        default: "128",
        meaning: "longest accepted sensor id, in bytes",
    },
    Variable {
        name: "SENSORHUB_MAX_FUTURE_SKEW",
        default: "5m",
        meaning: "how far ahead of sensorhub's clock a timestamp may be",
    },
    Variable {
        name: "SENSORHUB_MAX_AGE",
        default: "3650d",
        meaning: "oldest accepted timestamp, as an age",
    },
    Variable {
        name: "SENSORHUB_TIMEZONE",
        default: "UTC",
        meaning: "IANA time zone of timestamps without an offset",
    },
    Variable {
        name: "SENSORHUB_PARTITION",
        default: "1d",
        meaning: "time span of each partition of `readings` (aligned to the epoch), at least 1h",
    },
    Variable {
        name: "SENSORHUB_RETENTION_RAW",
        default: "forever",
        meaning: "how long raw readings are kept (older ones refused)",
    },
    Variable {
        name: "SENSORHUB_RETENTION_AGGREGATES",
        default: "forever",
        meaning: "how long aggregates are kept, per resolution: `1m:400d,1h:forever`",
    },
    Variable {
        name: "SENSORHUB_STREAM_TAIL",
        default: "1000",
        meaning: "committed entries kept in the stream: for inspection, and re-read after a PostgreSQL failover (size it for the replication lag)",
    },
    Variable {
        name: "SENSORHUB_DEAD_LETTER_MAXLEN",
        default: "100000",
        meaning: "most letters the dead-letter stream keeps (the oldest go first)",
    },
    Variable {
        name: "SENSORHUB_DEAD_LETTER_MAX_BYTES",
        default: "268435456",
        meaning: "most bytes of original payloads the dead-letter stream keeps (the oldest go first)",
    },
    Variable {
        name: "SENSORHUB_CLAIM_IDLE",
        default: "30s",
        meaning: "after this, delivered entries no live instance holds and no commit covers (a stopped instance's) are re-read",
    },
    Variable {
        name: "SENSORHUB_BRIDGE_LEASE",
        default: "5s",
        meaning: "lease of the instance bridging Pub/Sub; another takes over within this time",
    },
    Variable {
        name: "SENSORHUB_WRITE_CONNECTIONS",
        default: "2",
        meaning: "write lanes: connections each writing its sensors' part of every batch",
    },
    Variable {
        name: "SENSORHUB_DB_POOL_SIZE",
        default: "4",
        meaning: "PostgreSQL connections: the write connections, the rest (at least one) for the API",
    },
    Variable {
        name: "SENSORHUB_NETWORK_TIMEOUT",
        default: "30s",
        meaning: "a connection (Redis, PostgreSQL, MQTT) whose peer stays silent this long is given up and opened again (at least 5s)",
    },
    Variable {
        name: "SENSORHUB_SHUTDOWN_TIMEOUT",
        default: "30s",
        meaning: "longest wait for in-flight batches on SIGTERM",
    },
    Variable {
        name: "SENSORHUB_API_TOKEN",
        default: "(none)",
        meaning: "bearer token of the read API (health and metrics stay open)",
    },
    Variable {
        name: "SENSORHUB_INGEST_TOKEN",
        default: "(the API token)",
        meaning: "token of HTTP ingest and the line-protocol endpoints",
    },
    Variable {
        name: "SENSORHUB_ADMIN_TOKEN",
        default: "(none)",
        meaning: "token of dead-letter replay and purge; without it they are refused whenever another token is set",
    },
    Variable {
        name: "SENSORHUB_HTTP_BODY_TIMEOUT",
        default: "30s",
        meaning: "longest a client may take to send a request body (then 408)",
    },
    Variable {
        name: "SENSORHUB_ACTIVE_WITHIN",
        default: "30d",
        meaning: "sensors seen within this are listed by the API",
    },
    Variable {
        name: "SENSORHUB_LOG",
        default: "info",
        meaning: "log filter (tracing `EnvFilter` syntax)",
    },
];

/// Variables whose value may come from the file named by `<NAME>_FILE`.
pub const SECRET_VARIABLES: [&str; 7] = [
    "SENSORHUB_REDIS_URL",
    "SENSORHUB_DATABASE_URL",
    "SENSORHUB_DATABASE_READ_URL",
    "SENSORHUB_API_TOKEN",
    "SENSORHUB_INGEST_TOKEN",
    "SENSORHUB_ADMIN_TOKEN",
    "SENSORHUB_MQTT_URL",
];

/// A token variable: `None` when unset. Set but empty (or only white space), it is refused: an
/// empty value would compare equal to an empty header and leave its routes open, which is never
/// what setting a token means.
fn token(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match lookup(name) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Err(ConfigError {
            var: name,
            value,
            expected:
                "a token of at least one visible character (leave the variable unset for none)"
                    .into(),
        }),
        Some(value) => Ok(Some(Secret::new(value))),
    }
}

/// A duration as written in the variables: whole days as `90d`, anything else as humantime
/// writes it.
fn in_days(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds.is_multiple_of(86_400) && duration.subsec_nanos() == 0 {
        format!("{}d", seconds / 86_400)
    } else {
        humantime::format_duration(duration).to_string()
    }
}

/// The variables naming a connection's TLS files.
struct TlsVariables {
    ca: &'static str,
    cert: &'static str,
    key: &'static str,
}

/// A connection's TLS files: a CA file, and a client certificate with its key (both or neither).
fn tls_files(
    lookup: &impl Fn(&str) -> Option<String>,
    vars: TlsVariables,
) -> Result<TlsFiles, ConfigError> {
    let path = |name: &str| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let client = match (path(vars.cert), path(vars.key)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(cert), None) => {
            return Err(ConfigError {
                var: vars.key,
                value: String::new(),
                expected: format!("the key of the client certificate {}", cert.display()),
            });
        }
        (None, Some(key)) => {
            return Err(ConfigError {
                var: vars.cert,
                value: String::new(),
                expected: format!("the client certificate of the key {}", key.display()),
            });
        }
    };
    Ok(TlsFiles {
        ca: path(vars.ca),
        client,
    })
}

/// The configuration table of docs/configuration.md, generated from [`VARIABLES`] (a test checks it holds
/// exactly this text).
pub fn markdown_table() -> String {
    let mut table = String::from("| variable | meaning | default |\n| --- | --- | --- |\n");
    for v in VARIABLES {
        let from_file = if SECRET_VARIABLES.contains(&v.name) {
            "; or `_FILE`".to_owned()
        } else {
            String::new()
        };
        table.push_str(&format!(
            "| `{}` | {}{from_file} | `{}` |\n",
            v.name, v.meaning, v.default
        ));
    }
    table
}

/// An invalid configuration value.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub expected: String,
}

/// A value that must never be printed (tokens, URLs with passwords).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The whole configuration. Tests build it with [`Config::from_lookup`] and adjust fields.
#[derive(Clone, Debug)]
pub struct Config {
    pub redis_url: Secret,
    /// TLS files of a `rediss://` Redis.
    pub redis_tls: TlsFiles,
    pub database_url: Secret,
    /// Where the read API reads, when not `database_url`.
    pub database_read_url: Option<Secret>,
    pub http_addr: SocketAddr,
    pub stream: String,
    /// How many streams readings are spread over ([`crate::stream::shards`]).
    pub shards: usize,
    /// The shards this instance reads, in order.
    pub read_shards: Vec<usize>,
    /// `None` when the Pub/Sub bridge is off.
    pub channel: Option<String>,
    /// `None` when no MQTT broker is configured.
    pub mqtt: Option<MqttSettings>,
    pub group: String,
    pub consumer: String,
    pub batch_size: usize,
    pub batch_delay: Duration,
    pub max_in_flight: usize,
    pub resolutions: Vec<Resolution>,
    pub limits: Limits,
    /// Time span of each partition of `readings`.
    pub partition: Duration,
    /// How long raw readings and aggregates are kept.
    pub retention: Retention,
    pub stream_tail: usize,
    pub dead_letter_maxlen: usize,
    /// Most bytes of original payloads kept as dead letters: what bounds their memory in Redis.
    pub dead_letter_max_bytes: usize,
    pub claim_idle: Duration,
    pub bridge_lease: Duration,
    pub write_connections: usize,
    pub db_pool_size: usize,
    pub shutdown_timeout: Duration,
    /// Dead-peer detection of every connection.
    pub liveness: Liveness,
    pub api_token: Option<Secret>,
    /// The token of HTTP ingest; the API token when `SENSORHUB_INGEST_TOKEN` is not set, so that
    /// setting only the API token never leaves ingest open.
    pub ingest_token: Option<Secret>,
    /// The token of the routes that change or remove data (dead-letter replay and purge). Not
    /// the read token, which the status page keeps in the browser, nor the ingest token, which
    /// every device holds: without it those routes are refused whenever another token is set.
    pub admin_token: Option<Secret>,
    /// Longest a client may take to send a request body.
    pub http_body_timeout: Duration,
    pub active_within: Duration,
    pub log_filter: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads variables through `lookup`; unset variables take their documented default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut from_files = Vec::new();
        for name in SECRET_VARIABLES {
            let file_var = format!("{name}_FILE");
            if let Some(path) = lookup(&file_var).filter(|p| !p.is_empty()) {
                let value = std::fs::read_to_string(&path).map_err(|error| ConfigError {
                    var: name,
                    value: format!("{file_var}={path}"),
                    expected: format!("a readable file ({error})"),
                })?;
                from_files.push((name, value.trim_end_matches(['\r', '\n']).to_owned()));
            }
        }
        let lookup = |name: &str| {
            from_files
                .iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.clone())
                .or_else(|| lookup(name))
        };
        let env = Env { lookup: &lookup };
        let timezone_text = env.text("SENSORHUB_TIMEZONE");
        let timezone: Tz = timezone_text.parse().map_err(|_| ConfigError {
            var: "SENSORHUB_TIMEZONE",
            value: timezone_text.clone(),
            expected: "an IANA time zone name such as UTC or Europe/Berlin".into(),
        })?;
        let limits = Limits {
            max_message_bytes: env.number("SENSORHUB_MAX_MESSAGE_BYTES", 64, 64 * 1024 * 1024)?,
            max_sensor_id_len: env.number("SENSORHUB_MAX_SENSOR_ID_LEN", 1, 1024)?,
            max_future_skew: env.duration("SENSORHUB_MAX_FUTURE_SKEW")?,
            max_age: env.duration("SENSORHUB_MAX_AGE")?,
            timezone,
            ..Limits::default()
        };
        let consumer = match lookup("SENSORHUB_CONSUMER").filter(|v| !v.is_empty()) {
            Some(name) => name,
            None => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let channel = env.text("SENSORHUB_CHANNEL");
        let group = env.non_empty("SENSORHUB_GROUP")?;
        let mqtt_tls = tls_files(
            &lookup,
            TlsVariables {
                ca: "SENSORHUB_MQTT_CA_FILE",
                cert: "SENSORHUB_MQTT_CERT_FILE",
                key: "SENSORHUB_MQTT_KEY_FILE",
            },
        )?;
        let mqtt = MqttSettings::from_env(&env, &mqtt_tls)?;
        let shards = env.number(
            "SENSORHUB_STREAM_SHARDS",
            1,
            crate::stream::shards::MAX_SHARDS,
        )?;
        let read_shards = shard_list(lookup("SENSORHUB_READ_SHARDS").as_deref(), shards)?;
        let mut config = Config {
            redis_url: Secret::new(env.text_or_fallback("SENSORHUB_REDIS_URL", "REDIS_URL")),
            redis_tls: tls_files(
                &lookup,
                TlsVariables {
                    ca: "SENSORHUB_REDIS_CA_FILE",
                    cert: "SENSORHUB_REDIS_CERT_FILE",
                    key: "SENSORHUB_REDIS_KEY_FILE",
                },
            )?,
            database_url: Secret::new(
                env.text_or_fallback("SENSORHUB_DATABASE_URL", "DATABASE_URL"),
            ),
            database_read_url: lookup("SENSORHUB_DATABASE_READ_URL")
                .filter(|v| !v.is_empty())
                .map(Secret::new),
            http_addr: env.parsed("SENSORHUB_HTTP_ADDR", "an address such as 0.0.0.0:8080")?,
            stream: env.non_empty("SENSORHUB_STREAM")?,
            shards,
            read_shards,
            channel: (!channel.is_empty()).then_some(channel),
            mqtt,
            group,
            consumer,
            batch_size: env.number("SENSORHUB_BATCH_SIZE", 1, 100_000)?,
            batch_delay: env.duration("SENSORHUB_BATCH_DELAY")?,
            max_in_flight: env.number("SENSORHUB_MAX_IN_FLIGHT", 1, 64)?,
            resolutions: env.resolutions("SENSORHUB_RESOLUTIONS")?,
            limits,
            partition: env.duration("SENSORHUB_PARTITION")?,
            retention: Retention {
                raw: env.retention("SENSORHUB_RETENTION_RAW")?,
                aggregates: env.aggregate_retention("SENSORHUB_RETENTION_AGGREGATES")?,
            },
            stream_tail: env.number("SENSORHUB_STREAM_TAIL", 0, 10_000_000)?,
            dead_letter_maxlen: env.number("SENSORHUB_DEAD_LETTER_MAXLEN", 1, 100_000_000)?,
            dead_letter_max_bytes: env.number("SENSORHUB_DEAD_LETTER_MAX_BYTES", 1024, 1 << 40)?,
            claim_idle: env.duration("SENSORHUB_CLAIM_IDLE")?,
            bridge_lease: env.duration("SENSORHUB_BRIDGE_LEASE")?,
            write_connections: env.number("SENSORHUB_WRITE_CONNECTIONS", 1, 32)?,
            db_pool_size: env.number("SENSORHUB_DB_POOL_SIZE", 1, 256)?,
            shutdown_timeout: env.duration("SENSORHUB_SHUTDOWN_TIMEOUT")?,
            liveness: Liveness::new(env.duration("SENSORHUB_NETWORK_TIMEOUT")?),
            api_token: token(&lookup, "SENSORHUB_API_TOKEN")?,
            ingest_token: match token(&lookup, "SENSORHUB_INGEST_TOKEN")? {
                Some(token) => Some(token),
                None => token(&lookup, "SENSORHUB_API_TOKEN")?,
            },
            admin_token: token(&lookup, "SENSORHUB_ADMIN_TOKEN")?,
            http_body_timeout: env.duration("SENSORHUB_HTTP_BODY_TIMEOUT")?,
            active_within: env.duration("SENSORHUB_ACTIVE_WITHIN")?,
            log_filter: env.text("SENSORHUB_LOG"),
        };
        // Nothing older than what is kept may be accepted: it could not be told from a
        // duplicate once the rows of its period are gone.
        if let Some(shortest) = config.retention.shortest() {
            let explicit = lookup("SENSORHUB_MAX_AGE").is_some_and(|v| !v.trim().is_empty());
            if !explicit {
                config.limits.max_age = config.limits.max_age.min(shortest);
            } else if config.limits.max_age > shortest {
                return Err(ConfigError {
                    var: "SENSORHUB_MAX_AGE",
                    value: in_days(config.limits.max_age),
                    expected: format!(
                        "at most {}, the shortest retention (SENSORHUB_RETENTION_RAW, \
                         SENSORHUB_RETENTION_AGGREGATES): a reading older than what is kept could \
                         not be told from a duplicate",
                        in_days(shortest)
                    ),
                });
            }
        }
        if config.partition < Duration::from_secs(3600) {
            return Err(ConfigError {
                var: "SENSORHUB_PARTITION",
                value: humantime::format_duration(config.partition).to_string(),
                expected: "at least 1h (a partition per hour or longer)".into(),
            });
        }
        if config.liveness.timeout() > env.duration("SENSORHUB_NETWORK_TIMEOUT")? {
            return Err(ConfigError {
                var: "SENSORHUB_NETWORK_TIMEOUT",
                value: env.text("SENSORHUB_NETWORK_TIMEOUT"),
                expected: format!(
                    "at least {} (keepalive probes are whole seconds apart)",
                    humantime::format_duration(crate::liveness::MIN_TIMEOUT)
                ),
            });
        }
        if config.bridge_lease < Duration::from_millis(300) {
            return Err(ConfigError {
                var: "SENSORHUB_BRIDGE_LEASE",
                value: humantime::format_duration(config.bridge_lease).to_string(),
                expected: "at least 300ms".into(),
            });
        }
        Ok(config)
    }

    /// The dead-letter stream's key.
    pub fn dead_letter_stream(&self) -> String {
        format!("{}:dead", self.stream)
    }

    /// The streams readings go to: the stream, or its shards.
    pub fn streams(&self) -> crate::stream::shards::Streams {
        crate::stream::shards::Streams::new(&self.stream, self.shards)
    }
}

/// `SENSORHUB_READ_SHARDS`: shard numbers and ranges (`0-7,12`) below `shards`, or all of them
/// when unset or empty.
fn shard_list(value: Option<&str>, shards: usize) -> Result<Vec<usize>, ConfigError> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok((0..shards).collect());
    }
    let bad = |expected: String| ConfigError {
        var: "SENSORHUB_READ_SHARDS",
        value: value.to_owned(),
        expected,
    };
    let number = |text: &str| -> Result<usize, ConfigError> {
        match text.trim().parse::<usize>() {
            Ok(n) if n < shards => Ok(n),
            _ => Err(bad(format!(
                "shard numbers from 0 to {} (SENSORHUB_STREAM_SHARDS={shards}), as `0-7` or `0,3,5`",
                shards - 1
            ))),
        }
    };
    let mut list = Vec::new();
    for part in value.split(',') {
        let (low, high) = match part.split_once('-') {
            Some((low, high)) => (number(low)?, number(high)?),
            None => (number(part)?, number(part)?),
        };
        if low > high {
            return Err(bad(format!(
                "a range from low to high, not `{}`",
                part.trim()
            )));
        }
        list.extend(low..=high);
    }
    list.sort_unstable();
    list.dedup();
    Ok(list)
}

/// A URL with its password replaced, for messages.
pub fn mask_password(url: &str) -> String {
    let masked = match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, rest)), Some((_, host))) if rest.contains('@') => {
            let user = rest.split('@').next().unwrap_or_default();
            let user = user.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    };
    // libpq also takes the password as a URL parameter or a `key=value` pair.
    let mut out = String::with_capacity(masked.len());
    let mut rest = masked.as_str();
    while let Some(at) = rest.find("password=") {
        let value = at + "password=".len();
        out.push_str(&rest[..value]);
        out.push_str("***");
        let end = rest[value..]
            .find(|c: char| c == '&' || c.is_whitespace())
            .map_or(rest.len(), |n| value + n);
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Typed reads of variables with their documented defaults.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn default_of(name: &str) -> &'static str {
        VARIABLES
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.default)
            .unwrap_or_else(|| unreachable!("{name} is not declared in VARIABLES"))
    }

    fn text(&self, name: &'static str) -> String {
        (self.lookup)(name).unwrap_or_else(|| Self::default_of(name).to_owned())
    }

    fn text_or_fallback(&self, name: &'static str, fallback: &str) -> String {
        (self.lookup)(name)
            .filter(|v| !v.is_empty())
            .or_else(|| (self.lookup)(fallback).filter(|v| !v.is_empty()))
            .unwrap_or_else(|| Self::default_of(name).to_owned())
    }

    fn error(name: &'static str, value: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError {
            var: name,
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    fn non_empty(&self, name: &'static str) -> Result<String, ConfigError> {
        let value = self.text(name);
        if value.trim().is_empty() {
            return Err(Self::error(name, &value, "a non-empty name"));
        }
        Ok(value)
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        name: &'static str,
        expected: &str,
    ) -> Result<T, ConfigError> {
        let value = self.text(name);
        value
            .trim()
            .parse()
            .map_err(|_| Self::error(name, &value, expected))
    }

    fn number(&self, name: &'static str, min: usize, max: usize) -> Result<usize, ConfigError> {
        let expected = format!("a whole number from {min} to {max}");
        let number: usize = self.parsed(name, &expected)?;
        if !(min..=max).contains(&number) {
            return Err(Self::error(name, &number.to_string(), expected));
        }
        Ok(number)
    }

    fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let value = self.text(name);
        humantime::parse_duration(value.trim())
            .map_err(|_| Self::error(name, &value, "a duration such as 500ms, 30s, 5m, 1h or 30d"))
    }

    /// A retention: a duration, or `forever` (also empty).
    fn retention(&self, name: &'static str) -> Result<Option<Duration>, ConfigError> {
        let value = self.text(name);
        Self::keep(name, &value, value.trim())
    }

    fn keep(name: &'static str, value: &str, text: &str) -> Result<Option<Duration>, ConfigError> {
        if text.is_empty() || text == "forever" {
            return Ok(None);
        }
        match humantime::parse_duration(text) {
            Ok(keep) if keep >= Duration::from_secs(3600) => Ok(Some(keep)),
            _ => Err(Self::error(
                name,
                value,
                "a duration of at least 1h such as 90d, or forever",
            )),
        }
    }

    /// Retention per resolution: `1m:400d,1h:forever`.
    fn aggregate_retention(
        &self,
        name: &'static str,
    ) -> Result<Vec<(Resolution, Duration)>, ConfigError> {
        let value = self.text(name);
        let text = value.trim();
        if text.is_empty() || text == "forever" {
            return Ok(Vec::new());
        }
        let mut kept = Vec::new();
        for part in text.split(',') {
            let bad = || {
                Self::error(
                    name,
                    &value,
                    "resolution:duration pairs such as 1m:400d,1h:forever",
                )
            };
            let (resolution, keep) = part.trim().split_once(':').ok_or_else(bad)?;
            let resolution: Resolution = resolution.trim().parse().map_err(|_| bad())?;
            if let Some(keep) = Self::keep(name, &value, keep.trim())? {
                kept.push((resolution, keep));
            }
        }
        Ok(kept)
    }

    fn resolutions(&self, name: &'static str) -> Result<Vec<Resolution>, ConfigError> {
        let value = self.text(name);
        let mut resolutions = value
            .split(',')
            .map(|part| part.parse::<Resolution>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| Self::error(name, &value, format!("durations like 1m,1h ({why})")))?;
        resolutions.sort_unstable();
        resolutions.dedup();
        Ok(resolutions)
    }
}

#[cfg(test)]
mod tests;
