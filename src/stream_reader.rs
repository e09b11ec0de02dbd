//! The reader's own connection for `XREADGROUP`, with a reply parser made for that one reply.
//!
//! The `redis` crate parses every reply into a generic [`redis::Value`] tree with a combinator
//! parser: about 1 µs per stream entry (five values) for a 20,000-entry reply, a quarter of
//! sensorhub's CPU at full speed. Here the reply is first scanned, as it arrives, only to find where
//! it ends (resumable, so a reply of several megabytes is not rescanned per network read), then
//! parsed once straight into [`StreamEntry`]s. Commands are still encoded by the `redis` crate, and
//! error replies are turned into its [`redis::RedisError`] by its own parser, so callers see the
//! same errors (`NOGROUP`, ...). The connection speaks RESP2; it is dropped on any error and
//! opened again (with `AUTH` and `SELECT` as the URL says) by the next read.

use crate::pipeline::off_thread;
use crate::streams::{EntryId, Fields, StreamEntry};
use bytes::{Bytes, BytesMut};
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Replies from this size on are parsed off the actor thread ([`off_thread`]): a batch's worth
/// takes milliseconds, during which the writer's connections would not be served.
const OFF_THREAD_BYTES: usize = 64 * 1024;

/// Longest a connection attempt or a reply may take beyond the command's own `BLOCK` time.
const GRACE: Duration = Duration::from_secs(5);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct StreamReader {
    info: ConnectionInfo,
    io: Option<Box<dyn Io>>,
    buf: BytesMut,
    /// Bytes of the last whole reply.
    last_reply: usize,
}

impl StreamReader {
    /// Connects lazily, on the first read.
    pub fn new(info: ConnectionInfo) -> Self {
        Self {
            info,
            io: None,
            buf: BytesMut::with_capacity(64 * 1024),
            last_reply: 0,
        }
    }

    /// Bytes of the last whole reply `read_group` received.
    pub fn last_reply_bytes(&self) -> usize {
        self.last_reply
    }

    /// `XREADGROUP GROUP <group> <consumer> COUNT <count> [BLOCK <ms>] NOACK STREAMS <stream> >`:
    /// new entries, left out of the pending-entries list ([`crate::ledger`] records them instead).
    pub async fn read_group(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> RedisResult<Vec<StreamEntry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("NOACK").arg("STREAMS").arg(stream).arg(">");
        let limit = block.unwrap_or_default() + GRACE;
        let outcome =
            match tokio::time::timeout(limit, self.request(&cmd.get_packed_command())).await {
                Ok(Ok(end)) => {
                    self.last_reply = end;
                    // The entries' fields are slices of the reply, which they keep alive; the
                    // buffer's room for the next reply is allocated anew.
                    let reply = self.buf.split_to(end).freeze();
                    if reply.len() < OFF_THREAD_BYTES {
                        parse_read_reply(&reply)
                    } else {
                        off_thread(move || parse_read_reply(&reply)).await
                    }
                }
                Ok(Err(error)) => Err(error),
                Err(_) => Err(io_error(format!("no reply within {limit:?}"))),
            };
        if outcome.is_err() {
            // A server error leaves the connection usable, but starting afresh is simpler and rare.
            self.io = None;
            self.buf.clear();
        }
        outcome
    }

    /// Sends one packed command and reads until one whole reply is buffered; returns its length.
    async fn request(&mut self, packed: &[u8]) -> RedisResult<usize> {
        if self.io.is_none() {
            let io = tokio::time::timeout(GRACE, connect(&self.info))
                .await
                .map_err(|_| io_error(format!("connecting took over {GRACE:?}")))??;
            self.io = Some(io);
            self.buf.clear();
        }
        let io = self.io.as_mut().expect("connected above");
        io.write_all(packed).await?;
        // Room for a reply as large as the last one, so that it arrives without regrowing.
        self.buf.reserve(self.last_reply + 16 * 1024);
        read_reply(io, &mut self.buf).await
    }
}

/// Opens the connection and authenticates / selects the database as the URL says.
async fn connect(info: &ConnectionInfo) -> RedisResult<Box<dyn Io>> {
    let mut io: Box<dyn Io> = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            Box::new(tcp)
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        other => {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "unsupported Redis address for the stream reader",
                format!("{other:?}"),
            )));
        }
    };
    let settings = info.redis_settings();
    let mut handshake = Vec::new();
    if let Some(password) = settings.password() {
        let mut auth = redis::cmd("AUTH");
        if let Some(username) = settings.username() {
            auth.arg(username);
        }
        handshake.push(auth.arg(password).get_packed_command());
    }
    if settings.db() != 0 {
        handshake.push(redis::cmd("SELECT").arg(settings.db()).get_packed_command());
    }
    let mut buf = BytesMut::new();
    for packed in handshake {
        io.write_all(&packed).await?;
        let end = read_reply(&mut io, &mut buf).await?;
        if buf.first() == Some(&b'-') {
            return Err(server_error(&buf[..end]));
        }
        bytes::Buf::advance(&mut buf, end);
    }
    Ok(io)
}

/// Reads into `buf` until it holds one whole reply; returns the reply's length.
async fn read_reply(io: &mut Box<dyn Io>, buf: &mut BytesMut) -> RedisResult<usize> {
    let mut scan = Scan::default();
    loop {
        if let Some(end) = scan.advance(buf)? {
            return Ok(end);
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(buf.capacity().max(64 * 1024));
        }
        if io.read_buf(buf).await? == 0 {
            return Err(io_error("Redis closed the connection".into()));
        }
    }
}

/// Where a RESP2 reply ends, found incrementally: `advance` resumes where the last call stopped.
#[derive(Default)]
struct Scan {
    /// Start of the next element header.
    pos: usize,
    /// Elements still to come in each enclosing array, innermost last.
    open: Vec<i64>,
}

impl Scan {
    /// `Some(length)` once `buf` holds the whole reply.
    fn advance(&mut self, buf: &[u8]) -> RedisResult<Option<usize>> {
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
    fn header(&mut self) -> RedisResult<(u8, i64, &'a [u8])> {
        if let Some((kind, n, next)) = length_line(self.buf, self.pos) {
            let text = &self.buf[self.pos + 1..next - 2];
            self.pos = next;
            return Ok((kind, n, text));
        }
        let line = find_crlf(self.buf, self.pos)
            .ok_or_else(|| protocol_error("truncated reply".into()))?;
        if line == self.pos {
            return Err(protocol_error("empty header line".into()));
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
    fn array(&mut self) -> RedisResult<Option<usize>> {
        match self.header()? {
            (b'*', n, _) if n >= 0 => Ok(Some(n as usize)),
            (b'*', _, _) => Ok(None),
            (kind, _, _) => Err(protocol_error(format!(
                "expected an array, got {:?}",
                kind as char
            ))),
        }
    }

    /// A bulk or simple string's bytes (`None` for nil).
    fn bytes(&mut self) -> RedisResult<Option<&'a [u8]>> {
        match self.header()? {
            (b'$', n, _) if n >= 0 => {
                let (start, end) = (self.pos, self.pos + n as usize);
                if end + 2 > self.buf.len() {
                    return Err(protocol_error("truncated reply".into()));
                }
                self.pos = end + 2;
                Ok(Some(&self.buf[start..end]))
            }
            (b'$', _, _) | (b'*', -1, _) => Ok(None),
            (b'+' | b':', _, text) => Ok(Some(text)),
            (kind, _, _) => Err(protocol_error(format!(
                "expected a string, got {:?}",
                kind as char
            ))),
        }
    }

    /// Skips one whole element, whatever it is.
    fn skip(&mut self) -> RedisResult<()> {
        let mut scan = Scan {
            pos: self.pos,
            open: Vec::new(),
        };
        self.pos = scan
            .advance(self.buf)?
            .ok_or_else(|| protocol_error("truncated reply".into()))?;
        Ok(())
    }
}

/// Where the RESP2 reply at the start of `buf` ends, `None` while it is incomplete: what the
/// reader's scan finds as the reply arrives (public for the benchmarks).
pub fn reply_len(buf: &[u8]) -> RedisResult<Option<usize>> {
    Scan::default().advance(buf)
}

/// `[[stream, [[id, [field, value, ...] | nil], ...]], ...]`, nil on timeout, or an error. The
/// entries' fields are slices of `bytes` (public for the benchmarks).
pub fn parse_read_reply(bytes: &Bytes) -> RedisResult<Vec<StreamEntry>> {
    let buf: &[u8] = bytes;
    if buf.first() == Some(&b'-') {
        return Err(server_error(buf));
    }
    let mut reply = Reply { buf, pos: 0 };
    let mut entries = Vec::new();
    let Some(streams) = reply.array()? else {
        return Ok(entries);
    };
    for _ in 0..streams {
        if reply.array()? != Some(2) {
            return Err(protocol_error(
                "a stream's reply is not [name, entries]".into(),
            ));
        }
        reply.skip()?; // the stream's name
        let Some(count) = reply.array()? else {
            continue;
        };
        // An entry takes more than 8 bytes: a length beyond that is not trusted with memory.
        entries.reserve(count.min(buf.len() / 8));
        for _ in 0..count {
            let Some(parts) = reply.array()? else {
                continue;
            }; // deleted entry
            if parts == 0 {
                return Err(protocol_error("empty stream entry".into()));
            }
            let id = reply
                .bytes()?
                .ok_or_else(|| protocol_error("nil entry id".into()))?;
            let id = EntryId::parse_ascii(id).ok_or_else(|| {
                protocol_error(format!("bad entry id {:?}", String::from_utf8_lossy(id)))
            })?;
            let fields = if parts > 1 {
                match reply.array()? {
                    None => None,
                    Some(n) => {
                        let mut fields = Fields::with_capacity((n / 2).min(buf.len() / 8));
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
            entries.push(StreamEntry { id, fields });
        }
    }
    Ok(entries)
}

/// An error reply, as the `redis` crate would report it (so `code()` gives `NOGROUP`, ...).
fn server_error(reply: &[u8]) -> RedisError {
    match redis::parse_redis_value(reply).and_then(|value| value.extract_error()) {
        Err(error) => error,
        Ok(value) => protocol_error(format!("expected an error reply, got {value:?}")),
    }
}

fn protocol_error(detail: String) -> RedisError {
    RedisError::from((ErrorKind::Parse, "unexpected XREADGROUP reply", detail))
}

fn io_error(detail: String) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> RedisResult<Vec<StreamEntry>> {
        parse_read_reply(&Bytes::copy_from_slice(bytes))
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
            crate::streams::read_group_reply(redis::parse_redis_value(&bytes).unwrap()).unwrap();
        assert_eq!(ours.len(), 4);
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.id, b.id);
            assert_eq!(a.fields, b.fields);
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
    }

    #[test]
    fn scan_finds_the_end_however_the_reply_is_cut() {
        let bytes = reply(&[
            entry("1-0", &[("data", "x".repeat(300).as_str())]),
            entry("2-0", &[("data", "")]),
        ]);
        let mut tail = bytes.clone();
        tail.extend_from_slice(b"+OK\r\n"); // the next reply must not count
        for step in [1, 2, 3, 7, 64, tail.len()] {
            let end = scan_in_steps(&tail, step);
            assert_eq!(end, Some(bytes.len()), "step {step}");
        }
    }

    proptest::proptest! {
        /// Any entries (binary values, CRLF inside, deleted entries), the reply cut anywhere:
        /// the end is found exactly there and the entries equal the redis crate's.
        #[test]
        fn any_reply_parses_like_the_redis_crate(
            entries in proptest::collection::vec(
                proptest::option::of(proptest::collection::vec(
                    (proptest::collection::vec(proptest::num::u8::ANY, 0..12),
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
            let ours = parse(&bytes).unwrap();
            let theirs = crate::streams::read_group_reply(redis::parse_redis_value(&bytes).unwrap()).unwrap();
            proptest::prop_assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(&theirs) {
                proptest::prop_assert_eq!(a.id, b.id);
                proptest::prop_assert_eq!(&a.fields, &b.fields);
            }
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
        }
        assert!(parse(b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\nxyz\r\n*0\r\n").is_err());
        // Lengths far beyond the bytes at hand: an error, not an allocation of that size.
        let huge_entries = b"*1\r\n*2\r\n$1\r\ns\r\n*999999999999999999\r\n";
        let huge_fields = b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$1\r\n1\r\n*999999999999999998\r\n";
        assert!(parse(huge_entries).is_err());
        assert!(parse(huge_fields).is_err());
    }
}
