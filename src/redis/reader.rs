//! The reader's own connection for `XREADGROUP`: a blocking read holds the connection it runs on,
//! so the reader gets one of its own, and its reply is parsed as it arrives ([`super::resp`]).
//!
//! Commands are encoded by the `redis` crate. The connection speaks RESP2, over TLS for a
//! `rediss://` URL ([`super::target`]); it is dropped on any error and opened again (with `AUTH`
//! and `SELECT` as the URL says) by the next read.

use crate::redis::entry::StreamEntry;
use crate::redis::resp::{ReplyParser, Scan, io_error, server_error};
use crate::redis::target::ReaderTarget;
use bytes::BytesMut;
use redis::{ConnectionAddr, ErrorKind, RedisError, RedisResult};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest a connection attempt or a reply may take beyond the command's own `BLOCK` time.
const GRACE: Duration = Duration::from_secs(5);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct StreamReader {
    target: ReaderTarget,
    io: Option<Box<dyn Io>>,
    buf: BytesMut,
    /// Bytes of the last whole reply.
    last_reply: usize,
}

impl StreamReader {
    /// Connects lazily, on the first read.
    pub fn new(target: ReaderTarget) -> Self {
        Self {
            target,
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
    /// new entries, left out of the pending-entries list ([`super::ledger`] records them instead).
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
        let mut parser = ReplyParser::default();
        let outcome =
            match tokio::time::timeout(limit, self.request(&cmd.get_packed_command(), &mut parser))
                .await
            {
                Ok(Ok(entries)) => {
                    self.last_reply = parser.consumed;
                    Ok(entries)
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

    /// Sends one packed command and parses its reply as it arrives.
    async fn request(
        &mut self,
        packed: &[u8],
        parser: &mut ReplyParser,
    ) -> RedisResult<Vec<StreamEntry>> {
        if self.io.is_none() {
            let io = tokio::time::timeout(GRACE, connect(&self.target))
                .await
                .map_err(|_| io_error(format!("connecting took over {GRACE:?}")))??;
            self.io = Some(io);
            self.buf.clear();
        }
        let io = self.io.as_mut().expect("connected above");
        io.write_all(packed).await?;
        // Room for a reply as large as the last one, so that it arrives without regrowing.
        self.buf.reserve(self.last_reply + 16 * 1024);
        loop {
            if let Some(entries) = parser.advance(&mut self.buf)? {
                return Ok(entries);
            }
            // Growing by what arrived so far, at most what the last reply suggests is to come.
            let room = self.last_reply.saturating_sub(parser.consumed);
            read_more(io, &mut self.buf, room.max(parser.consumed)).await?;
        }
    }
}

/// Opens the connection and authenticates / selects the database as the URL says.
async fn connect(target: &ReaderTarget) -> RedisResult<Box<dyn Io>> {
    let info = &target.info;
    let mut io: Box<dyn Io> = match (info.addr(), &target.tls) {
        (ConnectionAddr::Tcp(host, port), _) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            Box::new(tcp)
        }
        (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| {
                RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "not a TLS server name",
                    format!("{host}: {e}"),
                ))
            })?;
            let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(tls));
            Box::new(connector.connect(name, tcp).await?)
        }
        #[cfg(unix)]
        (ConnectionAddr::Unix(path), _) => Box::new(tokio::net::UnixStream::connect(path).await?),
        (other, _) => {
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

/// One network read into `buf`, with at least 16 KiB of room made first (`room` when it has to
/// grow).
async fn read_more(io: &mut Box<dyn Io>, buf: &mut BytesMut, room: usize) -> RedisResult<()> {
    if buf.capacity() - buf.len() < 16 * 1024 {
        buf.reserve(room.max(64 * 1024));
    }
    if io.read_buf(buf).await? == 0 {
        return Err(io_error("Redis closed the connection".into()));
    }
    Ok(())
}

/// Reads into `buf` until it holds one whole reply; returns the reply's length.
async fn read_reply(io: &mut Box<dyn Io>, buf: &mut BytesMut) -> RedisResult<usize> {
    let mut scan = Scan::default();
    loop {
        if let Some(end) = scan.advance(buf)? {
            return Ok(end);
        }
        read_more(io, buf, buf.capacity()).await?;
    }
}
