//! RESP2, as the `XREADGROUP` reply arrives: parsed straight into [`StreamEntry`]s.
//!
//! The `redis` crate parses every reply into a generic [`redis::Value`] tree with a combinator
//! parser, several values per stream entry, and on the reply as large as a batch that was a large
//! share of sensorhub's CPU. Here the reply is parsed as it arrives ([`ReplyParser`]): after each
//! network read the whole entries at the front of the buffer are cut off and parsed, so every byte
//! is read once, while it is still in cache, and the work is spread over the reads instead of one
//! pass at the end. Error replies are turned into the `redis` crate's [`RedisError`] by its own
//! parser, so callers see the same errors (`NOGROUP`, ...). The connection that feeds it is
//! [`super::reader`].

use crate::redis::entry::{EntryId, Fields, StreamEntry};
use bytes::{Bytes, BytesMut};
use redis::{ErrorKind, RedisError, RedisResult};

/// Entries reserved for at once on a reply's word: its count is not trusted with memory beyond
/// this (the vector grows past it as entries actually arrive).
const TRUSTED_COUNT: usize = 64 * 1024;

/// An `XREADGROUP` reply, `[[stream, [[id, [field, value, ...] | nil], ...]], ...]` (nil on
/// timeout, or an error), parsed as it arrives. Each [`advance`](Self::advance) cuts the whole
/// entries off the front of the buffer, parses them into entries whose fields are slices of the
/// cut, and leaves the incomplete rest for the next read.
#[derive(Default)]
pub struct ReplyParser {
    at: At,
    /// Streams of the reply not begun yet.
    streams_left: usize,
    /// Entries of the current stream not parsed yet.
    entries_left: usize,
    entries: Vec<StreamEntry>,
    /// Looking for the end of the entry at the buffer's front, which has not all arrived: it is
    /// parsed once whole, so an entry of megabytes arriving in many reads is not parsed again
    /// after each.
    partial: Option<Scan>,
    /// Bytes of the reply parsed so far.
    pub(super) consumed: usize,
}

/// What comes next in the reply.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum At {
    /// The reply's first header: an array of streams, nil, or an error.
    #[default]
    Top,
    /// A stream's `[name, entries]`, up to its entries' count.
    Stream,
    /// One whole entry.
    Entry,
    /// Nothing: the reply is whole.
    Done,
}

/// Why a step of the parse stopped.
enum Halt {
    /// Its bytes have not all arrived.
    More,
    Bad(RedisError),
}

impl From<RedisError> for Halt {
    fn from(error: RedisError) -> Self {
        Halt::Bad(error)
    }
}

impl ReplyParser {
    /// Parses what `buf` holds of the reply and removes it, leaving an incomplete step's bytes;
    /// `Some(entries)` once the reply is whole.
    pub fn advance(&mut self, buf: &mut BytesMut) -> RedisResult<Option<Vec<StreamEntry>>> {
        if let Some(scan) = &mut self.partial {
            if scan.advance(buf)?.is_none() {
                return Ok(None);
            }
            self.partial = None;
        }
        if buf.is_empty() {
            return Ok(None);
        }
        // The fields are slices of this cut, which they keep alive.
        let cut = buf.split().freeze();
        let parsed = self.parse(&cut)?;
        // The incomplete step (or, once the reply is whole, whatever followed it) goes back.
        buf.extend_from_slice(&cut[parsed..]);
        match self.at {
            At::Done => Ok(Some(std::mem::take(&mut self.entries))),
            At::Entry if !buf.is_empty() => {
                self.partial = Some(Scan::default());
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Parses the steps `cut` holds whole; returns how many of its bytes they took.
    fn parse(&mut self, cut: &Bytes) -> RedisResult<usize> {
        let mut reply = Reply { buf: cut, pos: 0 };
        while self.at != At::Done {
            let start = reply.pos;
            match self.step(&mut reply, cut) {
                Ok(()) => {}
                Err(Halt::More) => {
                    reply.pos = start;
                    break;
                }
                Err(Halt::Bad(error)) => return Err(error),
            }
        }
        self.consumed += reply.pos;
        Ok(reply.pos)
    }

    /// Parses one step at `reply`'s position, all of it or nothing.
    fn step(&mut self, reply: &mut Reply<'_>, bytes: &Bytes) -> Result<(), Halt> {
        match self.at {
            At::Top => {
                if reply.buf.first() == Some(&b'-') {
                    reply.header()?;
                    return Err(Halt::Bad(server_error(&reply.buf[..reply.pos])));
                }
                self.streams_left = reply.array()?.unwrap_or(0);
            }
            At::Stream => {
                if reply.array()? != Some(2) {
                    return Err(Halt::Bad(protocol_error(
                        "a stream's reply is not [name, entries]".into(),
                    )));
                }
                reply.skip()?; // the stream's name
                let count = reply.array()?.unwrap_or(0);
                self.entries.reserve(count.min(TRUSTED_COUNT));
                self.entries_left = count;
                self.streams_left -= 1;
            }
            At::Entry => {
                if let Some((entry, next)) = usual_entry(reply.buf, reply.pos, bytes) {
                    reply.pos = next;
                    self.entries.push(entry);
                } else if let Some(entry) = entry(reply, bytes)? {
                    self.entries.push(entry);
                }
                self.entries_left -= 1;
            }
            At::Done => return Ok(()),
        }
        self.at = if self.entries_left > 0 {
            At::Entry
        } else if self.streams_left > 0 {
            At::Stream
        } else {
            At::Done
        };
        Ok(())
    }
}

/// The usual entry, `[id, [data, value]]`, whole: read in one pass, its fixed parts compared as
/// they are, instead of header by header (five headers, each a general parse). `None`
/// for any other shape, or an entry not all arrived, which [`entry`] then reads.
#[inline]
fn usual_entry(buf: &[u8], pos: usize, bytes: &Bytes) -> Option<(StreamEntry, usize)> {
    let rest = buf.get(pos..)?.strip_prefix(b"*2\r\n$")?;
    let (id_len, rest) = length_then_crlf(rest)?;
    let (id, rest) = rest.split_at_checked(id_len)?;
    let rest = rest.strip_prefix(b"\r\n*2\r\n$4\r\ndata\r\n$")?;
    let (value_len, rest) = length_then_crlf(rest)?;
    let (value, rest) = rest.split_at_checked(value_len)?;
    let rest = rest.strip_prefix(b"\r\n")?;
    let id = EntryId::parse_ascii(id)?;
    let field = (Bytes::from_static(b"data"), bytes.slice_ref(value));
    let entry = StreamEntry {
        id,
        fields: Some(Fields::from_buf([field])),
    };
    Some((entry, buf.len() - rest.len()))
}

/// One to nine digits and `\r\n`: their number and what follows.
#[inline]
fn length_then_crlf(text: &[u8]) -> Option<(usize, &[u8])> {
    let mut n = 0;
    for (at, &byte) in text.iter().enumerate().take(10) {
        match byte {
            b'0'..=b'9' => n = n * 10 + usize::from(byte - b'0'),
            b'\r' if at > 0 => return Some((n, text[at + 1..].strip_prefix(b"\n")?)),
            _ => return None,
        }
    }
    None
}

/// One entry, `[id, [field, value, ...] | nil]` (`None` for a nil entry: deleted).
fn entry(reply: &mut Reply<'_>, bytes: &Bytes) -> Result<Option<StreamEntry>, Halt> {
    let Some(parts) = reply.array()? else {
        return Ok(None);
    };
    if parts == 0 {
        return Err(Halt::Bad(protocol_error("empty stream entry".into())));
    }
    let id = reply
        .bytes()?
        .ok_or_else(|| protocol_error("nil entry id".into()))?;
    let id = EntryId::parse_ascii(id)
        .ok_or_else(|| protocol_error(format!("bad entry id {:?}", String::from_utf8_lossy(id))))?;
    let fields = if parts > 1 {
        match reply.array()? {
            None => None,
            Some(n) => {
                // Every field takes more than 8 bytes: a count beyond that waits for them.
                let mut fields = Fields::with_capacity((n / 2).min(reply.buf.len() / 8));
                for _ in 0..n / 2 {
                    let name = match reply.bytes()?.unwrap_or_default() {
                        // The usual name, without a reference to count on the reply.
                        b"data" => Bytes::from_static(b"data"),
                        name => bytes.slice_ref(name),
                    };
                    let value = bytes.slice_ref(reply.bytes()?.unwrap_or_default());
                    fields.push((name, value));
                }
                if n % 2 == 1 {
                    reply.skip()?;
                }
                Some(fields)
            }
        }
    } else {
        None
    };
    for _ in 2..parts {
        reply.skip()?;
    }
    Ok(Some(StreamEntry { id, fields }))
}

/// Where a RESP2 reply ends, found incrementally: `advance` resumes where the last call stopped.
#[derive(Default)]
pub struct Scan {
    /// Start of the next element header.
    pos: usize,
    /// Elements still to come in each enclosing array, innermost last.
    open: Vec<i64>,
}

impl Scan {
    /// `Some(length)` once `buf` holds the whole reply.
    pub(super) fn advance(&mut self, buf: &[u8]) -> RedisResult<Option<usize>> {
        loop {
            let (kind, n, next) = match length_line(buf, self.pos) {
                Some(header) => header,
                None => {
                    let Some(line) = find_crlf(buf, self.pos) else {
                        return Ok(None);
                    };
                    let kind = buf[self.pos];
                    let n = match kind {
                        b'*' | b'$' => parse_int(&buf[self.pos + 1..line])?,
                        _ => 0,
                    };
                    (kind, n, line + 2)
                }
            };
            match kind {
                b'*' => {
                    if n > 0 {
                        self.open.push(n);
                        self.pos = next;
                        continue;
                    }
                    self.pos = next;
                }
                b'$' => {
                    let end = if n < 0 { next } else { next + n as usize + 2 };
                    if end > buf.len() {
                        return Ok(None);
                    }
                    self.pos = end;
                }
                b'+' | b'-' | b':' => self.pos = next,
                other => {
                    return Err(protocol_error(format!(
                        "unexpected RESP type byte {other:#x}"
                    )));
                }
            }
            // One element is complete: close every array it completes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// A `*<n>` or `$<n>` header line (nearly every line of a reply) read in one pass: its type byte,
/// its number and where the next element starts, once the line's `\r\n` has arrived. `None` for
/// anything else (another type, a malformed or incomplete line), which the general path handles.
#[inline]
fn length_line(buf: &[u8], pos: usize) -> Option<(u8, i64, usize)> {
    let kind = *buf.get(pos)?;
    if kind != b'*' && kind != b'$' {
        return None;
    }
    let mut at = pos + 1;
    let negative = buf.get(at) == Some(&b'-');
    if negative {
        at += 1;
    }
    let first = at;
    let mut n: i64 = 0;
    while let Some(&byte) = buf.get(at) {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        // Wrapping: a line of more than 18 digits is refused below, on the general path.
        n = n.wrapping_mul(10).wrapping_add(i64::from(digit));
        at += 1;
    }
    let digits = at - first;
    if digits == 0 || digits > 18 || buf.get(at) != Some(&b'\r') || at + 1 >= buf.len() {
        return None;
    }
    Some((kind, if negative { -n } else { n }, at + 2))
}

/// The `\r` ending the header line that starts at `from`, once its `\n` has arrived too.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let at = buf.get(from..)?.iter().position(|&b| b == b'\r')?;
    let cr = from + at;
    (cr + 1 < buf.len()).then_some(cr)
}

/// A length or count: optional minus sign, then decimal digits.
fn parse_int(text: &[u8]) -> RedisResult<i64> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let bad = || protocol_error(format!("bad length {:?}", String::from_utf8_lossy(text)));
    if digits.is_empty() || digits.len() > 18 {
        return Err(bad());
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(bad());
        }
        n = n * 10 + i64::from(d - b'0');
    }
    Ok(if negative { -n } else { n })
}

/// A cursor over one whole reply.
struct Reply<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reply<'a> {
    /// One element's header: its type byte, the number on its line (0 for `+`, `-`, `:`) and
    /// the line's text.
    fn header(&mut self) -> Result<(u8, i64, &'a [u8]), Halt> {
        if let Some((kind, n, next)) = length_line(self.buf, self.pos) {
            let text = &self.buf[self.pos + 1..next - 2];
            self.pos = next;
            return Ok((kind, n, text));
        }
        let line = find_crlf(self.buf, self.pos).ok_or(Halt::More)?;
        if line == self.pos {
            return Err(protocol_error("empty header line".into()).into());
        }
        let kind = self.buf[self.pos];
        let text = &self.buf[self.pos + 1..line];
        self.pos = line + 2;
        let n = match kind {
            b'*' | b'$' => parse_int(text)?,
            _ => 0,
        };
        Ok((kind, n, text))
    }

    /// An array's length (`None` for a nil array).
    fn array(&mut self) -> Result<Option<usize>, Halt> {
        match self.header()? {
            (b'*', n, _) if n >= 0 => Ok(Some(n as usize)),
            (b'*', _, _) => Ok(None),
            (kind, _, _) => {
                Err(protocol_error(format!("expected an array, got {:?}", kind as char)).into())
            }
        }
    }

    /// A bulk or simple string's bytes (`None` for nil).
    fn bytes(&mut self) -> Result<Option<&'a [u8]>, Halt> {
        match self.header()? {
            (b'$', n, _) if n >= 0 => {
                let (start, end) = (self.pos, self.pos + n as usize);
                if end + 2 > self.buf.len() {
                    return Err(Halt::More);
                }
                self.pos = end + 2;
                Ok(Some(&self.buf[start..end]))
            }
            (b'$', _, _) | (b'*', -1, _) => Ok(None),
            (b'+' | b':', _, text) => Ok(Some(text)),
            (kind, _, _) => {
                Err(protocol_error(format!("expected a string, got {:?}", kind as char)).into())
            }
        }
    }

    /// Skips one whole element, whatever it is.
    fn skip(&mut self) -> Result<(), Halt> {
        let mut scan = Scan {
            pos: self.pos,
            open: Vec::new(),
        };
        self.pos = scan.advance(self.buf)?.ok_or(Halt::More)?;
        Ok(())
    }
}

/// A whole `XREADGROUP` reply parsed at once (public for the benchmarks; the reader parses it as
/// it arrives, [`ReplyParser::advance`]). The entries' fields are slices of `bytes`.
pub fn parse_read_reply(bytes: &Bytes) -> RedisResult<Vec<StreamEntry>> {
    let mut parser = ReplyParser::default();
    parser.parse(bytes)?;
    if parser.at != At::Done {
        return Err(protocol_error("truncated reply".into()));
    }
    Ok(parser.entries)
}

/// An error reply, as the `redis` crate would report it (so `code()` gives `NOGROUP`, ...).
pub fn server_error(reply: &[u8]) -> RedisError {
    match redis::parse_redis_value(reply).and_then(|value| value.extract_error()) {
        Err(error) => error,
        Ok(value) => protocol_error(format!("expected an error reply, got {value:?}")),
    }
}

pub fn protocol_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected XREADGROUP reply", detail))
}

pub fn io_error(detail: String) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, detail))
}

#[cfg(test)]
mod tests;
