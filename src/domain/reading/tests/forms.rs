//! Tests of the payload forms MQTT devices send, through [`parse_form`].

use super::super::*;
use chrono::{DateTime, Utc};

fn read(form: &str, prefix: &str, payload: &str) -> Vec<Result<Reading, Rejection>> {
    let limits = Limits::default();
    let now: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let ctx = ParseContext::new(&limits, now, now);
    parse_form(&form.parse().unwrap(), prefix, payload.as_bytes(), &ctx).into_vec()
}

/// `(sensor id, value)` of each reading, or the rejection's reason.
fn summary(outcomes: &[Result<Reading, Rejection>]) -> Vec<Result<(String, f64), Reason>> {
    outcomes
        .iter()
        .map(|o| match o {
            Ok(r) => Ok((r.sensor_id.to_string(), r.value)),
            Err(e) => Err(e.reason),
        })
        .collect()
}

fn ok(id: &str, value: f64) -> Result<(String, f64), Reason> {
    Ok((id.to_owned(), value))
}

#[test]
fn forms_parse_back_from_their_names() {
    for name in [
        "json",
        "fields",
        "channels:number",
        "named",
        "number",
        "nodelog",
    ] {
        assert_eq!(name.parse::<Form>().unwrap().to_string(), name);
    }
    for bad in ["", "csv", "channels:", "JSON"] {
        assert!(bad.parse::<Form>().is_err(), "{bad:?}");
    }
}

#[test]
fn named_numeric_fields_are_one_reading_each() {
    let outcomes = read(
        "fields",
        "sensor_1",
        r#"{"meas1": 0.84, "meas2": 0.5, "note": "ok"}"#,
    );
    assert_eq!(
        summary(&outcomes),
        vec![ok("sensor_1.meas1", 0.84), ok("sensor_1.meas2", 0.5)]
    );
    // Without a timestamp: the time of receipt; with one, that time for every field.
    let at = read(
        "fields",
        "s",
        r#"{"t": 1, "timestamp": "2025-12-31T12:00:00Z"}"#,
    );
    assert_eq!(
        at[0].as_ref().unwrap().ts,
        "2025-12-31T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(
        summary(&read("fields", "s", "[1]")),
        vec![Err(Reason::WrongShape)]
    );
    assert_eq!(
        summary(&read("fields", "s", "{")),
        vec![Err(Reason::MalformedJson)]
    );
    assert_eq!(
        summary(&read("fields", "s", r#"{"note": "no numbers"}"#)),
        vec![Err(Reason::MissingField)]
    );
}

#[test]
fn channel_arrays_name_each_element_by_its_key() {
    let outcomes = read(
        "channels:number",
        "hv",
        r#"[{"number": 0, "on": 0, "vreq": 0.0}, {"number": 1, "on": 1, "vreq": 12.5}, {"on": 1}]"#,
    );
    assert_eq!(
        summary(&outcomes),
        vec![
            ok("hv.0.on", 0.0),
            ok("hv.0.vreq", 0.0),
            ok("hv.1.on", 1.0),
            ok("hv.1.vreq", 12.5),
            Err(Reason::MissingField),
        ]
    );
    assert_eq!(outcomes[4].as_ref().unwrap_err().index, Some(2));
}

#[test]
fn a_named_reading_takes_its_id_from_sensor_and_measurement() {
    let outcomes = read(
        "named",
        "ignored",
        r#"{"topic": "/sensor/room/temperature", "sensor": "room", "measurement": "temperature", "value": 23.4}"#,
    );
    assert_eq!(summary(&outcomes), vec![ok("room.temperature", 23.4)]);
    assert_eq!(
        summary(&read("named", "", r#"{"measurement": "t", "value": 1}"#)),
        vec![Err(Reason::MissingField)]
    );
}

#[test]
fn a_bare_number_takes_its_id_from_the_topic() {
    assert_eq!(
        summary(&read("number", "hv.cmd.setv.3", " 100\n")),
        vec![ok("hv.cmd.setv.3", 100.0)]
    );
    assert_eq!(
        summary(&read("number", "", "100")),
        vec![Err(Reason::BadSensorId)]
    );
    assert_eq!(
        summary(&read("number", "x", "on")),
        vec![Err(Reason::NotANumber)]
    );
}

#[test]
fn a_node_log_line_whose_time_is_refused_is_one_rejection() {
    let bad_time = "Elektra-Dach;1;yesterday;ATmega8_A_1;711;0;18.614;18.614;14.073;100;100;28;11.67;14.086;7;20;52.507309;13.458635";
    let outcomes = read("nodelog", "", bad_time);
    assert_eq!(summary(&outcomes), vec![Err(Reason::BadTimestamp)]);
    let rejection = outcomes[0].as_ref().unwrap_err();
    assert_eq!(rejection.part, Some(0..bad_time.len()), "the line, once");
}

#[test]
fn node_log_lines_are_read_one_by_one() {
    let good = "Elektra-Dach;1;1530364575;ATmega8_A_1;711;0;18.614;18.614;14.073;100;100;28;11.67;14.086;7;20;52.507309;13.458635";
    let with_status = format!("{good};300");
    let short = "Elektra-Dach;1;1530364575";
    let not_a_number = good.replace("14.073", "n/a");
    let payload = format!("{good}\n{short}\n{with_status}\r\n{not_a_number}\n");
    let outcomes = read("nodelog", "", &payload);
    let read_ok: Vec<&Reading> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(
        read_ok.len(),
        14 + 15,
        "two good lines, the second with status"
    );
    let battery = read_ok
        .iter()
        .find(|r| &*r.sensor_id == "Elektra-Dach.battery_voltage")
        .unwrap();
    assert_eq!(battery.value, 14.073);
    assert_eq!(battery.ts.timestamp(), 1_530_364_575);
    let status = read_ok
        .iter()
        .find(|r| &*r.sensor_id == "Elektra-Dach.status")
        .unwrap();
    assert_eq!(status.value, 768.0);
    let rejected: Vec<(Option<usize>, Reason)> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err())
        .map(|e| (e.index, e.reason))
        .collect();
    assert_eq!(
        rejected,
        vec![(Some(1), Reason::WrongShape), (Some(3), Reason::NotANumber)]
    );
}

#[test]
fn the_json_form_is_sensorhubs_own() {
    assert_eq!(
        summary(&read("json", "ignored", r#"{"sensor": "t", "value": 14}"#)),
        vec![ok("t", 14.0)]
    );
}
