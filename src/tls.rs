//! TLS for the connections sensorhub opens (Redis, PostgreSQL, MQTT): rustls with the ring
//! provider, servers verified against the system's roots or a CA file, client certificates
//! where given. One place builds every client configuration, so the three agree on what is
//! verified.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::path::Path;
use std::sync::Arc;

/// What of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// The chain up to a trusted root and the host name (libpq's `verify-full`, the default of
    /// `rediss://` and `mqtts://`).
    Full,
    /// The chain only, not the host name (libpq's `verify-ca`).
    ChainOnly,
    /// Nothing: encryption without authentication (libpq's `require` without a root
    /// certificate, `rediss://...?insecure`). Only when written explicitly.
    Nothing,
}

use crate::config::MqttTls;
pub use crate::config::TlsFiles;

/// A TLS setting that cannot be used: names the file or setting and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// The crypto provider every configuration uses. Installed as the process default too, for the
/// `redis` crate, which builds its own configuration from the default.
pub fn provider() -> Arc<CryptoProvider> {
    // ring rather than rustls's default aws-lc-rs, which needs a C and CMake build; rustls marks
    // ring's provider deprecated only because it lacks post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Fails only when a default is already installed: then it is this same provider.
    let _ = CryptoProvider::install_default((*provider).clone());
    provider
}

impl MqttTls {
    /// The client configuration of the MQTT source: a file that cannot be used is named.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let verify = if self.verify_server {
            Verify::Full
        } else {
            Verify::Nothing
        };
        client_config(&self.files, verify).map_err(|e| {
            TlsError(format!(
                "SENSORHUB_MQTT_CA_FILE, _CERT_FILE or _KEY_FILE: {e}"
            ))
        })
    }
}

/// A client configuration verifying as `verify` says.
pub fn client_config(files: &TlsFiles, verify: Verify) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(roots(files.ca.as_deref())?);
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS versions: {e}")))?;
    let builder = match verify {
        Verify::Full => builder.with_root_certificates(roots),
        Verify::ChainOnly | Verify::Nothing => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| TlsError(format!("TLS roots: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    inner,
                    verify,
                    algorithms: provider.signature_verification_algorithms,
                }))
        }
    };
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let (chain, key) = client_identity(cert, key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError(format!("client certificate {}: {e}", cert.display())))?
        }
    };
    Ok(Arc::new(config))
}

/// The CA certificates of `path` (PEM), or the system's roots.
fn roots(path: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match path {
        Some(path) => {
            for cert in read_certs(path)? {
                store
                    .add(cert)
                    .map_err(|e| TlsError(format!("CA file {}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError(
                    "no trusted root certificates on this system: name a CA file".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// Every certificate of a PEM file; an error names the file when it holds none.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

/// The client's certificate chain and key.
fn client_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError(format!("client key {}: {e}", key.display())))?;
    Ok((chain, key))
}

/// A verifier that checks less than the full one: the chain without the name, or nothing.
/// Handshake signatures are always checked, so the session is with whoever holds the key of the
/// certificate shown.
#[derive(Debug)]
struct Lenient {
    inner: Arc<WebPkiServerVerifier>,
    verify: Verify,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify == Verify::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(verified) => Ok(verified),
            // The chain is good; only the name differs, which `verify-ca` does not check.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(error) => Err(error),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn an_unusable_mqtt_ca_file_is_named_and_the_password_never() {
        let config = Config::from_lookup(|name| match name {
            "SENSORHUB_MQTT_URL" => Some("mqtts://u:pw@broker".into()),
            "SENSORHUB_MQTT_CA_FILE" => Some("/nonexistent/ca.pem".into()),
            _ => None,
        })
        .unwrap();
        let tls = config.mqtt.unwrap().tls.unwrap();
        let text = tls.client_config().unwrap_err().to_string();
        assert!(text.contains("SENSORHUB_MQTT_CA_FILE"), "{text}");
        assert!(text.contains("/nonexistent/ca.pem"), "{text}");
        assert!(!text.contains("pw"), "{text}");
    }
}
