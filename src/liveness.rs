//! How long a silent peer is waited for. A network that drops packets without a reset (a failed
//! switch, a firewall, a NAT entry that timed out) leaves a TCP connection looking open for as
//! long as the kernel's defaults allow, which is hours: a blocking read, a transaction or an MQTT
//! session would wait on it all that time. Every connection sensorhub opens therefore sends TCP
//! keepalive probes early and gives up on unacknowledged data after `SENSORHUB_NETWORK_TIMEOUT`
//! (`TCP_USER_TIMEOUT`): the connection fails, and the code that owns it opens a new one.
//!
//! Replies are bounded on top of that where sensorhub waits for them: Redis commands by their
//! response timeout, the stream reader by its `BLOCK` time and a grace, MQTT by its keepalive
//! (a `PINGRESP` missing at the next ping ends the session).

use std::time::Duration;

/// Dead-peer detection of one deployment: everything is derived from one timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    timeout: Duration,
}

/// The keepalive probes sent before a silent connection is given up.
const PROBES: u32 = 3;
/// The shortest timeout: probes a second apart, three of them, after a second of silence.
pub use crate::config::MIN_NETWORK_TIMEOUT as MIN_TIMEOUT;

impl Liveness {
    /// A timeout of at least [`MIN_TIMEOUT`] (the probes are whole seconds apart).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout: timeout.max(MIN_TIMEOUT),
        }
    }

    /// After how long a silent peer is given up.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Idle time before the first keepalive probe: a third of the timeout, so that the probes
    /// that follow fit inside it.
    fn idle(&self) -> Duration {
        whole_seconds(self.timeout / 3)
    }

    /// Time between probes: the remaining two thirds over the probes.
    fn interval(&self) -> Duration {
        whole_seconds(self.timeout * 2 / 3 / PROBES)
    }

    fn keepalive(&self) -> socket2::TcpKeepalive {
        socket2::TcpKeepalive::new()
            .with_time(self.idle())
            .with_interval(self.interval())
            .with_retries(PROBES)
    }

    /// The settings of the `redis` crate's connections (pooled, Pub/Sub, cluster nodes).
    pub fn redis(&self) -> redis::io::tcp::TcpSettings {
        redis::io::tcp::TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(self.keepalive())
            .set_user_timeout(self.timeout)
    }

    /// Applies keepalive and the user timeout to a PostgreSQL connection configuration.
    pub fn postgres(&self, config: &mut tokio_postgres::Config) {
        config
            .keepalives(true)
            .keepalives_idle(self.idle())
            .keepalives_interval(self.interval())
            .keepalives_retries(PROBES)
            .tcp_user_timeout(self.timeout);
    }

    /// The same on the server's side of each session (`-c` startup options): a server backend
    /// whose client went silent mid-transaction would otherwise keep the transaction, and the
    /// row locks of the batch it was writing, for as long as the server's kernel waits (hours),
    /// and every later batch touching those windows would wait behind it.
    pub fn postgres_server_options(&self) -> String {
        let ms = self.timeout.as_millis();
        format!(
            "-c tcp_keepalives_idle={} -c tcp_keepalives_interval={} -c tcp_keepalives_count={PROBES} \
             -c tcp_user_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
            self.idle().as_secs(),
            self.interval().as_secs(),
        )
    }

    /// Applies keepalive and the user timeout to a socket sensorhub opened itself (the stream
    /// reader's).
    pub fn socket(&self, socket: &tokio::net::TcpStream) -> std::io::Result<()> {
        let socket = socket2::SockRef::from(socket);
        socket.set_tcp_keepalive(&self.keepalive())?;
        socket.set_tcp_user_timeout(Some(self.timeout))
    }

    /// The MQTT keepalive: a ping every half timeout, so that a missing answer is noticed at
    /// the next ping, within the timeout. MQTT counts whole seconds; never more than the 5 s
    /// sensorhub has always used, which also bounds how long a broker keeps a dead session.
    pub fn mqtt_keep_alive(&self) -> Duration {
        whole_seconds(self.timeout / 2).min(Duration::from_secs(5))
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
    }
}

/// `d` in whole seconds, at least one.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_fit_inside_the_timeout() {
        for secs in [5, 7, 10, 30, 120, 3600] {
            let live = Liveness::new(Duration::from_secs(secs));
            let detected = live.idle() + live.interval() * PROBES;
            assert!(
                detected <= live.timeout() + Duration::from_secs(1),
                "{secs}s: {detected:?}"
            );
            assert!(live.mqtt_keep_alive() * 2 <= live.timeout());
        }
        assert_eq!(Liveness::new(Duration::ZERO).timeout(), MIN_TIMEOUT);
    }
}
