//! The Redis to connect to, TLS included: a `redis://` URL is plain TCP; a `rediss://` URL is TLS,
//! verifying the server against the system's roots or `SENSORHUB_REDIS_CA_FILE`, with a client
//! certificate where `SENSORHUB_REDIS_CERT_FILE` and `SENSORHUB_REDIS_KEY_FILE` name one.
//! `rediss://...?insecure` (or the `redis` crate's `#insecure`) turns verification off, only when
//! written so. The pooled connections are the `redis` crate's; the stream reader's own socket
//! gets the same verification from [`crate::tls`].

use crate::tls::{TlsFiles, Verify, client_config};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _};
use rustls::ClientConfig;
use std::sync::Arc;

/// What the stream reader needs to open its own connection.
#[derive(Clone, Debug)]
pub struct ReaderTarget {
    pub info: ConnectionInfo,
    /// The TLS configuration of a `rediss://` URL.
    pub tls: Option<Arc<ClientConfig>>,
}

/// A Redis to connect to: the client of the pooled connections and the reader's target.
#[derive(Clone, Debug)]
pub struct Target {
    pub client: redis::Client,
    pub reader: ReaderTarget,
}

/// Reads `url` with the TLS files; an error says what is wrong (without the URL, which may hold
/// a password).
pub fn parse(url: &str, files: &TlsFiles) -> Result<Target, String> {
    let url = insecure_as_fragment(url);
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("not a Redis URL: {e}"))?;
    let insecure = match info.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => *insecure,
        _ => {
            if *files != TlsFiles::default() {
                return Err(
                    "TLS files are set (SENSORHUB_REDIS_CA_FILE, _CERT_FILE, _KEY_FILE) but the \
                     URL is not rediss://"
                        .into(),
                );
            }
            let client = redis::Client::open(info.clone()).map_err(|e| e.to_string())?;
            return Ok(Target {
                client,
                reader: ReaderTarget { info, tls: None },
            });
        }
    };
    let verify = if insecure {
        Verify::Nothing
    } else {
        Verify::Full
    };
    let tls = client_config(files, verify).map_err(|e| e.to_string())?;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let certificates = redis::TlsCertificates {
        client_tls: match &files.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        },
        root_cert: files.ca.as_deref().map(read).transpose()?,
    };
    let client = redis::Client::build_with_tls(info.clone(), certificates)
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Target {
        client,
        reader: ReaderTarget {
            info,
            tls: Some(tls),
        },
    })
}

/// `rediss://host?insecure` as the `redis` crate writes it, `rediss://host#insecure`.
fn insecure_as_fragment(url: &str) -> String {
    match url.split_once('?') {
        Some((base, query)) if query.split('&').any(|p| p == "insecure") => {
            let rest: Vec<&str> = query.split('&').filter(|p| *p != "insecure").collect();
            if rest.is_empty() {
                format!("{base}#insecure")
            } else {
                format!("{base}?{}#insecure", rest.join("&"))
            }
        }
        _ => url.to_owned(),
    }
}

/// `host:port` of a target, for messages.
pub fn describe(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_tls_urls_and_the_insecure_switch() {
        let plain = parse("redis://127.0.0.1:6379/2", &TlsFiles::default()).unwrap();
        assert!(plain.reader.tls.is_none());
        let tls = parse("rediss://cache.example:6380", &TlsFiles::default()).unwrap();
        assert!(tls.reader.tls.is_some());
        assert_eq!(describe(&tls.reader.info), "cache.example:6380");
        let insecure = parse("rediss://cache.example:6380?insecure", &TlsFiles::default()).unwrap();
        assert!(matches!(
            insecure.reader.info.addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        assert_eq!(
            insecure_as_fragment("rediss://h/0?insecure"),
            "rediss://h/0#insecure"
        );
        assert_eq!(insecure_as_fragment("redis://h/0"), "redis://h/0");
        let files = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            client: None,
        };
        let error = parse("redis://h", &files).unwrap_err();
        assert!(error.contains("rediss://"), "{error}");
        let error = parse("rediss://h", &files).unwrap_err();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}
