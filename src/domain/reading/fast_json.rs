//! The usual shape of a message, read in one pass: a reading object, or an array of them, whose
//! values are all plain JSON scalars.
//!
//! serde_json, asked for the four fields as raw values, skips each value twice (once to find its
//! end, once to hand it back), and on small reading objects that was the largest single cost of
//! sensorhub's own CPU. This reader walks the bytes once and hands back the same raw value
//! texts. It accepts only what serde_json accepts, with the same fields: anything it does not
//! know for certain (an escape in a string, a nested object or array, a repeated field, a
//! character out of place) makes it give up, and the message goes to serde_json, which accepts it
//! or names what is wrong with it. A test holds the two to the same outcome on arbitrary input.

use super::{FieldValue, Fields};

/// The fields of a message that is one reading object of the usual shape.
pub(super) fn object(text: &str) -> Option<Fields<'_>> {
    let mut cursor = Cursor { text, at: 0 };
    cursor.whitespace();
    let fields = cursor.object()?;
    cursor.whitespace();
    cursor.at_end().then_some(fields)
}

/// The fields of each reading of a message that is a non-empty array of reading objects of the
/// usual shape.
pub(super) fn array(text: &str) -> Option<Vec<Fields<'_>>> {
    let mut cursor = Cursor { text, at: 0 };
    cursor.whitespace();
    cursor.expect(b'[')?;
    let mut items = Vec::new();
    loop {
        cursor.whitespace();
        items.push(cursor.object()?);
        cursor.whitespace();
        match cursor.next()? {
            b',' => continue,
            b']' => break,
            _ => return None,
        }
    }
    cursor.whitespace();
    cursor.at_end().then_some(items)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn at_end(&self) -> bool {
        self.at == self.text.len()
    }

    /// JSON's whitespace: space, tab, line feed, carriage return.
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// `{ "key": scalar, ... }`, keeping the four fields of a reading. A field named twice gives
    /// up (serde_json rejects it); `null` is an absent field, as serde_json reads an `Option`.
    fn object(&mut self) -> Option<Fields<'a>> {
        self.expect(b'{')?;
        let mut fields = Fields::default();
        let mut seen = 0u8;
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(fields);
        }
        loop {
            let key = self.string()?;
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            let value = self.scalar()?;
            let field = match key {
                "sensor" => Some((&mut fields.sensor, 1)),
                "value" => Some((&mut fields.value, 2)),
                "timestamp" => Some((&mut fields.timestamp, 4)),
                "unit" => Some((&mut fields.unit, 8)),
                _ => None,
            };
            if let Some((slot, bit)) = field {
                if seen & bit != 0 {
                    return None;
                }
                seen |= bit;
                *slot = value;
            }
            self.whitespace();
            match self.next()? {
                b',' => self.whitespace(),
                b'}' => return Some(fields),
                _ => return None,
            }
        }
    }

    /// The text of a string between its quotes; gives up on an escape or a control character.
    /// Inlined, as the two functions below: called several times a reading, where a call's
    /// register saving costs as much as the work.
    #[inline(always)]
    fn string(&mut self) -> Option<&'a str> {
        let (start, end) = self.string_bounds()?;
        Some(&self.text[start + 1..end - 1])
    }

    /// Where the string at the cursor starts and ends (its quotes included); moves past it.
    #[inline(always)]
    fn string_bounds(&mut self) -> Option<(usize, usize)> {
        let start = self.at;
        if self.peek()? != b'"' {
            return None;
        }
        let rest = &self.text.as_bytes()[start + 1..];
        let len = string_stop(rest)?;
        if rest[len] != b'"' {
            return None;
        }
        self.at = start + len + 2;
        Some((start, self.at))
    }

    /// A string, number, `true`, `false` or `null` (`Some(None)`, an absent field, as serde_json
    /// reads an `Option`); gives up on anything else. A string, having no escapes, is its text,
    /// as a stream entry's field is: the checks treat the two alike, and need not look for
    /// escapes again.
    fn scalar(&mut self) -> Option<Option<FieldValue<'a>>> {
        let start = self.at;
        match self.peek()? {
            b'"' => return Some(Some(FieldValue::Text(self.string()?))),
            b'-' | b'0'..=b'9' => self.number()?,
            b't' => self.literal("true")?,
            b'f' => self.literal("false")?,
            b'n' => {
                self.literal("null")?;
                return Some(None);
            }
            _ => return None,
        }
        Some(Some(FieldValue::Json(&self.text[start..self.at])))
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// JSON's number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.one_or_more_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }
}

/// Where a string's text stops: the first quote, backslash or control character of `bytes`.
/// Eight bytes are looked at a time (the usual bit tricks on a `u64`: a byte is flagged when it
/// equals `"` or `\\`, or is below 0x20); a flag can be spurious only above a byte truly flagged,
/// so the lowest one is always right.
#[inline(always)]
fn string_stop(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        let flags = zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGH);
        if flags != 0 {
            return Some(at + flags.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|len| at + len)
}

#[cfg(test)]
mod tests {
    use super::string_stop;
    use proptest::prelude::*;

    proptest! {
        /// Eight at a time finds what one at a time finds.
        #[test]
        fn string_stop_is_the_first_quote_backslash_or_control(
            bytes in prop::collection::vec(prop_oneof![
                4 => 0x20u8..=0x7e,
                1 => Just(b'"'),
                1 => Just(b'\\'),
                1 => 0u8..0x20,
                2 => 0x80u8..=0xff,
            ], 0..40),
        ) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            prop_assert_eq!(string_stop(&bytes), expected);
        }
    }
}
