//! sensorhub as a real child process that a test can `kill -9`, its output in a log file, and its
//! readiness and metrics as a test reads them.

use super::servers::free_port;
use super::{http_get, unique_name, wait_for};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The sensorhub binary running as a child process, its output in a log file.
pub struct Sensorhub {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Sensorhub {
    /// Starts the binary with `env` (plus a free HTTP port) and waits until it answers `/healthz`.
    pub async fn spawn(env: &[(&str, String)]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("sensorhub")));
        let file = std::fs::File::create(&log).unwrap();
        // SENSORHUB_TEST_BINARY runs another build (an older one, to see a test fail on it).
        let binary = std::env::var("SENSORHUB_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sensorhub").to_owned());
        let child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SENSORHUB_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("SENSORHUB_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("sensorhub binary");
        let mut hub = Self { child, port, log };
        hub.wait_alive().await;
        hub
    }

    /// Starts the binary with `env` expecting it to refuse to start: returns what it printed.
    pub async fn refused(env: &[(&str, String)]) -> String {
        let binary = std::env::var("SENSORHUB_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_sensorhub").to_owned());
        let run = tokio::process::Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SENSORHUB_HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("NO_COLOR", "1")
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("a refused start ends at once")
            .expect("sensorhub binary");
        let printed = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "started: {printed}");
        printed
    }

    async fn wait_alive(&mut self) {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sensorhub exited at start ({status}):\n{}", self.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && http_get(port, "/healthz").await.0 == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sensorhub did not come up:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kills` times: waits 300 ms plus up to `spread_ms` more (drawn from `rng`), then kill -9
    /// and a restart with `env`.
    pub async fn kill_and_restart(
        &mut self,
        env: &[(&str, String)],
        kills: u32,
        rng: &mut super::Rng,
        spread_ms: u64,
    ) {
        for kill in 0..kills {
            tokio::time::sleep(Duration::from_millis(300 + rng.below(spread_ms))).await;
            self.kill9();
            eprintln!("kill -9 #{kill}");
            *self = Self::spawn(env).await;
        }
    }

    /// SIGTERM, then waits up to `timeout` for the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Peak resident memory, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        proc_status_kib(self.pid(), "VmHWM:") / 1024.0
    }

    /// One metric's value from `/metrics` (the first line that starts with `name` then a space).
    /// Waits until the metric `name` (with its labels, as `/metrics` writes it) reads `want`.
    pub async fn wait_for_metric(&self, name: &str, want: f64, timeout: Duration) {
        let port = self.port;
        wait_for(&format!("{name} to read {want}"), timeout, || async move {
            let (_, body) = http_get(port, "/metrics").await;
            (metric_value(&body, name) == Some(want)).then_some(())
        })
        .await;
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = http_get(self.port, "/metrics").await;
        metric_value(&body, name).unwrap_or_else(|| panic!("{name} missing from /metrics"))
    }
}

impl Drop for Sensorhub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- sensorhub log {} ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

fn proc_status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A metric's value from a Prometheus text exposition.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `/readyz` until its status is `want`; returns the body.
pub async fn wait_ready_status(port: u16, want: u16, timeout: Duration) -> String {
    wait_for(
        &format!("/readyz to answer {want}"),
        timeout,
        || async move {
            let (status, body) = http_get(port, "/readyz").await;
            (status == want).then_some(body)
        },
    )
    .await
}
