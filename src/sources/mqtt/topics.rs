//! Which rule reads a topic, and the sensor-id prefix the topic gives.

use crate::config::TopicRule;

/// The first rule whose filter matches `topic`.
pub fn rule_for<'a>(rules: &'a [TopicRule], topic: &str) -> Option<&'a TopicRule> {
    rules.iter().find(|rule| matches(&rule.filter, topic))
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

    #[test]
    fn the_first_matching_rule_wins() {
        let rules = vec![
            TopicRule {
                filter: "/hv/status".into(),
                form: "channels:number".parse().unwrap(),
            },
            TopicRule {
                filter: "/+/status".into(),
                form: "fields".parse().unwrap(),
            },
        ];
        assert_eq!(rule_for(&rules, "/hv/status").unwrap().filter, "/hv/status");
        assert_eq!(rule_for(&rules, "/s1/status").unwrap().filter, "/+/status");
        assert!(rule_for(&rules, "/s1/other").is_none());
    }
}
