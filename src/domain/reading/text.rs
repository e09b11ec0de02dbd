//! The text fields of a reading: the sensor id and the unit.

use super::{FieldValue, Limits, Reason, Rejection, excerpt};
use std::borrow::Cow;

/// A field that must be a string: JSON strings are unescaped, plain text is taken as it is.
pub(super) fn text_field<'a>(name: &str, field: FieldValue<'a>) -> Result<Cow<'a, str>, Rejection> {
    match field {
        FieldValue::Text(text) => Ok(Cow::Borrowed(text)),
        FieldValue::Json(raw) => json_string(raw).map_err(|_| {
            Rejection::new(
                Reason::WrongType,
                format!("'{name}' must be a string, got {}", excerpt(raw)),
            )
        }),
    }
}

/// The text of a JSON string. Most have no escapes: then it is the text between the quotes,
/// borrowed (the parser has already checked the string: no raw control characters, valid UTF-8),
/// and only strings with escapes are unescaped into a new one.
pub(super) fn json_string(raw: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    match raw.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Ok(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(raw).map(Cow::Owned),
    }
}

pub(super) fn check_sensor_id<'a>(
    id: Cow<'a, str>,
    limits: &Limits,
) -> Result<Cow<'a, str>, Rejection> {
    if id.is_empty() {
        return Err(Rejection::new(Reason::BadSensorId, "sensor id is empty"));
    }
    if id.len() > limits.max_sensor_id_len {
        return Err(Rejection::new(
            Reason::BadSensorId,
            format!(
                "sensor id is {} bytes long, more than the limit of {} ({})",
                id.len(),
                limits.max_sensor_id_len,
                excerpt(&id)
            ),
        ));
    }
    if id.starts_with(' ') || id.ends_with(' ') {
        return Err(Rejection::new(
            Reason::BadSensorId,
            format!("sensor id {} starts or ends with a space", excerpt(&id)),
        ));
    }
    if let Some((at, bad)) = first_refused(&id) {
        return Err(Rejection::new(
            Reason::BadSensorId,
            format!(
                "sensor id {} has {bad:?} at byte {at}; allowed are letters and digits, spaces \
                 inside, _ - . : / + @ # % ( ) [ ] , = ~ and any visible character beyond ASCII",
                excerpt(&id),
            ),
        ));
    }
    Ok(id)
}

pub(super) fn check_unit(field: FieldValue, limits: &Limits) -> Result<String, Rejection> {
    let unit = match field {
        FieldValue::Text(text) => text.to_owned(),
        FieldValue::Json(raw) => json_string(raw).map(Cow::into_owned).map_err(|_| {
            Rejection::new(
                Reason::BadUnit,
                format!("'unit' must be a string, got {}", excerpt(raw)),
            )
        })?,
    };
    if unit.len() > limits.max_unit_len || unit.chars().any(char::is_control) {
        return Err(Rejection::new(
            Reason::BadUnit,
            format!(
                "'unit' {} must be at most {} bytes of printable text",
                excerpt(&unit),
                limits.max_unit_len
            ),
        ));
    }
    Ok(unit)
}

/// The first character a sensor id may not hold, and where. Ids come from devices, topics,
/// node names and InfluxDB measurements (`température/Küche`, `hv/cmd/setv/3`, `sensor 1`,
/// Home Assistant's `°C.kitchen.value`): in ASCII, letters, digits, inner spaces and the marks
/// those use are allowed, while control characters, quotes, backslashes, semicolons, angle
/// brackets and braces are not, as they would need escaping wherever an id is written out;
/// beyond ASCII, every visible character is allowed (letters of any script, `°`, `µ`, `²`),
/// but not control characters, other spaces, or the invisible ones that make two ids look
/// alike. ASCII, nearly every id, is judged byte by byte.
fn first_refused(id: &str) -> Option<(usize, char)> {
    for (at, byte) in id.bytes().enumerate() {
        if byte.is_ascii() {
            if !allowed_ascii(byte) {
                return Some((at, char::from(byte)));
            }
        } else if id.is_char_boundary(at) {
            let c = id[at..].chars().next().unwrap_or_default();
            if c.is_control() || c.is_whitespace() || is_invisible(c) {
                return Some((at, c));
            }
        }
    }
    None
}

/// Characters that show nothing: zero-width spaces and joiners, direction marks and overrides,
/// the soft hyphen and the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}

/// Whether an ASCII byte may stand in a sensor id.
pub(crate) fn allowed_ascii(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'_' | b'-'
                | b'.'
                | b':'
                | b'/'
                | b' '
                | b'+'
                | b'@'
                | b'#'
                | b'%'
                | b'('
                | b')'
                | b'['
                | b']'
                | b','
                | b'='
                | b'~'
        )
}
