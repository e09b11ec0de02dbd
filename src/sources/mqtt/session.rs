//! The MQTT session's subscriptions as the source keeps them: brought to the configured ones
//! ([`SessionChange`]).

use crate::redis::connection::Connection;
use crate::stream::mqtt_session::SessionKeys;
use rumqttc::{AsyncClient, QoS};
use std::collections::BTreeSet;

/// A change of the session's subscriptions, from what the session holds to what is configured.
pub(super) struct SessionChange {
    /// What the session held, as recorded.
    pub(super) held: BTreeSet<String>,
    /// The broker kept no session: the record starts afresh.
    pub(super) replace: bool,
    pub(super) subscribe: Vec<String>,
    pub(super) unsubscribe: Vec<String>,
    /// Acknowledgements (SUBACK, UNSUBACK) still to come.
    pub(super) awaiting: usize,
}

impl SessionChange {
    /// From the subscriptions `held` to the `wanted` ones. A filter held at another QoS is
    /// subscribed again (which replaces it), not unsubscribed.
    pub(super) fn between(
        held: BTreeSet<String>,
        wanted: &BTreeSet<String>,
        replace: bool,
    ) -> Self {
        let subscribe: Vec<String> = wanted.difference(&held).cloned().collect();
        let unsubscribe = held
            .difference(wanted)
            .filter(|entry| {
                !subscribe
                    .iter()
                    .any(|new| filter_of(new) == filter_of(entry))
            })
            .cloned()
            .collect();
        Self {
            held,
            replace,
            subscribe,
            unsubscribe,
            awaiting: 0,
        }
    }

    /// Sends the subscribe and unsubscribe requests.
    pub(super) async fn send(
        mut self,
        client: &AsyncClient,
        qos: QoS,
    ) -> Result<Self, rumqttc::ClientError> {
        if !self.subscribe.is_empty() {
            let filters = self
                .subscribe
                .iter()
                .map(|entry| rumqttc::SubscribeFilter::new(filter_of(entry).to_owned(), qos));
            client.subscribe_many(filters).await?;
            self.awaiting += 1;
        }
        for entry in &self.unsubscribe {
            client.unsubscribe(filter_of(entry)).await?;
            self.awaiting += 1;
        }
        Ok(self)
    }

    /// Records the acknowledged change in Redis: what was subscribed, without what was
    /// unsubscribed or replaced at another QoS.
    pub(super) async fn record(
        &self,
        session: &SessionKeys,
        conn: &mut Connection,
    ) -> redis::RedisResult<()> {
        if !self.replace && self.subscribe.is_empty() && self.unsubscribe.is_empty() {
            return Ok(());
        }
        let gone: Vec<String> = self
            .held
            .iter()
            .filter(|entry| {
                self.unsubscribe.contains(entry)
                    || self
                        .subscribe
                        .iter()
                        .any(|new| filter_of(new) == filter_of(entry))
            })
            .cloned()
            .collect();
        session
            .record_subscriptions(conn, self.replace, &self.subscribe, &gone)
            .await
    }
}

/// The filter of a recorded subscription `<qos> <filter>`.
pub(super) fn filter_of(entry: &str) -> &str {
    entry.split_once(' ').map_or(entry, |(_, filter)| filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_change_subscribes_new_filters_and_unsubscribes_removed_ones() {
        let set = |entries: &[&str]| -> BTreeSet<String> {
            entries.iter().map(|e| (*e).to_owned()).collect()
        };
        let change = SessionChange::between(
            set(&["1 a/#", "1 b/#", "1 c/#"]),
            &set(&["1 a/#", "2 b/#", "1 d/#"]),
            false,
        );
        // b/# at another QoS is subscribed again (that replaces it), never unsubscribed.
        assert_eq!(change.subscribe, ["1 d/#", "2 b/#"]);
        assert_eq!(change.unsubscribe, ["1 c/#"]);
        let fresh = SessionChange::between(set(&[]), &set(&["1 a/#"]), true);
        assert_eq!(fresh.subscribe, ["1 a/#"]);
        assert!(fresh.unsubscribe.is_empty());
    }
}
