//! Tests of parsing and checking readings, through the module's public functions.

use super::json::parse_json_text;
use super::timestamp::fast_rfc3339;
use super::value::plain_decimal;
use super::*;

fn ctx(limits: &Limits) -> ParseContext<'_> {
    ParseContext::new(
        limits,
        "2026-01-01T00:00:00Z".parse().unwrap(),
        "2025-12-31T23:59:59.123Z".parse().unwrap(),
    )
}

fn one(bytes: &[u8]) -> Result<Reading, Rejection> {
    let limits = Limits::default();
    let mut outcomes = parse_json(bytes, &ctx(&limits));
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    outcomes.pop().unwrap()
}

fn reason(bytes: &[u8]) -> Reason {
    one(bytes).expect_err("should be rejected").reason
}

#[test]
fn design_example_naive_timestamp_is_utc_by_default() {
    let r = one(br#"{"sensor": "temperature", "value": 14, "timestamp": "2024-12-01 12:00:00"}"#)
        .unwrap();
    assert_eq!(&*r.sensor_id, "temperature");
    assert_eq!(r.value, 14.0);
    assert_eq!(
        r.ts,
        "2024-12-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
}

#[test]
fn naive_timestamp_in_configured_zone() {
    let limits = Limits {
        timezone: "Europe/Berlin".parse().unwrap(),
        ..Limits::default()
    };
    let out = parse_json(
        br#"{"sensor":"t","value":1,"timestamp":"2024-12-01 12:00:00.5"}"#,
        &ctx(&limits),
    );
    let r = out[0].as_ref().unwrap();
    assert_eq!(
        r.ts,
        "2024-12-01T11:00:00.5Z".parse::<DateTime<Utc>>().unwrap()
    );
}

#[test]
fn timestamp_forms() {
    let expected: DateTime<Utc> = "2024-12-01T12:00:00Z".parse().unwrap();
    for ts in [
        r#""2024-12-01T12:00:00Z""#,
        r#""2024-12-01T13:00:00+01:00""#,
        r#""2024-12-01T12:00:00""#,
        "1733054400",
        "1733054400000",
        r#""1733054400""#,
        "1733054400.0",
    ] {
        let msg = format!(r#"{{"sensor":"t","value":1,"timestamp":{ts}}}"#);
        assert_eq!(one(msg.as_bytes()).unwrap().ts, expected, "{ts}");
    }
}

/// A reading without a timestamp parsed as from the stream entry `<ms>-<seq>`.
fn from_entry(ms: u64, seq: u64) -> Result<Reading, Rejection> {
    let limits = Limits::default();
    let mut ctx = ctx(&limits);
    ctx.set_received_entry(ms, seq);
    let mut outcomes = parse_json(br#"{"sensor":"t","value":1}"#, &ctx);
    outcomes.pop().unwrap()
}

#[test]
fn the_entry_time_is_distinct_for_the_first_thousand_entries_of_a_millisecond() {
    let ms = 1_767_225_599_000; // 2025-12-31T23:59:59Z, before the context's now
    let times: Vec<i64> = [0, 1, 998, 999]
        .iter()
        .map(|&seq| from_entry(ms, seq).unwrap().ts.timestamp_micros())
        .collect();
    assert_eq!(
        times,
        vec![
            ms as i64 * 1000,
            ms as i64 * 1000 + 1,
            ms as i64 * 1000 + 998,
            ms as i64 * 1000 + 999
        ]
    );
    // The same entry gives the same time on every delivery.
    assert_eq!(from_entry(ms, 7).unwrap().ts, from_entry(ms, 7).unwrap().ts);
    // Entry 1,000 of the millisecond has no time of its own: rejected, never a collision.
    for seq in [1000, 1500, u64::MAX] {
        let rejection = from_entry(ms, seq).unwrap_err();
        assert_eq!(rejection.reason, Reason::NoUniqueTime, "seq {seq}");
        assert!(
            rejection.detail.contains(&format!("{ms}-{seq}")),
            "{}",
            rejection.detail
        );
    }
}

#[test]
fn the_entry_time_is_checked_like_any_timestamp() {
    // An entry id of `1-0` is in 1970: older than any sensible limit.
    let old = from_entry(1, 0).unwrap_err();
    assert_eq!(old.reason, Reason::TooOld);
    assert!(old.detail.contains("stream entry's time"), "{}", old.detail);
    // A far-future id, as after `XADD <stream> 99999999999999-0`.
    assert_eq!(
        from_entry(99_999_999_999_999, 0).unwrap_err().reason,
        Reason::FutureTimestamp
    );
    assert_eq!(
        from_entry(u64::MAX, 0).unwrap_err().reason,
        Reason::NoUniqueTime
    );
}

#[test]
fn missing_timestamp_is_the_receive_time() {
    let r = one(br#"{"sensor":"t","value":1}"#).unwrap();
    assert_eq!(
        r.ts,
        "2025-12-31T23:59:59.123Z".parse::<DateTime<Utc>>().unwrap()
    );
}

#[test]
fn timestamps_are_truncated_to_microseconds() {
    let r =
        one(br#"{"sensor":"t","value":1,"timestamp":"2024-12-01T12:00:00.123456789Z"}"#).unwrap();
    assert_eq!(r.ts.timestamp_subsec_nanos(), 123_456_000);
}

#[test]
fn numeric_strings_are_numbers() {
    assert_eq!(
        one(br#"{"sensor":"t","value":"12.5"}"#).unwrap().value,
        12.5
    );
    assert_eq!(
        one(br#"{"sensor":"t","value":" -3 "}"#).unwrap().value,
        -3.0
    );
}

#[test]
fn escaped_strings_are_unescaped_plain_ones_taken_as_they_are() {
    let r = one(
        br#"{"sensor":"me\u0074er-1","value":"\u0031.5","timestamp":"2024-12-01T12:00:00\u005a","unit":"k\u0057h"}"#,
    )
    .unwrap();
    assert_eq!(&*r.sensor_id, "meter-1");
    assert_eq!(r.value, 1.5);
    assert_eq!(r.ts.to_rfc3339(), "2024-12-01T12:00:00+00:00");
    assert_eq!(r.unit.as_deref(), Some("kWh"));
    // An escaped quote or control character is unescaped, then judged by the rules.
    assert_eq!(
        reason(br#"{"sensor":"a\"b","value":1}"#),
        Reason::BadSensorId
    );
    assert_eq!(
        reason(br#"{"sensor":"a","value":1,"unit":"\u0007"}"#),
        Reason::BadUnit
    );
    assert_eq!(
        one(br#"{"sensor":"a","value":1,"unit":"\"C\""}"#)
            .unwrap()
            .unit
            .as_deref(),
        Some("\"C\"")
    );
}

#[test]
fn arrays_give_one_outcome_per_element() {
    let limits = Limits::default();
    let out = parse_json(
        br#"[{"sensor":"a","value":1},{"sensor":"","value":2},7,{"sensor":"c","value":3,"unit":"kWh"}]"#,
        &ctx(&limits),
    );
    assert_eq!(out.len(), 4);
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().reason, Reason::BadSensorId);
    assert_eq!(out[1].as_ref().unwrap_err().index, Some(1));
    assert_eq!(out[2].as_ref().unwrap_err().reason, Reason::WrongShape);
    assert_eq!(out[3].as_ref().unwrap().unit.as_deref(), Some("kWh"));
}

#[test]
fn stream_fields_form() {
    let limits = Limits::default();
    let fields = vec![
        (b"sensor".to_vec(), b"temperature".to_vec()),
        (b"value".to_vec(), b"14".to_vec()),
        (b"timestamp".to_vec(), b"2024-12-01T12:00:00Z".to_vec()),
    ];
    let out = parse_entry_fields(&fields, &ctx(&limits));
    let r = out[0].as_ref().unwrap();
    assert_eq!((&*r.sensor_id, r.value), ("temperature", 14.0));
    let data = vec![(b"data".to_vec(), br#"{"sensor":"x","value":1}"#.to_vec())];
    assert!(parse_entry_fields(&data, &ctx(&limits))[0].is_ok());
    let none = vec![(b"foo".to_vec(), b"bar".to_vec())];
    assert_eq!(
        parse_entry_fields(&none, &ctx(&limits))[0]
            .as_ref()
            .unwrap_err()
            .reason,
        Reason::MissingField
    );
}

#[test]
fn rejection_reasons() {
    let cases: &[(&[u8], Reason)] = &[
        (b"\xff\xfe", Reason::InvalidUtf8),
        (b"{\"sensor\": ", Reason::MalformedJson),
        (b"42", Reason::WrongShape),
        (b"[]", Reason::WrongShape),
        (br#"{"value":1}"#, Reason::MissingField),
        (br#"{"sensor":"t"}"#, Reason::MissingField),
        (br#"{"sensor":"t","value":null}"#, Reason::MissingField),
        (br#"{"sensor":1,"value":1}"#, Reason::WrongType),
        (br#"{"sensor":"t","value":{}}"#, Reason::WrongType),
        (br#"{"sensor":"t","value":true}"#, Reason::WrongType),
        (br#"{"sensor":"t","value":"abc"}"#, Reason::NotANumber),
        (br#"{"sensor":"t","value":1e400}"#, Reason::NotFinite),
        (br#"{"sensor":"t","value":"NaN"}"#, Reason::NotFinite),
        (br#"{"sensor":"t","value":"-inf"}"#, Reason::NotFinite),
        (br#"{"sensor":"","value":1}"#, Reason::BadSensorId),
        (br#"{"sensor":"a\u0000b","value":1}"#, Reason::BadSensorId),
        (
            br#"{"sensor":"x'; DROP TABLE readings;--","value":1}"#,
            Reason::BadSensorId,
        ),
        (br#"{"sensor":"t","value":1,"unit":5}"#, Reason::BadUnit),
        (
            br#"{"sensor":"t","value":1,"timestamp":"99999-01-01T00:00:00Z"}"#,
            Reason::BadTimestamp,
        ),
        (
            br#"{"sensor":"t","value":1,"timestamp":"yesterday"}"#,
            Reason::BadTimestamp,
        ),
        (
            br#"{"sensor":"t","value":1,"timestamp":true}"#,
            Reason::WrongType,
        ),
        (
            br#"{"sensor":"t","value":1,"timestamp":"2026-01-03T00:00:00Z"}"#,
            Reason::FutureTimestamp,
        ),
        (
            br#"{"sensor":"t","value":1,"timestamp":"1990-01-01T00:00:00Z"}"#,
            Reason::TooOld,
        ),
        (
            br#"{"sensor":"t","value":1,"timestamp":1e300}"#,
            Reason::BadTimestamp,
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            reason(bytes),
            *expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn deeply_nested_json_is_rejected_not_a_stack_overflow() {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_value = format!(
        r#"{{"sensor":"t","value":{}1{}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let deep_unknown = format!(
        r#"{{"sensor":"t","value":1,"x":{}1{}}}"#,
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    for deep in [deep_array, deep_value, deep_unknown] {
        let rejection = one(deep.as_bytes()).unwrap_err();
        assert_eq!(rejection.reason, Reason::MalformedJson);
        assert!(
            rejection.detail.contains("deeper than 32"),
            "{}",
            rejection.detail
        );
    }
    let brackets_in_strings = format!(
        r#"{{"sensor":"t","value":1,"note":"{}\"{}"}}"#,
        "[".repeat(100),
        "{".repeat(100)
    );
    assert!(one(brackets_in_strings.as_bytes()).is_ok());
    // The object is one level: 31 arrays inside it make 32 (accepted), 32 make 33.
    let nested = |levels: usize| {
        format!(
            r#"{{"sensor":"t","value":1,"x":{}1{}}}"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    assert!(one(nested(30).as_bytes()).is_ok());
    assert!(one(nested(31).as_bytes()).is_ok());
    assert_eq!(
        one(nested(32).as_bytes()).unwrap_err().reason,
        Reason::MalformedJson
    );
}

#[test]
fn oversize_is_rejected_before_parsing() {
    let limits = Limits {
        max_message_bytes: 16,
        ..Limits::default()
    };
    let out = parse_json(br#"{"sensor":"t","value":1}"#, &ctx(&limits));
    assert_eq!(out[0].as_ref().unwrap_err().reason, Reason::TooLarge);
}

#[test]
fn the_usual_shape_is_read_in_one_pass() {
    for text in [
        r#"{"sensor":"t","value":14,"timestamp":"2024-12-01 12:00:00"}"#,
        r#" { "sensor" : "t" , "value" : "12.5" , "unit": null, "x": [] } "#,
        "{\"sensor\":\"t\",\n\t\"value\":-1.5e3,\"ok\":true,\"no\":false}\r\n",
        r#"{}"#,
    ] {
        let via_serde = text.contains('[');
        assert_eq!(fast_json::object(text).is_some(), !via_serde, "{text}");
    }
    let array = r#"[{"sensor":"a","value":1}, {"sensor":"b","value":2,"timestamp":1700000000}]"#;
    assert_eq!(fast_json::array(array).map(|items| items.len()), Some(2));
    // Left to serde_json: escapes, repeated fields, bad numbers, trailing text, empty arrays.
    for text in [
        r#"{"sensor":"t\u00e9","value":1}"#,
        r#"{"sensor":"t","sensor":"u","value":1}"#,
        r#"{"sensor":"t","value":01}"#,
        r#"{"sensor":"t","value":1.}"#,
        r#"{"sensor":"t","value":1}x"#,
        r#"{"sensor":"t","value":1,}"#,
        "[]",
        r#"[{"sensor":"t","value":1},]"#,
    ] {
        assert!(
            fast_json::object(text).is_none() && fast_json::array(text).is_none(),
            "{text}"
        );
    }
}

#[test]
fn readings_parsed_together_share_their_sensor_id() {
    let limits = Limits::default();
    let ids = SensorIds::default();
    let shared = ctx(&limits).with_ids(&ids);
    let first = parse_json(br#"{"sensor":"t","value":1}"#, &shared);
    let more = parse_entry_fields(
        &[(
            "data",
            r#"[{"sensor":"t","value":2},{"sensor":"u","value":3}]"#,
        )],
        &shared,
    );
    let id = |outcome: &Result<Reading, Rejection>| outcome.as_ref().unwrap().sensor_id.clone();
    assert!(Arc::ptr_eq(&id(&first[0]), &id(&more[0])));
    assert_eq!(&*id(&more[1]), "u");
    // Without a shared set each reading has its own.
    let alone = parse_json(br#"{"sensor":"t","value":1}"#, &ctx(&limits));
    assert!(!Arc::ptr_eq(&id(&first[0]), &id(&alone[0])));
    assert_eq!(id(&first[0]), id(&alone[0]));
}

#[test]
fn ids_from_topics_and_node_names_are_accepted() {
    for id in [
        "température/Küche",
        "hv/cmd/setv/3",
        "sensor 1",
        "Elektra-Dach.battery_voltage",
        "温度",
        "a(b)[c],d=e~f+g@h#i%j",
        "°C.kitchen.value",
        "µm²",
    ] {
        let json = format!(r#"{{"sensor":"{id}","value":1}}"#);
        assert_eq!(&*one(json.as_bytes()).unwrap().sensor_id, id);
    }
    // JSON escapes: a tab, a quote and a backslash inside the id.
    for refused in [
        " lead",
        "trail ",
        r"tab\there",
        r#"quote\"d"#,
        r"back\\slash",
        "brace{",
    ] {
        let json = format!(r#"{{"sensor":"{refused}","value":1}}"#);
        assert_eq!(reason(json.as_bytes()), Reason::BadSensorId, "{refused:?}");
    }
}

#[test]
fn a_refused_sensor_id_names_the_character_and_where() {
    for (text, names) in [
        (r#"{"sensor":"café;1","value":1}"#, "';' at byte 5"),
        (r#"{"sensor":"a<b","value":1}"#, "'<' at byte 1"),
        (r#"{"sensor":"x'DROP","value":1}"#, "'\\'' at byte 1"),
        (
            r#"{"sensor":"zero\u200bwidth","value":1}"#,
            "'\\u{200b}' at byte 4",
        ),
        (
            r#"{"sensor":"no\u00a0break","value":1}"#,
            "'\\u{a0}' at byte 2",
        ),
    ] {
        let rejection = one(text.as_bytes()).unwrap_err();
        assert_eq!(rejection.reason, Reason::BadSensorId);
        assert!(rejection.detail.contains(names), "{}", rejection.detail);
    }
}

#[test]
fn sensor_id_length_limit() {
    let long = format!(r#"{{"sensor":"{}","value":1}}"#, "a".repeat(129));
    assert_eq!(reason(long.as_bytes()), Reason::BadSensorId);
    let ok = format!(r#"{{"sensor":"{}","value":1}}"#, "a".repeat(128));
    assert!(one(ok.as_bytes()).is_ok());
}

mod forms;
mod fuzz;
mod object;
mod sparkplug;

#[test]
fn an_entry_naming_its_form_is_read_in_it() {
    let limits = Limits::default();
    let entry: [(&[u8], &[u8]); 4] = [
        (b"data", br#"{"meas1": 0.84, "meas2": 0.5}"#),
        (b"topic", b"/sensor_1/status"),
        (b"form", b"fields"),
        (b"prefix", b"sensor_1"),
    ];
    let ids: Vec<String> = parse_entry_fields(&entry, &ctx(&limits))
        .into_iter()
        .map(|o| o.unwrap().sensor_id.to_string())
        .collect();
    assert_eq!(ids, vec!["sensor_1.meas1", "sensor_1.meas2"]);
    let unknown: [(&[u8], &[u8]); 2] = [(b"data", b"1"), (b"form", b"csv")];
    let outcomes = parse_entry_fields(&unknown, &ctx(&limits));
    let rejection = outcomes[0].as_ref().unwrap_err();
    assert_eq!(rejection.reason, Reason::WrongShape);
    assert!(rejection.detail.contains("csv"), "{}", rejection.detail);
}
