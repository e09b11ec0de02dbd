//! Certificates made for a test, for the servers and clients that speak TLS.

use super::unique_name;
use std::path::{Path, PathBuf};

/// Certificates made for a test: a CA, a server certificate it signed for 127.0.0.1 (the IP
/// address only, so that `localhost` does not match it), and a second CA that signed nothing
/// here. PEM files in a directory every server's user can read; removed on drop of the last clone.
#[derive(Clone)]
pub struct TestCerts {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate the CA signed, for servers that ask for one.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _dir: std::sync::Arc<RemovedOnDrop>,
}

/// A scratch directory of a test, removed with everything in it when dropped.
pub struct RemovedOnDrop(pub PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestCerts {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(unique_name("sensorhub-certs"));
        std::fs::create_dir_all(&dir).unwrap();
        let open = |path: &Path, mode: u32| {
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
        };
        open(&dir, 0o755);
        let ca = |name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("sensorhub test CA");
        let (other_pem, _) = ca("another CA");
        let server_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server = params.signed_by(&server_key, &issuer).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "sensorhub");
        let client = params.signed_by(&client_key, &issuer).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            open(&path, 0o644);
            path
        };
        Self {
            ca: write("ca.pem", ca_pem),
            other_ca: write("other-ca.pem", other_pem),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            _dir: std::sync::Arc::new(RemovedOnDrop(dir)),
        }
    }
}
