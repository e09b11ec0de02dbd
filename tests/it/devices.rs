//! The devices people own, through the real Mosquitto and the sensorhub binary: each firmware
//! preset's documented payloads are stored as docs/mqtt.md's preset table says, with the device's own
//! time where it sends one; their control, availability and bridge topics are ignored and counted,
//! not dead-lettered; states are numbers and words meaning "no value" are skipped and counted.

use crate::helpers::*;
use crate::mqtt::publish;
use chrono::{DateTime, Duration as TimeDelta, SecondsFormat, Utc};
use std::collections::BTreeMap;
use std::time::Duration;

/// Readings of the test's database: sensor id to (value, time).
async fn stored(pg: &tokio_postgres::Client) -> BTreeMap<String, (f64, DateTime<Utc>)> {
    pg.query("SELECT sensor_id, value, ts FROM readings", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect()
}

/// A sensorhub with the rules `file` (TOML), subscribed to the shared broker.
async fn hub_with_rules(res: &Resources, file: &str) -> (Sensorhub, RemovedOnDrop) {
    let dir = RemovedOnDrop(std::env::temp_dir().join(unique_name("rules")));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("rules.toml");
    std::fs::write(&path, file).unwrap();
    let mut env = res.hub_env();
    env.extend([
        ("SENSORHUB_MQTT_URL", "mqtt://127.0.0.1:1883".to_owned()),
        ("SENSORHUB_MQTT_TOPICS_FILE", path.display().to_string()),
    ]);
    let hub = Sensorhub::spawn(&env).await;
    hub.wait_for_metric("sensorhub_mqtt_connected", 1.0, Duration::from_secs(20))
        .await;
    (hub, dir)
}

#[actix_web::test]
async fn each_firmwares_documented_payloads_are_stored_as_the_docs_say() {
    let res = Resources::new();
    let (tasmota, shelly, z2m, esphome, hass) = (
        unique_name("tele"),
        unique_name("shellies"),
        unique_name("z2m"),
        unique_name("esp"),
        unique_name("hass"),
    );
    let rules = format!(
        r#"
[[rule]]
filter = "{tasmota}/#"
preset = "tasmota"
zone = "Europe/Berlin"

[[rule]]
filter = "{shelly}/#"
preset = "shelly"

[[rule]]
filter = "{z2m}/#"
preset = "zigbee2mqtt"

[[rule]]
filter = "{hass}/#"
preset = "homeassistant"

[[rule]]
filter = "{esphome}/#"
preset = "esphome"
"#
    );
    let (hub, _dir) = hub_with_rules(&res, &rules).await;
    // Times an hour ago, to the second (the devices' own clocks).
    let at = Utc::now() - TimeDelta::hours(1);
    let at = DateTime::from_timestamp(at.timestamp(), 0).unwrap();
    let berlin = at.with_timezone(&chrono_tz::Europe::Berlin);
    let local = berlin.format("%Y-%m-%dT%H:%M:%S").to_string();
    let epoch = at.timestamp();
    let iso = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    let messages: Vec<(String, String)> = vec![
        (
            format!("{tasmota}/plug1/SENSOR"),
            format!(
                r#"{{"Time":"{local}","ENERGY":{{"Total":79.788,"Power":1,"Voltage":230,"Current":"0.012"}},"AM2301":{{"Temperature":21.5,"Humidity":40.1}},"TempUnit":"C"}}"#
            ),
        ),
        (
            format!("{tasmota}/plug1/STATE"),
            format!(r#"{{"Time":"{local}","UptimeSec":311,"POWER":"ON","Wifi":{{"RSSI":100}}}}"#),
        ),
        (format!("{tasmota}/plug1/LWT"), "Online".to_owned()),
        (
            format!("{shelly}/shellyplus1pm-a8/status/switch:0"),
            r#"{"id":0,"output":true,"apower":8.9,"voltage":229.8,"current":0.04,"aenergy":{"total":1203.4,"by_minute":[1.1,0,0],"minute_ts":1733054400},"temperature":{"tC":41.2}}"#.to_owned(),
        ),
        (
            format!("{shelly}/shellyplus1pm-b9/events/rpc"),
            format!(
                r#"{{"src":"shellyplus1pm-b9","method":"NotifyStatus","params":{{"ts":{epoch}.25,"switch:0":{{"id":0,"apower":12.5}}}}}}"#
            ),
        ),
        (format!("{shelly}/shellyplus1pm-a8/online"), "true".to_owned()),
        (
            format!("{z2m}/kitchen/fridge"),
            format!(
                r#"{{"temperature":21.3,"humidity":44.7,"battery":90,"linkquality":120,"occupancy":true,"state":"ON","last_seen":"{iso}"}}"#
            ),
        ),
        (format!("{z2m}/kitchen/fridge/availability"), r#"{"state":"online"}"#.to_owned()),
        (format!("{z2m}/kitchen/fridge/set"), r#"{"state":"OFF"}"#.to_owned()),
        (format!("{z2m}/bridge/state"), r#"{"state":"online"}"#.to_owned()),
        (format!("{esphome}/sensor/temperature/state"), "21.50".to_owned()),
        (format!("{esphome}/binary_sensor/motion/state"), "ON".to_owned()),
        (format!("{esphome}/sensor/humidity/state"), "nan".to_owned()),
        (format!("{esphome}/status"), "online".to_owned()),
        (format!("{esphome}/switch/relay/command"), "ON".to_owned()),
        (format!("{hass}/sensor/outside_temperature/state"), "21.5".to_owned()),
        (format!("{hass}/binary_sensor/door/state"), "off".to_owned()),
        (format!("{hass}/sensor/attic/state"), "unavailable".to_owned()),
        (format!("{hass}/sensor/outside_temperature/unit_of_measurement"), "\"°C\"".to_owned()),
    ];
    let bytes: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|(t, p)| (t.clone(), p.clone().into_bytes()))
        .collect();
    publish(&bytes).await;
    let pg = pg_client(&res.database_url).await;
    let expected: Vec<(String, f64, Option<DateTime<Utc>>)> = [
        ("plug1.ENERGY.Total", 79.788, Some(at)),
        ("plug1.ENERGY.Power", 1.0, Some(at)),
        ("plug1.ENERGY.Voltage", 230.0, Some(at)),
        ("plug1.ENERGY.Current", 0.012, Some(at)),
        ("plug1.AM2301.Temperature", 21.5, Some(at)),
        ("plug1.AM2301.Humidity", 40.1, Some(at)),
        ("plug1.UptimeSec", 311.0, Some(at)),
        ("plug1.POWER", 1.0, Some(at)),
        ("plug1.Wifi.RSSI", 100.0, Some(at)),
        ("shellyplus1pm-a8.switch:0.output", 1.0, None),
        ("shellyplus1pm-a8.switch:0.apower", 8.9, None),
        ("shellyplus1pm-a8.switch:0.voltage", 229.8, None),
        ("shellyplus1pm-a8.switch:0.current", 0.04, None),
        ("shellyplus1pm-a8.switch:0.aenergy.total", 1203.4, None),
        ("shellyplus1pm-a8.switch:0.temperature.tC", 41.2, None),
        (
            "shellyplus1pm-b9.switch:0.apower",
            12.5,
            Some(at + TimeDelta::milliseconds(250)),
        ),
        ("kitchen/fridge.temperature", 21.3, Some(at)),
        ("kitchen/fridge.humidity", 44.7, Some(at)),
        ("kitchen/fridge.battery", 90.0, Some(at)),
        ("kitchen/fridge.linkquality", 120.0, Some(at)),
        ("kitchen/fridge.occupancy", 1.0, Some(at)),
        ("kitchen/fridge.state", 1.0, Some(at)),
        (&format!("{esphome}.sensor.temperature"), 21.5, None),
        (&format!("{esphome}.binary_sensor.motion"), 1.0, None),
        ("sensor.outside_temperature", 21.5, None),
        ("binary_sensor.door", 0.0, None),
    ]
    .iter()
    .map(|(id, v, ts)| ((*id).to_owned(), *v, *ts))
    .collect();
    wait_for_count(
        &pg,
        "SELECT count(*) FROM readings",
        expected.len() as i64,
        Duration::from_secs(30),
    )
    .await;
    let rows = stored(&pg).await;
    for (id, value, ts) in &expected {
        let (got, got_ts) = rows
            .get(id)
            .unwrap_or_else(|| panic!("{id} stored: {rows:?}"));
        assert_eq!(got, value, "{id}");
        if let Some(ts) = ts {
            assert_eq!(got_ts, ts, "{id}: the device's own time");
        }
    }
    assert_eq!(rows.len(), expected.len(), "nothing else: {rows:?}");
    // LWT, online, availability, set, bridge, status, command, unit_of_measurement.
    hub.wait_for_metric(
        "sensorhub_mqtt_messages_ignored_total",
        8.0,
        Duration::from_secs(10),
    )
    .await;
    // nan, unavailable.
    hub.wait_for_metric(
        "sensorhub_mqtt_values_skipped_total{reason=\"no_value\"}",
        2.0,
        Duration::from_secs(10),
    )
    .await;
    let dead: i64 = redis::cmd("XLEN")
        .arg(format!("{}:dead", res.stream))
        .query_async(&mut redis_conn(REDIS_URL).await)
        .await
        .unwrap();
    assert_eq!(dead, 0, "nothing dead-lettered");
}
