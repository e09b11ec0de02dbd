//! What the MQTT source keeps in Redis about its broker session, beside the (first) stream so that
//! every instance of a deployment, and only they, share it (its client id is in PostgreSQL:
//! [`crate::store::deployment`]):
//!
//! - `<stream>:mqtt-subscriptions`: the subscriptions the session holds at the broker (`<qos>
//!   <filter>`), so that a resumed session subscribes only to new filters and unsubscribes from
//!   the ones no longer configured. Subscribing again would make the broker send every retained
//!   message again.
//! - `<stream>:mqtt-retained`: per topic, the SHA-1 of the last retained message appended, so
//!   that a retained message sent again for a new subscription is not a new reading.
//! - `<stream>:sparkplug-names`: per Sparkplug B edge node (`<group>/<node>`), the alias names of
//!   its last BIRTH, so that a dead letter of a message that came before it can be replayed
//!   ([`crate::stream::dead_letter::replay`]).
//! - With shared subscriptions, `<stream>:mqtt-subscriptions:<member>` per member session
//!   (`<consumer>-<n>`) instead of the one record, and `<stream>:mqtt-members`: the members that
//!   joined and did not leave, so that a member stopping knows whether others take its share.

use redis::RedisResult;
use redis::aio::ConnectionLike;
use std::collections::BTreeSet;

/// The keys of one deployment's MQTT session.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    pub subscriptions: String,
    pub retained: String,
    pub sparkplug_names: String,
    pub members: String,
}

impl SessionKeys {
    /// The keys beside `stream` (in a cluster, in its slot).
    pub fn beside(stream: &str) -> Self {
        Self {
            subscriptions: format!("{stream}:mqtt-subscriptions"),
            retained: format!("{stream}:mqtt-retained"),
            sparkplug_names: format!("{stream}:sparkplug-names"),
            members: format!("{stream}:mqtt-members"),
        }
    }

    /// The keys of the member session `member` of the shared subscription: its own record of
    /// subscriptions, the rest shared.
    pub fn of_member(stream: &str, member: &str) -> Self {
        Self {
            subscriptions: format!("{stream}:mqtt-subscriptions:{member}"),
            ..Self::beside(stream)
        }
    }

    /// Records `member` as a member of the shared subscription.
    pub async fn join(&self, conn: &mut impl ConnectionLike, member: &str) -> RedisResult<()> {
        redis::cmd("SADD")
            .arg(&self.members)
            .arg(member)
            .query_async(conn)
            .await
    }

    /// Takes `member` out of the shared subscription's members if another member remains to
    /// take its share: one of `others` (member, its lease key) still a member, its lease held.
    /// Members leaving at the same moment are taken out one after the other, so the last one
    /// stays: a group without members would have the broker drop every message.
    pub async fn leave_if_others_remain(
        &self,
        conn: &mut impl ConnectionLike,
        member: &str,
        others: &[(String, String)],
    ) -> RedisResult<bool> {
        if others.is_empty() {
            return Ok(false);
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(
            "for i = 2, #KEYS do \
               if redis.call('SISMEMBER', KEYS[1], ARGV[i]) == 1 and redis.call('EXISTS', KEYS[i]) == 1 then \
                 redis.call('SREM', KEYS[1], ARGV[1]) \
                 return 1 \
               end \
             end \
             return 0",
        )
        .arg(1 + others.len())
        .arg(&self.members);
        for (_, lease) in others {
            cmd.arg(lease);
        }
        cmd.arg(member);
        for (other, _) in others {
            cmd.arg(other);
        }
        let left: i64 = cmd.query_async(conn).await?;
        Ok(left == 1)
    }

    /// Records that `member` left the shared subscription: it holds no subscription any more.
    pub async fn leave(&self, conn: &mut impl ConnectionLike, member: &str) -> RedisResult<()> {
        // Two commands, not a transaction: in a cluster the keys may live on two nodes.
        redis::cmd("DEL")
            .arg(&self.subscriptions)
            .query_async::<()>(&mut *conn)
            .await?;
        redis::cmd("SREM")
            .arg(&self.members)
            .arg(member)
            .query_async(conn)
            .await
    }

    /// The members of the shared subscription that joined and did not leave.
    pub async fn members(&self, conn: &mut impl ConnectionLike) -> RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(&self.members)
            .query_async(conn)
            .await
    }

    /// The subscriptions the broker's session holds, as recorded.
    pub async fn subscriptions(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<BTreeSet<String>> {
        redis::cmd("SMEMBERS")
            .arg(&self.subscriptions)
            .query_async(conn)
            .await
    }

    /// Records what the broker acknowledged: `added` subscribed, `removed` unsubscribed; with
    /// `replace`, the record starts afresh (a session the broker did not keep).
    pub async fn record_subscriptions(
        &self,
        conn: &mut impl ConnectionLike,
        replace: bool,
        added: &[String],
        removed: &[String],
    ) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        if replace {
            pipe.del(&self.subscriptions).ignore();
        }
        if !added.is_empty() {
            pipe.sadd(&self.subscriptions, added).ignore();
        }
        if !removed.is_empty() {
            pipe.srem(&self.subscriptions, removed).ignore();
        }
        pipe.query_async(conn).await
    }

    /// For each retained message (topic, payload), whether it is the one last appended for its
    /// topic.
    pub async fn retained_seen(
        &self,
        conn: &mut impl ConnectionLike,
        messages: &[(&str, &[u8])],
    ) -> RedisResult<Vec<bool>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(
            "local seen = {} \
             for i = 1, #ARGV, 2 do \
               seen[#seen + 1] = redis.call('HGET', KEYS[1], ARGV[i]) == redis.sha1hex(ARGV[i + 1]) and 1 or 0 \
             end \
             return seen",
        )
        .arg(1)
        .arg(&self.retained);
        for (topic, payload) in messages {
            cmd.arg(*topic).arg(*payload);
        }
        let seen: Vec<i64> = cmd.query_async(conn).await?;
        Ok(seen.into_iter().map(|s| s == 1).collect())
    }

    /// Records retained messages as appended.
    pub async fn record_retained(
        &self,
        conn: &mut impl ConnectionLike,
        messages: &[(&str, &[u8])],
    ) -> RedisResult<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(
            "for i = 1, #ARGV, 2 do \
               redis.call('HSET', KEYS[1], ARGV[i], redis.sha1hex(ARGV[i + 1])) \
             end \
             return 0",
        )
        .arg(1)
        .arg(&self.retained);
        for (topic, payload) in messages {
            cmd.arg(*topic).arg(*payload);
        }
        cmd.query_async(conn).await
    }

    /// Records the alias names (`alias=name` lines) of edge nodes' BIRTHs, by `<group>/<node>`.
    pub async fn record_sparkplug_names(
        &self,
        conn: &mut impl ConnectionLike,
        nodes: &[(&str, &str)],
    ) -> RedisResult<()> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&self.sparkplug_names);
        for (node, names) in nodes {
            cmd.arg(*node).arg(*names);
        }
        cmd.query_async(conn).await
    }

    /// The alias names of every node's last BIRTH, by `<group>/<node>`.
    pub async fn all_sparkplug_names(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<Vec<(String, String)>> {
        redis::cmd("HGETALL")
            .arg(&self.sparkplug_names)
            .query_async(conn)
            .await
    }

    /// The alias names of `<group>/<node>`'s last BIRTH, if one was recorded.
    pub async fn sparkplug_names(
        &self,
        conn: &mut impl ConnectionLike,
        node: &str,
    ) -> RedisResult<Option<String>> {
        redis::cmd("HGET")
            .arg(&self.sparkplug_names)
            .arg(node)
            .query_async(conn)
            .await
    }
}
