//! The configuration read from variables: defaults, every error naming its variable, secrets
//! from files and never printed, the documented table (docs/configuration.md).

use super::*;
use crate::domain::reading::Form;
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
        ("SENSORHUB_ON_CONFLICT", "last", "keep_first or keep_last"),
        (
            "SENSORHUB_LINE_PROTOCOL_ON_CONFLICT",
            "newest",
            "keep_first or keep_last",
        ),
        ("SENSORHUB_RESOLUTIONS", "1m,forever", "durations"),
        ("SENSORHUB_TIMEZONE", "Mars/Olympus", "IANA"),
        ("SENSORHUB_MAX_FUTURE_SKEW", "-5", "duration"),
        ("SENSORHUB_STREAM", " ", "non-empty"),
        ("SENSORHUB_NETWORK_TIMEOUT", "2s", "at least 5s"),
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
fn the_configuration_table_in_the_docs_matches_the_code() {
    let readme = include_str!("../../docs/configuration.md");
    assert!(
        readme.contains(&markdown_table()),
        "docs/configuration.md's table is out of date; replace it with:\n{}",
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
fn compaction_is_off_unless_given_an_age_of_an_hour_or_more() {
    assert_eq!(config(&[]).unwrap().compact_after, None);
    assert_eq!(
        config(&[("SENSORHUB_COMPACT_AFTER", "off")])
            .unwrap()
            .compact_after,
        None
    );
    assert_eq!(
        config(&[("SENSORHUB_COMPACT_AFTER", "7d")])
            .unwrap()
            .compact_after,
        Some(Duration::from_secs(7 * 86_400))
    );
    for bad in ["30m", "weekly", "-1d"] {
        let error = config(&[("SENSORHUB_COMPACT_AFTER", bad)])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("SENSORHUB_COMPACT_AFTER=\"{bad}\""))
                && error.contains("at least 1h"),
            "{error}"
        );
    }
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
    assert_eq!(
        mqtt.client_id, None,
        "made once per deployment, kept in Redis"
    );
    assert_eq!(mqtt.rules, vec![TopicRule::read("sensors/#", Form::Json)]);
    assert_eq!(
        (mqtt.shared, mqtt.connections),
        (false, 1),
        "one session, leased"
    );
    let shared = config(&[
        ("SENSORHUB_MQTT_URL", "mqtt://broker"),
        ("SENSORHUB_MQTT_SHARED", "true"),
        ("SENSORHUB_MQTT_CONNECTIONS", "4"),
    ])
    .unwrap()
    .mqtt
    .unwrap();
    assert_eq!((shared.shared, shared.connections), (true, 4));
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
        (
            vec![
                ("SENSORHUB_MQTT_URL", "mqtt://b"),
                ("SENSORHUB_MQTT_SHARED", "yes"),
            ],
            "SENSORHUB_MQTT_SHARED",
            "true or false",
        ),
        (
            vec![
                ("SENSORHUB_MQTT_URL", "mqtt://b"),
                ("SENSORHUB_MQTT_CONNECTIONS", "3"),
            ],
            "SENSORHUB_MQTT_CONNECTIONS",
            "SENSORHUB_MQTT_SHARED=true",
        ),
        (
            vec![
                ("SENSORHUB_MQTT_URL", "mqtt://b"),
                ("SENSORHUB_MQTT_SHARED", "true"),
                ("SENSORHUB_MQTT_CONNECTIONS", "0"),
            ],
            "SENSORHUB_MQTT_CONNECTIONS",
            "from 1 to 64",
        ),
        (
            vec![
                ("SENSORHUB_MQTT_URL", "mqtt://b"),
                ("SENSORHUB_MQTT_SHARED", "true"),
                ("SENSORHUB_MQTT_TOPICS", "spBv1.0/#=sparkplug"),
            ],
            "SENSORHUB_MQTT_SHARED",
            "BIRTH",
        ),
    ] {
        let error = config(&vars).unwrap_err();
        let text = error.to_string();
        assert_eq!(error.var, var, "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
}

#[test]
fn read_shards_are_numbers_and_ranges_below_the_shard_count() {
    assert_eq!(shard_list(None, 4).unwrap(), [0, 1, 2, 3]);
    assert_eq!(shard_list(Some(" "), 2).unwrap(), [0, 1]);
    assert_eq!(shard_list(Some("0-2,7,2"), 16).unwrap(), [0, 1, 2, 7]);
    let error = shard_list(Some("3-20"), 16).unwrap_err();
    assert_eq!(error.var, "SENSORHUB_READ_SHARDS");
    assert!(error.to_string().contains("0 to 15"), "{error}");
    assert!(shard_list(Some("5-2"), 16).is_err());
    assert!(shard_list(Some("x"), 16).is_err());
}

#[test]
fn an_empty_token_is_refused_rather_than_leaving_its_routes_open() {
    for name in [
        "SENSORHUB_API_TOKEN",
        "SENSORHUB_INGEST_TOKEN",
        "SENSORHUB_ADMIN_TOKEN",
    ] {
        for empty in ["", "  "] {
            let error = config(&[("SENSORHUB_API_TOKEN", "read"), (name, empty)])
                .err()
                .unwrap_or_else(|| panic!("{name}={empty:?} accepted"));
            assert_eq!(error.var, name);
            assert!(
                error.to_string().contains("leave the variable unset"),
                "{error}"
            );
        }
    }
    // Unset, the ingest token is the API token's, and there is no admin token.
    let c = config(&[("SENSORHUB_API_TOKEN", "read")]).unwrap();
    assert_eq!(c.ingest_token.unwrap().expose(), "read");
    assert!(c.admin_token.is_none());
}

/// A rules file as docs/mqtt.md shows it.
const RULES_FILE: &str = r#"
[[rule]]
filter = "zigbee2mqtt/#"
preset = "zigbee2mqtt"

[[rule]]
filter = "tele/#"
preset = "tasmota"
zone = "Europe/Berlin"

[[rule]]
filter = "home/+/+/climate"
form = "object"
id = "{2}.{3}"
time = "ts"
time_format = "epoch_ms"
include = ["temp", "hum"]
states = { heating = 1, idle = 0 }

[[rule]]
filter = "home/+/+/set"
ignore = true
"#;

fn rules_file(text: &str) -> Result<Config, ConfigError> {
    let path = std::env::temp_dir().join(format!(
        "sensorhub-rules-{}-{}.toml",
        std::process::id(),
        text.len()
    ));
    std::fs::write(&path, text).unwrap();
    let result = config(&[
        ("SENSORHUB_MQTT_URL", "mqtt://b"),
        ("SENSORHUB_MQTT_TOPICS_FILE", path.to_str().unwrap()),
    ]);
    std::fs::remove_file(&path).unwrap();
    result
}

#[test]
fn a_rules_file_gives_forms_presets_templates_and_ignores() {
    let rules = rules_file(RULES_FILE).unwrap().mqtt.unwrap().rules;
    let shown: Vec<String> = rules.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "zigbee2mqtt/#=zigbee2mqtt",
            "tele/#=tasmota",
            r#"home/+/+/climate=object:{"time":"ts","time_format":"epoch_ms","include":["temp","hum"],"states":{"heating":1.0,"idle":0.0}}"#,
            "home/+/+/set=ignore",
        ]
    );
    let Action::Read { id: Some(id), .. } = &rules[2].action else {
        panic!("an id template");
    };
    assert_eq!(
        id.expand("home/+/+/climate", "home/f1/kitchen/climate"),
        "f1.kitchen"
    );
    assert!(!rules[3].subscribes(), "an ignore rule only shadows");
}

#[test]
fn a_bad_rule_stops_start_up_naming_the_rule_and_the_problem() {
    for (text, expected) in [
        (
            "[[rule]]\nfilter = \"a/#/b\"\nform = \"json\"\n",
            "rule 1 (filter \"a/#/b\")",
        ),
        (
            "[[rule]]\nfilter = \"a\"\n\n[[rule]]\nfilter = \"b/#\"\npreset = \"sonoff\"\n",
            "rule 2",
        ),
        (
            "[[rule]]\nfilter = \"b/+\"\npreset = \"tasmota\"\n",
            "ending in '#'",
        ),
        (
            "[[rule]]\nfilter = \"b\"\nform = \"fields\"\ntime = \"t\"\n",
            "takes no options",
        ),
        (
            "[[rule]]\nfilter = \"b\"\nform = \"object\"\nzone = \"Mars/Base\"\n",
            "Mars/Base",
        ),
        (
            "[[rule]]\nfilter = \"b/+\"\nform = \"number\"\nid = \"{+2}\"\n",
            "{+2}",
        ),
        (
            "[[rule]]\nfilter = \"b\"\nignore = true\nform = \"json\"\n",
            "ignore rule",
        ),
        (
            "[[rule]]\nfilter = \"b\"\nfrom = \"json\"\n",
            "unknown field",
        ),
        ("", "no [[rule]]"),
    ] {
        let error = rules_file(text).unwrap_err();
        assert_eq!(error.var, "SENSORHUB_MQTT_TOPICS_FILE", "{error}");
        assert!(
            error.to_string().contains(expected),
            "{expected:?} in {error}"
        );
    }
    let both = config(&[
        ("SENSORHUB_MQTT_URL", "mqtt://b"),
        ("SENSORHUB_MQTT_TOPICS", "a=json"),
        ("SENSORHUB_MQTT_TOPICS_FILE", "/rules.toml"),
    ])
    .unwrap_err();
    assert!(both.to_string().contains("not both"), "{both}");
}

#[test]
fn topic_rules_in_the_variable_name_ignores_and_presets() {
    let rules = config(&[
        ("SENSORHUB_MQTT_URL", "mqtt://b"),
        (
            "SENSORHUB_MQTT_TOPICS",
            "z/bridge/#=ignore; z/#=zigbee2mqtt; s/+=state",
        ),
    ])
    .unwrap()
    .mqtt
    .unwrap()
    .rules;
    assert_eq!(rules[0].action, Action::Ignore);
    assert!(matches!(
        rules[1].action,
        Action::Preset {
            preset: Preset::Zigbee2Mqtt,
            ..
        }
    ));
    assert_eq!(rules[2].to_string(), "s/+=state");
}

#[test]
fn the_rules_file_in_the_docs_is_read() {
    let docs = include_str!("../../docs/mqtt.md");
    let start = docs.find("```toml\n").expect("an example") + "```toml\n".len();
    let example = &docs[start..start + docs[start..].find("```").unwrap()];
    let rules = parse_rules_file(example).unwrap();
    assert_eq!(rules.len(), 4);
}

#[test]
fn the_kubernetes_manifests_set_only_variables_sensorhub_reads() {
    let manifests = [
        include_str!("../../docker/kubernetes/configmap.yaml"),
        include_str!("../../docker/kubernetes/statefulset.yaml"),
    ];
    let mut seen = 0;
    for text in manifests {
        for (at, _) in text.match_indices("SENSORHUB_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let known = VARIABLES.iter().any(|v| v.name == name)
                || name
                    .strip_suffix("_FILE")
                    .is_some_and(|secret| SECRET_VARIABLES.contains(&secret));
            assert!(
                known,
                "docker/kubernetes sets {name}, which sensorhub does not read"
            );
            seen += 1;
        }
    }
    assert!(seen >= 8, "the manifests set the variables ({seen} found)");
}
