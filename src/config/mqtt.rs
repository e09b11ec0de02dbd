//! The MQTT source's settings: the broker URL (`mqtt://`, `mqtts://`), its TLS, and the topic
//! rules that say how each topic's payloads are read.

use super::TlsFiles;
use super::rules::{Action, TopicRule, parse_rules, parse_rules_file};
use super::{ConfigError, Env, Secret, mask_password};
use crate::domain::reading::Form;
use std::time::Duration;

/// Where the MQTT source connects and what it subscribes to.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    pub host: String,
    pub port: u16,
    pub credentials: Option<(String, Secret)>,
    /// The TLS of an `mqtts://` broker.
    pub tls: Option<MqttTls>,
    /// The session's client id; `None`: the deployment's own, made once and kept in PostgreSQL
    /// ([`crate::store::deployment`]), so two deployments never share a session.
    pub client_id: Option<String>,
    /// 1 or 2.
    pub qos: u8,
    pub rules: Vec<TopicRule>,
    /// Whether every instance subscribes through a shared subscription, on sessions of its own,
    /// instead of one instance at a time under the lease.
    pub shared: bool,
    /// Connections per instance, each a member of the shared subscription (1 without one).
    pub connections: usize,
    /// How long the source may be without a subscribed connection (while it holds the lease)
    /// before `/readyz` reports it: longer than a broker restart or a lease handover takes.
    pub ready_grace: Duration,
}

/// The TLS of an `mqtts://` broker: its files are read when the source starts
/// ([`MqttTls::client_config`](crate::tls)), so a file that cannot be used stops start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttTls {
    pub files: TlsFiles,
    /// False with `?insecure`: encrypted, the server's certificate not checked.
    pub verify_server: bool,
}

impl MqttSettings {
    pub(super) fn from_env(env: &Env, tls_files: &TlsFiles) -> Result<Option<Self>, ConfigError> {
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
        let tls = tls.then(|| MqttTls {
            files: tls_files.clone(),
            verify_server: !insecure,
        });
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
            id if id.is_empty() || id == "(made once per deployment)" => None,
            id => Some(id),
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
        let rules = rules(env)?;
        let shared = env.flag("SENSORHUB_MQTT_SHARED")?;
        let connections = env.number("SENSORHUB_MQTT_CONNECTIONS", 1, 64)?;
        if connections > 1 && !shared {
            return Err(ConfigError {
                var: "SENSORHUB_MQTT_CONNECTIONS",
                value: connections.to_string(),
                expected: "1 unless SENSORHUB_MQTT_SHARED=true (connections of one session would \
                           take it from each other)"
                    .into(),
            });
        }
        let sparkplug = rules.iter().any(|rule| {
            matches!(
                &rule.action,
                Action::Read {
                    form: Form::Sparkplug,
                    ..
                }
            )
        });
        if shared && sparkplug {
            return Err(ConfigError {
                var: "SENSORHUB_MQTT_SHARED",
                value: "true".into(),
                expected: "false while a topic rule reads sparkplug: a node's BIRTH and the DATA \
                           after it must reach one connection, in order"
                    .into(),
            });
        }
        Ok(Some(Self {
            host: host.to_owned(),
            port,
            credentials,
            tls,
            client_id,
            qos,
            rules,
            shared,
            connections,
            ready_grace: env.duration("SENSORHUB_MQTT_READY_GRACE")?,
        }))
    }
}

/// The rules of `SENSORHUB_MQTT_TOPICS_FILE` when it is set (then `SENSORHUB_MQTT_TOPICS` must
/// not be), else of `SENSORHUB_MQTT_TOPICS`.
fn rules(env: &Env) -> Result<Vec<TopicRule>, ConfigError> {
    const FILE: &str = "SENSORHUB_MQTT_TOPICS_FILE";
    const TOPICS: &str = "SENSORHUB_MQTT_TOPICS";
    let file = (env.lookup)(FILE).filter(|path| !path.trim().is_empty());
    let Some(path) = file else {
        let text = env.text(TOPICS);
        return parse_rules(&text).map_err(|expected| ConfigError {
            var: TOPICS,
            value: text,
            expected,
        });
    };
    let bad = |expected: String| ConfigError {
        var: FILE,
        value: path.clone(),
        expected,
    };
    if (env.lookup)(TOPICS).is_some() {
        return Err(bad(format!(
            "{TOPICS} unset: the rules are in the file or in {TOPICS}, not both"
        )));
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(format!("a readable TOML file of topic rules ({e})")))?;
    parse_rules_file(&text).map_err(bad)
}
