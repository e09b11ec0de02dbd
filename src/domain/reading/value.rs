//! The value of a reading: a finite number, or a string holding a decimal number.

use super::text::json_string;
use super::{FieldValue, Reason, Rejection, excerpt, malformed};
use std::borrow::Cow;

pub(super) fn check_value(field: FieldValue) -> Result<f64, Rejection> {
    let (text, quoted) = match field {
        FieldValue::Text(text) => (Cow::Borrowed(text), true),
        FieldValue::Json(raw) => match raw.as_bytes().first() {
            Some(b'"') => (json_string(raw).map_err(|e| malformed(&e))?, true),
            Some(b'-' | b'0'..=b'9') => (Cow::Borrowed(raw), false),
            _ => {
                return Err(Rejection::new(
                    Reason::WrongType,
                    format!("'value' must be a number, got {}", excerpt(raw)),
                ));
            }
        },
    };
    let value = match plain_decimal(&text) {
        Some(value) => value,
        None => text.trim().parse().map_err(|_| {
            Rejection::new(
                Reason::NotANumber,
                format!("'value' {} is not a decimal number", excerpt(&text)),
            )
        })?,
    };
    if !value.is_finite() {
        let form = if quoted { "string " } else { "" };
        return Err(Rejection::new(
            Reason::NotFinite,
            format!(
                "'value' {form}{} is not a finite double (NaN, infinite, or beyond ±1.8e308)",
                excerpt(&text)
            ),
        ));
    }
    Ok(value)
}

/// A plain decimal, `-?digits[.digits]` with at most 15 digits in all (what nearly every sensor
/// sends), as the nearest double; `None` for anything else, which the standard parser reads.
/// Exact: the digits as an integer and the power of ten for the point are both exactly doubles
/// (below 2^53 and at most 10^15), so one division, rounded to nearest as every IEEE 754 operation
/// is, gives the double nearest the decimal, as the standard parser does (Clinger's fast path).
/// It avoids the standard parser's general algorithm, which is far more work.
pub(super) fn plain_decimal(text: &str) -> Option<f64> {
    const POWERS: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let bytes = text.as_bytes();
    let (negative, body) = match bytes.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, bytes),
    };
    let (mut mantissa, mut digits, mut decimals, mut point) = (0u64, 0usize, 0usize, false);
    for &byte in body {
        match byte {
            b'0'..=b'9' => {
                mantissa = mantissa * 10 + u64::from(byte - b'0');
                digits += 1;
                decimals += usize::from(point);
                if digits > 15 {
                    return None;
                }
            }
            b'.' if !point => point = true,
            _ => return None,
        }
    }
    if digits == 0 {
        return None;
    }
    let magnitude = mantissa as f64 / POWERS[decimals];
    Some(if negative { -magnitude } else { magnitude })
}
