//! A corpus of bad messages: each lands in the dead-letter stream with the right reason and its
//! original bytes, the service stays up, and the valid messages around them are all stored.

use crate::helpers::*;
use std::collections::HashMap;

enum Bad {
    Data(Vec<u8>),
    Fields(Vec<(&'static str, Vec<u8>)>),
}

fn corpus() -> Vec<(&'static str, Bad)> {
    let data = |s: &str| Bad::Data(s.as_bytes().to_vec());
    let deep_object = format!(
        r#"{{"sensor":"x","value":1,"meta":{}1{}}}"#,
        r#"{"a":"#.repeat(5000),
        "}".repeat(5000)
    );
    let deep_array = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let oversize = format!(
        r#"{{"sensor":"big","value":1,"pad":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let long_id = format!(r#"{{"sensor":"{}","value":1}}"#, "s".repeat(5000));
    vec![
        (
            "invalid_utf8",
            Bad::Data(b"{\"sensor\":\"t\xff\xfe\",\"value\":1}".to_vec()),
        ),
        (
            "invalid_utf8",
            Bad::Fields(vec![
                ("sensor", b"t\xc3\x28".to_vec()),
                ("value", b"1".to_vec()),
            ]),
        ),
        ("malformed_json", data(r#"{"sensor": "t", "value": "#)),
        ("malformed_json", data("")),
        ("malformed_json", data("{sensor: t}")),
        ("malformed_json", data(&deep_object)),
        (
            "malformed_json",
            data(r#"{"sensor":"a","sensor":"b","value":1}"#),
        ),
        ("malformed_json", data(&deep_array)),
        ("wrong_shape", data("42")),
        ("wrong_shape", data(r#""temperature""#)),
        ("wrong_shape", data("null")),
        ("wrong_shape", data("[]")),
        ("too_large", data(&oversize)),
        ("not_finite", data(r#"{"sensor":"t","value":1e400}"#)),
        ("not_finite", data(r#"{"sensor":"t","value":"NaN"}"#)),
        ("not_finite", data(r#"{"sensor":"t","value":"-Infinity"}"#)),
        ("not_a_number", data(r#"{"sensor":"t","value":"twelve"}"#)),
        ("not_a_number", data(r#"{"sensor":"t","value":""}"#)),
        (
            "not_a_number",
            Bad::Fields(vec![("sensor", b"t".to_vec()), ("value", b"0x1F".to_vec())]),
        ),
        ("bad_sensor_id", data(r#"{"sensor":"","value":1}"#)),
        ("bad_sensor_id", data(&long_id)),
        (
            "bad_sensor_id",
            data(r#"{"sensor":"bell\u0007","value":1}"#),
        ),
        (
            "bad_sensor_id",
            data(r#"{"sensor":"line\nbreak","value":1}"#),
        ),
        (
            "bad_sensor_id",
            data(r#"{"sensor":"x'); DROP TABLE readings; --","value":1}"#),
        ),
        ("bad_sensor_id", data(r#"{"sensor":"a\u0000b","value":1}"#)),
        (
            "bad_timestamp",
            data(r#"{"sensor":"t","value":1,"timestamp":"99999-01-01T00:00:00Z"}"#),
        ),
        (
            "bad_timestamp",
            data(r#"{"sensor":"t","value":1,"timestamp":"yesterday"}"#),
        ),
        (
            "bad_timestamp",
            data(r#"{"sensor":"t","value":1,"timestamp":1e300}"#),
        ),
        (
            "future_timestamp",
            data(r#"{"sensor":"t","value":1,"timestamp":"2999-01-01T00:00:00Z"}"#),
        ),
        (
            "future_timestamp",
            data(&format!(
                r#"{{"sensor":"t","value":1,"timestamp":{}}}"#,
                chrono::Utc::now().timestamp() + 86_400
            )),
        ),
        (
            "too_old",
            data(r#"{"sensor":"t","value":1,"timestamp":"1900-01-01T00:00:00Z"}"#),
        ),
        ("missing_field", data(r#"{"value":1}"#)),
        ("missing_field", data(r#"{"sensor":"t"}"#)),
        ("missing_field", data(r#"{"sensor":"t","value":null}"#)),
        (
            "missing_field",
            Bad::Fields(vec![("payload", b"hello".to_vec())]),
        ),
        ("wrong_type", data(r#"{"sensor":12,"value":1}"#)),
        ("wrong_type", data(r#"{"sensor":"t","value":true}"#)),
        ("wrong_type", data(r#"{"sensor":"t","value":{"v":1}}"#)),
        ("wrong_type", data(r#"{"sensor":"t","value":[1]}"#)),
        (
            "wrong_type",
            data(r#"{"sensor":"t","value":1,"timestamp":false}"#),
        ),
        ("bad_unit", data(r#"{"sensor":"t","value":1,"unit":42}"#)),
    ]
}

#[actix_web::test]
async fn bad_messages_are_dead_lettered_with_reasons_and_valid_ones_around_them_stored() {
    let mut t = spawn_app().await;
    let corpus = corpus();
    assert!(corpus.len() >= 30);
    let mut expected: HashMap<String, (&str, Vec<u8>)> = HashMap::new();
    let mut valid = 0;
    for (i, (reason, bad)) in corpus.iter().enumerate() {
        let good = reading_json(&format!("good-{i}"), i as f64, chrono::Utc::now());
        t.xadd_data(good.as_bytes()).await;
        valid += 1;
        let (id, original) = match bad {
            Bad::Data(bytes) => (t.xadd_data(bytes).await, bytes.clone()),
            Bad::Fields(fields) => {
                let borrowed: Vec<(&str, &[u8])> =
                    fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
                (
                    t.xadd_fields(&borrowed).await,
                    fields
                        .iter()
                        .find(|(k, _)| *k == "sensor" || *k == "payload")
                        .unwrap()
                        .1
                        .clone(),
                )
            }
        };
        expected.insert(id, (reason, original));
    }
    // One bad element in a gateway array: only it is dead-lettered, its neighbours are stored.
    let array = br#"[{"sensor":"arr-1","value":1},{"sensor":"arr;bad","value":2},{"sensor":"arr-3","value":3}]"#;
    let array_id = t.xadd_data(array).await;
    let last = t
        .xadd_data(reading_json("good-last", 1.0, chrono::Utc::now()).as_bytes())
        .await;
    valid += 3;
    t.wait_drained(&last).await;

    let dead = t.dead_letters().await;
    let mut seen = HashMap::new();
    for letter in &dead.ids {
        let field = |name: &str| -> Vec<u8> {
            match letter.map.get(name) {
                Some(redis::Value::BulkString(b)) => b.clone(),
                _ => Vec::new(),
            }
        };
        let entry = String::from_utf8(field("entry")).unwrap();
        let reason = String::from_utf8(field("reason")).unwrap();
        let detail = String::from_utf8(field("detail")).unwrap();
        assert!(!detail.is_empty(), "dead letter of {entry} has no detail");
        if entry == array_id {
            assert_eq!(reason, "bad_sensor_id");
            assert_eq!(field("index"), b"1");
            assert_eq!(field("data"), array.to_vec(), "original bytes kept");
            continue;
        }
        let (expected_reason, original) = expected
            .get(&entry)
            .unwrap_or_else(|| panic!("unexpected dead letter for {entry}: {reason} {detail}"));
        assert_eq!(&reason, expected_reason, "entry {entry}: {detail}");
        let kept = if letter.map.contains_key("data") {
            field("data")
        } else {
            field("field.sensor")
                .into_iter()
                .chain(field("field.payload"))
                .collect()
        };
        assert_eq!(&kept, original, "original bytes of {entry} kept");
        seen.insert(entry, reason);
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(id, _)| !seen.contains_key(*id))
        .map(|(id, (reason, original))| {
            format!(
                "{id} ({reason}): {}",
                String::from_utf8_lossy(&original[..original.len().min(80)])
            )
        })
        .collect();
    assert!(missing.is_empty(), "not dead-lettered: {missing:?}");
    assert_eq!(
        seen.len(),
        expected.len(),
        "every bad message is dead-lettered once"
    );
    assert_eq!(dead.ids.len(), expected.len() + 1);

    assert_eq!(t.readings().await, valid);
    let metrics = t.metrics();
    let rejected: u64 = sensorhub::domain::Reason::ALL
        .iter()
        .map(|r| {
            metrics
                .readings_rejected
                .with_label_values(&[r.as_str()])
                .get()
        })
        .sum();
    assert_eq!(rejected as usize, expected.len() + 1);
    assert_eq!(
        metrics
            .readings_rejected
            .with_label_values(&["wrong_type"])
            .get(),
        5
    );
    let (status, _) = t.get("/healthz").await;
    assert_eq!(status, 200);
    let (status, body) = t.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        t.count("SELECT count(*) FROM readings WHERE sensor_id LIKE '%DROP%'")
            .await,
        0
    );
    t.stop().await;
}
