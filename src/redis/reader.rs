//! The reader's own connection for `XREADGROUP`: a blocking read holds the connection it runs on,
//! so the reader gets one of its own, and its reply is parsed as it arrives ([`super::wire`]).
//!
//! Commands are encoded by the `redis` crate. The connection speaks RESP2, over TLS for a
//! `rediss://` URL ([`super::target`]); it is dropped on any error and opened again (with `AUTH`
//! and `SELECT` as the URL says) by the next read.
//!
//! In a Redis Cluster the reader finds the node owning the stream's slot by asking: it connects to
//! a node the URL names, and a `MOVED` reply sends it to the owner, where it stays. After a
//! resharding the old owner answers `MOVED` again; while a slot migrates, an `ASK` reply is
//! followed for that one read (`ASKING` on a connection of its own); when the owner stops
//! answering (a failover), the next read starts again from the nodes the URL names, one after
//! another, until one of them redirects to the new owner.

use crate::liveness::Liveness;
use crate::redis::entry::StreamEntry;
use crate::redis::target::ReaderTarget;
use crate::redis::wire::{ReplyParser, Scan, io_error, server_error};
use bytes::BytesMut;
use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, ServerErrorKind};
use rustls::ClientConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest a connection attempt or a reply may take beyond the command's own `BLOCK` time.
const GRACE: Duration = Duration::from_secs(5);
/// Redirections followed within one read: one to the owner, one more if it moved meanwhile; a
/// cluster still redirecting after that is reconfiguring, and the read is retried later.
const REDIRECTS: usize = 3;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct StreamReader {
    target: ReaderTarget,
    /// The cluster node owning the stream's slot, as last redirected to; `None`: start from the
    /// nodes the URL names (and for one server, always it).
    owner: Option<ConnectionInfo>,
    /// The next of the URL's nodes to try when the owner is not known.
    next_seed: usize,
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
            owner: None,
            next_seed: 0,
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
    /// new entries, left out of the pending-entries list ([`crate::stream::ledger`] records them instead).
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
        self.read(&cmd, block).await
    }

    /// `XREAD COUNT 1 BLOCK <ms> STREAMS <stream> $`: waits, taking nothing, until an entry is
    /// added to the stream or `block` has passed; true when one was. An entry added just before
    /// the wait began is not seen: the wait then lasts until the next one, or `block`.
    pub async fn wait_for_new(&mut self, stream: &str, block: Duration) -> RedisResult<bool> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(stream)
            .arg("$");
        Ok(!self.read(&cmd, Some(block)).await?.is_empty())
    }

    /// Runs a stream read (its reply: entries of one stream, or nil), following the cluster's
    /// redirections.
    async fn read(
        &mut self,
        cmd: &redis::Cmd,
        block: Option<Duration>,
    ) -> RedisResult<Vec<StreamEntry>> {
        let limit = block.unwrap_or_default() + GRACE;
        let packed = cmd.get_packed_command();
        let mut ask = None;
        let mut redirects = 0;
        loop {
            let mut parser = ReplyParser::default();
            let asked = ask.is_some();
            let outcome =
                match tokio::time::timeout(limit, self.request(&packed, &mut parser, ask.take()))
                    .await
                {
                    Ok(Ok(entries)) => {
                        self.last_reply = parser.consumed;
                        if asked {
                            // The next read goes to the owner again.
                            self.io = None;
                        }
                        return Ok(entries);
                    }
                    Ok(Err(error)) => error,
                    Err(_) => io_error(format!("no reply within {limit:?}")),
                };
            // A server error leaves the connection usable, but starting afresh is simpler and rare.
            self.io = None;
            self.buf.clear();
            let cluster = !self.target.seeds.is_empty();
            match outcome.redirect_node() {
                Some((addr, _)) if cluster && redirects < REDIRECTS => {
                    redirects += 1;
                    let node = node_at(&self.target.info, addr)?;
                    if outcome.kind() == ErrorKind::Server(ServerErrorKind::Ask) {
                        ask = Some(node);
                    } else {
                        self.owner = Some(node);
                    }
                }
                _ => {
                    if cluster && (outcome.is_io_error() || outcome.is_unrecoverable_error()) {
                        // The owner may have failed over: ask the URL's nodes again.
                        self.owner = None;
                    }
                    return Err(outcome);
                }
            }
        }
    }

    /// The server the next connection goes to: the known owner, else the next of the URL's nodes.
    fn next_server(&mut self) -> ConnectionInfo {
        if let Some(owner) = &self.owner {
            return owner.clone();
        }
        if self.target.seeds.is_empty() {
            return self.target.info.clone();
        }
        let seed = self.target.seeds[self.next_seed % self.target.seeds.len()].clone();
        self.next_seed += 1;
        seed
    }

    /// Sends one packed command and parses its reply as it arrives; with `ask`, on a connection
    /// of its own to that node, after `ASKING` (a slot being migrated to it).
    async fn request(
        &mut self,
        packed: &[u8],
        parser: &mut ReplyParser,
        ask: Option<ConnectionInfo>,
    ) -> RedisResult<Vec<StreamEntry>> {
        if let Some(node) = ask {
            let mut io = self.open(&node).await?;
            io.write_all(&redis::cmd("ASKING").get_packed_command())
                .await?;
            let mut buf = BytesMut::new();
            let end = read_reply(&mut io, &mut buf).await?;
            if buf.first() == Some(&b'-') {
                return Err(server_error(&buf[..end]));
            }
            // The command goes on the asked node's connection, dropped after its reply.
            self.io = Some(io);
            self.buf.clear();
        } else if self.io.is_none() {
            let server = self.next_server();
            self.io = Some(self.open(&server).await?);
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

    /// A connection to `server`, within [`GRACE`].
    async fn open(&self, server: &ConnectionInfo) -> RedisResult<Box<dyn Io>> {
        tokio::time::timeout(
            GRACE,
            connect(server, &self.target.tls, self.target.liveness),
        )
        .await
        .map_err(|_| io_error(format!("connecting took over {GRACE:?}")))?
    }
}

/// `template` (its credentials and TLS) at the `host:port` of a redirection.
fn node_at(template: &ConnectionInfo, addr: &str) -> RedisResult<ConnectionInfo> {
    let bad = || {
        RedisError::from((
            ErrorKind::Client,
            "unexpected redirection address",
            addr.to_owned(),
        ))
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host, port),
    };
    Ok(template.clone().set_addr(addr))
}

/// Opens the connection and authenticates / selects the database as the URL says.
async fn connect(
    info: &ConnectionInfo,
    tls: &Option<Arc<ClientConfig>>,
    liveness: Liveness,
) -> RedisResult<Box<dyn Io>> {
    let mut io: Box<dyn Io> = match (info.addr(), tls) {
        (ConnectionAddr::Tcp(host, port), _) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            liveness.socket(&tcp)?;
            Box::new(tcp)
        }
        (ConnectionAddr::TcpTls { host, port, .. }, Some(tls)) => {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            tcp.set_nodelay(true)?;
            liveness.socket(&tcp)?;
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
