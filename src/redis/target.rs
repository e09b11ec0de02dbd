//! The Redis to connect to, TLS included: a `redis://` URL is plain TCP; a `rediss://` URL is TLS,
//! verifying the server against the system's roots or `SENSORHUB_REDIS_CA_FILE`, with a client
//! certificate where `SENSORHUB_REDIS_CERT_FILE` and `SENSORHUB_REDIS_KEY_FILE` name one.
//! `rediss://...?insecure` (or the `redis` crate's `#insecure`) turns verification off, only when
//! written so. The pooled connections are the `redis` crate's; the stream reader's own socket
//! gets the same verification from [`crate::tls`].

use crate::liveness::Liveness;
use crate::tls::{TlsFiles, Verify, client_config};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo as _};
use rustls::ClientConfig;
use std::sync::Arc;

/// What the stream reader needs to open its own connection.
#[derive(Clone, Debug)]
pub struct ReaderTarget {
    /// The server (of a cluster: the first node named) and the settings every connection uses.
    pub info: ConnectionInfo,
    /// The TLS configuration of a `rediss://` URL.
    pub tls: Option<Arc<ClientConfig>>,
    /// Every node a cluster URL names, to start from (and to fall back on when the node owning
    /// the stream's slot stops answering); empty for one server.
    pub seeds: Vec<ConnectionInfo>,
    /// How its socket notices a silent server.
    pub liveness: Liveness,
}

/// A Redis to connect to: the client of the pooled connections and the reader's target.
#[derive(Clone, Debug)]
pub struct Target {
    /// One server's client; of a cluster, the first node's.
    pub client: redis::Client,
    /// The cluster's client, for a `redis+cluster://` URL.
    pub cluster: Option<redis::cluster::ClusterClient>,
    /// A client of every node a cluster URL names, in its order (of one server: its client):
    /// a Pub/Sub subscription moves to the next when its node stops answering.
    pub nodes: Vec<redis::Client>,
    pub reader: ReaderTarget,
}

/// The schemes of a cluster URL: `redis+cluster://[user:password@]host:port,host:port,...`, and
/// `rediss+cluster://` for TLS.
const CLUSTER_SCHEMES: [(&str, &str); 2] = [
    ("redis+cluster://", "redis://"),
    ("rediss+cluster://", "rediss://"),
];

/// Reads `url` with the TLS files; an error says what is wrong (without the URL, which may hold
/// a password). Connections give up a silent server after the default network timeout.
pub fn parse(url: &str, files: &TlsFiles) -> Result<Target, String> {
    parse_live(url, files, Liveness::default())
}

/// As [`parse`], connections giving up a silent server as `liveness` says.
pub fn parse_live(url: &str, files: &TlsFiles, liveness: Liveness) -> Result<Target, String> {
    let Some(nodes) = cluster_nodes(url)? else {
        return parse_server(url, files, liveness);
    };
    let servers = nodes
        .iter()
        .map(|node| parse_server(node, files, liveness))
        .collect::<Result<Vec<_>, _>>()?;
    let first = servers[0].clone();
    if first.reader.info.redis_settings().db() != 0 {
        return Err("a Redis Cluster has only database 0: remove the /N from the URL".into());
    }
    let seeds: Vec<ConnectionInfo> = servers.iter().map(|s| s.reader.info.clone()).collect();
    let mut builder =
        redis::cluster::ClusterClient::builder(seeds.clone()).tcp_settings(liveness.redis());
    if let ConnectionAddr::TcpTls { insecure, .. } = first.reader.info.addr() {
        builder = builder
            .tls(if *insecure {
                redis::TlsMode::Insecure
            } else {
                redis::TlsMode::Secure
            })
            .certs(certificates(files)?);
    }
    let cluster = builder.build().map_err(|e| format!("cluster: {e}"))?;
    Ok(Target {
        client: first.client,
        cluster: Some(cluster),
        nodes: servers.iter().map(|s| s.client.clone()).collect(),
        reader: ReaderTarget {
            seeds,
            ..first.reader
        },
    })
}

/// The URL of each node a cluster URL names (with its credentials, query and scheme), or `None`
/// for a one-server URL.
fn cluster_nodes(url: &str) -> Result<Option<Vec<String>>, String> {
    let Some((rest, scheme)) = CLUSTER_SCHEMES
        .iter()
        .find_map(|(cluster, server)| url.strip_prefix(cluster).map(|rest| (rest, *server)))
    else {
        return Ok(None);
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => (format!("{credentials}@"), hosts),
        None => (String::new(), authority),
    };
    let nodes: Vec<String> = hosts
        .split(',')
        .filter(|host| !host.is_empty())
        .map(|host| format!("{scheme}{credentials}{host}{tail}"))
        .collect();
    if nodes.is_empty() {
        return Err("a cluster URL names no node (redis+cluster://host:port,host:port)".into());
    }
    Ok(Some(nodes))
}

/// One Redis server's URL.
fn parse_server(url: &str, files: &TlsFiles, liveness: Liveness) -> Result<Target, String> {
    let url = insecure_as_fragment(url);
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("not a Redis URL: {e}"))?
        .set_tcp_settings(liveness.redis());
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
                nodes: vec![client.clone()],
                client,
                cluster: None,
                reader: ReaderTarget {
                    info,
                    tls: None,
                    seeds: Vec::new(),
                    liveness,
                },
            });
        }
    };
    let verify = if insecure {
        Verify::Nothing
    } else {
        Verify::Full
    };
    let tls = client_config(files, verify).map_err(|e| e.to_string())?;
    let client = redis::Client::build_with_tls(info.clone(), certificates(files)?)
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Target {
        nodes: vec![client.clone()],
        client,
        cluster: None,
        reader: ReaderTarget {
            info,
            tls: Some(tls),
            seeds: Vec::new(),
            liveness,
        },
    })
}

/// The `redis` crate's form of the TLS files.
fn certificates(files: &TlsFiles) -> Result<redis::TlsCertificates, String> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    Ok(redis::TlsCertificates {
        client_tls: match &files.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        },
        root_cert: files.ca.as_deref().map(read).transpose()?,
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

    #[test]
    fn a_cluster_url_names_every_node_with_the_same_credentials() {
        let target = parse(
            "redis+cluster://app:secret@10.0.0.1:7000,10.0.0.2:7001,cache3:7002",
            &TlsFiles::default(),
        )
        .unwrap();
        assert!(target.cluster.is_some());
        let seeds: Vec<String> = target.reader.seeds.iter().map(describe).collect();
        assert_eq!(seeds, ["10.0.0.1:7000", "10.0.0.2:7001", "cache3:7002"]);
        for seed in &target.reader.seeds {
            assert_eq!(seed.redis_settings().username(), Some("app"));
            assert_eq!(seed.redis_settings().password(), Some("secret"));
        }
        assert_eq!(describe(&target.reader.info), "10.0.0.1:7000");
        let tls = parse("rediss+cluster://h1:7000,h2:7000", &TlsFiles::default()).unwrap();
        assert!(tls.reader.tls.is_some() && tls.cluster.is_some());
        let single = parse("redis://h1:7000", &TlsFiles::default()).unwrap();
        assert!(single.cluster.is_none() && single.reader.seeds.is_empty());
        let error = parse("redis+cluster://h1:7000,h2:7000/3", &TlsFiles::default()).unwrap_err();
        assert!(error.contains("database 0"), "{error}");
        let error = parse("redis+cluster://", &TlsFiles::default()).unwrap_err();
        assert!(error.contains("no node"), "{error}");
    }
}
