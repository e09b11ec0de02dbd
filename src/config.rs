//! Typed settings from the environment, validated at start.
//!
//! Every variable is declared once in [`VARIABLES`] (name, default, meaning); the parser reads its
//! defaults from there and the README's configuration table is checked against it by a test, so the
//! documentation cannot drift. A bad value gives one line naming the variable, the value and what is
//! expected ([`ConfigError`]).

use crate::domain::reading::Form;
use crate::domain::{Limits, Resolution};
use crate::store::retention::Retention;
use crate::tls::{TlsFiles, Verify, client_config};
use chrono_tz::Tz;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One configuration variable, as documented in the README.
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
        default: "sensorhub-<group>",
        meaning: "client id of the persistent MQTT session, shared by the instances",
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
        meaning: "acknowledged entries kept in the stream for inspection",
    },
    Variable {
        name: "SENSORHUB_DEAD_LETTER_MAXLEN",
        default: "100000",
        meaning: "approximate cap of the dead-letter stream (`XADD MAXLEN ~`)",
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
pub const SECRET_VARIABLES: [&str; 6] = [
    "SENSORHUB_REDIS_URL",
    "SENSORHUB_DATABASE_URL",
    "SENSORHUB_DATABASE_READ_URL",
    "SENSORHUB_API_TOKEN",
    "SENSORHUB_INGEST_TOKEN",
    "SENSORHUB_MQTT_URL",
];

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

/// The README's configuration table, generated from [`VARIABLES`] (a test checks the README holds
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
    pub claim_idle: Duration,
    pub bridge_lease: Duration,
    pub write_connections: usize,
    pub db_pool_size: usize,
    pub shutdown_timeout: Duration,
    pub api_token: Option<Secret>,
    /// The token of HTTP ingest; the API token when `SENSORHUB_INGEST_TOKEN` is not set, so that
    /// setting only the API token never leaves ingest open.
    pub ingest_token: Option<Secret>,
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
        let mqtt = MqttSettings::from_env(&env, &group, &mqtt_tls)?;
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
            claim_idle: env.duration("SENSORHUB_CLAIM_IDLE")?,
            bridge_lease: env.duration("SENSORHUB_BRIDGE_LEASE")?,
            write_connections: env.number("SENSORHUB_WRITE_CONNECTIONS", 1, 32)?,
            db_pool_size: env.number("SENSORHUB_DB_POOL_SIZE", 1, 256)?,
            shutdown_timeout: env.duration("SENSORHUB_SHUTDOWN_TIMEOUT")?,
            api_token: lookup("SENSORHUB_API_TOKEN")
                .filter(|v| !v.is_empty())
                .map(Secret::new),
            ingest_token: lookup("SENSORHUB_INGEST_TOKEN")
                .or_else(|| lookup("SENSORHUB_API_TOKEN"))
                .filter(|v| !v.is_empty())
                .map(Secret::new),
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
}

/// Where the MQTT source connects and what it subscribes to.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, Secret)>,
    /// The TLS configuration of an `mqtts://` broker.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub client_id: String,
    /// 1 or 2.
    pub qos: u8,
    pub rules: Vec<TopicRule>,
}

/// A topic filter and the form its messages' payloads are read in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRule {
    pub filter: String,
    pub form: Form,
}

impl MqttSettings {
    fn from_env(env: &Env, group: &str, tls_files: &TlsFiles) -> Result<Option<Self>, ConfigError> {
        let url = env.text("SENSORHUB_MQTT_URL");
        if url.is_empty() || url == "(none)" {
            return Ok(None);
        }
        let bad_url = |expected: &str| ConfigError {
            var: "SENSORHUB_MQTT_URL",
            value: mask_password(&url),
            expected: expected.to_owned(),
        };
        let (rest, tls, default_port) = match url.split_once("://") {
            Some(("mqtt", rest)) => (rest, false, 1883),
            Some(("mqtts", rest)) => (rest, true, 8883),
            _ => {
                return Err(bad_url(
                    "a URL such as mqtt://host:1883 or mqtts://host:8883",
                ));
            }
        };
        let (rest, insecure) = match rest.split_once('?') {
            Some((rest, "insecure")) if tls => (rest, true),
            Some(_) => return Err(bad_url("no query but ?insecure (with mqtts:// only)")),
            None => (rest, false),
        };
        if !tls && *tls_files != TlsFiles::default() {
            return Err(bad_url(
                "an mqtts:// URL, as SENSORHUB_MQTT_CA_FILE, _CERT_FILE or _KEY_FILE is set",
            ));
        }
        let tls = if tls {
            let verify = if insecure {
                Verify::Nothing
            } else {
                Verify::Full
            };
            let config = client_config(tls_files, verify).map_err(|e| ConfigError {
                var: "SENSORHUB_MQTT_CA_FILE",
                value: String::new(),
                expected: e.to_string(),
            })?;
            Some(config)
        } else {
            None
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, host_port) = match rest.rsplit_once('@') {
            Some((user_password, host_port)) => {
                let (user, password) = user_password
                    .split_once(':')
                    .ok_or_else(|| bad_url("user:password@ before the host"))?;
                (Some((user.to_owned(), Secret::new(password))), host_port)
            }
            None => (None, rest),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| bad_url("a port from 1 to 65535"))?,
            ),
            None => (host_port, default_port),
        };
        if host.is_empty() {
            return Err(bad_url("a host, as in mqtt://host:1883"));
        }
        let client_id = match env.text("SENSORHUB_MQTT_CLIENT_ID") {
            id if id.is_empty() || id == "sensorhub-<group>" => format!("sensorhub-{group}"),
            id => id,
        };
        let qos = match env.text("SENSORHUB_MQTT_QOS").as_str() {
            "1" => 1,
            "2" => 2,
            other => {
                return Err(ConfigError {
                    var: "SENSORHUB_MQTT_QOS",
                    value: other.to_owned(),
                    expected: "1 or 2".into(),
                });
            }
        };
        let rules = parse_rules(&env.text("SENSORHUB_MQTT_TOPICS"))?;
        Ok(Some(Self {
            host: host.to_owned(),
            port,
            credentials,
            tls,
            client_id,
            qos,
            rules,
        }))
    }
}

/// `filter=form; filter=form; ...`.
fn parse_rules(text: &str) -> Result<Vec<TopicRule>, ConfigError> {
    let bad = |expected: String| ConfigError {
        var: "SENSORHUB_MQTT_TOPICS",
        value: text.to_owned(),
        expected,
    };
    let mut rules = Vec::new();
    for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
        let (filter, form) = rule
            .rsplit_once('=')
            .ok_or_else(|| bad(format!("rules of the form filter=form, not {rule:?}")))?;
        let filter = filter.trim();
        let valid_filter = !filter.is_empty()
            && filter.split('/').enumerate().all(|(i, level)| {
                let last = i == filter.split('/').count() - 1;
                (level != "#" || last)
                    && (level == "#" || level == "+" || !level.contains(['#', '+']))
            });
        if !valid_filter {
            return Err(bad(format!(
                "an MQTT topic filter ('+' for one level, '#' only last), not {filter:?}"
            )));
        }
        let form = form.trim().parse::<Form>().map_err(bad)?;
        rules.push(TopicRule {
            filter: filter.to_owned(),
            form,
        });
    }
    if rules.is_empty() {
        return Err(bad("at least one rule filter=form".into()));
    }
    Ok(rules)
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
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_design() {
        let c = config(&[]).unwrap();
        assert_eq!(c.redis_url.expose(), "redis://127.0.0.1:6379");
        assert_eq!(
            c.database_url.expose(),
            "postgres://postgres@127.0.0.1:5432/sensorhub"
        );
        assert_eq!(
            (c.stream.as_str(), c.group.as_str()),
            ("sensor_stream", "sensorhub")
        );
        assert_eq!(c.channel.as_deref(), Some("sensor_stream"));
        assert_eq!(c.dead_letter_stream(), "sensor_stream:dead");
        let labels: Vec<String> = c.resolutions.iter().map(ToString::to_string).collect();
        assert_eq!(labels, ["1m", "1h"]);
        assert!(!c.consumer.is_empty());
    }

    #[test]
    fn fallback_urls_are_honoured() {
        let c = config(&[
            ("DATABASE_URL", "postgres://x@db/y"),
            ("REDIS_URL", "redis://r"),
        ])
        .unwrap();
        assert_eq!(c.database_url.expose(), "postgres://x@db/y");
        assert_eq!(c.redis_url.expose(), "redis://r");
        let c = config(&[
            ("DATABASE_URL", "postgres://x@db/y"),
            ("SENSORHUB_DATABASE_URL", "postgres://z/w"),
        ])
        .unwrap();
        assert_eq!(c.database_url.expose(), "postgres://z/w");
    }

    #[test]
    fn empty_channel_turns_the_bridge_off() {
        assert_eq!(config(&[("SENSORHUB_CHANNEL", "")]).unwrap().channel, None);
    }

    #[test]
    fn bad_values_name_variable_value_and_expectation() {
        let cases = [
            ("SENSORHUB_BATCH_SIZE", "lots", "whole number"),
            ("SENSORHUB_BATCH_SIZE", "0", "from 1"),
            ("SENSORHUB_HTTP_ADDR", "nowhere", "address"),
            ("SENSORHUB_RESOLUTIONS", "1m,forever", "durations"),
            ("SENSORHUB_TIMEZONE", "Mars/Olympus", "IANA"),
            ("SENSORHUB_MAX_FUTURE_SKEW", "-5", "duration"),
            ("SENSORHUB_STREAM", " ", "non-empty"),
        ];
        for (var, value, expected) in cases {
            let error = config(&[(var, value)]).unwrap_err().to_string();
            assert!(
                error.contains(var) && error.contains(value) && error.contains(expected),
                "{error}"
            );
            assert!(!error.contains('\n'));
        }
    }

    #[test]
    fn readme_configuration_table_matches_the_code() {
        let readme = include_str!("../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's configuration table is out of date; replace it with:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn every_documented_default_parses() {
        for v in VARIABLES.iter().filter(|v| !v.default.starts_with('(')) {
            let var = v.name;
            assert!(
                config(&[(var, v.default)]).is_ok(),
                "{var} default {:?} does not parse",
                v.default
            );
        }
    }

    #[test]
    fn secrets_can_come_from_files() {
        let path = std::env::temp_dir().join(format!("sensorhub-secret-{}", std::process::id()));
        std::fs::write(&path, "postgres://u:pw@db/sensorhub\n").unwrap();
        let c = config(&[("SENSORHUB_DATABASE_URL_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(c.database_url.expose(), "postgres://u:pw@db/sensorhub");
        std::fs::remove_file(&path).unwrap();
        let error = config(&[("SENSORHUB_API_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert!(error.to_string().contains("SENSORHUB_API_TOKEN"), "{error}");
    }

    #[test]
    fn retention_bounds_the_oldest_accepted_reading() {
        let c = config(&[]).unwrap();
        assert!(c.retention.is_forever());
        let day = Duration::from_secs(86_400);
        let c = config(&[
            ("SENSORHUB_RETENTION_RAW", "90d"),
            ("SENSORHUB_RETENTION_AGGREGATES", "1m:400d, 1h:forever"),
        ])
        .unwrap();
        assert_eq!(c.retention.raw, Some(day * 90));
        assert_eq!(c.retention.aggregates, [("1m".parse().unwrap(), day * 400)]);
        assert_eq!(
            c.limits.max_age,
            day * 90,
            "MAX_AGE follows the retention when unset"
        );
        let error = config(&[
            ("SENSORHUB_RETENTION_RAW", "90d"),
            ("SENSORHUB_MAX_AGE", "365d"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("SENSORHUB_MAX_AGE=\"365d\"") && error.contains("at most 90d"),
            "{error}"
        );
        let c = config(&[
            ("SENSORHUB_RETENTION_RAW", "90d"),
            ("SENSORHUB_MAX_AGE", "30d"),
        ])
        .unwrap();
        assert_eq!(c.limits.max_age, day * 30);
        for bad in ["soon", "10m"] {
            let error = config(&[("SENSORHUB_RETENTION_RAW", bad)]).unwrap_err();
            assert!(
                error.to_string().contains("SENSORHUB_RETENTION_RAW"),
                "{error}"
            );
        }
        let error = config(&[("SENSORHUB_RETENTION_AGGREGATES", "1m=400d")]).unwrap_err();
        assert!(error.to_string().contains("1m:400d"), "{error}");
    }

    #[test]
    fn ingest_takes_its_own_token_or_else_the_api_token() {
        let open = config(&[]).unwrap();
        assert!(open.api_token.is_none() && open.ingest_token.is_none());
        let shared = config(&[("SENSORHUB_API_TOKEN", "read")]).unwrap();
        assert_eq!(shared.ingest_token.unwrap().expose(), "read");
        let separate = config(&[
            ("SENSORHUB_API_TOKEN", "read"),
            ("SENSORHUB_INGEST_TOKEN", "write"),
        ])
        .unwrap();
        assert_eq!(separate.api_token.unwrap().expose(), "read");
        assert_eq!(separate.ingest_token.unwrap().expose(), "write");
        let path = std::env::temp_dir().join(format!("sensorhub-ingest-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let c = config(&[("SENSORHUB_INGEST_TOKEN_FILE", path.to_str().unwrap())]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.ingest_token.unwrap().expose(), "from-file");
        assert!(c.api_token.is_none());
    }

    #[test]
    fn passwords_are_masked_in_every_url_form() {
        for (url, masked) in [
            (
                "rediss://:s3cret@cache:6380/0",
                "rediss://:***@cache:6380/0",
            ),
            (
                "postgres://u:s3cret@db/s?sslmode=require",
                "postgres://u:***@db/s?sslmode=require",
            ),
            (
                "postgres://u@db/s?password=s3cret&sslmode=require",
                "postgres://u:***@db/s?password=***&sslmode=require",
            ),
            (
                "host=db password=s3cret dbname=s",
                "host=db password=*** dbname=s",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ] {
            assert_eq!(mask_password(url), masked);
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = config(&[
            ("SENSORHUB_API_TOKEN", "hunter2"),
            ("SENSORHUB_DATABASE_URL", "postgres://u:pw@h/d"),
        ])
        .unwrap();
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("pw@"),
            "{printed}"
        );
    }

    #[test]
    fn mqtt_is_off_unless_a_url_is_set_and_reads_its_rules() {
        assert!(config(&[]).unwrap().mqtt.is_none());
        let c = config(&[("SENSORHUB_MQTT_URL", "mqtt://broker")]).unwrap();
        let mqtt = c.mqtt.unwrap();
        assert_eq!(
            (mqtt.host.as_str(), mqtt.port, mqtt.qos),
            ("broker", 1883, 1)
        );
        assert_eq!(mqtt.client_id, "sensorhub-sensorhub");
        assert_eq!(
            mqtt.rules,
            vec![TopicRule {
                filter: "sensors/#".into(),
                form: Form::Json
            }]
        );
        let c = config(&[
            ("SENSORHUB_MQTT_URL", "mqtt://user:s3cret@broker:1884"),
            (
                "SENSORHUB_MQTT_TOPICS",
                "/hv/status=channels:number; /+/status = fields",
            ),
            ("SENSORHUB_MQTT_QOS", "2"),
        ])
        .unwrap();
        let mqtt = c.mqtt.clone().unwrap();
        assert_eq!(mqtt.port, 1884);
        assert_eq!(mqtt.qos, 2);
        assert_eq!(mqtt.credentials.as_ref().unwrap().0, "user");
        assert_eq!(mqtt.rules[1].filter, "/+/status");
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the password never prints"
        );
    }

    #[test]
    fn bad_mqtt_settings_name_the_variable_and_never_the_password() {
        for (vars, var, expected) in [
            (
                vec![("SENSORHUB_MQTT_URL", "http://broker")],
                "SENSORHUB_MQTT_URL",
                "mqtt://",
            ),
            (
                vec![("SENSORHUB_MQTT_URL", "mqtt://u:pw@broker?insecure")],
                "SENSORHUB_MQTT_URL",
                "mqtts://",
            ),
            (
                vec![
                    ("SENSORHUB_MQTT_URL", "mqtts://u:pw@broker"),
                    ("SENSORHUB_MQTT_CA_FILE", "/nonexistent/ca.pem"),
                ],
                "SENSORHUB_MQTT_CA_FILE",
                "/nonexistent/ca.pem",
            ),
            (
                vec![
                    ("SENSORHUB_MQTT_URL", "mqtts://u:pw@broker"),
                    ("SENSORHUB_MQTT_CERT_FILE", "/c.pem"),
                ],
                "SENSORHUB_MQTT_KEY_FILE",
                "/c.pem",
            ),
            (
                vec![("SENSORHUB_MQTT_URL", "mqtt://u:pw@broker:99999")],
                "SENSORHUB_MQTT_URL",
                "port",
            ),
            (
                vec![
                    ("SENSORHUB_MQTT_URL", "mqtt://b"),
                    ("SENSORHUB_MQTT_TOPICS", "a/#/b=json"),
                ],
                "SENSORHUB_MQTT_TOPICS",
                "topic filter",
            ),
            (
                vec![
                    ("SENSORHUB_MQTT_URL", "mqtt://b"),
                    ("SENSORHUB_MQTT_TOPICS", "a/#=csv"),
                ],
                "SENSORHUB_MQTT_TOPICS",
                "payload form",
            ),
            (
                vec![
                    ("SENSORHUB_MQTT_URL", "mqtt://b"),
                    ("SENSORHUB_MQTT_QOS", "0"),
                ],
                "SENSORHUB_MQTT_QOS",
                "1 or 2",
            ),
        ] {
            let error = config(&vars).unwrap_err();
            let text = error.to_string();
            assert_eq!(error.var, var, "{text}");
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("pw"), "{text}");
        }
    }
}
