//! A private Redis Cluster for the cluster tests: `masters` masters with `replicas` replicas each,
//! `redis-server --cluster-enabled yes` on free ports, joined by `redis-cli --cluster create`.
//! Torn down on drop, also when the test fails. Self-contained: the load run (`benches/e2e.rs`)
//! starts its cluster with it too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a node may be unreachable before the cluster fails it over to its replica.
const NODE_TIMEOUT_MS: u64 = 1500;

struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

pub struct PrivateCluster {
    nodes: Vec<Node>,
    tls: Option<ClusterTls>,
}

/// A cluster speaking only TLS, to clients and between its nodes: the server's certificate and
/// key, and the CA that signed it (clients need no certificate of their own).
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl PrivateCluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, None)
    }

    /// As [`PrivateCluster::start`], speaking only TLS.
    pub fn start_tls(masters: usize, replicas: usize, tls: ClusterTls) -> Self {
        Self::start_with(masters, replicas, Some(tls))
    }

    fn start_with(masters: usize, replicas: usize, tls: Option<ClusterTls>) -> Self {
        let mut cluster = Self {
            nodes: Vec::new(),
            tls,
        };
        for _ in 0..masters * (1 + replicas) {
            let port = node_port();
            let dir = std::env::temp_dir()
                .join(format!("sensorhub-cluster-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut node = Node {
                port,
                dir,
                child: None,
            };
            let mut command = Command::new("redis-server");
            match &cluster.tls {
                None => command.args(["--port", &node.port.to_string()]),
                Some(tls) => command
                    .args(["--port", "0", "--tls-port", &node.port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", "no"]),
            };
            let child = command
                .args(["--bind", "127.0.0.1"])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                ])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                // A replica syncs at once (the default waits 5 s for more replicas to share it).
                .args(["--repl-diskless-sync-delay", "0"])
                .arg("--dir")
                .arg(&node.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/services.sh)");
            node.child = Some(child);
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            wait_until(&format!("node {} answers", node.port), || {
                cluster.ping(node.port).then_some(())
            });
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut redis_cli = Command::new("redis-cli");
        if let Some(tls) = &cluster.tls {
            redis_cli.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = redis_cli
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli is installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_healthy(masters, replicas);
        cluster
    }

    /// Waits until every running node reports the cluster ok, with `masters` masters each owning
    /// slots and `replicas` replicas of each, synced.
    pub fn wait_healthy(&self, masters: usize, replicas: usize) {
        wait_until("the cluster is ok", || {
            let all_ok = self.running_ports().iter().all(|&port| {
                self.query::<String>(port, &["CLUSTER", "INFO"])
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            });
            let nodes = self.nodes_view()?;
            let owning = nodes
                .iter()
                .filter(|n| n.master && !n.slots.is_empty())
                .count();
            // A replica counts once it has synced: one that never did cannot take over.
            let replicas_synced = nodes
                .iter()
                .filter(|n| !n.master && !n.failed)
                .filter(|n| {
                    self.query::<String>(n.port, &["INFO", "replication"])
                        .is_some_and(|info| info.contains("master_link_status:up"))
                })
                .count();
            (all_ok && owning == masters && replicas_synced >= masters * replicas).then_some(())
        });
    }

    /// `redis+cluster://` naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let scheme = if self.tls.is_some() {
            "rediss+cluster"
        } else {
            "redis+cluster"
        };
        format!("{scheme}://{}", hosts.join(","))
    }

    /// The CA a client trusts, for a cluster speaking TLS.
    pub fn ca(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|tls| tls.ca.clone())
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `CLUSTER NODES` as seen by the first running node.
    pub fn nodes_view(&self) -> Option<Vec<NodeView>> {
        let port = *self.running_ports().first()?;
        let text: String = self.query(port, &["CLUSTER", "NODES"])?;
        Some(text.lines().filter_map(NodeView::parse).collect())
    }

    /// The port of the master serving `slot`.
    pub fn owner_of(&self, slot: u16) -> u16 {
        self.nodes_view()
            .unwrap()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|r| r.contains(&slot)))
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no master serves slot {slot}"))
    }

    /// Waits until a master other than the one on `from` serves `slot` (its replica, promoted);
    /// returns that master's port.
    pub fn wait_failover(&self, slot: u16, from: u16) -> u16 {
        wait_until(&format!("a replica takes slot {slot} over"), || {
            self.nodes_view()?
                .into_iter()
                .find(|n| {
                    n.master
                        && !n.failed
                        && n.port != from
                        && n.slots.iter().any(|r| r.contains(&slot))
                })
                .map(|n| n.port)
        })
    }

    /// Kills the node on `port` with SIGKILL (no chance to hand anything over).
    pub fn kill9(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Moves `slot`, with every key in it, from the master serving it to the master on `to`, as
    /// `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, `MIGRATE` in steps, then the
    /// new owner announced to every master.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner_of(slot);
        let ids: HashMap<u16, String> = self
            .nodes_view()
            .unwrap()
            .into_iter()
            .map(|n| (n.port, n.id))
            .collect();
        let slot_text = slot.to_string();
        let set = |port: u16, args: &[&str]| {
            let mut full = vec!["CLUSTER", "SETSLOT", &slot_text];
            full.extend_from_slice(args);
            self.query::<String>(port, &full)
                .unwrap_or_else(|| panic!("SETSLOT {args:?} on {port}"));
        };
        set(to, &["IMPORTING", &ids[&from]]);
        set(from, &["MIGRATING", &ids[&to]]);
        loop {
            let keys: Vec<String> = self
                .query(from, &["CLUSTER", "GETKEYSINSLOT", &slot_text, "10"])
                .unwrap();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            migrate.extend(keys.iter().map(String::as_str));
            self.query::<String>(from, &migrate).expect("MIGRATE");
            // Slowly, so that the load runs while the slot is half moved.
            std::thread::sleep(Duration::from_secs(1));
        }
        let target = ids[&to].clone();
        for port in self.masters() {
            set(port, &["NODE", &target]);
        }
    }

    /// The ports of the masters that run.
    pub fn masters(&self) -> Vec<u16> {
        let running = self.running_ports();
        self.nodes_view()
            .unwrap()
            .into_iter()
            .filter(|n| n.master && !n.failed && running.contains(&n.port))
            .map(|n| n.port)
            .collect()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    pub slots: Vec<std::ops::RangeInclusive<u16>>,
}

impl NodeView {
    fn parse(line: &str) -> Option<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = fields.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
        let flags = fields.get(2)?;
        let slots = fields
            .iter()
            .skip(8)
            .filter(|f| !f.starts_with('['))
            .filter_map(|f| match f.split_once('-') {
                Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                None => f.parse().ok().map(|s: u16| s..=s),
            })
            .collect();
        Some(Self {
            id: fields[0].to_owned(),
            port,
            master: flags.contains("master"),
            failed: flags.contains("fail"),
            slots,
        })
    }
}

/// A free port whose cluster bus port (the port + 10000) is free too.
fn node_port() -> u16 {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port <= 55_535 && free(port + 10_000) {
            return port;
        }
    }
}

impl PrivateCluster {
    fn ping(&self, port: u16) -> bool {
        self.query::<String>(port, &["PING"]).is_some()
    }

    /// One command to the node on `port`, `None` on any error.
    fn query<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> Option<T> {
        let client = match &self.tls {
            None => redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?,
            Some(tls) => redis::Client::build_with_tls(
                format!("rediss://127.0.0.1:{port}"),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&tls.ca).ok()?),
                },
            )
            .ok()?,
        };
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn).ok()
    }
}

fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The hash slot of a key in a Redis Cluster: CRC16 (XMODEM) of the key, or of its hash tag
/// (the text between the first `{` and the next `}`), modulo 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match key.find('{') {
        Some(open) => match key[open + 1..].find('}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    let mut crc: u16 = 0;
    for &byte in hashed {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}
