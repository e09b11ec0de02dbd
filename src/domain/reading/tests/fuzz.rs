use super::*;
use proptest::prelude::*;

/// An object's field name: one of a reading's, or another.
fn field_name() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        Just("sensor".to_string()),
        Just("value".to_string()),
        Just("timestamp".to_string()),
        Just("unit".to_string()),
        "[a-z]{1,6}"
    ]
}

/// A JSON scalar of any kind: null, a boolean, an integer, a double, printable text.
fn plain_scalar() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[ -~]{0,20}".prop_map(serde_json::Value::String),
    ]
}

/// Arbitrary JSON values, nested a few levels, with the reading's field names likely.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        5 => plain_scalar(),
        1 => prop_oneof![
            Just("NaN"),
            Just("inf"),
            Just("1e400"),
            Just("12.5"),
            Just("2024-12-01 12:00:00"),
            Just("99999-01-01T00:00:00Z")
        ]
        .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// Messages of the usual shape: flat objects of scalars with the reading's field names
/// likely, alone or in arrays.
fn flat_message() -> impl Strategy<Value = serde_json::Value> {
    let scalar = prop_oneof![
        5 => plain_scalar(),
        1 => "[a-z]{1,8}".prop_map(serde_json::Value::String),
        1 => Just(serde_json::Value::String("2024-12-01T12:00:00Z".into())),
        1 => (1_500_000_000i64..1_800_000_000).prop_map(serde_json::Value::from),
    ];
    let object = prop::collection::vec((field_name(), scalar), 0..6)
        .prop_map(|fields| serde_json::Value::Object(fields.into_iter().collect()));
    prop_oneof![
        object.clone(),
        prop::collection::vec(object, 1..4).prop_map(serde_json::Value::Array),
    ]
}

fn check_outcomes(outcomes: &Outcomes) -> Result<(), TestCaseError> {
    prop_assert!(
        !outcomes.is_empty(),
        "every message gives at least one outcome"
    );
    for outcome in outcomes {
        match outcome {
            Ok(reading) => {
                prop_assert!(reading.value.is_finite());
                prop_assert!(!reading.sensor_id.is_empty());
                prop_assert_eq!(reading.ts.timestamp_subsec_nanos() % 1000, 0);
            }
            Err(rejection) => prop_assert!(!rejection.detail.is_empty()),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The plain-decimal reader gives the standard parser's double, to the bit, whenever it
    /// answers, and answers for every plain decimal of up to 15 digits; anything else
    /// (exponents, signs, spaces, more digits, `inf`) is left to the standard parser.
    #[test]
    fn plain_decimal_agrees_with_the_standard_parser(
        text in prop_oneof![
            "-?[0-9]{1,15}",
            "-?[0-9]{0,8}\\.[0-9]{0,8}",
            "-?[0-9]{1,20}(\\.[0-9]{1,20})?",
            "[-+0-9.eE ]{0,20}",
            any::<f64>().prop_map(|x| x.to_string()),
            prop::sample::select(vec!["inf", "-NaN", "1e5", "+1", ".", "-", "-.5", "5."])
                .prop_map(str::to_owned),
        ],
    ) {
        let ours = plain_decimal(&text);
        let standard = text.trim().parse::<f64>().ok();
        if let Some(ours) = ours {
            prop_assert_eq!(Some(ours.to_bits()), standard.map(f64::to_bits), "{}", text);
        }
        let digits = text.bytes().filter(u8::is_ascii_digit).count();
        let plain = text.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.matches('.').count() <= 1
            && text.matches('-').count() <= 1
            && (1..=15).contains(&digits);
        prop_assert_eq!(ours.is_some(), plain, "{}", text);
    }

    /// The one-pass reader of the usual RFC 3339 shape gives chrono's instant whenever it
    /// answers, and answers for every date chrono accepts in that shape; impossible dates,
    /// leap seconds, other separators and long fractions are left to chrono.
    #[test]
    fn fast_rfc3339_agrees_with_chrono(
        // Month ends and February often: where calendars go wrong.
        (year, month, day) in (
            0u32..=9999,
            prop_oneof![0u32..=13, Just(2)],
            prop_oneof![0u32..=32, 28u32..=31],
        ),
        (hour, minute, second) in (0u32..=24, 0u32..=60, 0u32..=60),
        fraction in prop::collection::vec(0u8..10, 0..=11),
        separator in prop::sample::select(vec!['T', 'T', 'T', 't', ' ']),
        offset in prop::option::of((any::<bool>(), 0u32..=24, 0u32..=60)),
        lowercase_z in any::<bool>(),
    ) {
        let mut text = format!(
            "{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}"
        );
        if !fraction.is_empty() {
            text.push('.');
            text.extend(fraction.iter().map(|d| char::from(b'0' + d)));
        }
        match offset {
            None => text.push(if lowercase_z { 'z' } else { 'Z' }),
            Some((east, h, m)) => {
                text.push_str(&format!("{}{h:02}:{m:02}", if east { '+' } else { '-' }))
            }
        }
        let fast = fast_rfc3339(text.as_bytes());
        let chrono = DateTime::parse_from_rfc3339(&text).map(|ts| ts.with_timezone(&Utc));
        if let Some(fast) = fast {
            prop_assert_eq!(Ok(fast), chrono, "{}", text);
        }
        let usual_shape = separator == 'T'
            && second < 60
            && fraction.len() <= 9
            && (offset.is_some() || !lowercase_z);
        if usual_shape && chrono.is_ok() {
            prop_assert_eq!(fast, chrono.ok(), "{}", text);
        }
    }

    /// The one-pass reader of the usual shape gives serde_json's outcome whenever it
    /// answers: on arbitrary JSON, laid out compactly or with whitespace, and on that JSON
    /// with a character of JSON's syntax put in, taken out or replaced.
    #[test]
    fn usual_shape_reader_agrees_with_serde_json(
        value in prop_oneof![flat_message(), json_value()],
        pretty in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, prop::sample::select(b"{}[],:\" \\\t\n0123456789-+.eEnulltruefalse\x01\xc3\xa9".to_vec())), 0..3),
    ) {
        let limits = Limits::default();
        let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) }.unwrap();
        let mut bytes = text.into_bytes();
        for (at, edit, byte) in edits {
            let at = at.index(bytes.len() + 1);
            match edit {
                0 => bytes.insert(at, byte),
                1 if at < bytes.len() => { bytes.remove(at); }
                _ if at < bytes.len() => bytes[at] = byte,
                _ => {}
            }
        }
        let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
        if fast_json::object(text).is_some() || fast_json::array(text).is_some() {
            prop_assert_eq!(parse_json(&bytes, &ctx(&limits)), parse_json_text(text, &ctx(&limits)), "{}", text);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let limits = Limits::default();
        check_outcomes(&parse_json(&bytes, &ctx(&limits)))?;
        let fields = vec![(b"sensor".to_vec(), bytes.clone()), (b"value".to_vec(), bytes.clone()), (b"timestamp".to_vec(), bytes)];
        check_outcomes(&parse_entry_fields(&fields, &ctx(&limits)))?;
    }

    #[test]
    fn arbitrary_json_never_panics_nor_accepts_non_finite(value in json_value()) {
        let limits = Limits::default();
        let text = serde_json::to_vec(&value).unwrap();
        check_outcomes(&parse_json(&text, &ctx(&limits)))?;
    }

    #[test]
    fn arbitrary_readings_are_accepted_exactly_when_valid(
        sensor in "[a-z0-9_.:-]{1,20}",
        value in any::<f64>(),
        seconds in 1_500_000_000i64..1_800_000_000,
    ) {
        let limits = Limits::default();
        let text = format!(r#"{{"sensor":"{sensor}","value":{value:e},"timestamp":{seconds}}}"#);
        let outcomes = parse_json(text.as_bytes(), &ctx(&limits));
        check_outcomes(&outcomes)?;
        let in_range = DateTime::from_timestamp(seconds, 0).unwrap() <= ctx(&limits).now + TimeDelta::minutes(5)
            && ctx(&limits).now.signed_duration_since(DateTime::from_timestamp(seconds, 0).unwrap()) <= TimeDelta::days(3650);
        prop_assert_eq!(outcomes[0].is_ok(), value.is_finite() && in_range, "{}", text);
    }
}
