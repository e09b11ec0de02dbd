//! The MQTT topic rules: `SENSORHUB_MQTT_TOPICS` (`filter=form; ...`) or, once they are many,
//! `SENSORHUB_MQTT_TOPICS_FILE` (TOML, one `[[rule]]` table each). A rule reads its topics in a
//! form, ignores them, or hands them to a firmware preset; a bad rule stops start-up naming it.

use crate::domain::reading::{Form, ObjectOptions, TimeFormat};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A topic filter and what is done with its messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRule {
    pub filter: String,
    pub action: Action,
}

/// What a rule does with a matching topic's messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read in `form`; the sensor-id prefix from `id` (an [`IdTemplate`]) or, without one, the
    /// topic's levels after the filter's literal end.
    Read { form: Form, id: Option<IdTemplate> },
    /// Not appended, counted: a device family's control and availability topics.
    Ignore,
    /// A firmware's topics: which are read, in which form, with which ids, is the preset's;
    /// `options` set here replace the preset's own (a zone, states, include/exclude).
    Preset {
        preset: Preset,
        options: ObjectOptions,
    },
}

impl TopicRule {
    /// A rule reading `filter`'s topics in `form`, ids from the topic.
    pub fn read(filter: &str, form: Form) -> Self {
        Self {
            filter: filter.to_owned(),
            action: Action::Read { form, id: None },
        }
    }

    /// Whether the source subscribes to the filter: an ignore rule only keeps topics of the
    /// filters of the rules after it from being read.
    pub fn subscribes(&self) -> bool {
        self.action != Action::Ignore
    }
}

/// The firmwares whose topic layouts sensorhub knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// `<base>/<device>/SENSOR` and `/STATE` (Tasmota's `tele` prefix).
    Tasmota,
    /// Shelly Gen2+: `<device>/status/<component>` and `<device>/events/rpc`.
    Shelly,
    /// `<base>/<friendly name>`, the name possibly with `/`.
    Zigbee2Mqtt,
    /// `<node>/<component>/<name>/state`.
    EspHome,
    /// Home Assistant's MQTT statestream: `<base>/<domain>/<object id>/state`.
    HomeAssistant,
}

impl Preset {
    pub const ALL: [Preset; 5] = [
        Preset::Tasmota,
        Preset::Shelly,
        Preset::Zigbee2Mqtt,
        Preset::EspHome,
        Preset::HomeAssistant,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tasmota => "tasmota",
            Preset::Shelly => "shelly",
            Preset::Zigbee2Mqtt => "zigbee2mqtt",
            Preset::EspHome => "esphome",
            Preset::HomeAssistant => "homeassistant",
        }
    }
}

impl FromStr for Preset {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                format!(
                    "{text:?} is not a preset: tasmota, shelly, zigbee2mqtt, esphome or \
                     homeassistant"
                )
            })
    }
}

/// A sensor-id prefix made of topic levels: literal text with `{N}` (level N, from 1), `{-N}`
/// (N-th from the end), `{N..}` (levels N to the end, joined by `/`), `{+}` or `{+K}` (what the
/// filter's first or K-th `+` matched) and `{#}` (what its `#` matched, joined by `/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdTemplate(Vec<Part>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    /// Level from the start (0-based) or, negative, from the end.
    Level(isize),
    From(usize),
    Plus(usize),
    Hash,
}

impl IdTemplate {
    /// Parses `template` for rules of `filter`.
    pub fn parse(template: &str, filter: &str) -> Result<Self, String> {
        let pluses = filter.split('/').filter(|l| *l == "+").count();
        let hash = filter.ends_with('#');
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("id template {template:?} has an unclosed '{{'"))?;
            let inner = &rest[open + 1..open + close];
            let bad = || {
                format!(
                    "id template {template:?}: {{{inner}}} is none of {{N}}, {{-N}}, {{N..}}, \
                     {{+}}, {{+K}} (K up to the filter's {pluses} '+'), {{#}} (the filter ends \
                     with '#')"
                )
            };
            let part = match inner {
                "#" if hash => Part::Hash,
                "+" if pluses >= 1 => Part::Plus(0),
                _ if inner.starts_with('+') => match inner[1..].parse::<usize>() {
                    Ok(k) if (1..=pluses).contains(&k) => Part::Plus(k - 1),
                    _ => return Err(bad()),
                },
                _ if inner.ends_with("..") => match inner[..inner.len() - 2].parse::<usize>() {
                    Ok(n) if n >= 1 => Part::From(n - 1),
                    _ => return Err(bad()),
                },
                _ => match inner.parse::<isize>() {
                    Ok(n) if n >= 1 => Part::Level(n - 1),
                    Ok(n) if n <= -1 => Part::Level(n),
                    _ => return Err(bad()),
                },
            };
            parts.push(part);
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("id template {template:?} has a '}}' without '{{'"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("the id template is empty".into());
        }
        Ok(Self(parts))
    }

    /// The id `topic` gives under `filter` (which it matches); a level beyond the topic's is
    /// empty.
    pub fn expand(&self, filter: &str, topic: &str) -> String {
        let levels: Vec<&str> = topic.split('/').collect();
        let wild: Vec<&str> = filter
            .split('/')
            .zip(&levels)
            .filter(|(f, _)| *f == "+")
            .map(|(_, level)| *level)
            .collect();
        let hash_from = filter.split('/').count() - 1;
        let mut id = String::new();
        for part in &self.0 {
            match part {
                Part::Text(text) => id.push_str(text),
                Part::Level(n) => {
                    let at = if *n < 0 {
                        levels.len().checked_sub(n.unsigned_abs())
                    } else {
                        Some(*n as usize)
                    };
                    id.push_str(at.and_then(|at| levels.get(at)).copied().unwrap_or(""));
                }
                Part::From(n) => id.push_str(&levels.get(*n..).unwrap_or_default().join("/")),
                Part::Plus(k) => id.push_str(wild.get(*k).copied().unwrap_or("")),
                Part::Hash => {
                    id.push_str(&levels.get(hash_from..).unwrap_or_default().join("/"));
                }
            }
        }
        id
    }
}

/// Whether `filter` is a valid MQTT topic filter: `+` whole levels, `#` whole and last.
fn valid_filter(filter: &str) -> bool {
    let count = filter.split('/').count();
    !filter.is_empty()
        && filter.split('/').enumerate().all(|(i, level)| {
            (level != "#" || i == count - 1)
                && (level == "#" || level == "+" || !level.contains(['#', '+']))
        })
}

/// `filter=form; filter=form; ...`: a form, `ignore`, or a preset's name.
pub(super) fn parse_rules(text: &str) -> Result<Vec<TopicRule>, String> {
    let mut rules = Vec::new();
    for rule in text.split(';').map(str::trim).filter(|r| !r.is_empty()) {
        let (filter, what) = rule
            .rsplit_once('=')
            .ok_or_else(|| format!("rules of the form filter=form, not {rule:?}"))?;
        let (filter, what) = (filter.trim(), what.trim());
        let mut spec = RuleSpec {
            filter: filter.to_owned(),
            ..RuleSpec::default()
        };
        match what {
            "ignore" => spec.ignore = true,
            _ if what.parse::<Preset>().is_ok() => spec.preset = Some(what.to_owned()),
            _ => spec.form = Some(what.to_owned()),
        }
        rules.push(spec.rule()?);
    }
    if rules.is_empty() {
        return Err("at least one rule filter=form".into());
    }
    Ok(rules)
}

/// The rules of a TOML file: `[[rule]]` tables.
pub fn parse_rules_file(text: &str) -> Result<Vec<TopicRule>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        rule: Vec<RuleSpec>,
    }
    let file: File = toml::from_str(text).map_err(|e| format!("not a rules file: {e}"))?;
    if file.rule.is_empty() {
        return Err("no [[rule]] in the file".into());
    }
    file.rule
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let filter = spec.filter.clone();
            spec.rule()
                .map_err(|why| format!("rule {} (filter {filter:?}): {why}", i + 1))
        })
        .collect()
}

/// One rule as written.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    filter: String,
    #[serde(default)]
    form: Option<String>,
    #[serde(default)]
    preset: Option<String>,
    #[serde(default)]
    ignore: bool,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    root: Option<String>,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    time_format: Option<TimeFormat>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    arrays: bool,
    #[serde(default)]
    states: BTreeMap<String, f64>,
}

impl RuleSpec {
    fn options(&self) -> ObjectOptions {
        ObjectOptions {
            root: self.root.clone(),
            time: self.time.clone(),
            time_format: self.time_format.unwrap_or_default(),
            zone: self.zone.clone(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            arrays: self.arrays,
            states: self
                .states
                .iter()
                .map(|(word, value)| (word.to_lowercase(), *value))
                .collect(),
        }
    }

    fn rule(self) -> Result<TopicRule, String> {
        if !valid_filter(&self.filter) {
            return Err(format!(
                "an MQTT topic filter ('+' for one level, '#' only last), not {:?}",
                self.filter
            ));
        }
        let options = self.options();
        options.check()?;
        let has_options = options != ObjectOptions::default();
        let action = match (self.ignore, &self.preset, &self.form) {
            (true, None, None) if self.id.is_none() && !has_options => Action::Ignore,
            (true, ..) => return Err("an ignore rule takes nothing else".into()),
            (false, Some(preset), None) => {
                if !self.filter.ends_with('#') {
                    return Err(format!(
                        "a preset reads every topic under a base: a filter ending in '#', \
                         such as tele/#, not {:?}",
                        self.filter
                    ));
                }
                if self.id.is_some() {
                    return Err("a preset makes its own ids: no id".into());
                }
                Action::Preset {
                    preset: preset.parse()?,
                    options,
                }
            }
            (false, None, form) => {
                let form: Form = form.as_deref().unwrap_or("json").parse()?;
                let form = match (form, has_options) {
                    (form, false) => form,
                    (Form::Object(base), true) => Form::Object(merged(&base, options).into()),
                    (Form::State(base), true) => Form::State(merged(&base, options).into()),
                    (other, true) => {
                        return Err(format!(
                            "the form {other} takes no options (root, time, zone, include, \
                             exclude, arrays, states): those are the object and state forms'"
                        ));
                    }
                };
                let id = self
                    .id
                    .as_deref()
                    .map(|template| IdTemplate::parse(template, &self.filter))
                    .transpose()?;
                Action::Read { form, id }
            }
            (false, Some(_), Some(_)) => return Err("a form or a preset, not both".into()),
        };
        Ok(TopicRule {
            filter: self.filter,
            action,
        })
    }
}

/// `base` with what `over` sets replacing it.
pub fn merged(base: &ObjectOptions, over: ObjectOptions) -> ObjectOptions {
    let mut states = base.states.clone();
    states.extend(over.states);
    ObjectOptions {
        root: over.root.or_else(|| base.root.clone()),
        time: over.time.or_else(|| base.time.clone()),
        time_format: if over.time_format == TimeFormat::Auto {
            base.time_format
        } else {
            over.time_format
        },
        zone: over.zone.or_else(|| base.zone.clone()),
        include: if over.include.is_empty() {
            base.include.clone()
        } else {
            over.include
        },
        exclude: if over.exclude.is_empty() {
            base.exclude.clone()
        } else {
            over.exclude
        },
        arrays: over.arrays || base.arrays,
        states,
    }
}

impl fmt::Display for TopicRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.action {
            Action::Read { form, .. } => write!(f, "{}={form}", self.filter),
            Action::Ignore => write!(f, "{}=ignore", self.filter),
            Action::Preset { preset, .. } => write!(f, "{}={}", self.filter, preset.name()),
        }
    }
}
