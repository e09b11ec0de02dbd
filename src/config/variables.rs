//! The table of every variable: its name, default and meaning, which the parser reads defaults
//! from and docs/configuration.md is generated from.

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
        meaning: "topic rules `filter=form`, `filter=ignore` or `filter=<preset>`, `;`-separated (see MQTT)",
    },
    Variable {
        name: "SENSORHUB_MQTT_TOPICS_FILE",
        default: "(none)",
        meaning: "topic rules in a TOML file (filter, form or preset, id template, time field and zone, include/exclude, states), instead of `SENSORHUB_MQTT_TOPICS` (docs/mqtt.md)",
    },
    Variable {
        name: "SENSORHUB_MQTT_CLIENT_ID",
        default: "(made once per deployment)",
        meaning: "client id of the persistent MQTT session, shared by the instances; by default `sensorhub-<stream>-<random>`, made once and kept in PostgreSQL",
    },
    Variable {
        name: "SENSORHUB_MQTT_SHARED",
        default: "false",
        meaning: "`true`: every instance subscribes through a shared subscription (`$share/<client id>/<filter>`) on sessions of its own, and the broker spreads the messages; `false`: one instance at a time, under a lease (docs/mqtt.md)",
    },
    Variable {
        name: "SENSORHUB_MQTT_CONNECTIONS",
        default: "1",
        meaning: "connections per instance to the broker, each a member of the shared subscription (more than 1 needs `SENSORHUB_MQTT_SHARED=true`)",
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
        name: "SENSORHUB_COMPACT_AFTER",
        default: "off",
        meaning: "partitions of `readings` older than this (at least 1h, e.g. `7d`) are rewritten as one compressed row per sensor and day",
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
        name: "SENSORHUB_ON_CONFLICT",
        default: "keep_first",
        meaning: "a reading whose sensor and time are stored with another value: `keep_first` dead-letters it (`conflicting_value`), `keep_last` lets the later stream position replace the stored value (docs/corrections.md)",
    },
    Variable {
        name: "SENSORHUB_LINE_PROTOCOL_ON_CONFLICT",
        default: "(SENSORHUB_ON_CONFLICT)",
        meaning: "the same for readings sent as InfluxDB line protocol (HTTP or MQTT), whose writers may expect InfluxDB's last write to win: `keep_last`",
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
