//! Whether the MQTT source consumes, per connection, for `/readyz`.

use crate::health::Consuming;
use std::time::Duration;

/// Whether the MQTT source consumes, for `/readyz`: not while a connection of this instance holds
/// its lease without being subscribed for longer than
/// [`crate::config::MqttSettings::ready_grace`].
#[derive(Debug)]
pub struct MqttHealth {
    connections: Vec<Consuming>,
}

impl MqttHealth {
    /// `connections` connections, none subscribed yet.
    pub fn new(grace: Duration, connections: usize) -> Self {
        Self {
            connections: (0..connections.max(1))
                .map(|_| Consuming::new(grace, "not consuming", "starting"))
                .collect(),
        }
    }

    /// `Err` naming the first connection that has not consumed for longer than the grace period.
    pub fn check(&self) -> Result<(), String> {
        let several = self.connections.len() > 1;
        for (n, connection) in self.connections.iter().enumerate() {
            connection.check().map_err(|why| match several {
                true => format!("connection {}: {why}", n + 1),
                false => why,
            })?;
        }
        Ok(())
    }

    pub(super) fn connection(&self, index: usize) -> &Consuming {
        &self.connections[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_the_first_connection_not_consuming() {
        let health = MqttHealth::new(Duration::ZERO, 3);
        health.connection(0).consuming();
        health.connection(2).consuming();
        health
            .connection(1)
            .not_consuming("connecting to broker:1883".into());
        std::thread::sleep(Duration::from_millis(5));
        let why = health.check().unwrap_err();
        assert!(why.starts_with("connection 2: not consuming"), "{why}");
        assert!(why.ends_with("connecting to broker:1883"), "{why}");
        health.connection(1).consuming();
        assert_eq!(health.check(), Ok(()));
        // One connection: no number.
        let one = MqttHealth::new(Duration::ZERO, 1);
        std::thread::sleep(Duration::from_millis(5));
        assert!(one.check().unwrap_err().starts_with("not consuming"));
    }
}
