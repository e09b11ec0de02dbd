//! Who the connections are and how their sessions end: a connection is the deployment's one
//! session under the lease, or a member `<consumer>-<n>` of the shared subscription
//! ([`Member`]); a member stopped while others remain leaves its share to them ([`Leaving`]), and
//! sessions the configuration no longer uses are retired at start.

use super::session::filter_of;
use super::{Loops, MqttHealth, MqttSourceSettings, SourceLoop};
use crate::stream::lease::holder_token;
use crate::stream::mqtt_session::SessionKeys;
use rumqttc::AsyncClient;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Who one connection is: at the broker (its client id, the share its filters are in) and in
/// Redis (its lease, its session's record).
#[derive(Clone, Debug)]
pub(super) struct Member {
    /// `<consumer>-<n>` in a shared subscription; `None` under the deployment's lease.
    pub(super) name: Option<String>,
    pub(super) client_id: String,
    /// What every filter starts with: `$share/<group>/` in a shared subscription, else nothing.
    pub(super) share: String,
    /// The lease beside each shard: `mqtt-lease`, or `mqtt-lease:<member>`.
    pub(super) lease: String,
    /// Its place among this instance's connections (for `/readyz`).
    pub(super) index: usize,
    /// A session the configuration no longer uses (a member beyond `SENSORHUB_MQTT_CONNECTIONS`,
    /// the other mode's): emptied and left, never subscribed again.
    pub(super) retire: bool,
}

impl Member {
    /// The `settings`' connections: the one session under the lease, or `connections` members
    /// of the shared subscription.
    pub(super) fn all(settings: &MqttSourceSettings) -> Vec<Self> {
        let mqtt = &settings.mqtt;
        if !mqtt.shared {
            return vec![Self::leased(settings, false)];
        }
        (1..=mqtt.connections)
            .map(|n| Self::shared(settings, n))
            .collect()
    }

    /// The deployment's one session, under the lease.
    fn leased(settings: &MqttSourceSettings, retire: bool) -> Self {
        Self {
            name: None,
            // Filled in at start ([`crate::store::deployment`]) when not configured.
            client_id: settings.mqtt.client_id.clone().unwrap_or_default(),
            share: String::new(),
            lease: "mqtt-lease".into(),
            index: 0,
            retire,
        }
    }

    /// The member `n` (from 1) of this instance in the shared subscription.
    fn shared(settings: &MqttSourceSettings, n: usize) -> Self {
        let name = format!("{}-{n}", settings.consumer);
        Self {
            index: n - 1,
            retire: n > settings.mqtt.connections,
            ..Self::named(settings, name)
        }
    }

    /// The member `name` of the shared subscription, of whichever instance.
    fn named(settings: &MqttSourceSettings, name: String) -> Self {
        let base = settings.mqtt.client_id.clone().unwrap_or_default();
        Self {
            client_id: format!("{base}-{name}"),
            share: format!("$share/{}/", share_group(&base)),
            lease: format!("mqtt-lease:{name}"),
            name: Some(name),
            index: 0,
            retire: true,
        }
    }

    /// The number `n` of a member `<consumer>-<n>` of the instance `consumer`.
    fn number_of(other: &str, consumer: &str) -> Option<usize> {
        other
            .strip_prefix(consumer)?
            .strip_prefix('-')
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))?
            .parse()
            .ok()
    }

    /// Whether the member `other` is a connection of the instance `consumer` (`<consumer>-<n>`).
    pub(super) fn of_instance(other: &str, consumer: &str) -> bool {
        Self::number_of(other, consumer).is_some()
    }
}

/// The shared subscription's group: the deployment's client id, so that two deployments on one
/// broker each get every message, without the characters a group name cannot hold.
fn share_group(client_id: &str) -> String {
    client_id
        .chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
        .collect()
}

impl Loops {
    /// Retires the sessions the configuration no longer uses, each resumed, unsubscribed, and
    /// what it holds appended, as a member leaving on stop. With Mosquitto a session still
    /// subscribed keeps receiving, connected or not: a member's turn nobody takes is lost past the
    /// broker's queue limit, and the other mode's session queues copies that a switch back would
    /// append again (readings without a timestamp twice).
    /// - With shared subscriptions: this instance's members beyond `SENSORHUB_MQTT_CONNECTIONS`
    ///   (left from a start with more), and the lease's session if it still holds subscriptions.
    /// - Under the lease: every member of the shared subscription.
    pub(super) async fn retire_unused_sessions(self) {
        let settings = &self.settings;
        let keys = SessionKeys::beside(settings.streams.first());
        let mut conn = self.conn.clone();
        let unused = async {
            let members = keys.members(&mut conn).await?;
            if !settings.mqtt.shared {
                return Ok(members
                    .into_iter()
                    .map(|name| Member::named(settings, name))
                    .collect());
            }
            let mut unused: Vec<Member> = members
                .iter()
                .filter_map(|member| Member::number_of(member, &settings.consumer))
                .filter(|n| *n > settings.mqtt.connections)
                .map(|n| Member {
                    index: 0,
                    ..Member::shared(settings, n)
                })
                .collect();
            if !keys.subscriptions(&mut conn).await?.is_empty() {
                unused.push(Member::leased(settings, true));
            }
            Ok::<_, redis::RedisError>(unused)
        };
        let unused: Vec<Member> = match unused.await {
            Ok(unused) => unused,
            Err(error) => {
                tracing::warn!(%error, "reading the MQTT sessions of the other mode or of more connections; they are not retired at this start");
                return;
            }
        };
        for member in unused {
            tracing::info!(client_id = %member.client_id, "retiring an MQTT session the configuration no longer uses");
            // Not part of /readyz: it is not one of the configured connections.
            let health = Arc::new(MqttHealth::new(settings.mqtt.ready_grace, 1));
            let token = holder_token(&settings.consumer);
            actix::spawn(self.source_loop(member, token, health).run());
        }
    }
}

impl SourceLoop {
    /// A member retired: its session unsubscribes from what it `held`, its record is removed,
    /// and its loop settles what the session still holds ([`Leaving`]).
    pub(super) async fn retire(
        &mut self,
        client: &AsyncClient,
        held: &BTreeSet<String>,
    ) -> redis::RedisResult<Leaving> {
        let name = self.member.name.clone().unwrap_or_default();
        let unsubscribing = unsubscribe_all(client, held);
        self.session.leave(&mut self.conn, &name).await?;
        Ok(Leaving::new(unsubscribing))
    }

    /// A stopped member of a shared subscription leaves it when another member remains: it
    /// unsubscribes, and its loop goes on until what it holds is appended and acknowledged
    /// ([`Leaving`]). `None` when it stays: under the lease, or as the last member.
    pub(super) async fn leave(
        &mut self,
        client: &AsyncClient,
        wanted: &BTreeSet<String>,
    ) -> redis::RedisResult<Option<Leaving>> {
        let Some(name) = &self.member.name else {
            return Ok(None);
        };
        let first = self.settings.streams.first();
        let others: Vec<(String, String)> = self
            .session
            .members(&mut self.conn)
            .await?
            .into_iter()
            .filter(|other| !Member::of_instance(other, &self.settings.consumer))
            .map(|other| {
                let lease = format!("{first}:mqtt-lease:{other}");
                (other, lease)
            })
            .collect();
        let name = name.clone();
        if !self
            .session
            .leave_if_others_remain(&mut self.conn, &name, &others)
            .await?
        {
            tracing::info!(member = %name, "stopping as the shared subscription's last member: subscribed still, the broker queues for its session");
            return Ok(None);
        }
        let unsubscribing = unsubscribe_all(client, wanted);
        // Whatever the broker answers, the record no longer says subscribed: the next start
        // subscribes again.
        self.session.leave(&mut self.conn, &name).await?;
        tracing::info!(member = %name, "leaving the shared subscription: unsubscribed, settling the messages in hand");
        Ok(Some(Leaving::new(unsubscribing)))
    }
}

/// A member leaving the shared subscription: unsubscribed, it appends and acknowledges what
/// the broker still sends its session (what was queued or in flight before the unsubscription)
/// until the broker is quiet, for at most [`Leaving::AT_MOST`].
pub(super) struct Leaving {
    /// UNSUBACKs still to come.
    pub(super) unsubscribing: usize,
    pub(super) since: Instant,
    pub(super) last_message: Instant,
}

impl Leaving {
    fn new(unsubscribing: usize) -> Self {
        Self {
            unsubscribing,
            since: Instant::now(),
            last_message: Instant::now(),
        }
    }

    /// How long without a message counts as the session settled.
    pub(super) const QUIET: Duration = Duration::from_millis(500);
    /// The longest a stop waits for the session to settle.
    pub(super) const AT_MOST: Duration = Duration::from_secs(10);
}

/// Sends an UNSUBSCRIBE for every recorded subscription `<qos> <filter>` of `entries`: how many
/// were sent. A full request queue leaves that filter subscribed (its messages keep coming to
/// the session until it connects again); the rest is settled as usual.
fn unsubscribe_all(client: &AsyncClient, entries: &BTreeSet<String>) -> usize {
    entries
        .iter()
        .filter(|entry| client.try_unsubscribe(filter_of(entry)).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_belongs_to_the_instance_whose_consumer_name_it_starts_with_then_a_number() {
        assert!(Member::of_instance("edge-1", "edge"));
        assert!(Member::of_instance("edge-12", "edge"));
        // Another instance whose name starts the same way.
        assert!(!Member::of_instance("edge-a-1", "edge"));
        assert!(!Member::of_instance("edge-1-2", "edge"));
        assert!(!Member::of_instance("edge-", "edge"));
        assert!(!Member::of_instance("edge", "edge"));
        assert!(!Member::of_instance("edgy-1", "edge"));
        assert_eq!(Member::number_of("edge-12", "edge"), Some(12));
        assert_eq!(Member::number_of("edge-x", "edge"), None);
    }

    #[test]
    fn a_share_group_holds_no_character_mqtt_reserves_for_topics() {
        assert_eq!(share_group("sensorhub-s-0a1b"), "sensorhub-s-0a1b");
        assert_eq!(share_group("site/a+b#c"), "site_a_b_c");
    }
}
