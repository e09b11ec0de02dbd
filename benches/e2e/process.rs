//! Processes of the run: the binary measured, CPU and memory of processes, sensorhub started
//! with the run's settings and waited for, the TLS Redis of `--tls`.

use super::*;

/// The release binary as `cargo build --release` makes it. The binary `cargo bench` builds beside
/// this benchmark links the library with the dev-dependencies' features (fault injection), so it
/// is not the one measured.
pub(crate) fn production_binary() -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--bin",
            "sensorhub",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build --release");
    assert!(output.status.success(), "cargo build --release failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|message| message["executable"].as_str().map(str::to_owned))
        .expect("cargo reported the sensorhub executable")
}

/// CPU seconds (user + system) of a process, from /proc.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// CPU seconds of every process whose command name is `name`.
pub(crate) fn cpu_of(name: &str) -> f64 {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name) {
            total += cpu_seconds(pid);
        }
    }
    total
}

pub(crate) fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET: (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One unlabelled sample of sensorhub's `/metrics` (NaN when absent).
pub(crate) fn metric(port: u16, name: &str) -> f64 {
    http_get(port, "/metrics")
        .and_then(|(_, body)| value_of(&body, name))
        .unwrap_or(f64::NAN)
}

pub(crate) fn spawn_sensorhub(args: &Args, db_url: &str, stream: &str, port: u16) -> Guard {
    spawn_sensorhub_with(args, db_url, stream, port, &[])
}

/// As [`spawn_sensorhub`], with `extra` settings over the run's connections (`--env` still last).
pub(crate) fn spawn_sensorhub_with(
    args: &Args,
    db_url: &str,
    stream: &str,
    port: u16,
    extra: &[(&str, String)],
) -> Guard {
    let child = Command::new(args.binary.as_deref().expect("binary resolved in main"))
        .envs(connections_env(args, db_url))
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env("SENSORHUB_STREAM", stream)
        .env("SENSORHUB_CHANNEL", "")
        .env("SENSORHUB_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("SENSORHUB_BATCH_SIZE", args.batch_size.to_string())
        .env("SENSORHUB_LOG", "warn")
        .envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .spawn()
        .expect("sensorhub binary");
    Guard(child)
}

/// The database URL sensorhub and the reference use: with `--tls`, encrypted (the local server's
/// own certificate is not one a client can verify by name, so `require`: encryption, the cost
/// measured here, without verification).
pub(crate) fn measured_url(args: &Args, db_url: &str) -> String {
    if args.tls {
        format!("{db_url}?sslmode=require")
    } else {
        format!("{db_url}?sslmode=disable")
    }
}

/// The connection settings of a sensorhub of the run.
pub(crate) fn connections_env(args: &Args, db_url: &str) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SENSORHUB_DATABASE_URL", measured_url(args, db_url)),
        ("SENSORHUB_REDIS_URL", args.redis_url.clone()),
    ];
    if let Some(ca) = &args.redis_ca {
        env.push(("SENSORHUB_REDIS_CA_FILE", ca.display().to_string()));
    }
    env
}

/// `--tls`: a TLS-only Redis of the run's own (certificates made for it), its CA file, and the
/// directory holding both, removed with the guard.
pub(crate) fn start_tls_redis() -> (Guard, u16, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = std::env::temp_dir().join(format!("sensorhub-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("server.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("server.key"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    (Guard(child), port, dir.join("ca.pem"), dir)
}

/// Seconds from `start` to the commit that stored the last of `readings` (the instance's first
/// readings): waits until they are all written, then reads the time of the last commit.
pub(crate) async fn until_stored(port: u16, readings: u64, start: Instant) -> f64 {
    while metric(port, "sensorhub_readings_written_total") < readings as f64 {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the readings were not all stored"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let committed = metric(port, "sensorhub_last_commit_timestamp_seconds");
    let elapsed = start.elapsed().as_secs_f64();
    let last_commit = committed - (chrono::Utc::now().timestamp_micros() as f64 / 1e6) + elapsed;
    if last_commit.is_finite() && last_commit > 0.0 {
        last_commit.min(elapsed)
    } else {
        elapsed
    }
}

/// Waits until the sensorhub on `port` answers `/readyz` with 200.
pub(crate) async fn wait_ready(port: u16) {
    let started = Instant::now();
    while http_get(port, "/readyz").map(|(s, _)| s) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sensorhub did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
