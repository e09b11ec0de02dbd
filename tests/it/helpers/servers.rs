//! Private servers and processes for failure tests: a PostgreSQL (`initdb` into a temp dir) or a
//! Redis (`redis-server --port`) on a free port that a test may stop and restart without disturbing
//! anything else, and sensorhub as a real child process that can be `kill -9`ed. Everything is
//! torn down on drop, also when the test fails.

use super::certs::TestCerts;
use super::netns::Netns;
use super::unique_name;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A PostgreSQL server binary: Debian's newest `/usr/lib/postgresql/<v>/bin/<tool>`, else PATH.
fn pg_tool(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    versions.sort_by_key(|p| {
        p.components()
            .nth(4)
            .and_then(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| PathBuf::from(tool))
}

/// PostgreSQL refuses to run as root: run its tools as the `postgres` user then.
fn pg_command(tool: &str) -> Command {
    if running_as_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(pg_tool(tool));
        cmd
    } else {
        Command::new(pg_tool(tool))
    }
}

/// Where a private server runs: on 127.0.0.1, or inside a [`Netns`] listening on both of its
/// addresses (URLs name the one sensorhub uses, [`Netns::ip`]).
#[derive(Clone, Default)]
struct Placement {
    /// `(namespace, ip, side ip)`.
    netns: Option<(String, String, String)>,
}

impl Placement {
    fn of(ns: &Netns) -> Self {
        Self {
            netns: Some((ns.name.clone(), ns.ip(), ns.side_ip())),
        }
    }

    /// The address URLs name.
    fn host(&self) -> &str {
        self.netns.as_ref().map_or("127.0.0.1", |(_, ip, _)| ip)
    }

    /// Every address the server listens on.
    fn listen(&self) -> Vec<String> {
        match &self.netns {
            None => vec!["127.0.0.1".into()],
            Some((_, ip, side)) => vec![ip.clone(), side.clone()],
        }
    }

    /// `cmd`, run inside the namespace when there is one.
    fn wrap(&self, cmd: Command) -> Command {
        let Some((name, _, _)) = &self.netns else {
            return cmd;
        };
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        wrapped
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL server of this test's own.
pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
    /// Server settings beyond the defaults (`-c name=value ...`).
    options: String,
    place: Placement,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        Self::start_with(None, Placement::default())
    }

    /// A server that speaks TLS (`ssl = on`) with the certificate of `certs` (plain connections
    /// stay allowed, as with `sslmode=prefer` clients).
    pub fn start_tls(certs: &TestCerts) -> Self {
        Self::start_with(Some(certs), Placement::default())
    }

    /// A server inside `ns`, on both of its addresses.
    pub fn start_in(ns: &Netns) -> Self {
        Self::start_with(None, Placement::of(ns))
    }

    fn start_with(certs: Option<&TestCerts>, place: Placement) -> Self {
        let dir = std::env::temp_dir().join(unique_name("sensorhub-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            );
        }
        let mut initdb = pg_command("initdb");
        initdb.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        if place.netns.is_some() {
            // Clients come from the namespace's peer address, not 127.0.0.1.
            let hba = dir.join("data").join("pg_hba.conf");
            let mut rules = std::fs::read_to_string(&hba).unwrap();
            rules.push_str("host all all 10.0.0.0/8 trust\n");
            std::fs::write(&hba, rules).unwrap();
        }
        let options = match certs {
            None => String::new(),
            Some(certs) => {
                // The key must belong to the server's user and be readable by it alone.
                let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
                std::fs::copy(&certs.server_cert, &cert).unwrap();
                std::fs::copy(&certs.server_key, &key).unwrap();
                std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .unwrap();
                if running_as_root() {
                    let mut chown = Command::new("chown");
                    chown.args(["postgres:postgres"]).arg(&cert).arg(&key);
                    run(chown, "chown");
                }
                format!(
                    " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                    cert.display(),
                    key.display()
                )
            }
        };
        let pg = Self {
            dir,
            port: free_port(),
            options,
            place,
        };
        pg.start_server();
        pg
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`), started: asynchronous unless the
    /// primary names it in `synchronous_standby_names`.
    pub fn replica_of(primary: &PrivatePostgres) -> Self {
        let dir = std::env::temp_dir().join(unique_name("sensorhub-pg-replica"));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.args(["postgres:postgres"]).arg(&dir);
            run(chown, "chown");
        }
        let mut backup = pg_command("pg_basebackup");
        backup
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-X", "stream", "-R", "--no-sync", "-D"])
            .arg(dir.join("data"));
        run(backup, "pg_basebackup");
        let replica = Self {
            dir,
            port: free_port(),
            options: String::new(),
            place: Placement::default(),
        };
        replica.start_server();
        replica
    }

    /// Promotes a replica to primary (`pg_ctl promote`, waiting until it takes writes).
    pub fn promote(&self) {
        let mut ctl = pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "promote"]);
        run(ctl, "pg_ctl promote");
    }

    /// Kills the server's postmaster with SIGKILL: a crash, with no shutdown checkpoint.
    pub fn kill9(&self) {
        let pid = std::fs::read_to_string(self.dir.join("data").join("postmaster.pid"))
            .expect("the server runs");
        let pid = pid.lines().next().unwrap().trim().to_owned();
        run(
            {
                let mut kill = Command::new("kill");
                kill.args(["-9", &pid]);
                kill
            },
            "kill -9 postmaster",
        );
    }

    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@{}:{}/{database}",
            self.place.host(),
            self.port
        )
    }

    pub fn start_server(&self) {
        let mut ctl = pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -c listen_addresses={} -k {} -c shared_buffers=32MB -c max_connections=60{}",
                self.port,
                self.place.listen().join(","),
                self.dir.display(),
                self.options
            ))
            .args(["-w", "-t", "60", "start"]);
        run(self.place.wrap(ctl), "pg_ctl start");
    }

    /// Stops the server (fast shutdown: connections are closed, nothing is lost).
    pub fn stop_server(&self) {
        let mut ctl = pg_command("pg_ctl");
        ctl.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(ctl, "pg_ctl stop");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server of this test's own, optionally persistent (AOF, fsync on every write).
pub struct PrivateRedis {
    dir: PathBuf,
    pub port: u16,
    persistent: bool,
    child: Option<Child>,
    /// TLS only (no plain port), with this certificate, and a password: see [`Self::start_tls`].
    tls: Option<(TestCerts, String)>,
    /// Whether clients must show a certificate the CA signed.
    mutual: bool,
    place: Placement,
}

impl PrivateRedis {
    pub fn start(persistent: bool) -> Self {
        Self::start_with(persistent, None, false, Placement::default())
    }

    /// A server inside `ns`, on both of its addresses.
    pub fn start_in(ns: &Netns) -> Self {
        Self::start_with(false, None, false, Placement::of(ns))
    }

    /// A server that speaks only TLS (`--port 0 --tls-port`), with the certificate of `certs`,
    /// and requires `password`.
    pub fn start_tls(certs: &TestCerts, password: &str) -> Self {
        Self::start_with(
            false,
            Some((certs.clone(), password.to_owned())),
            false,
            Placement::default(),
        )
    }

    /// As [`Self::start_tls`], and clients must show a certificate the test CA signed.
    pub fn start_mutual_tls(certs: &TestCerts, password: &str) -> Self {
        Self::start_with(
            false,
            Some((certs.clone(), password.to_owned())),
            true,
            Placement::default(),
        )
    }

    fn start_with(
        persistent: bool,
        tls: Option<(TestCerts, String)>,
        mutual: bool,
        place: Placement,
    ) -> Self {
        let dir = std::env::temp_dir().join(unique_name("sensorhub-redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Self {
            dir,
            port: free_port(),
            persistent,
            child: None,
            tls,
            mutual,
            place,
        };
        redis.start_server();
        redis
    }

    pub fn url(&self) -> String {
        match &self.tls {
            None => format!("redis://{}:{}", self.place.host(), self.port),
            Some((_, password)) => format!("rediss://:{password}@127.0.0.1:{}", self.port),
        }
    }

    /// A client of this server, over TLS trusting the test CA when it speaks TLS.
    pub fn client(&self) -> redis::Client {
        let files = match &self.tls {
            None => Default::default(),
            Some((certs, _)) => sensorhub::tls::TlsFiles {
                ca: Some(certs.ca.clone()),
                client: self
                    .mutual
                    .then(|| (certs.client_cert.clone(), certs.client_key.clone())),
            },
        };
        sensorhub::redis::target::parse(&self.url(), &files)
            .unwrap()
            .client
    }

    pub fn start_server(&mut self) {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some((certs, password)) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&certs.server_cert)
                    .arg("--tls-key-file")
                    .arg(&certs.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&certs.ca)
                    .args(["--tls-auth-clients", if self.mutual { "yes" } else { "no" }])
                    .args(["--requirepass", password]);
            }
        }
        let mut cmd = self.place.wrap(cmd);
        let child = cmd
            .arg("--bind")
            .args(self.place.listen())
            .args(["--protected-mode", "no", "--save", ""])
            .args(["--appendonly", appendonly, "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh)");
        self.child = Some(child);
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pong = client
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if pong.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Shuts the server down as an operator would (`SHUTDOWN`: the AOF is flushed).
    pub fn stop_server(&mut self) {
        if let Ok(mut conn) = self.client().get_connection() {
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query(&mut conn);
        }
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Mosquitto of this test's own on a free port, persistent (its sessions and queued messages
/// survive a restart), with no cap on the messages it queues for an offline session.
pub struct PrivateMosquitto {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
    place: Placement,
}

impl PrivateMosquitto {
    pub fn start() -> Self {
        Self::start_with(None, "", Placement::default())
    }

    /// A broker whose only listener speaks TLS, with the certificate of `certs`.
    pub fn start_tls(certs: &TestCerts) -> Self {
        Self::start_with(Some(certs), "", Placement::default())
    }

    /// A broker with `extra` lines of configuration.
    pub fn start_configured(extra: &str) -> Self {
        Self::start_with(None, extra, Placement::default())
    }

    /// A broker inside `ns`, on both of its addresses, with `extra` lines of configuration.
    pub fn start_in(ns: &Netns, extra: &str) -> Self {
        Self::start_with(None, extra, Placement::of(ns))
    }

    /// The broker's address in URLs and for clients.
    pub fn host(&self) -> &str {
        self.place.host()
    }

    fn start_with(certs: Option<&TestCerts>, extra: &str, place: Placement) -> Self {
        let dir = std::env::temp_dir().join(unique_name("sensorhub-mosquitto"));
        std::fs::create_dir_all(&dir).unwrap();
        // Started as root, Mosquitto drops to its own user, which must be able to write its
        // persistence file here.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "{}allow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\n{extra}\n{}",
                place
                    .listen()
                    .iter()
                    .map(|ip| format!("listener {port} {ip}\n"))
                    .collect::<String>(),
                dir.display(),
                match certs {
                    None => String::new(),
                    Some(certs) => format!(
                        "cafile {}\ncertfile {}\nkeyfile {}\n",
                        certs.ca.display(),
                        certs.server_cert.display(),
                        certs.server_key.display()
                    ),
                }
            ),
        )
        .unwrap();
        let mut broker = Self {
            dir,
            port,
            child: None,
            place,
        };
        broker.start_server();
        broker
    }

    pub fn start_server(&mut self) {
        let mut cmd = self.place.wrap(Command::new("mosquitto"));
        let child = cmd
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (scripts/services.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((self.place.host(), self.port)).is_err() {
            assert!(Instant::now() < deadline, "private mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its persistence file).
    pub fn stop_server(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
