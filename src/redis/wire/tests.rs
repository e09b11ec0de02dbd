use super::*;

fn parse(bytes: &[u8]) -> RedisResult<Vec<StreamEntry>> {
    parse_read_reply(&Bytes::copy_from_slice(bytes))
}

/// Feeds `bytes` to the reader's parser `step` bytes more at a time, as network reads would:
/// the entries once it says the reply is whole, and what it left in the buffer (`None`: never
/// whole).
fn parse_in_steps(bytes: &[u8], step: usize) -> RedisResult<Option<(Vec<StreamEntry>, BytesMut)>> {
    let mut parser = ReplyParser::default();
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        if let Some(entries) = parser.advance(&mut buf)? {
            return Ok(Some((entries, buf)));
        }
    }
    Ok(None)
}

fn assert_same_entries(ours: &[StreamEntry], theirs: &[StreamEntry]) {
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.fields, b.fields);
    }
}

/// Feeds `bytes` to one scanner `step` bytes more at a time, as network reads would; where
/// it says the reply ends (`None`: never complete).
fn scan_in_steps(bytes: &[u8], step: usize) -> Option<usize> {
    let mut scan = Scan::default();
    let mut seen = 0;
    while seen < bytes.len() {
        seen = (seen + step).min(bytes.len());
        if let Some(end) = scan.advance(&bytes[..seen]).unwrap() {
            return Some(end);
        }
    }
    None
}

fn entry(id: &str, fields: &[(&str, &str)]) -> String {
    let mut out = format!("*2\r\n${}\r\n{id}\r\n*{}\r\n", id.len(), fields.len() * 2);
    for (k, v) in fields {
        out.push_str(&format!("${}\r\n{k}\r\n${}\r\n{v}\r\n", k.len(), v.len()));
    }
    out
}

fn reply(entries: &[String]) -> Vec<u8> {
    format!(
        "*1\r\n*2\r\n$1\r\ns\r\n*{}\r\n{}",
        entries.len(),
        entries.concat()
    )
    .into_bytes()
}

#[test]
fn parses_what_the_redis_crate_parses() {
    let bytes = reply(&[
        entry("1-0", &[("data", "{\"sensor\":\"a\",\"value\":1}")]),
        "*2\r\n$3\r\n2-5\r\n*-1\r\n".to_owned(), // deleted after delivery
        entry("3-1", &[("sensor", "b"), ("value", "2.5"), ("unit", "")]),
        entry("4-0", &[("data", "binary \r\n inside")]),
    ]);
    let ours = parse(&bytes).unwrap();
    let theirs =
        crate::redis::values::read_group_reply(redis::parse_redis_value(&bytes).unwrap()).unwrap();
    assert_eq!(ours.len(), 4);
    assert_same_entries(&ours, &theirs);
    for step in [1, 2, 5, 17, bytes.len()] {
        let (in_steps, rest) = parse_in_steps(&bytes, step).unwrap().unwrap();
        assert_same_entries(&in_steps, &theirs);
        assert!(rest.is_empty(), "step {step}");
    }
    assert!(ours[1].fields.is_none());
    assert_eq!(
        ours[3].fields.as_ref().unwrap()[0].1,
        &b"binary \r\n inside"[..]
    );
}

#[test]
fn nil_reply_is_no_entries_and_errors_keep_their_code() {
    assert!(parse(b"*-1\r\n").unwrap().is_empty());
    let error = parse(b"-NOGROUP No such key 's' or consumer group 'g'\r\n").unwrap_err();
    assert_eq!(error.code(), Some("NOGROUP"));
    for step in [1, 3, 100] {
        let (entries, _) = parse_in_steps(b"*-1\r\n", step).unwrap().unwrap();
        assert!(entries.is_empty());
        let error = parse_in_steps(b"-NOGROUP No such key 's'\r\n", step).unwrap_err();
        assert_eq!(error.code(), Some("NOGROUP"), "step {step}");
    }
}

#[test]
fn an_entry_of_megabytes_arriving_in_many_reads_is_parsed_once_whole() {
    let big = "y".repeat(4 << 20);
    let bytes = reply(&[
        entry("1-0", &[("data", "small")]),
        entry("2-0", &[("data", big.as_str()), ("unit", "kWh")]),
        entry("3-0", &[("data", "after")]),
    ]);
    let mut parser = ReplyParser::default();
    let mut buf = BytesMut::new();
    let mut whole = None;
    for piece in bytes.chunks(64 * 1024) {
        buf.extend_from_slice(piece);
        whole = parser.advance(&mut buf).unwrap();
        if whole.is_none() && parser.entries.len() == 1 {
            // The big entry waits, whole in the buffer, its end looked for by the scan.
            assert!(parser.partial.is_some());
        }
    }
    let entries = whole.expect("the reply is whole");
    assert_eq!(entries.len(), 3);
    let fields = entries[1].fields.as_ref().unwrap();
    assert_eq!(fields[0].1.len(), 4 << 20);
    assert_eq!(&fields[1].1[..], b"kWh");
    assert_eq!(parser.consumed, bytes.len());
}

/// The scan and the reader's parser both stop at the reply's end, however it arrives; the
/// parser leaves what followed in the buffer (no further than the read that ended the reply).
#[test]
fn the_end_is_found_however_the_reply_is_cut() {
    let bytes = reply(&[
        entry("1-0", &[("data", "x".repeat(300).as_str())]),
        entry("2-0", &[("data", "")]),
    ]);
    let mut tail = bytes.clone();
    tail.extend_from_slice(b"+OK\r\n"); // the next reply must not count
    for step in [1, 2, 3, 7, 64, tail.len()] {
        let end = scan_in_steps(&tail, step);
        assert_eq!(end, Some(bytes.len()), "step {step}");
        let Some((entries, rest)) = parse_in_steps(&tail, step).unwrap() else {
            panic!("step {step}: the reply was never whole");
        };
        assert_eq!(entries.len(), 2);
        assert!(b"+OK\r\n".starts_with(&rest), "step {step}: {rest:?}");
    }
    // One byte short: never whole.
    assert!(
        parse_in_steps(&bytes[..bytes.len() - 1], 7)
            .unwrap()
            .is_none()
    );
}

proptest::proptest! {
    /// Any entries (binary values, CRLF inside, deleted entries, the usual one `data` field
    /// among them), the reply cut anywhere: the end is found exactly there and the entries
    /// equal the redis crate's.
    #[test]
    fn any_reply_parses_like_the_redis_crate(
        entries in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(
                (proptest::prop_oneof![
                    proptest::strategy::Just(b"data".to_vec()),
                    proptest::collection::vec(proptest::num::u8::ANY, 0..12),
                 ],
                 proptest::collection::vec(proptest::num::u8::ANY, 0..200)),
                0..4,
            )),
            0..40,
        ),
        step in 1usize..4096,
    ) {
        let mut bytes = format!("*1\r\n*2\r\n$1\r\ns\r\n*{}\r\n", entries.len()).into_bytes();
        for (i, fields) in entries.iter().enumerate() {
            let id = format!("{i}-{}", i * 7);
            bytes.extend_from_slice(format!("*2\r\n${}\r\n{id}\r\n", id.len()).as_bytes());
            match fields {
                None => bytes.extend_from_slice(b"*-1\r\n"),
                Some(fields) => {
                    bytes.extend_from_slice(format!("*{}\r\n", fields.len() * 2).as_bytes());
                    for (k, v) in fields {
                        for part in [k, v] {
                            bytes.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
                            bytes.extend_from_slice(part);
                            bytes.extend_from_slice(b"\r\n");
                        }
                    }
                }
            }
        }
        proptest::prop_assert_eq!(scan_in_steps(&bytes, step), Some(bytes.len()));
        let theirs = crate::redis::values::read_group_reply(redis::parse_redis_value(&bytes).unwrap()).unwrap();
        assert_same_entries(&parse(&bytes).unwrap(), &theirs);
        let (in_steps, rest) = parse_in_steps(&bytes, step).unwrap().unwrap();
        assert_same_entries(&in_steps, &theirs);
        proptest::prop_assert!(rest.is_empty());
    }
}

proptest::proptest! {
    /// Arbitrary bytes, RESP-looking or not, never panic the scanner or the parser.
    #[test]
    fn arbitrary_bytes_never_panic(
        parts in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b"*2\r\n".to_vec()),
                proptest::strategy::Just(b"*-1\r\n".to_vec()),
                proptest::strategy::Just(b"$3\r\nabc\r\n".to_vec()),
                proptest::strategy::Just(b"$-1\r\n".to_vec()),
                proptest::strategy::Just(b"$99\r\n".to_vec()),
                proptest::strategy::Just(b"+OK\r\n".to_vec()),
                proptest::strategy::Just(b"\r\n".to_vec()),
                proptest::collection::vec(proptest::num::u8::ANY, 0..8),
            ],
            0..24,
        ),
    ) {
        let bytes = parts.concat();
        let _ = Scan::default().advance(&bytes);
        let _ = parse(&bytes);
        let _ = parse_in_steps(&bytes, 3);
    }
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bad in [
        &b"?what\r\n"[..],
        b"*x\r\n",
        b"*1\r\n$-5\r\n",
        b"*2\r\n$1\r\na\r\n",
    ] {
        let _ = parse(bad);
        let _ = Scan::default().advance(bad);
        let _ = parse_in_steps(bad, 2);
    }
    assert!(parse_in_steps(b"?what\r\n", 2).is_err());
    assert!(parse(b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\nxyz\r\n*0\r\n").is_err());
    // Lengths far beyond the bytes at hand: an error, not an allocation of that size.
    let huge_entries = b"*1\r\n*2\r\n$1\r\ns\r\n*999999999999999999\r\n";
    let huge_fields = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$1\r\n1\r\n*999999999999999998\r\n";
    assert!(parse(huge_entries).is_err());
    assert!(parse(huge_fields).is_err());
    assert!(parse_in_steps(huge_entries, 5).unwrap().is_none());
    assert!(parse_in_steps(huge_fields, 5).unwrap().is_none());
}
