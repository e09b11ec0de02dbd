//! The topic layouts of the firmwares sensorhub knows: which of a firmware's topics carry
//! readings, in which of its forms, under which sensor ids; every other topic under the rule's
//! base (availability, commands, bridge and debug topics) is ignored.
//!
//! `base` is the topic's levels the rule's filter names before its `#`, `rest` the levels after.

use crate::config::Preset;

/// Which of a preset's forms reads a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The preset's form.
    Main,
    /// Shelly's RPC notifications (`<device>/events/rpc`).
    Rpc,
}

/// The form and sensor-id prefix of a topic, or `None` when the preset ignores it.
pub fn route(preset: Preset, base: &[&str], rest: &[&str]) -> Option<(Slot, String)> {
    let levels: Vec<&str> = base.iter().chain(rest).copied().collect();
    match preset {
        // `tele/<device>/SENSOR` (sensors, energy) and `/STATE` (relays, Wi-Fi); `LWT`, `INFO*`,
        // `RESULT`, ... carry no readings.
        Preset::Tasmota => match levels.as_slice() {
            [.., device, "SENSOR" | "STATE"] if !rest.is_empty() => {
                Some((Slot::Main, (*device).to_owned()))
            }
            _ => None,
        },
        // Shelly Gen2+: `<device>/status/<component>` and `<device>/events/rpc`, the device
        // being its topic prefix (its id by default).
        Preset::Shelly => match levels.as_slice() {
            [.., device, "status", component] if rest.len() >= 2 => {
                Some((Slot::Main, format!("{device}.{component}")))
            }
            [.., device, "events", "rpc"] if rest.len() >= 2 => {
                Some((Slot::Rpc, (*device).to_owned()))
            }
            _ => None,
        },
        // `zigbee2mqtt/<friendly name>`: the name may hold `/`; the bridge's own topics and a
        // device's availability and command topics carry no readings.
        Preset::Zigbee2Mqtt => match rest {
            [] | ["bridge", ..] => None,
            [.., "availability" | "set" | "get"] => None,
            name => Some((Slot::Main, name.join("/"))),
        },
        // `<node>/<component>/<name>[/<attribute>]/state`; `status`, `debug` and `command`
        // topics carry none. The node is every level before the component (ESPHome's topic
        // prefix, the node's name by default).
        Preset::EspHome => {
            let at = levels
                .iter()
                .position(|level| ESPHOME_COMPONENTS.contains(level))
                .filter(|at| *at > 0)?;
            match &levels[at..] {
                [component, name, attribute @ .., "state"] if attribute.len() <= 1 => {
                    let mut id = levels[..at].join(".");
                    for level in [component, name].into_iter().chain(attribute) {
                        id.push('.');
                        id.push_str(level);
                    }
                    Some((Slot::Main, id))
                }
                _ => None,
            }
        }
        // Statestream: `<base>/<domain>/<object id>/state`, the entity `<domain>.<object id>`;
        // attributes have topics of their own beside `state`.
        Preset::HomeAssistant => match rest {
            [domain, object_id, "state"] => Some((Slot::Main, format!("{domain}.{object_id}"))),
            _ => None,
        },
    }
}

/// ESPHome's MQTT components, whose states are published under `<component>/<name>/state`.
const ESPHOME_COMPONENTS: [&str; 20] = [
    "sensor",
    "binary_sensor",
    "text_sensor",
    "switch",
    "light",
    "fan",
    "cover",
    "climate",
    "number",
    "select",
    "lock",
    "valve",
    "button",
    "text",
    "event",
    "alarm_control_panel",
    "datetime",
    "date",
    "time",
    "update",
];
