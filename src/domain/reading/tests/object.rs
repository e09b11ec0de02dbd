//! Tests of the `object` and `state` forms and the firmware presets, on the payloads those
//! projects document.

use super::super::*;
use chrono::{DateTime, Utc};

const NOW: &str = "2026-01-01T00:00:00Z";

fn read_counting(
    form: &str,
    prefix: &str,
    payload: &str,
    skipped: &Skipped,
) -> Vec<Result<Reading, Rejection>> {
    let limits = Limits {
        timezone: "Europe/Berlin".parse().unwrap(),
        max_age: std::time::Duration::from_secs(10 * 365 * 86_400),
        ..Limits::default()
    };
    let now: DateTime<Utc> = NOW.parse().unwrap();
    let ctx = ParseContext::new(&limits, now, now).with_skipped(skipped);
    let form: Form = form.parse().unwrap();
    parse_form(&form, prefix, payload.as_bytes(), &ctx).into_vec()
}

fn read(form: &str, prefix: &str, payload: &str) -> Vec<Result<Reading, Rejection>> {
    read_counting(form, prefix, payload, &Skipped::default())
}

/// `(sensor id, value)` of each reading, sorted; a rejection's reason.
fn values(outcomes: &[Result<Reading, Rejection>]) -> Vec<Result<(String, f64), Reason>> {
    let mut values: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            Ok(r) => Ok((r.sensor_id.to_string(), r.value)),
            Err(e) => Err(e.reason),
        })
        .collect();
    values.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    values
}

fn ok(pairs: &[(&str, f64)]) -> Vec<Result<(String, f64), Reason>> {
    let mut v: Vec<_> = pairs
        .iter()
        .map(|(id, x)| Ok(((*id).to_owned(), *x)))
        .collect();
    v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    v
}

fn time_of(outcomes: &[Result<Reading, Rejection>]) -> DateTime<Utc> {
    outcomes[0].as_ref().unwrap().ts
}

#[test]
fn tasmota_sensor_messages_are_read_whole_at_the_devices_local_time() {
    let payload = r#"{"Time":"2024-07-27T10:51:55","ENERGY":{"TotalStartTime":"2024-01-05T16:23:09","Total":79.788,"Yesterday":0.312,"Today":0.101,"Period":0,"Power":1,"ApparentPower":3,"ReactivePower":3,"Factor":0.35,"Voltage":230,"Current":"0.012"},"AM2301":{"Temperature":21.5,"Humidity":40.1,"DewPoint":7.4},"TempUnit":"C"}"#;
    let skipped = Skipped::default();
    let outcomes = read_counting("tasmota", "plug1", payload, &skipped);
    assert_eq!(
        values(&outcomes),
        ok(&[
            ("plug1.ENERGY.Total", 79.788),
            ("plug1.ENERGY.Yesterday", 0.312),
            ("plug1.ENERGY.Today", 0.101),
            ("plug1.ENERGY.Period", 0.0),
            ("plug1.ENERGY.Power", 1.0),
            ("plug1.ENERGY.ApparentPower", 3.0),
            ("plug1.ENERGY.ReactivePower", 3.0),
            ("plug1.ENERGY.Factor", 0.35),
            ("plug1.ENERGY.Voltage", 230.0),
            // A number sent as a string, as some drivers do.
            ("plug1.ENERGY.Current", 0.012),
            ("plug1.AM2301.Temperature", 21.5),
            ("plug1.AM2301.Humidity", 40.1),
            ("plug1.AM2301.DewPoint", 7.4),
        ])
    );
    // 10:51:55 in Berlin in summer is 08:51:55 UTC.
    assert_eq!(
        time_of(&outcomes),
        "2024-07-27T08:51:55Z".parse::<DateTime<Utc>>().unwrap()
    );
    let counts: Vec<(Skip, u64)> = skipped.counts().collect();
    assert_eq!(
        counts,
        [
            (Skip::NoValue, 0),
            (Skip::Text, 2),
            (Skip::Array, 0),
            (Skip::Unsupported, 0)
        ],
        "TotalStartTime, TempUnit"
    );
}

#[test]
fn tasmota_state_messages_map_power_to_one_and_zero() {
    let payload = r#"{"Time":"2024-07-27T10:51:55","Uptime":"0T00:05:11","UptimeSec":311,"Heap":27,"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER":"ON","Wifi":{"AP":1,"SSId":"home","BSSId":"AA:BB:CC:DD:EE:FF","Channel":6,"Mode":"11n","RSSI":100,"Signal":-50,"LinkCount":1,"Downtime":"0T00:00:03"}}"#;
    let outcomes = read("tasmota", "plug1", payload);
    let by_id: std::collections::BTreeMap<String, f64> = outcomes
        .iter()
        .map(|o| o.as_ref().unwrap())
        .map(|r| (r.sensor_id.to_string(), r.value))
        .collect();
    assert_eq!(by_id["plug1.POWER"], 1.0);
    assert_eq!(by_id["plug1.Wifi.Signal"], -50.0);
    assert_eq!(by_id["plug1.UptimeSec"], 311.0);
    assert!(
        !by_id.contains_key("plug1.SleepMode"),
        "text is not a reading"
    );
}

#[test]
fn shelly_gen2_status_reads_nested_energy_temperature_and_the_output() {
    let payload = r#"{"id":0,"source":"init","output":true,"apower":8.9,"voltage":229.8,"freq":50.0,"current":0.04,"pf":0.52,"aenergy":{"total":1203.4,"by_minute":[1.1,0,0],"minute_ts":1733054400},"ret_aenergy":{"total":0.0,"by_minute":[0,0,0],"minute_ts":1733054400},"temperature":{"tC":41.2,"tF":106.2}}"#;
    let skipped = Skipped::default();
    let outcomes = read_counting(
        "shelly",
        "shellyplus1pm-a8032ab12345.switch:0",
        payload,
        &skipped,
    );
    let p = "shellyplus1pm-a8032ab12345.switch:0";
    let id = |s: &str| format!("{p}.{s}");
    let expected: Vec<(String, f64)> = [
        ("output", 1.0),
        ("apower", 8.9),
        ("voltage", 229.8),
        ("freq", 50.0),
        ("current", 0.04),
        ("pf", 0.52),
        ("aenergy.total", 1203.4),
        ("ret_aenergy.total", 0.0),
        ("temperature.tC", 41.2),
        ("temperature.tF", 106.2),
    ]
    .iter()
    .map(|(k, v)| (id(k), *v))
    .collect();
    let pairs: Vec<(&str, f64)> = expected.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(values(&outcomes), ok(&pairs));
    assert_eq!(
        time_of(&outcomes),
        NOW.parse::<DateTime<Utc>>().unwrap(),
        "receipt time"
    );
    assert_eq!(
        skipped.counts().find(|(s, _)| *s == Skip::Array).unwrap().1,
        0,
        "by_minute is excluded, not skipped"
    );
}

#[test]
fn shelly_notify_status_takes_the_devices_time_and_names_each_component() {
    let payload = r#"{"src":"shellyplus1pm-a8032ab12345","dst":"shellyplus1pm-a8032ab12345/events","method":"NotifyStatus","params":{"ts":1733054400.12,"switch:0":{"id":0,"apower":12.5,"aenergy":{"by_minute":[3.2,0,0],"minute_ts":1733054400,"total":1205.1}}}}"#;
    let outcomes = read("shelly:rpc", "shellyplus1pm-a8032ab12345", payload);
    assert_eq!(
        values(&outcomes),
        ok(&[
            ("shellyplus1pm-a8032ab12345.switch:0.apower", 12.5),
            ("shellyplus1pm-a8032ab12345.switch:0.aenergy.total", 1205.1),
        ])
    );
    assert_eq!(time_of(&outcomes).timestamp_micros(), 1_733_054_400_120_000);
    // An event carries no status: nothing to read, nothing refused.
    let event = r#"{"src":"shellyplus1pm-a8","method":"NotifyEvent","params":{"ts":1733054400.5,"events":[{"component":"input:0","event":"single_push"}]}}"#;
    let skipped = Skipped::default();
    assert!(read_counting("shelly:rpc", "shellyplus1pm-a8", event, &skipped).is_empty());
    assert_eq!(
        skipped.counts().find(|(s, _)| *s == Skip::Array).unwrap().1,
        1
    );
}

#[test]
fn zigbee2mqtt_states_and_booleans_are_numbers_and_last_seen_is_the_time() {
    let payload = r#"{"temperature":21.3,"humidity":44.7,"battery":90,"linkquality":120,"occupancy":true,"state":"ON","contact":false,"update":{"state":"idle","installed_version":1,"latest_version":1},"last_seen":"2025-11-30T12:00:00.000Z"}"#;
    let outcomes = read("zigbee2mqtt", "kitchen/fridge", payload);
    assert_eq!(
        values(&outcomes),
        ok(&[
            ("kitchen/fridge.temperature", 21.3),
            ("kitchen/fridge.humidity", 44.7),
            ("kitchen/fridge.battery", 90.0),
            ("kitchen/fridge.linkquality", 120.0),
            ("kitchen/fridge.occupancy", 1.0),
            ("kitchen/fridge.state", 1.0),
            ("kitchen/fridge.contact", 0.0),
        ])
    );
    assert_eq!(
        time_of(&outcomes),
        "2025-11-30T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    // last_seen as epoch milliseconds.
    let epoch = read(
        "zigbee2mqtt",
        "d",
        r#"{"temperature":1,"last_seen":1764504000000}"#,
    );
    assert_eq!(
        time_of(&epoch),
        "2025-11-30T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
}

#[test]
fn bare_states_are_numbers_and_words_without_a_value_are_skipped_and_counted() {
    let skipped = Skipped::default();
    for (payload, expected) in [
        ("21.50", Some(21.5)),
        ("ON", Some(1.0)),
        ("off", Some(0.0)),
        ("closed", Some(0.0)),
        ("\"on\"", Some(1.0)),
        ("unavailable", None),
        ("unknown", None),
        ("None", None),
        ("nan", None),
        ("", None),
        ("Hello world", None),
    ] {
        let outcomes = read_counting("state", "node.sensor.t", payload, &skipped);
        match expected {
            Some(value) => assert_eq!(
                values(&outcomes),
                ok(&[("node.sensor.t", value)]),
                "{payload:?}"
            ),
            None => assert!(outcomes.is_empty(), "{payload:?}: {outcomes:?}"),
        }
    }
    let counts: Vec<(Skip, u64)> = skipped.counts().collect();
    assert_eq!(
        counts,
        [
            (Skip::NoValue, 5),
            (Skip::Text, 1),
            (Skip::Array, 0),
            (Skip::Unsupported, 0)
        ]
    );
}

#[test]
fn a_rules_states_replace_the_default_words() {
    let form = r#"state:{"states":{"on":5,"tripped":1}}"#;
    assert_eq!(values(&read(form, "x", "ON")), ok(&[("x", 5.0)]));
    assert_eq!(values(&read(form, "x", "tripped")), ok(&[("x", 1.0)]));
    assert_eq!(
        values(&read(form, "x", "off")),
        ok(&[("x", 0.0)]),
        "defaults stay"
    );
}

#[test]
fn include_exclude_arrays_and_time_formats_follow_the_rule() {
    let payload = r#"{"a":{"b":1,"c":2,"list":[1,2]},"d":{"b":3},"when":"2025-06-01 12:00:00"}"#;
    let form = r#"object:{"time":"when","zone":"UTC","include":["a","*.b"],"exclude":["a.c"],"arrays":true}"#;
    let outcomes = read(form, "p", payload);
    assert_eq!(
        values(&outcomes),
        ok(&[
            ("p.a.b", 1.0),
            ("p.a.list.0", 1.0),
            ("p.a.list.1", 2.0),
            ("p.d.b", 3.0)
        ])
    );
    assert_eq!(
        time_of(&outcomes),
        "2025-06-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    for (format, time, expected) in [
        ("epoch_s", "1748779200.5", "2025-06-01T12:00:00.5Z"),
        ("epoch_ms", "1748779200500", "2025-06-01T12:00:00.5Z"),
        (
            "rfc3339",
            "\"2025-06-01T14:00:00+02:00\"",
            "2025-06-01T12:00:00Z",
        ),
        ("local", "\"2025-06-01T14:00:00\"", "2025-06-01T12:00:00Z"),
    ] {
        let form = format!(r#"object:{{"time":"t","time_format":"{format}"}}"#);
        let outcomes = read(&form, "p", &format!(r#"{{"t":{time},"v":1}}"#));
        assert_eq!(
            time_of(&outcomes),
            expected.parse::<DateTime<Utc>>().unwrap(),
            "{format}"
        );
    }
    // A time field that cannot be read refuses the message once.
    let bad = read(
        r#"object:{"time":"t","time_format":"rfc3339"}"#,
        "p",
        r#"{"t":"yesterday","v":1,"w":2}"#,
    );
    assert_eq!(values(&bad), vec![Err(Reason::BadTimestamp)]);
}

#[test]
fn object_forms_parse_back_from_their_names() {
    for name in [
        "object",
        "state",
        "tasmota",
        "shelly",
        "shelly:rpc",
        "zigbee2mqtt",
        r#"object:{"time":"t","zone":"UTC"}"#,
    ] {
        assert_eq!(name.parse::<Form>().unwrap().to_string(), name);
    }
    for bad in [
        r#"object:{"zone":"Mars/Base"}"#,
        r#"object:{"nope":1}"#,
        "object:{",
        r#"state:{"include":["a..b"]}"#,
    ] {
        assert!(bad.parse::<Form>().is_err(), "{bad}");
    }
}

#[test]
fn what_is_not_an_object_or_has_nothing_to_read_is_refused() {
    assert_eq!(
        values(&read("object", "p", "[1]")),
        vec![Err(Reason::WrongShape)]
    );
    assert_eq!(
        values(&read("object", "p", "{")),
        vec![Err(Reason::MalformedJson)]
    );
    assert_eq!(
        values(&read("object", "p", "{}")),
        vec![Err(Reason::MissingField)]
    );
    assert_eq!(
        values(&read("shelly:rpc", "p", r#"{"method":"x"}"#)),
        vec![Err(Reason::WrongShape)]
    );
    assert_eq!(
        values(&read("state", "", "1")),
        vec![Err(Reason::BadSensorId)]
    );
}

#[test]
fn hostile_objects_are_refused_or_read_never_a_panic() {
    // Escaped keys are read (keys are borrowed only when they have no escapes); a key that makes
    // an id with a quote is refused as any such id is.
    assert_eq!(
        values(&read("object", "p", r#"{"a\"b":1,"\u0063":2}"#)),
        vec![Err(Reason::BadSensorId), Ok(("p.c".to_owned(), 2.0))]
    );
    // Nesting beyond what the JSON reader takes is refused once.
    let deep = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    assert_eq!(
        values(&read("object", "p", &deep)),
        vec![Err(Reason::MalformedJson)]
    );
    // A time field that is an object, and numbers beyond a double.
    assert_eq!(
        values(&read(
            r#"object:{"time":"t"}"#,
            "p",
            r#"{"t":{"x":1},"v":1}"#
        )),
        vec![Err(Reason::WrongType)]
    );
    assert_eq!(
        values(&read("object", "p", r#"{"v":1e400,"w":"1e400"}"#)),
        vec![Err(Reason::NotFinite)],
        "the string is text, skipped"
    );
    // A rule's state value cannot be infinite.
    assert!(r#"state:{"states":{"on":1e400}}"#.parse::<Form>().is_err());
}
