//! A JSON payload, one reading object or an array of them: the usual shape read in one pass
//! ([`super::fast_json`]), anything else by serde_json.

use super::{
    FieldValue, Fields, Outcomes, ParseContext, Reading, Reason, Rejection, check, excerpt,
    fast_json, malformed, too_large,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use smallvec::smallvec;

/// A reading object on the wire. Unknown fields are ignored, so devices may send more.
#[derive(Deserialize)]
struct WireReading<'a> {
    #[serde(borrow, default)]
    sensor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unit: Option<&'a RawValue>,
}

impl<'a> From<WireReading<'a>> for Fields<'a> {
    fn from(wire: WireReading<'a>) -> Self {
        Fields {
            sensor: wire.sensor.map(|raw| FieldValue::Json(raw.get())),
            value: wire.value.map(|raw| FieldValue::Json(raw.get())),
            timestamp: wire.timestamp.map(|raw| FieldValue::Json(raw.get())),
            unit: wire.unit.map(|raw| FieldValue::Json(raw.get())),
        }
    }
}

/// Parses a JSON payload: one reading object or an array of them.
pub fn parse_json(bytes: &[u8], ctx: &ParseContext) -> Outcomes {
    if bytes.len() > ctx.limits.max_message_bytes {
        return smallvec![Err(too_large(bytes.len(), ctx.limits))];
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            return smallvec![Err(Rejection::new(
                Reason::InvalidUtf8,
                format!("message is not UTF-8: {error}"),
            ))];
        }
    };
    // Nearly every message has the usual shape, read in one pass; anything else goes to
    // serde_json, which reads it or names what is wrong with it.
    if let Some(fields) = fast_json::object(text) {
        return smallvec![check(fields, ctx)];
    }
    if let Some(items) = fast_json::array(text) {
        return items
            .into_iter()
            .enumerate()
            .map(|(index, fields)| in_array(index, check(fields, ctx)))
            .collect();
    }
    parse_json_text(text, ctx)
}

/// Parses any JSON text with serde_json, whatever its shape.
pub(super) fn parse_json_text(text: &str, ctx: &ParseContext) -> Outcomes {
    if let Err(rejection) = check_depth(text) {
        return smallvec![Err(rejection)];
    }
    match text.trim_start().as_bytes().first() {
        Some(b'{') => smallvec![parse_object(text, ctx)],
        Some(b'[') => parse_array(text, ctx),
        _ => match serde_json::from_str::<&RawValue>(text) {
            Err(error) => smallvec![Err(malformed(&error))],
            Ok(_) => smallvec![Err(Rejection::new(
                Reason::WrongShape,
                format!(
                    "expected a reading object or an array of them, got {}",
                    excerpt(text.trim())
                ),
            ))],
        },
    }
}

/// Deepest JSON nesting accepted. A reading is an object inside at most an array; unknown fields
/// may nest a little. Deeper input is refused before parsing, whatever the field.
pub const MAX_JSON_DEPTH: usize = 32;

/// Rejects JSON nested deeper than [`MAX_JSON_DEPTH`], with one pass over the bytes.
fn check_depth(text: &str) -> Result<(), Rejection> {
    // Nesting needs an opening bracket per level: a message with few of them (every reading
    // object, most arrays) cannot be too deep, and counting them is one vectorised pass.
    let openers = text.bytes().filter(|&b| b == b'{' || b == b'[').count();
    if openers <= MAX_JSON_DEPTH {
        return Ok(());
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for byte in text.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Rejection::new(
                        Reason::MalformedJson,
                        format!("JSON nests deeper than {MAX_JSON_DEPTH} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn parse_object(text: &str, ctx: &ParseContext) -> Result<Reading, Rejection> {
    let wire: WireReading = serde_json::from_str(text).map_err(|e| malformed(&e))?;
    check(wire.into(), ctx)
}

fn parse_array(text: &str, ctx: &ParseContext) -> Outcomes {
    let items: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(error) => return smallvec![Err(malformed(&error))],
    };
    if items.is_empty() {
        return smallvec![Err(Rejection::new(
            Reason::WrongShape,
            "empty array: no readings",
        ))];
    }
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let outcome = if item.get().starts_with('{') {
                parse_object(item.get(), ctx)
            } else {
                Err(Rejection::new(
                    Reason::WrongShape,
                    format!("array element is not an object: {}", excerpt(item.get())),
                ))
            };
            in_array(index, outcome)
        })
        .collect()
}

/// The outcome of an array's element, a rejection naming the element's index.
pub(super) fn in_array(
    index: usize,
    outcome: Result<Reading, Rejection>,
) -> Result<Reading, Rejection> {
    outcome.map_err(|rejection| Rejection {
        index: Some(index),
        ..rejection
    })
}
