//! One batch of messages into the stream: retained messages already appended skipped, ignored
//! topics left out, the rest appended by one fenced script with their topic, form and id
//! prefix, and what a retained message or a Sparkplug B BIRTH leaves recorded after it.

use super::sparkplug;
use super::topics::Route;
use super::{APPEND_TIMEOUT, MqttSourceSettings};
use crate::domain::fields;
use crate::redis::connection::Connection;
use crate::sources::append::{Appender, Entry};
use crate::stream::append::FencedError;
use crate::stream::mqtt_session::SessionKeys;
use crate::telemetry::Metrics;
use rumqttc::Publish;
use std::sync::Arc;

/// The connection, appender and settings one append uses.
pub(super) struct AppendJob {
    pub(super) conn: Connection,
    pub(super) settings: Arc<MqttSourceSettings>,
    pub(super) appender: Arc<Appender>,
    pub(super) session: SessionKeys,
    pub(super) metrics: Arc<Metrics>,
}

/// Appends one message. `Ok(false)` when this instance no longer holds the lease. When Redis
/// fails the message is left unacknowledged and the session dropped, rather than retried
/// here while the connection to the broker goes unserved: the broker keeps the message in the
/// session and delivers it again once the source is back, Redis with it.
pub(super) async fn append(
    on: AppendJob,
    publishes: Vec<Publish>,
    extras: Vec<Option<sparkplug::Read>>,
) -> (Vec<Publish>, Result<bool, String>) {
    let appended = append_all(&on, &publishes, &extras).await;
    (publishes, appended)
}

async fn append_all(
    on: &AppendJob,
    publishes: &[Publish],
    extras: &[Option<sparkplug::Read>],
) -> Result<bool, String> {
    let max = on.settings.limits.max_message_bytes;
    let payload = |publish| cut(publish, max);
    // Retained messages sent again for a new subscription are skipped when their topic's last
    // appended retained message was the same.
    let retained: Vec<(&str, &[u8])> = publishes
        .iter()
        .filter(|publish| publish.retain)
        .map(|publish| (publish.topic.as_str(), payload(publish)))
        .collect();
    let mut conn = on.conn.clone();
    let seen = on
        .session
        .retained_seen(&mut conn, &retained)
        .await
        .map_err(|error| redis_failed(on, &error))?;
    let mut seen = seen.into_iter();
    let fresh: Vec<(&Publish, Option<&sparkplug::Read>)> = publishes
        .iter()
        .zip(
            extras
                .iter()
                .map(Option::as_ref)
                .chain(std::iter::repeat(None)),
        )
        .filter(|(publish, _)| !(publish.retain && seen.next().unwrap_or(false)))
        .collect();
    let skipped = publishes.len() - fresh.len();
    if skipped > 0 {
        on.metrics.mqtt_retained_skipped.inc_by(skipped as u64);
    }
    // Ignored topics (a device's availability and command topics) are acknowledged with the
    // others, not appended.
    let routed: Vec<(&Publish, &str, String, Option<&sparkplug::Read>)> = fresh
        .iter()
        .filter_map(
            |(publish, read)| match on.settings.routes.route(&publish.topic) {
                Route::Read { form, prefix } => Some((*publish, form, prefix, *read)),
                Route::Ignore => None,
            },
        )
        .collect();
    let ignored = fresh.len() - routed.len();
    if ignored > 0 {
        on.metrics.mqtt_messages_ignored.inc_by(ignored as u64);
    }
    let entries: Vec<Entry> = routed
        .iter()
        .map(|(publish, form, prefix, read)| {
            let mut entry = vec![
                (fields::DATA, payload(publish)),
                (fields::TOPIC, publish.topic.as_bytes()),
                (fields::FORM, form.as_bytes()),
                (fields::PREFIX, prefix.as_bytes()),
            ];
            if let Some(read) = read {
                if !read.names.is_empty() {
                    entry.push((fields::NAMES, read.names.as_bytes()));
                }
                if let Some(why) = &read.unread {
                    entry.push((fields::UNREAD, why.as_bytes()));
                }
            }
            entry
        })
        .collect();
    if entries.is_empty() {
        return Ok(true);
    }
    let append_id = on.appender.next_append_id();
    let appending = on.appender.append(&on.conn, &append_id, &entries);
    let appended = tokio::time::timeout(APPEND_TIMEOUT, appending)
        .await
        .unwrap_or_else(|_| {
            Err(FencedError::Redis(redis::RedisError::from(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {APPEND_TIMEOUT:?}"),
                ),
            )))
        });
    match appended {
        Ok(_) => {
            on.metrics
                .messages_received
                .with_label_values(&["mqtt"])
                .inc_by(entries.len() as u64);
            // The names a BIRTH gave, for a replay of a message that came before it.
            let births: Vec<(&str, &str)> = routed
                .iter()
                .filter_map(|(_, _, _, read)| read.and_then(|r| r.birth.as_ref()))
                .map(|(node, names)| (node.as_str(), names.as_str()))
                .collect();
            if !births.is_empty() {
                on.session
                    .record_sparkplug_names(&mut conn, &births)
                    .await
                    .map_err(|error| redis_failed(on, &error))?;
            }
            // Recorded once appended: a crash between the two appends a retained message sent
            // again once more, never loses one.
            let appended_retained: Vec<(&str, &[u8])> = fresh
                .iter()
                .filter(|(publish, _)| publish.retain)
                .map(|(publish, _)| (publish.topic.as_str(), payload(publish)))
                .collect();
            on.session
                .record_retained(&mut conn, &appended_retained)
                .await
                .map_err(|error| redis_failed(on, &error))?;
            Ok(true)
        }
        Err(FencedError::NotHolder) => Ok(false),
        Err(FencedError::Redis(error)) => Err(redis_failed(on, &error)),
    }
}

/// A payload over the limit is cut just past it: refused as too large, and kept bounded.
fn cut(publish: &Publish, max: usize) -> &[u8] {
    &publish.payload[..publish.payload.len().min(max.saturating_add(1))]
}

/// Counts a failed Redis command of an append and says what failed.
fn redis_failed(on: &AppendJob, error: &redis::RedisError) -> String {
    on.metrics.redis_errors.with_label_values(&["mqtt"]).inc();
    format!("appending to the stream: {error}")
}
