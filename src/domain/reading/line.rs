//! InfluxDB line protocol, as Telegraf, Home Assistant and the device libraries write it:
//! `measurement,tag=value,... field=1.5,count=3i 1700000000000000000`, one point per line.
//!
//! Each numeric field of a line is one reading. Its sensor id is the line's series key as InfluxDB
//! writes it — the measurement, then `,key=value` for each tag in the order of the keys (so a
//! writer's tag order does not matter) — and `.` with the field key:
//! `weather,station=roof temp=21.5` → `weather,station=roof.temp`, `cpu usage=3` → `cpu.usage`.
//! Tag keys stay in the id, so `w,station=roof t=1` and `w,area=roof t=2` are two sensors. The
//! parts are kept apart by percent-encoding, so no two series and fields share an id: `%` and `,`
//! are encoded in the measurement, tag keys and values (`=` too in tag keys), `%` and `.` in the
//! field key (the field is what follows the last dot), and everywhere the ASCII characters an id
//! cannot hold (`"` as `%22`), so that every series has an id. A field written twice in a
//! line, or a point (series, field and time) twice in a body, keeps its last value, as InfluxDB
//! does. Floats, integers (`12345i`) and unsigned integers (`12345u`) are
//! numbers (an integer beyond 2^53 is stored as the nearest double); string and boolean fields
//! are not readings and are skipped, as Home Assistant sends its attributes as strings beside
//! the `value` field. A line's timestamp is read in the request's precision; a line without one
//! takes the time of receipt. Escapes (`\ `, `\,`, `\=`, `\"` in strings) are the
//! [line protocol reference's], parsed by InfluxDB's own parser (`influxdb-line-protocol`).
//!
//! A line that cannot be read, or a field of it that is not a valid reading, is rejected on its
//! own, with its line number (from 0, as `index`) and the line's bytes (`part`), so that the
//! dead-letter entry holds the bad line rather than the whole request; the other lines are read.
//!
//! [line protocol reference's]: https://docs.influxdata.com/influxdb/v2/reference/syntax/line-protocol/

use super::{Outcomes, ParseContext, Reading, Reason, Rejection, excerpt, validated};
use chrono::DateTime;
use influxdb_line_protocol::{FieldValue, ParsedLine};
use std::fmt;
use std::str::FromStr;

/// The unit of the timestamps of a request's lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
    Minutes,
    Hours,
}

impl Precision {
    /// The precision of InfluxDB 2's `/api/v2/write`: `ns`, `us`, `ms` or `s`.
    pub fn from_v2(text: &str) -> Result<Self, String> {
        match text {
            "ns" => Ok(Precision::Nanoseconds),
            "us" => Ok(Precision::Microseconds),
            "ms" => Ok(Precision::Milliseconds),
            "s" => Ok(Precision::Seconds),
            _ => Err(format!(
                "precision {} is not one of ns, us, ms, s",
                excerpt(text)
            )),
        }
    }

    /// The precision of InfluxDB 1's `/write`, which also takes `n`, `u`, `µ`, `m` and `h`.
    pub fn from_v1(text: &str) -> Result<Self, String> {
        match text {
            "n" | "ns" => Ok(Precision::Nanoseconds),
            "u" | "us" | "µ" => Ok(Precision::Microseconds),
            "ms" => Ok(Precision::Milliseconds),
            "s" => Ok(Precision::Seconds),
            "m" => Ok(Precision::Minutes),
            "h" => Ok(Precision::Hours),
            _ => Err(format!(
                "precision {} is not one of n, u, ms, s, m, h",
                excerpt(text)
            )),
        }
    }

    /// The time in microseconds of a timestamp in this precision (finer digits dropped, as
    /// sensorhub stores microseconds); `None` when it does not fit.
    fn micros(self, timestamp: i64) -> Option<i64> {
        match self {
            Precision::Nanoseconds => Some(timestamp.div_euclid(1000)),
            Precision::Microseconds => Some(timestamp),
            Precision::Milliseconds => timestamp.checked_mul(1000),
            Precision::Seconds => timestamp.checked_mul(1_000_000),
            Precision::Minutes => timestamp.checked_mul(60_000_000),
            Precision::Hours => timestamp.checked_mul(3_600_000_000),
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Precision::Nanoseconds => "ns",
            Precision::Microseconds => "us",
            Precision::Milliseconds => "ms",
            Precision::Seconds => "s",
            Precision::Minutes => "m",
            Precision::Hours => "h",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.unit())
    }
}

impl FromStr for Precision {
    type Err = String;

    /// The names [`Display`](fmt::Display) writes, as a stream entry's form holds them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Precision::from_v1(text)
    }
}

/// One outcome per numeric field of every line of `text`, rejections per line.
pub fn parse_line_protocol(text: &str, precision: Precision, ctx: &ParseContext) -> Outcomes {
    let mut outcomes = Outcomes::new();
    let mut id = String::new();
    let mut line_number = 0;
    let mut counted_to = 0;
    for line in influxdb_line_protocol::split_lines(text) {
        // CRLF line ends (Windows writers) end a line as LF does.
        let line = line.strip_suffix('\r').unwrap_or(line);
        let start = line.as_ptr() as usize - text.as_ptr() as usize;
        line_number += memchr_count(&text.as_bytes()[counted_to..start]);
        counted_to = start;
        let in_line = |rejection: Rejection| Rejection {
            index: Some(line_number),
            part: Some(start..start + line.len()),
            ..rejection
        };
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let parsed = match influxdb_line_protocol::parse_lines(trimmed).next() {
            Some(Ok(parsed)) => parsed,
            Some(Err(error)) => {
                outcomes.push(Err(in_line(Rejection::new(
                    Reason::MalformedLine,
                    format!("{error}: {}", excerpt(line.trim_end())),
                ))));
                continue;
            }
            None => continue,
        };
        let before = outcomes.len();
        read_line(&parsed, precision, ctx, &mut id, &mut |outcome| {
            outcomes.push(outcome.map_err(in_line));
        });
        if outcomes.len() == before {
            outcomes.push(Err(in_line(Rejection::new(
                Reason::MissingField,
                format!(
                    "the line has no numeric field (strings and booleans are not readings): {}",
                    excerpt(line.trim_end())
                ),
            ))));
        }
    }
    if outcomes.is_empty() {
        outcomes.push(Err(Rejection::new(
            Reason::WrongShape,
            "no line in the payload",
        )));
    }
    last_point_wins(&mut outcomes);
    outcomes
}

/// The readings of one parsed line, handed to `emit`; `id` is a buffer for the sensor ids.
fn read_line(
    parsed: &ParsedLine,
    precision: Precision,
    ctx: &ParseContext,
    id: &mut String,
    emit: &mut dyn FnMut(Result<Reading, Rejection>),
) {
    let ts = match parsed.timestamp {
        None => None,
        Some(timestamp) => match precision
            .micros(timestamp)
            .and_then(DateTime::from_timestamp_micros)
        {
            Some(ts) => Some(ts),
            None => {
                emit(Err(Rejection::new(
                    Reason::BadTimestamp,
                    format!(
                        "timestamp {timestamp} in {precision} is not a time sensorhub can hold"
                    ),
                )));
                return;
            }
        },
    };
    id.clear();
    escaped(id, parsed.series.measurement.as_str(), b",");
    if let Some(tags) = &parsed.series.tag_set {
        let mut tags: Vec<_> = tags.iter().collect();
        tags.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (key, value) in tags {
            id.push(',');
            escaped(id, key.as_str(), b",=");
            id.push('=');
            escaped(id, value.as_str(), b",");
        }
    }
    let series_len = id.len();
    // A field repeated in a line: the last value is the one, as InfluxDB keeps it.
    let fields: Vec<_> = parsed.field_set.iter().collect();
    for (at, (key, value)) in fields.iter().enumerate() {
        if fields[at + 1..].iter().any(|(later, _)| later == key) {
            continue;
        }
        let value = match value {
            FieldValue::F64(v) => *v,
            FieldValue::I64(v) => *v as f64,
            FieldValue::U64(v) => *v as f64,
            FieldValue::String(_) | FieldValue::Boolean(_) => continue,
        };
        id.truncate(series_len);
        id.push('.');
        escaped(id, key.as_str(), b".");
        emit(validated(id, value, ts, ctx));
    }
}

/// Appends `text` to `id`, percent-encoding `%`, each of `special` (the characters that keep an
/// id's parts apart) and every visible ASCII character an id cannot hold (`"`, `\\`, `*`, ...), as
/// `%2C` for `,`: so every series and field has an id, and no two share one.
pub(super) fn escaped(id: &mut String, text: &str, special: &[u8]) {
    // Control characters are left for the id rules to refuse: they are no one's name.
    let encode = |b: u8| {
        (b.is_ascii_graphic() || b == b' ')
            && (b == b'%' || special.contains(&b) || !super::text::allowed_ascii(b))
    };
    if !text.bytes().any(|b| b.is_ascii() && encode(b)) {
        id.push_str(text);
        return;
    }
    for c in text.chars() {
        match u8::try_from(c) {
            Ok(b) if b.is_ascii() && encode(b) => {
                id.push('%');
                id.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                id.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
            }
            _ => id.push(c),
        }
    }
}

/// Of readings of one body with the same sensor and time (a point written twice), the last
/// stays, as InfluxDB keeps the last write of a point; the earlier ones are dropped.
fn last_point_wins(outcomes: &mut Outcomes) {
    let mut seen: std::collections::HashSet<(&str, i64)> = std::collections::HashSet::new();
    let mut keep = vec![true; outcomes.len()];
    for (at, outcome) in outcomes.iter().enumerate().rev() {
        if let Ok(reading) = outcome
            && !seen.insert((&reading.sensor_id, reading.ts.timestamp_micros()))
        {
            keep[at] = false;
        }
    }
    if keep.iter().all(|k| *k) {
        return;
    }
    let mut keep = keep.into_iter();
    outcomes.retain(|_| keep.next().unwrap_or(true));
}

/// Newlines in `bytes`.
fn memchr_count(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Limits;
    use chrono::Utc;

    fn read(text: &str, precision: Precision) -> Vec<Result<Reading, Rejection>> {
        let limits = Limits::default();
        let now = "2026-12-01T12:00:00Z".parse().unwrap();
        let ctx = ParseContext::new(&limits, now, now);
        parse_line_protocol(text, precision, &ctx).into_vec()
    }

    fn ids(outcomes: &[Result<Reading, Rejection>]) -> Vec<(String, f64)> {
        outcomes
            .iter()
            .map(|o| {
                let r = o.as_ref().unwrap();
                (r.sensor_id.to_string(), r.value)
            })
            .collect()
    }

    #[test]
    fn each_numeric_field_is_a_reading_named_by_measurement_tags_and_field() {
        let out = read(
            "gas,client=keller zahlerstand=12345i 1764590400000000000\n\
             weather,station=roof,area=north temp=21.5,hum=40u,ok=true,note=\"fine\"",
            Precision::Nanoseconds,
        );
        assert_eq!(
            ids(&out),
            [
                ("gas,client=keller.zahlerstand".to_owned(), 12345.0),
                // Tags ordered by key: area before station.
                ("weather,area=north,station=roof.temp".to_owned(), 21.5),
                ("weather,area=north,station=roof.hum".to_owned(), 40.0),
            ]
        );
        let first = out[0].as_ref().unwrap();
        assert_eq!(
            first.ts,
            "2025-12-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        // No timestamp: the time of receipt.
        let third = out[2].as_ref().unwrap();
        assert_eq!(
            third.ts,
            "2026-12-01T12:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn every_precision_gives_the_same_time() {
        let expected: DateTime<Utc> = "2026-11-30T10:00:00Z".parse().unwrap();
        let s = expected.timestamp();
        for (precision, stamp) in [
            (Precision::Nanoseconds, s * 1_000_000_000),
            (Precision::Microseconds, s * 1_000_000),
            (Precision::Milliseconds, s * 1000),
            (Precision::Seconds, s),
            (Precision::Minutes, s / 60),
            (Precision::Hours, s / 3600),
        ] {
            let out = read(&format!("m v=1 {stamp}"), precision);
            assert_eq!(out[0].as_ref().unwrap().ts, expected, "{precision}");
        }
        // Nanoseconds below a microsecond are dropped, as PostgreSQL keeps microseconds.
        let out = read("m v=1 1764496800000001999", Precision::Nanoseconds);
        assert_eq!(out[0].as_ref().unwrap().ts.timestamp_subsec_micros(), 1);
    }

    #[test]
    fn ids_keep_tag_keys_and_never_collide() {
        let out = read(
            "w,station=roof t=1 1764590400\n\
             w,area=roof t=2 1764590400\n\
             a.b c=3 1764590400\n\
             a b.c=4 1764590400\n\
             m,k=v%2C x=5 1764590400\n\
             m,k=v\\, x=6 1764590400\n\
             q,say=\"hi\" v=7 1764590400",
            Precision::Seconds,
        );
        assert_eq!(
            ids(&out),
            [
                ("w,station=roof.t".to_owned(), 1.0),
                ("w,area=roof.t".to_owned(), 2.0),
                ("a.b.c".to_owned(), 3.0),
                ("a.b%2Ec".to_owned(), 4.0),
                ("m,k=v%252C.x".to_owned(), 5.0),
                ("m,k=v%2C.x".to_owned(), 6.0),
                // A character ids cannot hold is encoded rather than refused.
                ("q,say=%22hi%22.v".to_owned(), 7.0),
            ]
        );
    }

    #[test]
    fn the_last_value_of_a_field_or_point_wins_as_in_influxdb() {
        let out = read(
            "m v=1,v=2 1764590400\n\
             n v=1 1764590400\n\
             n v=3 1764590400\n\
             n v=4 1764590401\n\
             u v=5\n\
             u v=6",
            Precision::Seconds,
        );
        assert_eq!(
            ids(&out),
            [
                ("m.v".to_owned(), 2.0),
                ("n.v".to_owned(), 3.0),
                ("n.v".to_owned(), 4.0),
                // Without timestamps both lines take the body's time: one point, the last.
                ("u.v".to_owned(), 6.0),
            ]
        );
    }

    #[test]
    fn crlf_line_ends_end_lines() {
        let out = read(
            "m v=1 1764590400\r\nm w=2 1764590400\r\n",
            Precision::Seconds,
        );
        assert_eq!(
            ids(&out),
            [("m.v".to_owned(), 1.0), ("m.w".to_owned(), 2.0)]
        );
    }

    #[test]
    fn escapes_follow_the_line_protocol_reference() {
        let out = read(
            r#"my\ room,floor\=1=k\,ü\ 2 temp\ c=20,label="a \"quoted\" ,=string" 1764590400"#,
            Precision::Seconds,
        );
        assert_eq!(
            ids(&out),
            [("my room,floor%3D1=k%2Cü 2.temp c".to_owned(), 20.0)]
        );
        // A string field with a newline inside quotes stays one line.
        let out = read(
            "m,a=b s=\"two\nlines\",v=2 1764590400\nm v=3",
            Precision::Seconds,
        );
        assert_eq!(ids(&out).len(), 2);
    }

    #[test]
    fn bad_lines_are_refused_alone_with_their_line_number_and_bytes() {
        let text = "m v=1\n\nbroken line\n# a comment\nm v=1e400\nm s=\"text only\"\nm v=2 99999999999999999999";
        let out = read(text, Precision::Nanoseconds);
        let summary: Vec<_> = out
            .iter()
            .map(|o| match o {
                Ok(r) => Ok(r.value),
                Err(e) => Err((e.index, e.reason, &text[e.part.clone().unwrap()])),
            })
            .collect();
        assert_eq!(
            summary,
            [
                Ok(1.0),
                Err((Some(2), Reason::MalformedLine, "broken line")),
                Err((Some(4), Reason::NotFinite, "m v=1e400")),
                Err((Some(5), Reason::MissingField, "m s=\"text only\"")),
                Err((Some(6), Reason::MalformedLine, "m v=2 99999999999999999999")),
            ],
            "{out:?}"
        );
    }

    #[test]
    fn ids_and_times_are_checked_like_any_reading() {
        let out = read(
            "m,t=a\u{7} v=1\nm v=1 4102444800\nm v=1 0",
            Precision::Seconds,
        );
        let reasons: Vec<_> = out.iter().map(|o| o.as_ref().unwrap_err().reason).collect();
        assert_eq!(
            reasons,
            [Reason::BadSensorId, Reason::FutureTimestamp, Reason::TooOld]
        );
        assert!(read("", Precision::Seconds)[0].is_err());
    }

    #[test]
    fn precisions_are_read_as_influxdb_names_them() {
        assert_eq!(Precision::from_v2("ms"), Ok(Precision::Milliseconds));
        assert!(Precision::from_v2("h").is_err());
        assert_eq!(Precision::from_v1("n"), Ok(Precision::Nanoseconds));
        assert_eq!(Precision::from_v1("h"), Ok(Precision::Hours));
        for p in ["ns", "us", "ms", "s", "m", "h"] {
            assert_eq!(p.parse::<Precision>().unwrap().to_string(), p);
        }
    }
}
