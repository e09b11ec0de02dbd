//! Typed settings from the environment, validated at start.
//!
//! Every variable is declared once in [`VARIABLES`] (name, default, meaning); the parser reads its
//! defaults from there and docs/configuration.md's table is checked against it by a test, so the
//! documentation cannot drift. A bad value gives one line naming the variable, the value and what is
//! expected ([`ConfigError`]).

use crate::domain::{Limits, OnConflict, Policies, Resolution};
mod env;
mod mqtt;
mod rules;
mod variables;

use env::{Env, TlsVariables, in_days, shard_list, tls_files, token};
pub use mqtt::{MqttSettings, MqttTls};
pub use rules::{Action, IdTemplate, Preset, TopicRule, merged, parse_rules_file};
pub use variables::{SECRET_VARIABLES, VARIABLES, Variable, markdown_table};

use chrono_tz::Tz;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The most streams readings can be spread over.
pub const MAX_SHARDS: usize = 1024;

/// The shortest network timeout: keepalive probes are whole seconds apart, three of them after a
/// second of silence.
pub const MIN_NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long what is kept; `None`: forever.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub raw: Option<Duration>,
    /// Per resolution; a resolution not named is kept forever.
    pub aggregates: Vec<(Resolution, Duration)>,
}

impl Retention {
    pub fn is_forever(&self) -> bool {
        self.raw.is_none() && self.aggregates.is_empty()
    }

    /// The shortest time anything is kept: readings older than this must be refused.
    pub fn shortest(&self) -> Option<Duration> {
        self.raw
            .into_iter()
            .chain(self.aggregates.iter().map(|(_, keep)| *keep))
            .min()
    }
}

/// Where the trusted roots and the client's own certificate come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates to trust; the system's roots when `None`.
    pub ca: Option<PathBuf>,
    /// PEM files of the client certificate (chain) and its key, for servers that ask for one.
    pub client: Option<(PathBuf, PathBuf)>,
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
    /// Partitions whose range ended longer ago than this are compacted (`None`: never).
    pub compact_after: Option<Duration>,
    pub stream_tail: usize,
    pub dead_letter_maxlen: usize,
    /// Most bytes of original payloads kept as dead letters: what bounds their memory in Redis.
    pub dead_letter_max_bytes: usize,
    pub claim_idle: Duration,
    pub bridge_lease: Duration,
    pub write_connections: usize,
    /// Which value of a `(sensor_id, ts)` stays when another arrives.
    pub on_conflict: OnConflict,
    /// The same for readings sent as line protocol; `None`: as `on_conflict`.
    pub line_protocol_on_conflict: Option<OnConflict>,
    pub db_pool_size: usize,
    pub shutdown_timeout: Duration,
    /// After how long a silent peer is given up, on every connection ([`crate::liveness`]).
    pub network_timeout: Duration,
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
    /// Which value stays, for each way in.
    pub fn policies(&self) -> Policies {
        Policies {
            default: self.on_conflict,
            line_protocol: self.line_protocol_on_conflict.unwrap_or(self.on_conflict),
        }
    }

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
        let shards = env.number("SENSORHUB_STREAM_SHARDS", 1, MAX_SHARDS)?;
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
            compact_after: env.compact_after("SENSORHUB_COMPACT_AFTER")?,
            stream_tail: env.number("SENSORHUB_STREAM_TAIL", 0, 10_000_000)?,
            dead_letter_maxlen: env.number("SENSORHUB_DEAD_LETTER_MAXLEN", 1, 100_000_000)?,
            dead_letter_max_bytes: env.number("SENSORHUB_DEAD_LETTER_MAX_BYTES", 1024, 1 << 40)?,
            claim_idle: env.duration("SENSORHUB_CLAIM_IDLE")?,
            bridge_lease: env.duration("SENSORHUB_BRIDGE_LEASE")?,
            write_connections: env.number("SENSORHUB_WRITE_CONNECTIONS", 1, 32)?,
            on_conflict: env.parsed("SENSORHUB_ON_CONFLICT", "keep_first or keep_last")?,
            line_protocol_on_conflict: match lookup("SENSORHUB_LINE_PROTOCOL_ON_CONFLICT") {
                Some(value) if !value.trim().is_empty() => Some(env.parsed(
                    "SENSORHUB_LINE_PROTOCOL_ON_CONFLICT",
                    "keep_first or keep_last",
                )?),
                _ => None,
            },
            db_pool_size: env.number("SENSORHUB_DB_POOL_SIZE", 1, 256)?,
            shutdown_timeout: env.duration("SENSORHUB_SHUTDOWN_TIMEOUT")?,
            network_timeout: env.network_timeout("SENSORHUB_NETWORK_TIMEOUT")?,
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

#[cfg(test)]
mod tests;
