//! The PostgreSQL URL as libpq reads it, TLS included: `sslmode=disable|allow|prefer|require|
//! verify-ca|verify-full` (default `prefer`), `sslrootcert` (CA file; `system` for the system's
//! roots), `sslcert` and `sslkey` (a client certificate). The driver itself knows only `disable`,
//! `prefer` and `require` and verifies nothing: the TLS parameters are taken out of the URL here
//! and become a rustls configuration that verifies what libpq would.
//!
//! | sslmode | TLS | server certificate checked |
//! | --- | --- | --- |
//! | `disable` | never | — |
//! | `allow`, `prefer` | when the server offers it | no |
//! | `require` | always | no; with `sslrootcert`, the chain (as `verify-ca`) |
//! | `verify-ca` | always | the chain, against `sslrootcert` or the system's roots |
//! | `verify-full` | always | the chain and the host name |

use crate::tls::{TlsFiles, Verify, client_config};
use std::path::PathBuf;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A database to connect to: the driver's configuration and the TLS it needs.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

/// Reads `url` (a `postgres://` URL or libpq's `key=value` form).
pub fn parse(url: &str) -> Result<Target, String> {
    let (rest, params) = split_tls_params(url)?;
    let mode = params.mode.as_deref().unwrap_or("prefer");
    let (ssl_mode, verify) = match mode {
        "disable" => (SslMode::Disable, Verify::Nothing),
        "allow" | "prefer" => (SslMode::Prefer, Verify::Nothing),
        "require" if params.root_cert.is_some() => (SslMode::Require, Verify::ChainOnly),
        "require" => (SslMode::Require, Verify::Nothing),
        "verify-ca" => (SslMode::Require, Verify::ChainOnly),
        "verify-full" => (SslMode::Require, Verify::Full),
        other => {
            return Err(format!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, \
                 verify-full"
            ));
        }
    };
    let mut config: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    config.ssl_mode(ssl_mode);
    let client = match (params.cert, params.key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("sslcert and sslkey go together: give both or neither".into()),
    };
    let files = TlsFiles {
        ca: params.root_cert.filter(|path| path.as_os_str() != "system"),
        client,
    };
    let tls = client_config(&files, verify).map_err(|e| e.to_string())?;
    Ok(Target {
        config,
        tls: MakeRustlsConnect::new((*tls).clone()),
    })
}

/// The TLS parameters of a URL, taken out of it.
#[derive(Default)]
struct TlsParams {
    mode: Option<String>,
    root_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsParams {
    /// Takes `key=value` if it is a TLS parameter; `false` otherwise.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(value.into()),
            "sslcert" => self.cert = Some(value.into()),
            "sslkey" => self.key = Some(value.into()),
            _ => return false,
        }
        true
    }
}

/// The URL without its TLS parameters, and those parameters.
fn split_tls_params(url: &str) -> Result<(String, TlsParams), String> {
    let mut params = TlsParams::default();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // libpq's `key=value` form, space-separated (values with spaces are quoted; the TLS
        // parameters are paths, which are taken as written).
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            match pair.split_once('=') {
                Some((key, value)) if params.take(key, value.trim_matches('\'').to_owned()) => {}
                _ => kept.push(pair),
            }
        }
        return Ok((kept.join(" "), params));
    }
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), params));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| format!("the value of {key} is not valid percent-encoded UTF-8"))?;
        if !params.take(key, value) {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, params))
}

/// `%XX` escapes decoded (and `+` kept: libpq does not read it as a space).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let (rest, params) = split_tls_params(
            "postgres://u:p@db:5432/sensorhub?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/sensorhub?application_name=x");
        assert_eq!(params.mode.as_deref(), Some("verify-full"));
        assert_eq!(params.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, params) =
            split_tls_params("host=db dbname=s sslmode=require sslrootcert=/ca.pem").unwrap();
        assert_eq!(rest, "host=db dbname=s");
        assert_eq!(params.mode.as_deref(), Some("require"));
        let (rest, _) = split_tls_params("postgres://db/s?sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://db/s");
    }

    #[test]
    fn every_sslmode_maps_as_libpq_does_and_others_are_named() {
        for (mode, expected) in [
            ("disable", SslMode::Disable),
            ("allow", SslMode::Prefer),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::Require),
            ("verify-full", SslMode::Require),
        ] {
            let target = parse(&format!("postgres://db/s?sslmode={mode}")).unwrap();
            assert_eq!(target.config.get_ssl_mode(), expected, "{mode}");
        }
        let default = parse("postgres://db/s").unwrap();
        assert_eq!(default.config.get_ssl_mode(), SslMode::Prefer);
        let error = parse("postgres://db/s?sslmode=verify-everything")
            .err()
            .unwrap();
        assert!(error.contains("sslmode=verify-everything"), "{error}");
        let error = parse("postgres://db/s?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
        let error = parse("postgres://db/s?sslcert=/c.pem").err().unwrap();
        assert!(error.contains("sslkey"), "{error}");
    }
}
