//! The timestamp of a reading: RFC 3339, a naive date and time in the configured zone, or epoch
//! seconds or milliseconds; checked against the accepted range.

use super::text::json_string;
use super::{FieldValue, ParseContext, Reason, Rejection, excerpt, malformed};
use chrono::{DateTime, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone as _, Utc};
use chrono_tz::Tz;

pub(super) fn check_timestamp(
    field: FieldValue,
    ctx: &ParseContext,
) -> Result<DateTime<Utc>, Rejection> {
    let ts = match field {
        FieldValue::Text(text) => parse_timestamp_text(text, ctx.limits.timezone)?,
        FieldValue::Json(raw) => match raw.as_bytes().first() {
            Some(b'"') => {
                let text = json_string(raw).map_err(|e| malformed(&e))?;
                parse_timestamp_text(&text, ctx.limits.timezone)?
            }
            Some(b'-' | b'0'..=b'9') => parse_epoch(raw)?,
            _ => {
                return Err(Rejection::new(
                    Reason::WrongType,
                    format!(
                        "'timestamp' must be a string or a number, got {}",
                        excerpt(raw)
                    ),
                ));
            }
        },
    };
    check_range(ts, ctx, "timestamp")
}

/// Refuses a time further ahead than the allowed skew or older than the allowed age; `what` names
/// where the time came from.
pub(super) fn check_range(
    ts: DateTime<Utc>,
    ctx: &ParseContext,
    what: &str,
) -> Result<DateTime<Utc>, Rejection> {
    if ts > ctx.latest {
        return Err(Rejection::new(
            Reason::FutureTimestamp,
            format!(
                "{what} {} is more than {} ahead of now ({})",
                ts.to_rfc3339(),
                humantime::format_duration(ctx.limits.max_future_skew),
                ctx.now.to_rfc3339()
            ),
        ));
    }
    if ts < ctx.earliest {
        return Err(Rejection::new(
            Reason::TooOld,
            format!(
                "{what} {} is older than the limit of {}",
                ts.to_rfc3339(),
                humantime::format_duration(ctx.limits.max_age)
            ),
        ));
    }
    Ok(ts)
}

/// RFC 3339 with offset, naive `YYYY-MM-DD HH:MM:SS[.fff]` (space or `T`) in `tz`, or epoch digits.
pub fn parse_timestamp_text(text: &str, tz: Tz) -> Result<DateTime<Utc>, Rejection> {
    // The usual shape first: it has no space around it and is not epoch digits.
    if let Some(ts) = fast_rfc3339(text.as_bytes()) {
        return Ok(ts);
    }
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_epoch(text);
    }
    if let Ok(ts) = DateTime::parse_from_rfc3339(text) {
        return Ok(ts.with_timezone(&Utc));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
        .map_err(|_| {
            Rejection::new(
                Reason::BadTimestamp,
                format!(
                    "timestamp {} is none of: RFC 3339 with offset, 'YYYY-MM-DD HH:MM:SS[.fff]', epoch seconds or milliseconds",
                    excerpt(text)
                ),
            )
        })?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(ts) | LocalResult::Ambiguous(ts, _) => Ok(ts.with_timezone(&Utc)),
        LocalResult::None => Err(Rejection::new(
            Reason::BadTimestamp,
            format!(
                "timestamp {} does not exist in time zone {tz} (a daylight-saving gap)",
                excerpt(text)
            ),
        )),
    }
}

/// The shape nearly every device sends, `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, read in one
/// pass; `None` for anything else, which chrono then parses and judges (other separators, a leap
/// second, more than nine fraction digits, an impossible date). chrono's general parser and the
/// calendar conversions around it cost several times more per reading.
pub(super) fn fast_rfc3339(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8], from: usize, count: usize) -> Option<i64> {
        let mut n = 0;
        for &d in text.get(from..from + count)? {
            let digit = d.wrapping_sub(b'0');
            if digit > 9 {
                return None;
            }
            n = n * 10 + i64::from(digit);
        }
        Some(n)
    }
    let Some(
        &[
            _,
            _,
            _,
            _,
            b'-',
            _,
            _,
            b'-',
            _,
            _,
            b'T',
            _,
            _,
            b':',
            _,
            _,
            b':',
            _,
            _,
            _,
        ],
    ) = text.get(..20)
    else {
        return None;
    };
    let (year, month, day) = (
        digits(text, 0, 4)?,
        digits(text, 5, 2)?,
        digits(text, 8, 2)?,
    );
    let (hour, minute, second) = (
        digits(text, 11, 2)?,
        digits(text, 14, 2)?,
        digits(text, 17, 2)?,
    );
    // The date's and time's ranges are checked where they become a `NaiveDateTime`, below; a
    // leap second (60) is left to chrono's parser.
    if second > 59 {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if text[at] == b'.' {
        let fraction = text[at + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if fraction == 0 || fraction > 9 {
            return None;
        }
        nanos = digits(text, at + 1, fraction)? * 10i64.pow((9 - fraction) as u32);
        at += 1 + fraction;
    }
    let offset_seconds = match &text[at..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (hours, minutes) = (digits(text, at + 1, 2)?, digits(text, at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    // chrono's calendar straight from the fields: a count of seconds since the epoch would have
    // it divide its way back to them (`from_timestamp`), twice the cost.
    let local = NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32)?.and_hms_nano_opt(
        hour as u32,
        minute as u32,
        second as u32,
        nanos as u32,
    )?;
    let utc = match offset_seconds {
        0 => local,
        offset => local.checked_sub_signed(TimeDelta::seconds(offset))?,
    };
    Some(utc.and_utc())
}

/// Epoch seconds, or milliseconds when the number is too large to be seconds (>= 1e11, which as
/// seconds would be the year 5138).
pub(super) fn parse_epoch(text: &str) -> Result<DateTime<Utc>, Rejection> {
    let bad = || {
        Rejection::new(
            Reason::BadTimestamp,
            format!("timestamp {} is not a valid epoch time", excerpt(text)),
        )
    };
    let number: f64 = text.trim().parse().map_err(|_| bad())?;
    if !number.is_finite() {
        return Err(bad());
    }
    let micros = if number.abs() >= 1e11 {
        number * 1e3
    } else {
        number * 1e6
    };
    if micros.abs() > i64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    DateTime::from_timestamp_micros(micros.round() as i64).ok_or_else(bad)
}

/// `ts` without its nanoseconds below the microsecond (chrono's `trunc_subsecs(6)`, which
/// converts to local time and back).
pub(super) fn truncated_to_micros(ts: DateTime<Utc>) -> DateTime<Utc> {
    match ts.timestamp_subsec_nanos() % 1000 {
        0 => ts,
        below => ts - TimeDelta::nanoseconds(i64::from(below)),
    }
}
