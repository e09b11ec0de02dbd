//! Which rule reads a topic, in which form, and the sensor-id prefix the topic gives; or that the
//! topic is ignored. The forms' names are made once, at start: an entry carries its form's name.

use super::presets::{self, Slot};
use crate::config::{Action, IdTemplate, Preset, TopicRule};
use crate::domain::reading::sparkplug::{Kind as SparkplugKind, Topic};
use crate::domain::reading::{Form, ObjectOptions, preset_options};
use std::sync::Arc;

/// What the source does with a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// Appended with its form's name and the prefix of its sensor ids.
    Read { form: &'a str, prefix: String },
    /// Not appended (counted).
    Ignore,
}

/// The rules, ready to route topics.
#[derive(Clone, Debug)]
pub struct Routes(Vec<Compiled>);

#[derive(Clone, Debug)]
struct Compiled {
    filter: String,
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Read {
        form: String,
        id: Option<IdTemplate>,
    },
    Ignore,
    Preset {
        preset: Preset,
        forms: [String; 2],
    },
}

impl Routes {
    pub fn new(rules: &[TopicRule]) -> Self {
        Self(
            rules
                .iter()
                .map(|rule| Compiled {
                    filter: rule.filter.clone(),
                    kind: match &rule.action {
                        Action::Read { form, id } => Kind::Read {
                            form: form.to_string(),
                            id: id.clone(),
                        },
                        Action::Ignore => Kind::Ignore,
                        Action::Preset { preset, options } => Kind::Preset {
                            preset: *preset,
                            forms: preset_forms(*preset, options),
                        },
                    },
                })
                .collect(),
        )
    }

    /// Whether a rule reads Sparkplug B, whose messages the source reads as they arrive.
    pub fn reads_sparkplug(&self) -> bool {
        self.0
            .iter()
            .any(|rule| matches!(&rule.kind, Kind::Read { form, .. } if form == "sparkplug"))
    }

    /// What the first rule whose filter matches `topic` says; sensorhub's JSON without a prefix
    /// when none does (a broker may send a topic of an overlapping subscription).
    pub fn route(&self, topic: &str) -> Route<'_> {
        let Some(rule) = self.0.iter().find(|rule| matches(&rule.filter, topic)) else {
            return Route::Read {
                form: "json",
                prefix: String::new(),
            };
        };
        match &rule.kind {
            Kind::Ignore => Route::Ignore,
            Kind::Read { form, .. } if form == "sparkplug" => {
                sparkplug_route(form, &rule.filter, topic)
            }
            Kind::Read { form, id } => Route::Read {
                form,
                prefix: match id {
                    Some(template) => template.expand(&rule.filter, topic),
                    None => topic_prefix(&rule.filter, topic),
                },
            },
            Kind::Preset { preset, forms } => {
                let base = rule.filter.split('/').count() - 1;
                let levels: Vec<&str> = topic.split('/').collect();
                let (base, rest) = levels.split_at(base.min(levels.len()));
                match presets::route(*preset, base, rest) {
                    Some((Slot::Main, prefix)) => Route::Read {
                        form: &forms[0],
                        prefix,
                    },
                    Some((Slot::Rpc, prefix)) => Route::Read {
                        form: &forms[1],
                        prefix,
                    },
                    None => Route::Ignore,
                }
            }
        }
    }
}

/// A Sparkplug B topic: its sensors named by group, node and device; commands (`NCMD`, `DCMD`,
/// this source's rebirth requests among them) and host applications' `STATE` carry no readings.
/// A topic outside the namespace is read as the rule's, and refused naming it.
fn sparkplug_route<'a>(form: &'a str, filter: &str, topic: &str) -> Route<'a> {
    match Topic::parse(topic) {
        Some(t) if matches!(t.kind, SparkplugKind::NCmd | SparkplugKind::DCmd) => Route::Ignore,
        Some(t) => Route::Read {
            form,
            prefix: t.prefix(),
        },
        None if topic.split('/').nth(1) == Some("STATE") => Route::Ignore,
        None => Route::Read {
            form,
            prefix: topic_prefix(filter, topic),
        },
    }
}

/// The names of the forms a preset reads in, with the rule's own options over the preset's:
/// its main form, and Shelly's form of RPC notifications.
fn preset_forms(preset: Preset, options: &ObjectOptions) -> [String; 2] {
    let object = |name: &str| {
        let base = preset_options(name).unwrap_or_default();
        Form::Object(Arc::new(crate::config::merged(&base, options.clone()))).to_string()
    };
    match preset {
        Preset::Tasmota => [object("tasmota"), String::new()],
        Preset::Shelly => [object("shelly"), object("shelly:rpc")],
        Preset::Zigbee2Mqtt => [object("zigbee2mqtt"), String::new()],
        Preset::EspHome | Preset::HomeAssistant => [
            Form::State(Arc::new(options.clone())).to_string(),
            String::new(),
        ],
    }
}

/// MQTT topic matching: `+` matches one level, a final `#` any number (zero included).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (literal, Some(actual)) if literal == actual => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// The sensor-id prefix a topic gives: its levels without the filter's literal levels after its
/// last wildcard (`/+/status` makes `/sensor_1/status` into `sensor_1`), or without its last level
/// when the filter has no wildcard (`/hv/status` makes `hv`); empty levels left out, joined by `.`.
pub fn topic_prefix(filter: &str, topic: &str) -> String {
    let levels_after_wildcard = filter
        .split('/')
        .rev()
        .take_while(|level| *level != "+" && *level != "#")
        .count();
    let trailing_literals = if levels_after_wildcard == filter.split('/').count() {
        1
    } else {
        levels_after_wildcard
    };
    let levels: Vec<&str> = topic.split('/').collect();
    let keep = levels.len().saturating_sub(trailing_literals);
    levels[..keep]
        .iter()
        .filter(|level| !level.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_filters_as_mqtt_does() {
        for (filter, topic, expected) in [
            ("sensors/#", "sensors/a/b", true),
            ("sensors/#", "sensors", true),
            ("sensors/#", "other/a", false),
            ("/+/status", "/sensor_1/status", true),
            ("/+/status", "/sensor_1/status/x", false),
            ("/+/status", "sensor_1/status", false),
            ("/hv/status", "/hv/status", true),
            ("/hv/cmd/#", "/hv/cmd/setv/3", true),
            ("a/+", "a/", true),
        ] {
            assert_eq!(matches(filter, topic), expected, "{filter} ~ {topic}");
        }
    }

    #[test]
    fn the_prefix_is_the_topic_without_the_filters_literal_end() {
        assert_eq!(topic_prefix("/+/status", "/sensor_1/status"), "sensor_1");
        assert_eq!(topic_prefix("/hv/status", "/hv/status"), "hv");
        assert_eq!(topic_prefix("/hv/cmd/#", "/hv/cmd/setv/3"), "hv.cmd.setv.3");
        assert_eq!(
            topic_prefix("/isems/+/csvlog", "/isems/node/csvlog"),
            "isems.node"
        );
        assert_eq!(topic_prefix("sensors/#", "sensors"), "sensors");
    }

    fn routes(text: &str) -> Routes {
        let config = crate::config::Config::from_lookup(|name| match name {
            "SENSORHUB_MQTT_URL" => Some("mqtt://b".into()),
            "SENSORHUB_MQTT_TOPICS" => Some(text.into()),
            _ => None,
        })
        .unwrap();
        Routes::new(&config.mqtt.unwrap().rules)
    }

    fn read(form: &str, prefix: &str) -> Route<'static> {
        Route::Read {
            form: Box::leak(form.to_owned().into_boxed_str()),
            prefix: prefix.to_owned(),
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_ignore_rules_drop_their_topics() {
        let routes = routes("/hv/status=channels:number; /+/status=fields; /+/set=ignore");
        assert_eq!(routes.route("/hv/status"), read("channels:number", "hv"));
        assert_eq!(routes.route("/s1/status"), read("fields", "s1"));
        assert_eq!(routes.route("/s1/set"), Route::Ignore);
        assert_eq!(routes.route("/s1/other"), read("json", ""));
    }

    #[test]
    fn id_templates_name_levels_by_position_and_wildcard() {
        let routes = routes("site/+/+/climate=object; x/#=number");
        assert_eq!(routes.route("site/a/b/climate"), read("object", "site.a.b"));
        for (template, topic, expected) in [
            ("{2}", "site/a/b/climate", "a"),
            ("{-2}", "site/a/b/climate", "b"),
            ("{2..}", "site/a/b/climate", "a/b/climate"),
            ("{+2}.{+1}", "site/a/b/climate", "b.a"),
            ("room-{+}", "site/a/b/climate", "room-a"),
        ] {
            let t = IdTemplate::parse(template, "site/+/+/climate").unwrap();
            assert_eq!(t.expand("site/+/+/climate", topic), expected, "{template}");
        }
        let hash = IdTemplate::parse("{#}", "zigbee2mqtt/#").unwrap();
        assert_eq!(
            hash.expand("zigbee2mqtt/#", "zigbee2mqtt/kitchen/fridge"),
            "kitchen/fridge"
        );
        for bad in ["{0}", "{+3}", "{#}", "{x}", "{1", "a}", ""] {
            assert!(
                IdTemplate::parse(bad, "site/+/+/climate").is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn presets_read_their_firmwares_topics_and_ignore_the_rest() {
        let routes = routes(
            "tele/#=tasmota; shellies/#=shelly; zigbee2mqtt/#=zigbee2mqtt; \
             homeassistant/#=homeassistant; +/#=esphome",
        );
        for (topic, expected) in [
            ("tele/plug1/SENSOR", Some(("tasmota", "plug1"))),
            ("tele/plug1/STATE", Some(("tasmota", "plug1"))),
            ("tele/plug1/LWT", None),
            ("tele/plug1/INFO1", None),
            (
                "shellies/plus1pm-a8/status/switch:0",
                Some(("shelly", "plus1pm-a8.switch:0")),
            ),
            (
                "shellies/plus1pm-a8/events/rpc",
                Some(("shelly:rpc", "plus1pm-a8")),
            ),
            ("shellies/plus1pm-a8/online", None),
            ("shellies/plus1pm-a8/rpc", None),
            (
                "zigbee2mqtt/kitchen/fridge",
                Some(("zigbee2mqtt", "kitchen/fridge")),
            ),
            ("zigbee2mqtt/hall", Some(("zigbee2mqtt", "hall"))),
            ("zigbee2mqtt/bridge/state", None),
            ("zigbee2mqtt/bridge/devices", None),
            ("zigbee2mqtt/kitchen/fridge/availability", None),
            ("zigbee2mqtt/hall/set", None),
            ("zigbee2mqtt/hall/get", None),
            (
                "livingroom/sensor/temperature/state",
                Some(("state", "livingroom.sensor.temperature")),
            ),
            (
                "livingroom/binary_sensor/motion/state",
                Some(("state", "livingroom.binary_sensor.motion")),
            ),
            (
                "livingroom/climate/heat/current_temperature/state",
                Some(("state", "livingroom.climate.heat.current_temperature")),
            ),
            ("livingroom/status", None),
            ("livingroom/switch/relay/command", None),
            ("livingroom/debug", None),
            (
                "homeassistant/sensor/outside_temperature/state",
                Some(("state", "sensor.outside_temperature")),
            ),
            (
                "homeassistant/sensor/outside_temperature/unit_of_measurement",
                None,
            ),
            ("homeassistant/light/hall/brightness", None),
        ] {
            let expected = match expected {
                Some((form, prefix)) => read(form, prefix),
                None => Route::Ignore,
            };
            assert_eq!(routes.route(topic), expected, "{topic}");
        }
    }

    #[test]
    fn sparkplug_topics_are_named_by_group_node_and_device_and_commands_ignored() {
        assert!(!routes("sensors/#=json").reads_sparkplug());
        let routes = routes("spBv1.0/#=sparkplug");
        assert!(routes.reads_sparkplug());
        assert_eq!(
            routes.route("spBv1.0/plant/NDATA/edge1"),
            read("sparkplug", "plant.edge1")
        );
        assert_eq!(
            routes.route("spBv1.0/plant/DBIRTH/edge1/pump"),
            read("sparkplug", "plant.edge1.pump")
        );
        assert_eq!(routes.route("spBv1.0/plant/NCMD/edge1"), Route::Ignore);
        assert_eq!(routes.route("spBv1.0/plant/DCMD/edge1/pump"), Route::Ignore);
        assert_eq!(routes.route("spBv1.0/STATE/host1"), Route::Ignore);
        assert_eq!(
            routes.route("spBv1.0/plant/NOPE/edge1"),
            read("sparkplug", "spBv1.0.plant.NOPE.edge1")
        );
    }

    #[test]
    fn a_presets_options_travel_in_its_forms() {
        let config = routes("tele/#=tasmota");
        let Route::Read { form, .. } = config.route("tele/p/SENSOR") else {
            panic!("read");
        };
        assert_eq!(form, "tasmota", "the preset's own options: its short name");
        let text =
            "[[rule]]\nfilter = \"tele/#\"\npreset = \"tasmota\"\nzone = \"Europe/Berlin\"\n";
        let rules = crate::config::parse_rules_file(text).unwrap();
        let routes = Routes::new(&rules);
        let Route::Read { form, .. } = routes.route("tele/p/SENSOR") else {
            panic!("read");
        };
        let parsed: Form = form.parse().unwrap();
        let Form::Object(options) = parsed else {
            panic!("object form");
        };
        assert_eq!(options.time.as_deref(), Some("Time"));
        assert_eq!(options.zone.as_deref(), Some("Europe/Berlin"));
    }
}
