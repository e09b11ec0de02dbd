//! A host of the test's own across a network link that the test can silence: a network namespace
//! joined to this one by a veth pair, servers started inside it, and nftables rules inside it that
//! drop packets (all, or a share) without a reset, as a failed switch, a firewall or a NAT entry
//! that timed out would. Nothing outside the namespace is touched; it is removed on drop with
//! everything running in it.
//!
//! The namespace has two addresses: [`Netns::ip`], the path sensorhub uses and the rules cut, and
//! [`Netns::side_ip`], an untouched path the test itself uses to produce and to check.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Netns {
    pub name: String,
    host_if: String,
    subnet: u32,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Distinct per process and per namespace within it; short enough for interface names.
        let subnet = (std::process::id() * 7 + n) % 200 + 20;
        let name = format!("shns{subnet}");
        let host_if = format!("shv{subnet}h");
        let inner_if = format!("shv{subnet}n");
        // A namespace left by a test process that was killed.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self {
            name,
            host_if,
            subnet,
        };
        sh(&[
            "ip",
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ]);
        sh(&["ip", "link", "set", &inner_if, "netns", &ns.name]);
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("10.{subnet}.0.1/24"),
            "dev",
            &ns.host_if,
        ]);
        sh(&["ip", "link", "set", &ns.host_if, "up"]);
        for ip in [ns.ip(), ns.side_ip()] {
            ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &inner_if]);
        }
        ns.exec(&["ip", "link", "set", &inner_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The address sensorhub reaches the namespace's servers at: the one the rules cut.
    pub fn ip(&self) -> String {
        format!("10.{}.0.2", self.subnet)
    }

    /// The test's own path to the same servers, never cut.
    pub fn side_ip(&self) -> String {
        format!("10.{}.0.3", self.subnet)
    }

    /// `args` as a command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all);
    }

    /// Drops every packet to and from [`Self::ip`]: no reset, no answer.
    pub fn silence(&self) {
        self.rules("drop");
    }

    /// Drops `percent` of the packets to and from [`Self::ip`], at random.
    pub fn lose(&self, percent: u32) {
        self.rules(&format!("numgen random mod 100 < {percent} drop"));
    }

    /// Lets every packet through again.
    pub fn heal(&self) {
        let _ = self
            .command("nft")
            .args(["delete", "table", "inet", "sensorhub_test"])
            .output();
    }

    fn rules(&self, verdict: &str) {
        self.heal();
        let ip = self.ip();
        let ruleset = format!(
            "table inet sensorhub_test {{\n\
               chain incoming {{ type filter hook input priority 0; ip daddr {ip} {verdict}; }}\n\
               chain outgoing {{ type filter hook output priority 0; ip saddr {ip} {verdict}; }}\n\
             }}\n"
        );
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, ruleset).unwrap();
        let out = self
            .command("nft")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("nft is installed (scripts/services.sh --tools)");
        let _ = std::fs::remove_file(&path);
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A TCP proxy on 127.0.0.1 that delays every byte by `delay` in each direction, in order: the
/// latency of a long link (this kernel may have no `netem`). Its threads end with the process;
/// dropping it stops taking connections.
pub struct DelayProxy {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    /// Forwards connections to `target` (`host:port`), each direction delayed by `delay`.
    pub fn start(target: String, delay: std::time::Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = std::net::TcpStream::connect(&target) else {
                            continue;
                        };
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            delayed_copy(from, to, delay);
                        }
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        Self { port, stop }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read.
fn delayed_copy(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    delay: std::time::Duration,
) {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<(std::time::Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send((std::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        for (due, bytes) in rx {
            std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
